"""monai_tgd.evaluation on hand-checkable synthetic studies: metrics, reports, errors, and the KSE sweep."""

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from monai_tgd.evaluation import (
    EVALUATION_COLUMNS,
    KSE_COLUMNS,
    LESION_COLUMNS,
    denoise,
    evaluate_networks,
    kse_histogram,
    kse_sweep,
    liver_roi,
    load_network,
    run_kse_sweep,
    zero_random_kernels,
)
from monai_tgd.inferers import Slab25DInferer
from monai_tgd.metrics import ensemble_bias, ensemble_cov
from monai_tgd.networks import DnCNN
from monai_tgd.tgd import drop_redundant, kse_masks

SHAPE = (12, 12, 4)
DELTAS = [-0.1, -0.05, 0.05, 0.1]  # realisation r = reference * (1 + d_r): the ensemble mean is the reference
COV = 100 * float(np.std(DELTAS, ddof=1))  # liver ensemble CoV of the realisations, percent
INFERER = Slab25DInferer(slab=3, axis=-1, sw_batch_size=5)


class CentreSlice(nn.Module):
    """'Denoiser' returning its centre input slice plus ``offset``; counts its calls."""

    def __init__(self, offset=0.0):
        super().__init__()
        self.offset = offset
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x[:, 1:2] + self.offset


def save(path, array):
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.float32), np.eye(4)), str(path))
    return str(path)


@pytest.fixture
def study(tmp_path):
    """A study: body (1) with a liver (2) holding lesion 10 and a lung (3) holding lesion 12; lesion 11 (liver)
    is listed but absent from the label map. Reference: body 1, liver 2, lesion 10: 8, lung 0.3, lesion 12: 2;
    truth = 0.8 x reference."""
    label = np.zeros(SHAPE, np.int16)
    label[1:11, 1:11] = 1
    label[2:9, 2:9] = 2
    label[4:6, 4:6, 1:3] = 10
    label[9:11, 2:5] = 3
    label[9, 3, 2] = 12
    reference = np.select([label == 1, label == 2, label == 10, label == 3, label == 12], [1.0, 2.0, 8.0, 0.3, 2.0], 0)
    record = {
        "study": "synthetic",
        "recon": "v2",
        "bmi_class": "low",
        "label": save(tmp_path / "label.nii.gz", label),
        "reference": save(tmp_path / "reference.nii.gz", reference),
        "truth": save(tmp_path / "truth.nii.gz", 0.8 * reference),
        "realizations": [save(tmp_path / f"r{i}.nii.gz", reference * (1 + d)) for i, d in enumerate(DELTAS)],
        "realization_duration_s": 60.0,
        "lesions": [
            {"label": 10, "organ": "liver", "diameter_mm": 15.0, "contrast": 4.0},
            {"label": 11, "organ": "liver", "diameter_mm": 5.0, "contrast": 3.0},
            {"label": 12, "organ": "lung", "diameter_mm": 8.0, "contrast": 6.67},
        ],
    }
    return record, label, reference


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_identity_network_gives_the_metrics_of_the_realisations(study, tmp_path):
    record, label, reference = study
    out = tmp_path / "out"
    rows = evaluate_networks({"id": CentreSlice()}, [record], INFERER, "cpu", out, log=None)
    assert [r["network"] for r in rows] == ["input (60 s)", "id"]
    realizations = np.stack([np.asarray(nib.load(p).dataobj) for p in record["realizations"]])  # float32 as stored
    reference = np.asarray(nib.load(record["reference"]).dataobj)
    liver, erosion = liver_roi(label, 1)
    assert erosion == 1
    for row in rows:
        assert row["realizations"] == 4 and row["n_liver_lesions"] == 1 and row["liver_voxels"] == liver.sum()
        assert row["liver_lesion_bias_ref_pct"] == pytest.approx(ensemble_bias(realizations, reference, label == 10))
        assert row["liver_lesion_bias_ref_pct"] == pytest.approx(0.0, abs=1e-4)
        assert row["liver_lesion_bias_truth_pct"] == pytest.approx(25.0, abs=1e-4)  # 1 / 0.8 - 1
        assert row["liver_cov_pct"] == pytest.approx(ensemble_cov(realizations, liver), rel=1e-5)
        assert row["liver_cov_pct"] == pytest.approx(COV, rel=1e-5)
        assert row["rmse_body_ref"] == pytest.approx(0.0, abs=1e-5)
        lesions = {p["lesion_label"]: p for p in row["lesions"]}
        assert lesions[11]["voxels"] == 0 and math.isnan(lesions[11]["bias_ref_pct"])  # not in the label map
        assert lesions[12]["bias_truth_pct"] == pytest.approx(25.0, abs=1e-4)

    table = read_csv(out / "evaluation.csv")
    assert list(table[0]) == EVALUATION_COLUMNS and len(table) == 2
    assert float(table[1]["liver_cov_pct"]) == pytest.approx(COV, rel=1e-5)
    lesion_table = read_csv(out / "evaluation_lesions.csv")
    assert list(lesion_table[0]) == LESION_COLUMNS and len(lesion_table) == 6
    assert [r["bias_ref_pct"] for r in lesion_table if r["lesion_label"] == "11"] == ["", ""]
    content = json.loads((out / "evaluation.json").read_text())  # strict JSON: NaN written as null
    assert content["networks"] == {"id": "<CentreSlice>"}
    assert content["rows"][1]["lesions"][1]["bias_ref_pct"] is None
    markdown = (out / "evaluation.md").read_text()
    assert "| metric | input (60 s) | id |" in markdown and "synthetic, low BMI, recon v2, R = 4" in markdown
    assert not list(out.glob(".partial-*"))


