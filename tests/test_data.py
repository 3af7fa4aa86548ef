import json

import pytest

from monai_tgd.data import ensure_datalist, load_datalist, n2n_pairs


@pytest.fixture
def datalist(tmp_path):
    (tmp_path / "s0").mkdir()
    (tmp_path / "test").mkdir()  # a folder named like a field value must not turn the value into a path
    for name in ("t.nii.gz", "n.nii.gz", "h1.nii.gz", "h2.nii.gz"):
        (tmp_path / "s0" / name).write_bytes(b"")
    content = {
        "finetune_v2": [
            {"study": "s0", "role": "test", "recon": "v2", "target": "s0/t.nii.gz", "noisy_60s": "s0/n.nii.gz"},
            {"study": "s1", "role": "test", "recon": "v1", "target": "s0/t.nii.gz", "noisy_60s": "s0/n.nii.gz"},
        ],
        "ood": [{"study": "o", "halves": ["s0/h1.nii.gz", "s0/h2.nii.gz"], "input_120s": "s0/missing.nii.gz"}],
    }
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(content))
    return path


def test_paths_resolved_against_the_datalist_folder(datalist):
    records = load_datalist(datalist, "finetune_v2", ["target", "noisy_60s"], recon="v2")
    assert [r["study"] for r in records] == ["s0"]
    assert records[0]["target"] == str(datalist.parent / "s0/t.nii.gz")
    assert records[0]["role"] == "test" and records[0]["recon"] == "v2"
    ood = load_datalist(datalist, "ood", ["halves"])[0]
    assert ood["halves"] == [str(datalist.parent / "s0" / h) for h in ("h1.nii.gz", "h2.nii.gz")]
    assert ood["input_120s"] == str(datalist.parent / "s0/missing.nii.gz")  # resolved even though not required


@pytest.mark.parametrize(
    "section, required, recon, error, match",
    [
        ("train_v2", (), None, ValueError, r"no non-empty section 'train_v2'; sections found: \['finetune_v2', 'ood'\]"),
        ("finetune_v2", ["label"], None, ValueError, "study s0: missing field 'label'"),
        ("ood", ["input_120s"], None, FileNotFoundError, "study o, field 'input_120s': file .*missing.nii.gz not found"),
        ("finetune_v2", (), "v3", ValueError, "no records with recon='v3'"),
    ],
)
def test_errors_name_the_study_and_field(datalist, section, required, recon, error, match):
    with pytest.raises(error, match=match):
        load_datalist(datalist, section, required, recon=recon)


def test_unreadable_datalist(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read datalist"):
        load_datalist(bad, "test")
    with pytest.raises(FileNotFoundError, match="datalist .*nope.json not found"):
        ensure_datalist(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="give a datalist JSON or a cohort_dir"):
        ensure_datalist(None, None)


def test_n2n_pairs_swap_the_halves():
    pairs = n2n_pairs({"study": "x", "halves": ["a", "b"]})
    assert [(p["image"], p["target"]) for p in pairs] == [("a", "b"), ("b", "a")]
    assert all(p["study"] == "x" and "halves" not in p for p in pairs)


def test_holdout_slices():
    from monai_tgd.data import holdout_slices

    assert list(range(14))[holdout_slices(5)] == [2, 7, 12]
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="every must be an integer >= 2"):
            holdout_slices(bad)


def test_null_required_field_is_reported_as_missing(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"test": [{"study": "s", "reference": None}]}))
    with pytest.raises(ValueError, match="study s: missing field 'reference'"):
        load_datalist(path, "test", ["reference"])
