"""The bundle's evaluate and kse_sweep workflows end to end on the tiny simulated cohort."""

import csv
import json
import math

import pytest

from monai_tgd.evaluation import EVALUATION_COLUMNS, KSE_COLUMNS


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_and_kse_sweep(run_bundle, tmp_path, capsys):
    models = tmp_path / "models"
    run_bundle("pretrain")
    run_bundle("finetune_tgd")
    capsys.readouterr()
    networks = {"v1-net": str(models / "model_v1.pt"), "TGD-net": str(models / "model_tgd.pt")}
    run_bundle("evaluate", eval_networks=networks)

    out = tmp_path / "runs" / "evaluate"
    rows = read_csv(out / "evaluation.csv")
    assert list(rows[0]) == EVALUATION_COLUMNS
    # tiny cohort: two test studies in v2, each with the input and the two networks
    assert [(r["study"], r["network"]) for r in rows] == [
        (study, name)
        for study in ("test_low_bmi_lesion", "test_high_bmi")
        for name in ("input (60 s)", "v1-net", "TGD-net")
    ]
    assert {r["recon"] for r in rows} == {"v2"} and {r["realizations"] for r in rows} == {"10"}
    assert rows[1]["checkpoint"] == networks["v1-net"]
    for row in rows:
        for key in ("liver_lesion_bias_ref_pct", "liver_lesion_bias_truth_pct", "liver_cov_pct", "rmse_body_ref"):
            assert math.isfinite(float(row[key])), (row["study"], row["network"], key)
        assert int(row["n_liver_lesions"]) >= 1 and int(row["liver_voxels"]) > 0
    # the denoised ensembles differ from the input (numbers come from running the networks)
    assert rows[1]["liver_cov_pct"] != rows[0]["liver_cov_pct"]
    content = json.loads((out / "evaluation.json").read_text())
    assert content["networks"] == networks and len(content["rows"]) == 6
    assert all(len(r["lesions"]) >= 1 for r in content["rows"])
    assert len(read_csv(out / "evaluation_lesions.csv")) == sum(len(r["lesions"]) for r in content["rows"])
    markdown = (out / "evaluation.md").read_text()
    assert "| metric | input (60 s) | v1-net | TGD-net |" in markdown
    assert "| metric | input (60 s) | v1-net | TGD-net |" in capsys.readouterr().out  # printed for the user

    # both reconstructions (the forgetting study on v1), one network, another run folder
    run_bundle("evaluate", eval_networks={"v1-net": networks["v1-net"]}, eval_recon="all", run_name="evaluate_all")
    rows = read_csv(tmp_path / "runs" / "evaluate_all" / "evaluation.csv")
    assert sorted({(r["study"], r["recon"]) for r in rows}) == sorted(
        {(s, v) for s in ("test_low_bmi_lesion", "test_high_bmi") for v in ("v1", "v2")}
    )
    assert len(rows) == 8

    run_bundle("kse_sweep", kse_random_draws=2)
    out = tmp_path / "runs" / "kse_sweep"
    rows = read_csv(out / "kse_sweep.csv")
    assert list(rows[0]) == KSE_COLUMNS and [float(r["threshold"]) for r in rows] == [0.3, 0.4, 0.5, 0.6]
    fractions = [float(r["dropped_params_pct"]) for r in rows]
    assert fractions == sorted(fractions)  # higher thresholds drop more
    for row in rows:
        assert float(row["random_dropped_params_pct"]) == pytest.approx(float(row["dropped_params_pct"]))
        assert math.isfinite(float(row["kse_output_change_pct"])) and row["random_draws"] == "2"
    content = json.loads((out / "kse_sweep.json").read_text())
    assert content["recon"] == "v2" and content["study"] == "test_low_bmi_lesion"
    assert sum(content["histogram"]["counts"]) == content["rows"][0]["total_channels"]
    assert "| KSE threshold |" in capsys.readouterr().out


def _messages(error):
    chain = []
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(chain)


def test_missing_checkpoint_fails_fast(run_bundle, tmp_path):
    missing = tmp_path / "models" / "model_ft.pt"
    # a datalist that does not exist: the checkpoint must be checked first, before any data is touched
    with pytest.raises(Exception) as error:
        run_bundle("evaluate", datalist=str(tmp_path / "no_datalist.json"))
    assert str(tmp_path / "models" / "model_v1.pt") in _messages(error.value)
    assert "not found" in _messages(error.value)
    with pytest.raises(Exception) as error:
        run_bundle("kse_sweep", kse_network=str(missing), datalist=str(tmp_path / "no_datalist.json"))
    assert str(missing) in _messages(error.value) and "kse_network" in _messages(error.value)
    assert not (tmp_path / "runs").exists()
