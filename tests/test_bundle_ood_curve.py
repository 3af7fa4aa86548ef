"""The bundle's loss_curve (with a resume), evaluate_ood and evaluate --eval_roi_slices_only workflows end to end on
the tiny simulated cohort."""

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_tgd.evaluation import OOD_COLUMNS

from ._bitwise import exact_kernels  # noqa: F401  (a fixture)
from .conftest import load_tiny_model


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_records(path):
    content = json.loads(Path(path).read_text())
    assert list(content) == ["records"]
    return content["records"]


def test_loss_curve_records_checkpoints_and_resumes(run_bundle, tmp_path, exact_kernels):
    run_bundle("pretrain")
    run_bundle(["finetune_tgd", "loss_curve"], epochs=3, curve_interval=2)
    run_dir = tmp_path / "runs" / "tgd"
    records = read_records(run_dir / "loss_curve.json")
    assert [r["epoch"] for r in records] == [0, 2, 3]  # the start, every 2 epochs, the last epoch
    per_epoch = records[-1]["iteration"] // 3
    assert per_epoch >= 1 and [r["iteration"] for r in records] == [0, 2 * per_epoch, 3 * per_epoch]
    for r in records:
        assert math.isfinite(r["metrics"]["val_loss"]) and r["metrics"]["val_loss"] > 0
        assert 0.0 <= r["probes"]["kse_flagged_channels_pct"] <= 100.0
    seconds = [r["train_seconds"] for r in records]
    assert seconds[0] == 0.0 and seconds == sorted(seconds)  # a cumulative clock (no value checked: wall time)

    # the epoch checkpoint carries the curve (plain types: loadable with weights_only=True)
    checkpoint = torch.load(run_dir / "checkpoint_epoch=3.pt", map_location="cpu", weights_only=True)
    assert checkpoint["curve"]["records"] == records
    assert round(checkpoint["curve"]["train_seconds"], 4) == seconds[-1]

    # the curve does not perturb training: the same run without it gives the same weights (bit for bit: CPU, or CUDA
    # with deterministic kernels, see tests/_bitwise.py)
    run_bundle("finetune_tgd", epochs=3, run_name="plain")
    with_curve = load_tiny_model(tmp_path / "models" / "model_tgd.pt").state_dict()
    without = load_tiny_model(tmp_path / "models" / "model_plain.pt").state_dict()
    assert all(torch.equal(with_curve[k], without[k]) for k in without)
    assert not (tmp_path / "runs" / "plain" / "loss_curve.json").exists()

    # resuming from epoch 3 to 5 continues the same curve: no second start point, epochs 4 (interval) and 5 (last)
    run_bundle(["finetune_tgd", "loss_curve"], epochs=5, curve_interval=2,
               resume_from=str(run_dir / "checkpoint_epoch=3.pt"))  # fmt: skip
    resumed = read_records(run_dir / "loss_curve.json")
    assert [r["epoch"] for r in resumed] == [0, 2, 3, 4, 5]
    assert resumed[:3] == records
    assert [r["iteration"] for r in resumed[3:]] == [4 * per_epoch, 5 * per_epoch]
    assert all(math.isfinite(r["metrics"]["val_loss"]) for r in resumed)
    later = [r["train_seconds"] for r in resumed]
    assert later == sorted(later)  # carried on from the checkpoint, not restarted from 0
    assert torch.load(run_dir / "checkpoint_epoch=5.pt", weights_only=True)["curve"]["records"] == resumed


def test_loss_curve_early_stopping_ends_the_run_and_saves_the_final_model(run_bundle, tmp_path):
    """early_stop_patience switches PlateauStopHandler on: with a min_delta no step can reach (99 %), the first
    validation after the start is "no improvement", so a 6-epoch cap with patience 1 and a curve every epoch stops at
    epoch 1 and still writes the final model."""
    run_bundle("pretrain")
    run_bundle(["finetune", "loss_curve"], epochs=6, curve_interval=1, early_stop_patience=1,
               early_stop_min_delta=0.99)  # fmt: skip
    run_dir = tmp_path / "runs" / "ft"
    assert [r["epoch"] for r in read_records(run_dir / "loss_curve.json")] == [0, 1]
    assert (tmp_path / "models" / "model_ft.pt").is_file()
    assert sorted(p.name for p in run_dir.glob("checkpoint_epoch=*.pt")) == ["checkpoint_epoch=1.pt"]
    # off by default: the same run without a patience goes to the cap
    run_bundle(["finetune", "loss_curve"], epochs=2, curve_interval=1, early_stop_min_delta=0.99, run_name="capped")
    assert [r["epoch"] for r in read_records(tmp_path / "runs" / "capped" / "loss_curve.json")] == [0, 1, 2]


