"""Tests for the random noise-level pick (monai_tgd.transforms.noise_level)."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, LoadImaged

from monai_tgd.transforms import RandNoiseLeveld

LEVELS = [30, 45, 60, 90, 120, 180]
KEYS = [f"noisy_{t}s" for t in LEVELS]


def record():
    d = {k: MetaTensor(torch.full((1, 2, 2, 2), float(t)), meta={"filename_or_obj": f"{k}.nii"}) for k, t in zip(KEYS, LEVELS)}
    d["target"] = torch.zeros(1, 2, 2, 2)
    return d


def test_pick_copies_entry_and_records_level():
    data = record()
    out = RandNoiseLeveld(KEYS, "image", levels=LEVELS).set_random_state(0)(data)
    level = out["noise_level"]
    assert level in LEVELS and torch.all(out["image"] == level)
    assert out["image"].meta["noise_level"] == level and out["image"].meta["filename_or_obj"] == f"noisy_{level}s.nii"
    assert "noise_level" not in data[f"noisy_{level}s"].meta  # source metadata untouched
    assert set(KEYS) <= out.keys() and "target" in out


def test_default_levels_are_key_names_and_drop_sources():
    out = RandNoiseLeveld(KEYS, "image", drop_sources=True, level_key="level").set_random_state(1)(record())
    assert out["level"] in KEYS and not set(KEYS) & out.keys() and {"image", "target", "level"} == set(out)
    out = RandNoiseLeveld(KEYS, level_key=None)(record())
    assert "noise_level" not in out


def test_weights_frequencies_and_reproducibility():
    t = RandNoiseLeveld(KEYS[:3], "image", levels=LEVELS[:3], weights=[1, 0, 3]).set_random_state(5)
    picks = [t(record())["noise_level"] for _ in range(400)]
    assert 45 not in picks
    assert np.mean(np.array(picks) == 60) == pytest.approx(0.75, abs=0.07)
    again = RandNoiseLeveld(KEYS[:3], "image", levels=LEVELS[:3], weights=[1, 0, 3]).set_random_state(5)
    assert [again(record())["noise_level"] for _ in range(400)] == picks


def test_pick_before_loading_loads_only_the_pick(tmp_path):
    nib = pytest.importorskip("nibabel")
    data = {}
    for k, t in zip(KEYS[:2], LEVELS[:2]):
        nib.save(nib.Nifti1Image(np.full((3, 3, 3), t, np.float32), np.eye(4)), tmp_path / f"{k}.nii.gz")
        data[k] = str(tmp_path / f"{k}.nii.gz")
    data[KEYS[2]] = str(tmp_path / "does_not_exist.nii.gz")  # never loaded: weight 0
    pipeline = Compose([
        RandNoiseLeveld(KEYS[:3], "image", levels=LEVELS[:3], weights=[1, 1, 0], drop_sources=True),
        LoadImaged("image", ensure_channel_first=True),
    ]).set_random_state(0)
    for _ in range(4):
        out = pipeline(data)
        assert out["image"].shape == (1, 3, 3, 3) and float(out["image"].max()) == out["noise_level"]


def test_missing_keys():
    data = record()
    del data[KEYS[0]]
    with pytest.raises(KeyError, match=r"noise-level keys \['noisy_30s'\] are not in the record"):
        RandNoiseLeveld(KEYS)(data)
    t = RandNoiseLeveld(KEYS, levels=LEVELS, allow_missing_keys=True).set_random_state(0)
    assert all(t(data)["noise_level"] != 30 for _ in range(30))
    assert RandNoiseLeveld(["x", "y"], allow_missing_keys=True)({"a": 1}) == {"a": 1}
    with pytest.raises(ValueError, match=r"none of the noise levels present in the record, \['noisy_45s'\], has a positive weight"):
        RandNoiseLeveld(KEYS[:2], weights=[1, 0], allow_missing_keys=True)({KEYS[1]: 1})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"keys": []}, r"keys must be non empty"),
        ({"keys": KEYS, "levels": [1, 2]}, r"levels must give one level per key: 6 keys .*, got 2 levels"),
        ({"keys": KEYS[:2], "levels": [1, 1]}, r"levels must be distinct, got \[1, 1\]"),
        ({"keys": KEYS[:2], "weights": [1]}, r"weights must give one weight per key: 2 keys, got weights of shape \(1,\)"),
        ({"keys": KEYS[:2], "weights": [1, -1]}, r"weights must be finite, non-negative and not all zero, got \[1.0, -1.0\]"),
        ({"keys": KEYS[:2], "weights": [0, 0]}, r"weights must be finite, non-negative and not all zero"),
        ({"keys": KEYS[:2], "weights": [1, float("nan")]}, r"weights must be finite, non-negative and not all zero"),
    ],
)
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RandNoiseLeveld(**kwargs)
