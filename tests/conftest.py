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
