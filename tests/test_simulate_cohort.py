"""Cohort writer and CLI of monai_tgd.simulate (tiny profile): datalist schema, NIfTI geometry, determinism,
idempotence, resumption after an interrupted run, regeneration on a changed setting, argument errors."""

import json
import os
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_tgd.simulate import PROFILES, generate_cohort, plan_cohort, simulate_study
from monai_tgd.simulate.__main__ import main
from monai_tgd.simulate.cohort import NOISE_LEVELS_S

TINY = PROFILES["tiny"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    path = generate_cohort(out, "tiny", seed=0, progress=False)
    return out, json.loads(path.read_text())


def _all_paths(datalist):
    paths = []
    for key in ("pretrain_v1", "train_v2", "finetune_v2", "test", "ood"):
        for rec in datalist[key]:
            for k, v in rec.items():
                if isinstance(v, str) and v.endswith(".nii.gz"):
                    paths.append(v)
                elif isinstance(v, list) and v and isinstance(v[0], str):
                    paths += v
    return paths


def test_datalist_schema(cohort):
    out, d = cohort
    for key in ("name", "profile", "seed", "settings_hash", "label_names", "voxel_size_mm", "units"):
        assert key in d
    assert d["profile"] == "tiny" and d["voxel_size_mm"] == [TINY.pixel_mm, TINY.pixel_mm, TINY.slice_mm]
    n_train = TINY.n_train_low + TINY.n_train_high
    assert len(d["pretrain_v1"]) == len(d["train_v2"]) == n_train
    assert {r["study"] for r in d["pretrain_v1"]} == {r["study"] for r in d["train_v2"]}
    assert {r["bmi_class"] for r in d["pretrain_v1"]} == {"low", "high"}
    assert len(d["finetune_v2"]) == TINY.n_finetune and all(r["bmi_class"] == "low" for r in d["finetune_v2"])
    for rec in d["pretrain_v1"] + d["train_v2"] + d["finetune_v2"]:
        assert rec["recon"] in ("v1", "v2") and rec["target"].endswith("target_600s.nii.gz")
        assert all(f"noisy_{t}s" in rec for t in NOISE_LEVELS_S)
        assert rec["durations_s"]["noisy_30s"] == 30 and rec["durations_s"]["target"] == 600
    tests = {(r["study"], r["recon"]): r for r in d["test"]}
    assert set(tests) == {(s, v) for s in ("test_low_bmi_lesion", "test_high_bmi") for v in ("v1", "v2")}
    for rec in tests.values():
        assert len(rec["realizations"]) == 10 and rec["realization_duration_s"] == 60
        assert rec["lesions"] and rec["lesions"][0]["organ"] == "liver"
        assert {"label", "organ", "center_mm", "diameter_mm", "contrast"} <= set(rec["lesions"][0])
    assert tests[("test_high_bmi", "v2")]["bmi_class"] == "high" and tests[("test_high_bmi", "v2")]["bmi"] > 28
    oods = {(r["ood_feature"], r["recon"]): r for r in d["ood"]}
    assert set(oods) == {(f, v) for f in ("bladder", "catheter") for v in ("v1", "v2")}
    for rec in oods.values():
        assert len(rec["halves"]) == 2 and rec["input_120s"] and rec["reference"] and rec["ood_label"] == 8
        assert str(rec["ood_label"]) in rec["label_names"]
    paths = _all_paths(d)
    assert paths and all(not os.path.isabs(p) and (out / p).is_file() for p in paths)


def test_nifti_geometry_and_units(cohort):
    out, d = cohort
    rec = next(r for r in d["test"] if r["recon"] == "v2" and r["study"] == "test_low_bmi_lesion")
    ref = nib.load(out / rec["reference"])
    assert ref.shape == (TINY.matrix, TINY.matrix, TINY.n_slices)
    np.testing.assert_allclose(ref.header.get_zooms(), (TINY.pixel_mm, TINY.pixel_mm, TINY.slice_mm))
    np.testing.assert_allclose(np.diag(ref.affine)[:3], (TINY.pixel_mm, TINY.pixel_mm, TINY.slice_mm))
    assert ref.header.get_xyzt_units()[0] == "mm"
    np.testing.assert_allclose(ref.affine @ [(TINY.matrix - 1) / 2, (TINY.matrix - 1) / 2, 5.5, 1], [0, 0, 0, 1])
    for p in [rec["label"], rec["truth"], *rec["realizations"]]:
        np.testing.assert_array_equal(nib.load(out / p).affine, ref.affine)
    label = np.asarray(nib.load(out / rec["label"]).dataobj)
    assert np.issubdtype(label.dtype, np.integer) and {0, 1, 2, 3, 10} <= set(np.unique(label).tolist())
    truth = nib.load(out / rec["truth"]).get_fdata()
    # SUV-like units: 600 s and 60 s images share the truth's scale
    body = truth > 0
    for p in (rec["reference"], rec["realizations"][0]):
        img = nib.load(out / p).get_fdata()
        assert abs(img[body].mean() / truth[body].mean() - 1) < 0.1


def test_determinism_by_seed():
    plan = next(p for p in plan_cohort(TINY) if p.role == "ood")
    a, b, c = (simulate_study(plan, TINY, s) for s in (7, 7, 8))
    for v in plan.recons:
        np.testing.assert_array_equal(a["images"][v], b["images"][v])
        assert not np.array_equal(a["images"][v], c["images"][v])
    np.testing.assert_array_equal(a["truth"], b["truth"])


def _mtimes(root):
    return {p: p.stat().st_mtime_ns for p in Path(root).rglob("*.nii.gz")}


def test_reuse_resume_and_regenerate(tmp_path):
    out = tmp_path / "c"
    generate_cohort(out, "tiny", seed=0, progress=False)
    before = _mtimes(out)
    generate_cohort(out, "tiny", seed=0, progress=False)  # complete and unchanged: reused
    assert _mtimes(out) == before

    # a killed run: marker gone, one study without its marker, one image missing, a partial temp file left behind
    study = out / "studies" / "finetune_00"
    (out / "cohort.json").unlink()
    (study / "study.json").unlink()
    (study / "v2" / "noisy_60s.nii.gz").unlink()
    (study / "v2" / ".partial-x-noisy_60s.nii.gz").write_bytes(b"truncated")
    logs = []
    generate_cohort(out, "tiny", seed=0, progress=False, log=logs.append)
    assert any("6 studies reused, 1 to simulate" in m for m in logs)
    after = _mtimes(out)
    assert (study / "v2" / "noisy_60s.nii.gz").is_file() and (out / "cohort.json").is_file()
    assert not list(study.rglob(".partial-*"))
    assert all(after[p] == t for p, t in before.items() if study not in p.parents)
    nib.load(study / "v2" / "noisy_60s.nii.gz").get_fdata()

    # a changed setting regenerates every study and records the new settings hash
    d0 = json.loads((out / "datalist.json").read_text())
    changed = replace(TINY, scanner=replace(TINY.scanner, sensitivity=TINY.scanner.sensitivity * 2))
    generate_cohort(out, changed, seed=0, progress=False)
    d1 = json.loads((out / "datalist.json").read_text())
    assert d1["settings_hash"] != d0["settings_hash"]
    assert all(_mtimes(out)[p] != t for p, t in after.items())
    marker = json.loads((out / "cohort.json").read_text())
    assert marker["settings_hash"] == d1["settings_hash"]


def test_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["--profile", "huge", "--out", str(tmp_path)])
    assert err.value.code == 2 and "invalid choice" in capsys.readouterr().err
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as err:
        main(["--profile", "tiny", "--out", str(blocker / "cohort"), "--no-progress"])
    assert err.value.code == 2 and "cannot write the cohort" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--profile", "tiny", "--out", str(tmp_path), "--seed", "-1"])
    assert main(["--profile", "tiny", "--out", str(tmp_path / "ok"), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().endswith("datalist.json")


def test_api_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown profile"):
        generate_cohort(tmp_path, "huge")
    with pytest.raises(ValueError, match="seed"):
        generate_cohort(tmp_path, "tiny", seed=-3)
