"""Shared fixtures: the tiny simulated cohort (generated once per session) and an in-process bundle runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monai_tgd.bundle_helpers import workflow_configs

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
    "trained_spacing": [12.5, 12.5, 42.0],  # the tiny cohort's voxel size (metadata's is the quick cohort's)
}


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """Datalist of the ``tiny`` simulated cohort."""
    from monai_tgd.simulate import generate_cohort

    return generate_cohort(tmp_path_factory.mktemp("cohort"), "tiny", seed=0, progress=False)


@pytest.fixture
def run_bundle(tiny_cohort, tmp_path):
    """``run_bundle("finetune_tgd", epochs=3)`` runs a bundle workflow in-process on the tiny cohort.

    Checkpoints are read from and written to ``tmp_path / "models"`` (``ckpt_dir``, ``model_dir``) and run folders
    to ``tmp_path / "runs"``; keyword arguments override
    config ids like ``--id value`` on the command line. Returns the workflow's ``run`` results.
    """
    from monai.bundle import run

    def _run(workflow: str | list[str], **overrides):
        files = workflow_configs(workflow, BUNDLE / "configs")
        settings = {
            "bundle_root": str(BUNDLE),
            "datalist": str(tiny_cohort),
            "ckpt_dir": str(tmp_path / "models"),
            "model_dir": str(tmp_path / "models"),
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


# The output conv of a DnCNN with TINY_OVERRIDES sizes (and of the 4-layer DnCNNs of the TGD unit tests).
OUTPUT_CONV = f"blocks.{TINY_OVERRIDES['num_layers'] - 1}.conv"


def tgd_frozen_rows(base: dict, masks: dict, bn_stats: str = "freeze") -> dict:
    """``{state_dict key: bool [rows], True = must stay bit-identical}`` for the hidden convs of a DnCNN under TGD.

    Written from DnCNN's naming (``blocks.i.conv`` is normalised by ``blocks.i.norm``), not from TGD's own tracing:
    the frozen rows (``~mask``) of each masked conv's weight/bias and of its BN's weight/bias, and with
    ``bn_stats="freeze"`` of the BN's running mean/var. Keys missing from ``base`` (the first conv has no BN, BN'd
    convs have no bias) are skipped; every masked conv's weight must be there, so a naming slip cannot make a check
    vacuous.
    """
    rows = {}
    for name, retrain in masks.items():
        assert f"{name}.weight" in base, f"{name}.weight not in the state dict"
        norm = name.replace("conv", "norm")
        keys = [f"{name}.weight", f"{name}.bias", f"{norm}.weight", f"{norm}.bias"]
        keys += [f"{norm}.running_mean", f"{norm}.running_var"] if bn_stats == "freeze" else []
        rows.update({key: ~retrain.cpu() for key in keys if key in base})
    return rows


def assert_frozen_rows_kept(
    base: dict, current: dict, masks: dict, bn_stats: str = "freeze", output: str = OUTPUT_CONV, where: str = ""
) -> None:
    """The TGD guarantee at one moment (e.g. right after an optimizer step, or in a checkpoint saved mid-run):
    the rows of :func:`tgd_frozen_rows` and the whole ``output`` conv of state dict ``current`` are bit-identical to
    ``base`` (the weights TGD was installed on). Says nothing about retrained rows."""
    import torch

    prefix = f"{where}: " if where else ""
    for key, frozen in tgd_frozen_rows(base, masks, bn_stats).items():
        now, then = current[key].detach().cpu()[frozen], base[key].cpu()[frozen]
        assert torch.equal(now, then), (
            f"{prefix}frozen rows of {key} changed, max abs change {(now - then).abs().max().item():.3e}"
        )
    assert f"{output}.weight" in base, f"output conv {output} not in the state dict"
    for p in ("weight", "bias"):
        if f"{output}.{p}" in base:
            assert torch.equal(current[f"{output}.{p}"].detach().cpu(), base[f"{output}.{p}"].cpu()), (
                f"{prefix}output conv {output}.{p} changed"
            )


def bundle_readers(workflow: str) -> str:
    """The ``tgd_readers`` a bundle workflow runs with by default: train.json's, unless ``<workflow>.json`` sets its
    own (finetune_tgd sets "all", chosen on the validation study; online_n2n keeps train.json's "output")."""
    configs = [json.loads(Path(f).read_text(encoding="utf-8")) for f in workflow_configs(workflow, BUNDLE / "configs")]
    return next(c["tgd_readers"] for c in reversed(configs) if "tgd_readers" in c)


def assert_tgd_kept_frozen(base: dict, tuned: dict, masks: dict, readers: str, where: str = "") -> None:
    """The TGD guarantee on state dicts (the bundle's default ``tgd_bn_stats="freeze"``): frozen rows of every masked
    conv and its BN, BN running statistics included, are bit-identical to ``base``, some retrained row moved, and the
    output conv is unchanged except, with ``readers`` "output"/"all", its columns reading retrained maps (every
    frozen element of :func:`tgd_frozen_elements`). ``readers``: what the run used (e.g. :func:`bundle_readers`)."""
    import torch

    if readers == "none":
        assert_frozen_rows_kept(base, tuned, masks, where=where)
    else:
        assert_frozen_elements_kept(base, tuned, masks, readers, where=where)
    changed = sum(
        int(not torch.equal(tuned[key][~frozen], base[key][~frozen]))
        for key, frozen in tgd_frozen_rows(base, masks).items()
    )
    assert changed > 0, f"{where}: no retrained channel moved" if where else "no retrained channel moved"


def tgd_frozen_elements(
    base: dict, masks: dict, readers: str = "none", bn_stats: str = "freeze", output: str = OUTPUT_CONV
) -> dict:
    """``{state_dict key: bool tensor of the shape of base[key], True = must stay bit-identical}`` for a DnCNN under
    TGD with ``freeze_output=True`` and the given ``readers``, element by element.

    Written from DnCNN's naming, not from TGD: the rows of :func:`tgd_frozen_rows` and the whole ``output`` conv, minus
    the reader kernels ``W[:, n]`` of ``blocks.{i+1}.conv`` for every retrained map ``n`` of ``blocks.i.conv`` (only
    where ``blocks.{i+1}.conv`` is ``output`` with ``readers="output"``; everywhere with ``readers="all"``)."""
    import torch

    assert readers in ("none", "output", "all"), readers
    frozen = {key: rows.view(-1, *([1] * (base[key].dim() - 1))).expand_as(base[key]).clone()
              for key, rows in tgd_frozen_rows(base, masks, bn_stats).items()}  # fmt: skip
    for p in ("weight", "bias"):
        if f"{output}.{p}" in base:
            frozen[f"{output}.{p}"] = torch.ones_like(base[f"{output}.{p}"], dtype=torch.bool)
    if readers != "none":
        for name, retrain in masks.items():
            block = int(name.split(".")[1])
            reader = f"blocks.{block + 1}.conv"
            assert f"{reader}.weight" in base, f"{reader}.weight not in the state dict"
            if readers == "output" and reader != output:
                continue
            if f"{reader}.weight" in frozen:
                frozen[f"{reader}.weight"][:, retrain.cpu()] = False
    return frozen


def assert_frozen_elements_kept(
    base: dict, current: dict, masks: dict, readers: str, bn_stats: str = "freeze", where: str = ""
) -> None:
    """Every element of :func:`tgd_frozen_elements` in ``current`` is bit-identical to ``base``."""
    import torch

    prefix = f"{where}: " if where else ""
    for key, frozen in tgd_frozen_elements(base, masks, readers, bn_stats).items():
        now, then = current[key].detach().cpu()[frozen], base[key].cpu()[frozen]
        assert torch.equal(now, then), (
            f"{prefix}frozen elements of {key} changed, max abs change {(now - then).abs().max().item():.3e}"
        )


def first_realisations(tiny_cohort, recon="v1") -> list[str]:
    """Absolute paths of the first 60 s realisation of each test study of the tiny cohort, for one recon."""
    records = json.loads(Path(tiny_cohort).read_text())["test"]
    return [str(Path(tiny_cohort).parent / r["realizations"][0]) for r in records if r["recon"] == recon]