def test_constant_offset_gives_the_known_bias_cov_and_rmse(study):
    record, label, _ = study
    rows = evaluate_networks({"plus": CentreSlice(0.5), "id": CentreSlice()}, [record], INFERER, log=None)
    plus = rows[1]
    assert plus["network"] == "plus"
    assert plus["liver_lesion_bias_ref_pct"] == pytest.approx(100 * 0.5 / 8.0, rel=1e-5)
    assert plus["liver_lesion_bias_truth_pct"] == pytest.approx(100 * (8.5 / 6.4 - 1), rel=1e-5)
    assert plus["liver_cov_pct"] == pytest.approx(COV * 2.0 / 2.5, rel=1e-5)  # same spread, larger mean
    assert plus["rmse_body_ref"] == pytest.approx(0.5, rel=1e-5)
    # the lesion-free rows are not mixed up between networks
    assert rows[2]["network"] == "id" and rows[2]["liver_lesion_bias_ref_pct"] == pytest.approx(0.0, abs=1e-4)


def test_denoise_batches_the_realisations():
    torch.manual_seed(0)
    net = DnCNN(features=4, num_layers=3)
    stack = torch.rand(3, 10, 9, 5)
    together = denoise(net, stack, INFERER)
    assert together.shape == stack.shape
    for i in range(3):
        torch.testing.assert_close(together[i], denoise(net, stack[i], INFERER))
    counter = CentreSlice()
    denoise(counter, stack, Slab25DInferer(sw_batch_size=5))
    assert counter.calls == 3  # one call per volume of 5 slices, no per-slice loop
    torch.testing.assert_close(denoise(counter, stack.numpy(), INFERER), stack)


def test_liver_roi_erodes_in_plane_only():
    label = np.zeros((9, 9, 3), np.int16)
    label[2:7, 2:7, :] = 2
    mask, erosion = liver_roi(label, 1)
    assert erosion == 1 and mask.sum() == 3 * 3 * 3  # 5x5 -> 3x3 in-plane, every slice kept
    thin = np.zeros((9, 9, 3), np.int16)
    thin[4, 2:7, 1] = 2
    mask, erosion = liver_roi(thin, 1)
    assert erosion == 0 and mask.sum() == 5  # erosion would empty it: un-eroded


def test_checkpoints_flat_or_wrapped_and_errors(tmp_path, study):
    torch.manual_seed(0)
    net = DnCNN(features=4, num_layers=3)
    torch.save(net.state_dict(), tmp_path / "flat.pt")
    torch.save({"network": net.state_dict()}, tmp_path / "wrapped.pt")
    template = DnCNN(features=4, num_layers=3)
    x = torch.rand(8, 8, 3)
    expected = denoise(net, x, INFERER)
    for name in ("flat.pt", "wrapped.pt"):
        loaded = load_network(tmp_path / name, template, "cpu")
        assert not loaded.training
        torch.testing.assert_close(denoise(loaded, x, INFERER), expected)

    record, _, _ = study
    missing = tmp_path / "nope" / "model_v1.pt"
    with pytest.raises(FileNotFoundError, match=f"'v1-net'.*{missing}"):
        evaluate_networks({"v1-net": str(missing)}, [record], INFERER, network_def=template, output_dir=tmp_path / "o")
    with pytest.raises(ValueError, match=r"(?s)wide.*flat\.pt does not fit.*size mismatch"):
        load_network(tmp_path / "flat.pt", DnCNN(features=8, num_layers=3), name="wide")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint .*junk.pt"):
        load_network(tmp_path / "junk.pt", template)
    with pytest.raises(ValueError, match="needs network_def"):
        load_network(tmp_path / "flat.pt")
    assert not (tmp_path / "o").exists()  # nothing written


def test_bad_records_fail_before_inference(study, tmp_path):
    record, _, _ = study
    net = CentreSlice()
    with pytest.raises(ValueError, match="no test records"):
        evaluate_networks({"id": net}, [], INFERER)
    broken = dict(record, truth=str(tmp_path / "missing_truth.nii.gz"))
    with pytest.raises(FileNotFoundError, match="synthetic.*'truth'.*missing_truth"):
        evaluate_networks({"id": net}, [record, broken], INFERER, log=None)
    save(tmp_path / "small.nii.gz", np.zeros((4, 4, 4)))
    odd = dict(record, realizations=record["realizations"][:3] + [str(tmp_path / "small.nii.gz")])
    with pytest.raises(ValueError, match="different shapes"):
        evaluate_networks({"id": net}, [record, odd], INFERER, log=None)
    with pytest.raises(ValueError, match="at least 2"):
        evaluate_networks({"id": net}, [dict(record, realizations=record["realizations"][:1])], INFERER, log=None)
    assert net.calls == 0  # every error came before any inference

    from monai_tgd.data import load_datalist

    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"test": []}))
    with pytest.raises(ValueError, match="no non-empty section 'test'"):
        load_datalist(datalist, "test", ["reference", "realizations", "label"])


