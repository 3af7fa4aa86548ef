"""The bundle's ``online_n2n`` workflow on the tiny cohort: TGD + Noise2Noise on one study, then denoise it."""

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from .conftest import assert_tgd_kept_frozen
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


def test_online_n2n_adapts_with_tgd_and_denoises_the_study(run_bundle, tiny_cohort, tmp_path):
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
    assert_tgd_kept_frozen(v1, adapted, masks)

    # a tiny time budget stops a long run early; the adapted weights and the denoised study are still written
    start = time.monotonic()
    run_bundle("online_n2n", init_checkpoint=str(base), run_name="budget", epochs="@n2n_epochs", n2n_epochs=10_000,
               n2n_time_budget_s=1)  # fmt: skip
    assert time.monotonic() - start < 60
    (checkpoint,) = (tmp_path / "runs" / "budget").glob("checkpoint_epoch=*.pt")
    assert int(checkpoint.stem.split("=")[1]) < 10_000
    assert (tmp_path / "runs" / "budget" / "ood_bladder_denoised.nii.gz").is_file()
    assert (tmp_path / "models" / "model_budget.pt").is_file()
