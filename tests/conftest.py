"""Shared fixtures: the tiny simulated cohort (generated once per session) and an in-process bundle runner."""

from __future__ import annotations

from pathlib import Path

import pytest

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "pet_tgd_denoising"

# Sizes that make every workflow run in seconds on the tiny cohort (40x40x12 voxels).
TINY_OVERRIDES = {
    "features": 8,
    "num_layers": 4,
    "epochs": 2,
    "samples_per_volume": 4,
    "patch_size": [32, 32],
    "batch_size": 4,
    "sw_batch_size": 8,
}


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """Datalist of the ``tiny`` simulated cohort."""
    from monai_tgd.simulate import generate_cohort

    return generate_cohort(tmp_path_factory.mktemp("cohort"), "tiny", seed=0, progress=False)


@pytest.fixture
def run_bundle(tiny_cohort, tmp_path):
    """``run_bundle("finetune_tgd", epochs=3)`` runs a bundle workflow in-process on the tiny cohort.

    Checkpoints go to ``tmp_path / "models"`` and run folders to ``tmp_path / "runs"``; keyword arguments override
    config ids like ``--id value`` on the command line. Returns the workflow's ``run`` results.
    """
    from monai.bundle import run

    def _run(workflow: str | list[str], **overrides):
        files = ["common.json"] + ([workflow] if isinstance(workflow, str) else list(workflow))
        files = [str(BUNDLE / "configs" / (f if f.endswith(".json") else f + ".json")) for f in files]
        settings = {
            "bundle_root": str(BUNDLE),
            "datalist": str(tiny_cohort),
            "ckpt_dir": str(tmp_path / "models"),
            "output_dir": str(tmp_path / "runs"),
            **TINY_OVERRIDES,
            **overrides,
        }
        return run(
            config_file=files, meta_file=str(BUNDLE / "configs" / "metadata.json"), logging_file=False, **settings
        )

    return _run


def load_tiny_model(path):
    """A checkpoint written with ``TINY_OVERRIDES`` sizes, loaded strictly into a plain DnCNN (no TGD traces, no
    ``module.`` prefix)."""
    import torch

    from monai_tgd.networks import DnCNN

    net = DnCNN(features=TINY_OVERRIDES["features"], num_layers=TINY_OVERRIDES["num_layers"])
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net


def assert_tgd_kept_frozen(base: dict, tuned: dict, masks: dict) -> None:
    """The TGD guarantee on state dicts (the bundle's default ``tgd_bn_stats="freeze"``): frozen rows of every masked
    conv and its BN, BN running statistics included, are bit-identical to ``base``, some retrained row moved, and the
    output conv is unchanged."""
    import torch

    changed = 0
    for name, retrain in masks.items():
        norm = name.replace("conv", "norm")
        for key in (f"{name}.weight", f"{name}.bias", f"{norm}.weight", f"{norm}.bias", f"{norm}.running_mean",
                    f"{norm}.running_var"):  # fmt: skip
            if key in base:
                assert torch.equal(tuned[key][~retrain], base[key][~retrain]), f"frozen rows of {key} changed"
                changed += int(not torch.equal(tuned[key][retrain], base[key][retrain]))
    assert changed > 0, "no retrained channel moved"
    out = f"blocks.{TINY_OVERRIDES['num_layers'] - 1}.conv"
    assert all(torch.equal(tuned[f"{out}.{p}"], base[f"{out}.{p}"]) for p in ("weight", "bias")), "output conv changed"