def make_net(seed=0):
    torch.manual_seed(seed)
    net = DnCNN(features=8, num_layers=4)
    with torch.no_grad():
        for i in range(1, 4):
            net.blocks[i].conv.weight[:, ::2] *= 0.05  # near-dead input channels: KSE flags them
    return net.eval()


def test_kse_sweep_fractions_control_and_seed():
    net = make_net()
    g = torch.Generator().manual_seed(1)
    volume = 1 + torch.rand(16, 16, 4, generator=g)
    body = torch.zeros(16, 16, 4, dtype=torch.bool)
    body[2:14, 2:14] = True
    thresholds = [0.0, 0.3, 0.6]
    rows = kse_sweep(net, volume, thresholds, INFERER, body, seed=3, random_draws=2)
    assert [r["threshold"] for r in rows] == thresholds
    for row, t in zip(rows, thresholds):
        assert set(KSE_COLUMNS) <= set(row)
        assert row["dropped_params_pct"] == pytest.approx(100 * drop_redundant(net, t)[1])
        assert row["random_dropped_params_pct"] == pytest.approx(row["dropped_params_pct"])
        assert row["flagged_channels"] == sum(int(m.sum()) for m in kse_masks(net, t).values())
        assert row["total_channels"] == 24
        assert sum(row["flagged_per_layer"].values()) == row["flagged_channels"]
    assert rows[0]["flagged_channels"] == 0 and rows[0]["kse_output_change_pct"] == 0.0
    assert rows[0]["random_output_change_pct"] == 0.0
    assert rows[1]["flagged_channels"] > 0
    # near-dead channels matter less than random ones
    assert rows[1]["kse_output_change_pct"] < rows[1]["random_output_change_pct_min"]

    again = kse_sweep(net, volume, [0.3], INFERER, body, seed=3, random_draws=2)[0]
    assert again["random_output_change_pct"] == rows[1]["random_output_change_pct"]  # reproducible by seed
    assert again["kse_output_change_pct"] == rows[1]["kse_output_change_pct"]
    other = kse_sweep(net, volume, [0.3], INFERER, body, seed=4, random_draws=2)[0]
    assert other["random_output_change_pct"] != rows[1]["random_output_change_pct"]


def test_zero_random_kernels_and_histogram():
    net = make_net()
    counts = {"blocks.0.conv": 2, "blocks.1.conv": 0, "blocks.2.conv": 8}
    pruned, fraction = zero_random_kernels(net, counts, np.random.default_rng(0))
    zero_channels = [int((pruned.blocks[i].conv.weight.abs().sum(dim=(0, 2, 3)) == 0).sum()) for i in (1, 2, 3)]
    assert zero_channels == [2, 0, 8]
    total = sum(p.numel() for n, p in net.named_parameters() if "conv" in n)
    assert fraction == pytest.approx((2 * 8 * 9 + 8 * 1 * 9) / total)  # blocks.3.conv has 1 output channel
    assert net.blocks[3].conv.weight.abs().sum() > 0  # the original is untouched
    with pytest.raises(ValueError, match="9 channels"):
        zero_random_kernels(net, {"blocks.0.conv": 9}, np.random.default_rng(0))

    hist = kse_histogram(net, bins=10)
    assert len(hist["bin_edges"]) == 11 and sum(hist["counts"]) == 24
    assert list(hist["per_layer"]) == ["blocks.1.conv", "blocks.2.conv", "blocks.3.conv"]


def test_run_kse_sweep_writes_tables(study, tmp_path):
    record, _, _ = study
    net = make_net()
    torch.save(net.state_dict(), tmp_path / "v1.pt")
    out = tmp_path / "kse"
    result = run_kse_sweep(
        str(tmp_path / "v1.pt"), [record], INFERER, "cpu", out, network_def=DnCNN(features=8, num_layers=4),
        thresholds=[0.3, 0.5], realization=1, random_draws=1,
    )  # fmt: skip
    assert result["study"] == "synthetic" and result["realization"] == 1 and result["body_voxels"] == 400
    table = read_csv(out / "kse_sweep.csv")
    assert list(table[0]) == KSE_COLUMNS and [r["threshold"] for r in table] == ["0.3", "0.5"]
    content = json.loads((out / "kse_sweep.json").read_text())
    assert sum(content["histogram"]["counts"]) == 24 and len(content["rows"]) == 2
    assert "| KSE threshold |" in (out / "kse_sweep.md").read_text()
    with pytest.raises(ValueError, match="index 7 is out of range"):
        run_kse_sweep(net, [record], INFERER, realization=7)
    with pytest.raises(ValueError, match="study 'x' not among"):
        run_kse_sweep(net, [record], INFERER, study="x")
