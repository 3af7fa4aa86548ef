"""The bundle's ``online_n2n`` workflow on the tiny cohort: TGD + Noise2Noise on one study, then denoise it."""

import itertools
import json
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from ignite.handlers import time_limit

from .conftest import assert_tgd_kept_frozen, bundle_readers
from .conftest import load_tiny_model as load


def holdout_losses(run_dir: Path) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    losses = {}
    for events in run_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "n2n_holdout_loss" in acc.Tags()["scalars"]:
            losses.update({e.step: e.value for e in acc.Scalars("n2n_holdout_loss")})
    return losses


def train_loss_steps(run_dir: Path) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for events in run_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "train_loss" in acc.Tags()["scalars"]:
            steps += [e.step for e in acc.Scalars("train_loss")]
    return sorted(steps)


def test_online_n2n_adapts_with_tgd_and_denoises_the_study(run_bundle, tiny_cohort, tmp_path, monkeypatch):
    run_bundle("pretrain")  # the base network (v1-net here; v2-net/TGD-net in the paper)
    base = tmp_path / "models" / "model_v1.pt"
    run_bundle("online_n2n", init_checkpoint=str(base), epochs="@n2n_epochs", n2n_epochs=2)

    run_dir = tmp_path / "runs" / "n2n_ood_bladder_v1"
    record = next(r for r in json.loads(Path(tiny_cohort).read_text())["ood"]
                  if r["study"] == "ood_bladder" and r["recon"] == "v2")  # fmt: skip
    src = nib.load(Path(tiny_cohort).parent / record["input_120s"])
    out = nib.load(run_dir / "ood_bladder_denoised.nii.gz")
    assert out.shape == src.shape and np.array_equal(out.affine, src.affine)
    assert np.isfinite(out.get_fdata()).all()

    losses = holdout_losses(run_dir)  # before adaptation (epoch 0) and after each epoch
    assert sorted(losses) == [0, 1, 2] and all(np.isfinite(v) and v > 0 for v in losses.values())

    masks = torch.load(run_dir / "tgd_masks.pt", weights_only=True)
    assert json.loads((run_dir / "tgd_masks.json").read_text())["threshold"] == 0.4
    v1, adapted = load(base).state_dict(), load(tmp_path / "models" / "model_n2n_ood_bladder_v1.pt").state_dict()
    assert_tgd_kept_frozen(v1, adapted, masks, bundle_readers("online_n2n"))

    # a time budget stops a long run early; the adapted weights and the denoised study are still written. The clock
    # of ignite's TimeLimit (which the workflow attaches) is replaced by one that reads one second later at every
    # call, so a budget of 2 s stops the run at the end of iteration 3 whatever this machine's speed.
    clock = itertools.count()
    monkeypatch.setattr(time_limit, "time", types.SimpleNamespace(time=lambda: float(next(clock))))
    run_bundle("online_n2n", init_checkpoint=str(base), run_name="budget", epochs="@n2n_epochs", n2n_epochs=20,
               n2n_time_budget_s=2)  # fmt: skip
    budget = tmp_path / "runs" / "budget"
    assert train_loss_steps(budget) == [1, 2, 3]  # iterations 1-3 trained, then the run stopped
    per_epoch = torch.load(run_dir / "checkpoint_epoch=2.pt", weights_only=True)["trainer"]["epoch_length"]
    # the epoch of iteration 3 is cut short (after ignite's terminate no EPOCH_COMPLETED fires, even at its last
    # iteration): no checkpoint and no holdout loss for it
    completed = (3 - 1) // per_epoch
    assert sorted(p.name for p in budget.glob("checkpoint_epoch=*.pt")) == (
        [f"checkpoint_epoch={completed}.pt"] if completed else []
    )
    assert sorted(holdout_losses(budget)) == list(range(completed + 1))
    assert (budget / "ood_bladder_denoised.nii.gz").is_file()
    stopped = load(tmp_path / "models" / "model_budget.pt").state_dict()
    assert_tgd_kept_frozen(v1, stopped, torch.load(budget / "tgd_masks.pt", weights_only=True),
                           bundle_readers("online_n2n"))