def dilate_in_plane(mask, n):
    """3x3 dilation repeated ``n`` times within each slice of the last axis (the bundle's slab axis)."""
    h, w = mask.shape[:2]
    for _ in range(n):
        padded = np.pad(mask, ((1, 1), (1, 1), (0, 0)))
        mask = np.logical_or.reduce([padded[i : i + h, j : j + w] for i in range(3) for j in range(3)])
    return mask


def load(datalist, relative):
    return np.asarray(nib.load(str(Path(datalist).parent / relative)).dataobj).astype(np.float64)


def test_evaluate_ood_and_roi_slices_only(run_bundle, tiny_cohort, tmp_path, capsys):
    run_bundle("pretrain")
    v1 = str(tmp_path / "models" / "model_v1.pt")
    capsys.readouterr()
    run_bundle("evaluate_ood", eval_networks={"v1-net": v1})
    assert "| study | feature | network | OOD-ROI RMSE" in capsys.readouterr().out  # the table is printed

    out = tmp_path / "runs" / "evaluate_ood"
    rows = read_csv(out / "evaluation_ood.csv")
    assert list(rows[0]) == OOD_COLUMNS
    ood = [r for r in json.loads(Path(tiny_cohort).read_text())["ood"] if r["recon"] == "v2"]
    assert [(r["study"], r["network"]) for r in rows] == [
        (r["study"], name) for r in ood for name in ("input (120 s)", "v1-net")
    ]
    content = json.loads((out / "evaluation_ood.json").read_text())
    assert content["input"] == "input_120s" and len(content["rows"]) == len(rows)
    for i, record in enumerate(ood):
        label = np.rint(load(tiny_cohort, record["label"]))
        roi = dilate_in_plane(label == record["ood_label"], 1)
        image, reference = load(tiny_cohort, record["input_120s"]), load(tiny_cohort, record["reference"])
        given, net = rows[2 * i], rows[2 * i + 1]
        assert int(given["ood_voxels"]) == int(net["ood_voxels"]) == roi.sum()
        assert given["ood_feature"] == record["ood_feature"] and net["checkpoint"] == v1
        for row in (given, net):
            assert math.isfinite(float(row["liver_pixel_cov_pct"])) and math.isfinite(float(row["rmse_body_ref"]))
        if roi.any():  # the bladder: the input row against numpy, and the network changed the image
            d = image[roi] - reference[roi]
            assert float(given["ood_rmse_ref"]) == pytest.approx(np.sqrt(np.mean(d**2)), rel=1e-6)
            assert float(given["ood_bias_ref_pct"]) == pytest.approx(100 * d.mean() / reference[roi].mean(), rel=1e-6)
            assert float(net["ood_rmse_ref"]) != float(given["ood_rmse_ref"])
        else:  # the catheter, thinner than a voxel at this resolution: NaN (empty cells, JSON null)
            assert given["ood_rmse_ref"] == net["ood_bias_ref_pct"] == ""
            assert content["rows"][2 * i + 1]["ood_rmse_ref"] is None
    features = {r["ood_feature"]: int(r["ood_voxels"]) for r in rows}
    assert features["bladder"] > 0 and features["catheter"] == 0  # what the tiny cohort gives

    # evaluate on the ROI slices only: same lesion bias and liver CoV, fewer slices
    run_bundle("evaluate", eval_networks={"v1-net": v1})
    run_bundle("evaluate", eval_networks={"v1-net": v1}, eval_roi_slices_only=True, run_name="evaluate_roi")
    full = read_csv(tmp_path / "runs" / "evaluate" / "evaluation.csv")
    cut = read_csv(tmp_path / "runs" / "evaluate_roi" / "evaluation.csv")
    assert [(r["study"], r["network"]) for r in cut] == [(r["study"], r["network"]) for r in full]
    assert len(full) == 4
    for a, b in zip(full, cut):
        for key in ("liver_lesion_bias_ref_pct", "liver_lesion_bias_truth_pct", "liver_cov_pct"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-5), (a["study"], a["network"], key)
        assert b["liver_voxels"] == a["liver_voxels"]
        assert int(a["evaluated_slices"]) == 12 and int(b["evaluated_slices"]) < 12
    assert full[1]["liver_cov_pct"] != full[0]["liver_cov_pct"]  # the network ran
