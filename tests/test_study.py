"""The reproduction study (study/run_study.py, study/report.py) end to end on the tiny profile: the CI smoke run."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

STUDY = Path(__file__).resolve().parents[1] / "study"
sys.path.insert(0, str(STUDY))

import report  # noqa: E402
import run_study  # noqa: E402

FIGURES = ["fig4_kse_threshold.png", "kse_distribution.png", "loss_curves.png", "fig5_finetune.png", "fig6_online.png"]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    pytest.importorskip("matplotlib")
    work = tmp_path_factory.mktemp("study")
    results = run_study.run_study("tiny", work / "work", work / "docs", seeds=[0], workers=2)
    return work / "work", results


def test_report_and_figures_come_from_the_run(tiny_study):
    work, results = tiny_study
    text = results.read_text(encoding="utf-8")
    for name in FIGURES:
        png = results.parent / "figures" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"(figures/{name})" in text
    for heading in ("## 1. Threshold study", "## 2. Fine-tuning", "## 3. Forgetting", "## 4. Cost",
                    "## 5. Online learning", "## 6. Ablations"):  # fmt: skip
        assert heading in text
    # a Table 1 cell and a Fig. 4 cell, recomputed here from the run's own files
    rows = json.loads((work / "runs" / "eval_s0" / "evaluation.json").read_text())["rows"]
    tgd = next(r for r in rows if (r["study"], r["recon"], r["network"]) == (report.LOW, "v2", "TGD-net"))
    line = next(x for x in text.splitlines() if x.startswith("| lesion bias vs 600 s (%) |"))
    assert line.split(" | ")[-1].rstrip(" |") == f"{tgd['liver_lesion_bias_ref_pct']:.2f}"
    sweep = json.loads((work / "runs" / "kse_sweep" / "kse_sweep.json").read_text())["rows"][0]
    assert f"| 0.3 | {sweep['flagged_channels']} / {sweep['total_channels']} | {sweep['dropped_params_pct']:.1f} |" in text
    # every stage's exact command is in its log, so it can be rerun by hand
    log = (work / "logs" / "tgd_s0.log").read_text(encoding="utf-8")
    assert log.startswith("$ ") and "-m monai.bundle run" in log.splitlines()[0] and "configs/tgd_s0.json" in log


def test_second_run_reuses_every_stage(tiny_study, capsys):
    work, results = tiny_study
    before = json.loads((work / "stages.json").read_text())
    run_study.run_study("tiny", work, results.parent, seeds=[0], workers=2)
    assert json.loads((work / "stages.json").read_text()) == before
    out = capsys.readouterr().out
    assert out.count("reused") == len(before) and " ..." not in out


def test_cut_off_training_resumes_from_its_checkpoint(tiny_study):
    """A training stage whose final model is missing but whose epoch checkpoint exists (an interrupted run) resumes
    from that checkpoint instead of starting again, and ends with the same weights."""
    import torch

    work, results = tiny_study
    final = work / "models" / "model_ft_s0.pt"
    weights = torch.load(final, weights_only=True)
    final.unlink()
    run_study.run_study("tiny", work, results.parent, seeds=[0], workers=2)
    stages = json.loads((work / "stages.json").read_text())
    assert stages["ft_s0"]["resumed_from_epoch"] == run_study.PROFILES["tiny"]["finetune_epochs"]
    resumed = torch.load(final, weights_only=True)
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)
    log = (work / "logs" / "ft_s0.log").read_text(encoding="utf-8")
    assert log.count("\n$ ") + log.startswith("$ ") == 2  # the first run's log is kept, the resumed run appended


def test_changed_settings_rerun_the_stage_and_what_depends_on_it(tiny_study):
    work, _ = tiny_study
    study = run_study.Study("tiny", work, [0])
    study.prepare()
    stages = {s.name: s for s in study.stages()}
    before = {name: study.fingerprint(s) for name, s in stages.items()}
    changed = run_study.Study("tiny", work, [0])
    changed.prepare()
    changed.settings = {**changed.settings, "finetune_epochs": 4}
    after = {s.name: changed.fingerprint(s) for s in changed.stages()}
    moved = {name for name in before if before[name] != after[name]}
    assert {"ft_s0", "tgd_s0", "eval_s0"} <= moved
    assert not moved & {"v1", "v2", "kse_sweep", "eval_shared", "ood_shared"}


def test_bad_arguments_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="unknown profile"):
        run_study.run_study("huge", tmp_path, tmp_path)
    with pytest.raises(ValueError, match="distinct"):
        run_study.run_study("tiny", tmp_path, tmp_path, seeds=[1, 1])
    with pytest.raises(ValueError, match="workers"):
        run_study.run_study("tiny", tmp_path, tmp_path, workers=0)
    assert not any(tmp_path.iterdir())


def test_time_to_loss_interpolates_between_validations():
    curve = [{"train_seconds": t, "metrics": {"val_loss": v}} for t, v in ((0, 1.0), (10, 0.5), (20, 0.25))]
    assert report.time_to_loss(curve, 0.75) == pytest.approx(5.0)
    assert report.time_to_loss(curve, 0.25) == pytest.approx(20.0)
    assert report.time_to_loss(curve, 2.0) == 0.0
    assert math.isnan(report.time_to_loss(curve, 0.1))


def test_spread_and_its_format():
    s = report.spread([1.0, 2.0, 3.0, float("nan")])
    assert (s["mean"], s["sd"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 1.0, 3.0, 3)
    assert report.fmt(s) == "2.00 ± 1.00" and report.fmt(report.spread([4.0])) == "4.00"
    assert report.fmt(report.spread([])) == "n/a"
    assert report.overlap(report.spread([1, 2]), report.spread([2, 3])) and not report.overlap(
        report.spread([1, 2]), report.spread([3, 4])
    )
