"""configs/multi_gpu_train.json: finetune_tgd under ``torchrun`` with 2 CPU processes (gloo) on the tiny cohort.

What must hold: the run exits 0; the final checkpoint is the unwrapped network's ``state_dict`` (loads into a plain
DnCNN with ``weights_only=True``); the channels frozen by the run's masks are bit-identical to the v1 model's; rank 0
alone writes the mask files, the checkpoints and the TensorBoard events.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from monai.bundle import ConfigParser

from monai_tgd.bundle_helpers import workflow_configs

from .conftest import BUNDLE, TINY_OVERRIDES, assert_tgd_kept_frozen, bundle_readers, load_tiny_model

CONFIGS = BUNDLE / "configs"
TIMEOUT = 240  # seconds; a hung process group fails the test instead of blocking CI


def _load(path) -> dict[str, torch.Tensor]:
    return load_tiny_model(path).state_dict()  # strict: no "module." prefix


def test_rank0_only_overrides_target_the_right_items():
    """multi_gpu_train.json disables the ``StatsHandler``, the ``TensorBoardStatsHandler`` and both
    ``CheckpointSaver``s on ranks > 0 by name (``train#stats_handler#_disabled_``, ...); this fails if an override
    names a handler that train.json does not define or does not attach through ``train#handlers``/``train#savers``."""
    parser = ConfigParser()
    parser.read_config(workflow_configs(["finetune_tgd", "multi_gpu_train"], CONFIGS))
    overrides = json.loads((CONFIGS / "multi_gpu_train.json").read_text())
    names = [k.removesuffix("#_disabled_") for k in overrides if k.endswith("#_disabled_")]
    targets = sorted(parser[n]["_target_"] for n in names)
    assert targets == ["CheckpointSaver", "CheckpointSaver", "StatsHandler", "TensorBoardStatsHandler"], targets
    attached = parser["train"]["handlers"] + parser["train"]["savers"]
    assert all(f"@{n}" in attached for n in names), (names, attached)


#: the signature of gloo's rare abort while its TCP pairs connect (an uncaught C++ exception in a gloo thread:
#: pytorch/pytorch#188266, pytorch/gloo#514), seen once in CI on 2 loaded cores; not this bundle's code
GLOO_ABORT = ("terminate called without an active exception", "SIGABRT")


def _torchrun(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=BUNDLE, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"torchrun did not finish in {TIMEOUT} s; stderr tail:\n{(e.stderr or b'')[-4000:]}") from e


def test_finetune_tgd_ddp_two_processes(run_bundle, tiny_cohort, tmp_path):
    run_bundle("pretrain")
    models = tmp_path / "models"
    overrides = {**TINY_OVERRIDES, "tgd_threshold": 0.5}
    configs = workflow_configs(["finetune_tgd", "multi_gpu_train"], CONFIGS)

    def command(runs):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
            "-m", "monai.bundle", "run",
            "--config_file", json.dumps(configs),
            "--meta_file", str(CONFIGS / "metadata.json"),
            "--logging_file", str(CONFIGS / "logging.conf"),
            "--bundle_root", str(BUNDLE),
            "--datalist", str(tiny_cohort),
            "--ckpt_dir", str(models),
            "--model_dir", str(models),
            "--output_dir", str(runs),
        ]  # fmt: skip
        for key, value in overrides.items():
            cmd += [f"--{key}", json.dumps(value)]
        return cmd

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = tmp_path / "runs"
    proc = _torchrun(command(runs), env)
    if proc.returncode != 0 and all(s in proc.stderr for s in GLOO_ABORT):
        # gloo's abort (above), once: a fresh run in fresh folders; a second failure of any kind fails the test
        (models / "model_tgd.pt").unlink(missing_ok=True)
        runs = tmp_path / "runs_again"
        proc = _torchrun(command(runs), env)
    assert proc.returncode == 0, f"torchrun exited {proc.returncode}; stderr tail:\n{proc.stderr[-6000:]}"

    v1, tgd = _load(models / "model_v1.pt"), _load(models / "model_tgd.pt")
    run_dir = runs / "tgd"
    masks = torch.load(run_dir / "tgd_masks.pt", weights_only=True)
    assert set(masks) == {f"blocks.{i}.conv" for i in range(TINY_OVERRIDES["num_layers"] - 1)}
    assert_tgd_kept_frozen(v1, tgd, masks, bundle_readers("finetune_tgd"))

    # rank 0 alone writes: one mask file pair (no leftover temporaries of a second writer), one TensorBoard file
    files = sorted(p.name for p in run_dir.iterdir())
    assert [f for f in files if f.startswith("tgd_masks")] == ["tgd_masks.json", "tgd_masks.pt"], files
    assert len([f for f in files if f.startswith("events.out.tfevents")]) == 1, files
    assert [f for f in files if f.endswith(".pt") and f != "tgd_masks.pt"] == ["checkpoint_epoch=2.pt"], files
    checkpoint = torch.load(run_dir / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    assert set(checkpoint) == {"network", "optimizer", "tgd", "trainer"}
    assert set(checkpoint["network"]) == set(v1), "the resumable checkpoint must hold the unwrapped network"
    assert all(torch.equal(checkpoint["tgd"]["masks"][k], m) for k, m in masks.items())
