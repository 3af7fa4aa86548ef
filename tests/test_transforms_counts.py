"""Tests for count-domain thinning and splitting (monai_tgd.transforms.counts)."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_tgd.transforms import SplitCounts, SplitCountsd, ThinCounts, ThinCountsd


def poisson(lam, shape, seed=0, dtype=np.int64):
    return np.random.default_rng(seed).poisson(lam, shape).astype(dtype)


# ---------------------------------------------------------------- thinning


def test_thinning_matches_poisson_of_shorter_duration():
    # 600 s at 0.04 counts/s -> 24 expected counts; 60 s -> 2.4. N = 200k elements: the standard error of the
    # mean is sqrt(2.4 / N) ~ 0.0035 and of the variance ~ sqrt(2.4 * (1 + 2 * 2.4) / N) ~ 0.008, so the tolerances
    # below are > 6 standard errors.
    counts = poisson(24.0, (200_000,))
    thinned = ThinCounts(60, 600).set_random_state(seed=1)(counts)
    assert thinned.mean() == pytest.approx(2.4, abs=0.025)
    assert thinned.var() == pytest.approx(2.4, abs=0.06)
    assert np.all(thinned <= counts) and np.all(thinned >= 0)


def test_thinning_is_binomial_given_counts():
    counts = np.full(100_000, 10)
    thinned = ThinCounts(30, 120).set_random_state(seed=2)(counts)  # Binomial(10, 0.25): mean 2.5, var 1.875
    assert thinned.mean() == pytest.approx(2.5, abs=0.02)
    assert thinned.var() == pytest.approx(1.875, abs=0.04)


def test_thinning_full_duration_is_identity_and_zero_stays_zero():
    counts = poisson(5.0, (7, 3))
    np.testing.assert_array_equal(ThinCounts(600, 600)(counts), counts)
    np.testing.assert_array_equal(ThinCounts(1, 600)(np.zeros((4, 4))), np.zeros((4, 4)))


@pytest.mark.parametrize(
    "make",
    [
        lambda a: a.astype(np.int16),
        lambda a: a.astype(np.uint8),
        lambda a: a.astype(np.float32),
        lambda a: torch.as_tensor(a, dtype=torch.int64),
        lambda a: torch.as_tensor(a, dtype=torch.float64),
    ],
)
def test_thinning_keeps_type_shape_dtype(make):
    counts = make(poisson(8.0, (2, 3, 4)))
    out = ThinCounts(10, 20).set_random_state(seed=0)(counts)
    assert type(out) is type(counts)
    assert out.shape == counts.shape and out.dtype == counts.dtype


def test_thinning_scalar_and_empty():
    assert ThinCounts(1, 2)(np.array(5)).shape == ()
    assert ThinCounts(1, 2)(np.zeros((0, 3))).shape == (0, 3)


def test_thinning_reproducible_and_returns_self():
    counts = poisson(9.0, (50,))
    t = ThinCounts(60, 600)
    assert t.set_random_state(seed=3) is t
    a = t(counts)
    np.testing.assert_array_equal(a, ThinCounts(60, 600).set_random_state(seed=3)(counts))
    assert not np.array_equal(a, t(counts))  # the stream advances


def test_thinning_metatensor_duration_from_meta():
    counts = MetaTensor(torch.as_tensor(poisson(6.0, (1, 4, 4)), dtype=torch.float32),
                        meta={"duration": 600.0, "filename_or_obj": "study.nii.gz"})
    out = ThinCounts(60).set_random_state(seed=0)(counts)
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32
    assert out.meta["duration"] == 60.0 and out.meta["filename_or_obj"] == "study.nii.gz"
    assert counts.meta["duration"] == 600.0  # input untouched
    torch.testing.assert_close(out.affine, counts.affine)
    # the explicit source_duration wins over the metadata
    assert ThinCounts(60, 60)(counts).equal(counts)


@pytest.mark.parametrize(
    "args, match",
    [
        ((0, 600), r"duration must be a finite duration > 0 seconds, got 0"),
        ((-5, 600), r"duration must be a finite duration > 0 seconds, got -5"),
        ((float("nan"), 600), r"duration must be a finite duration > 0 seconds, got nan"),
        ((60, 0), r"source_duration must be a finite duration > 0 seconds, got 0"),
        ((700, 600), r"duration \(700.0 s\) must not exceed source_duration \(600.0 s\)"),
    ],
)
def test_thinning_bad_durations(args, match):
    with pytest.raises(ValueError, match=match):
        ThinCounts(*args)


def test_thinning_duration_exceeding_meta_duration():
    counts = MetaTensor(torch.ones(3), meta={"duration": 30.0})
    with pytest.raises(ValueError, match=r"duration \(60.0 s\) must not exceed source_duration \(30.0 s\)"):
        ThinCounts(60)(counts)


def test_thinning_unknown_source_duration():
    with pytest.raises(ValueError, match=r"source duration is unknown: pass source_duration"):
        ThinCounts(60)(np.ones(3))
    with pytest.raises(ValueError, match=r"source duration is unknown"):
        ThinCounts(60)(MetaTensor(torch.ones(3)))


BAD_COUNTS = [
    (np.array([1.0, np.nan, 2.0]), r"counts must be finite, found 1 NaN/inf value"),
    (torch.tensor([1.0, float("inf")]), r"counts must be finite, found 1 NaN/inf value"),
    (np.array([1.0, 2.5, 0.5]), r"counts must be integer-valued, found 2 non-integer value\(s\) \(e.g. 2.5\)"),
    (np.array([3, -1, -2]), r"counts must be non-negative, found 2 negative value\(s\) \(min -2\)"),
    (torch.tensor([-1.0, 0.0]), r"counts must be non-negative, found 1 negative value"),
    (np.array([True, False]), r"counts must have an integer or floating-point dtype .*, got bool"),
]


@pytest.mark.parametrize("counts, match", BAD_COUNTS)
def test_thinning_bad_counts(counts, match):
    with pytest.raises(ValueError, match=match):
        ThinCounts(1, 2)(counts)


# ---------------------------------------------------------------- splitting


@pytest.mark.parametrize("num_frames", [2, 3, 10])
def test_split_sums_back_exactly(num_frames):
    counts = poisson(30.0, (20, 30))
    frames = SplitCounts(num_frames, 600).set_random_state(seed=num_frames)(counts)
    assert isinstance(frames, list) and len(frames) == num_frames
    np.testing.assert_array_equal(np.sum(frames, axis=0), counts)
    assert all(f.min() >= 0 for f in frames)


def test_split_frames_are_independent_poisson_of_equal_duration():
    counts = poisson(20.0, (100_000,))  # 120 s -> 2 x 60 s (Noise2Noise pair)
    a, b = SplitCounts(2, 120).set_random_state(seed=4)(counts)
    for f in (a, b):
        assert f.mean() == pytest.approx(10.0, abs=0.06)
        assert f.var() == pytest.approx(10.0, abs=0.2)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.015  # Poisson splitting -> independent frames


def test_split_keeps_type_and_metadata():
    counts = MetaTensor(torch.as_tensor(poisson(6.0, (1, 5, 5)), dtype=torch.float32),
                        meta={"duration": 600.0, "filename_or_obj": "s.nii"})
    frames = SplitCounts(10).set_random_state(seed=0)(counts)
    for k, f in enumerate(frames):
        assert isinstance(f, MetaTensor) and f.dtype == torch.float32 and f.shape == counts.shape
        assert f.meta["frame_index"] == k and f.meta["duration"] == 60.0 and f.meta["filename_or_obj"] == "s.nii"
    assert torch.stack(frames).sum(0).equal(counts)
    assert counts.meta["duration"] == 600.0 and "frame_index" not in counts.meta
    # no known duration: frames get an index but no duration
    plain = SplitCounts(2)(MetaTensor(torch.ones(3)))
    assert [f.meta["frame_index"] for f in plain] == [0, 1] and "duration" not in plain[0].meta
    # torch in -> torch out, same dtype
    t = SplitCounts(2)(torch.ones(3, dtype=torch.int32))
    assert all(type(f) is torch.Tensor and f.dtype == torch.int32 for f in t)


def test_split_reproducible():
    counts = poisson(10.0, (40,))
    a = SplitCounts(3).set_random_state(seed=9)(counts)
    b = SplitCounts(3).set_random_state(seed=9)(counts)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("n", [1, 0, -3, 2.5, True])
def test_split_bad_num_frames(n):
    with pytest.raises(ValueError, match=r"num_frames must be an integer >= 2, got"):
        SplitCounts(n)


def test_split_bad_source_duration():
    with pytest.raises(ValueError, match=r"source_duration must be a finite duration > 0 seconds, got -1"):
        SplitCounts(2, -1)


@pytest.mark.parametrize("counts, match", BAD_COUNTS)
def test_split_bad_counts(counts, match):
    with pytest.raises(ValueError, match=match):
        SplitCounts(2)(counts)


# ---------------------------------------------------------------- dictionary versions


def test_thin_countsd():
    data = {"sino": poisson(20.0, (3, 8)), "hist": poisson(5.0, (4,)), "name": "a"}
    out = ThinCountsd(["sino", "hist"], 30, 60).set_random_state(seed=0)(data)
    assert out["name"] == "a" and out["sino"].shape == (3, 8) and np.all(out["hist"] <= data["hist"])
    again = ThinCountsd(["sino", "hist"], 30, 60).set_random_state(seed=0)(data)
    np.testing.assert_array_equal(out["sino"], again["sino"])
    np.testing.assert_array_equal(out["hist"], again["hist"])
    with pytest.raises(KeyError):
        ThinCountsd("missing", 30, 60)(data)
    assert ThinCountsd(["sino", "missing"], 30, 60, allow_missing_keys=True)(data).keys() == data.keys()


def test_split_countsd():
    data = {"sino": poisson(20.0, (3, 8)), "other": poisson(7.0, (3,)), "info": {"id": 1}}
    out = SplitCountsd("sino", 4, 600).set_random_state(seed=0)(data)
    assert isinstance(out, list) and len(out) == 4
    np.testing.assert_array_equal(sum(d["sino"] for d in out), data["sino"])
    assert out[0]["info"] == {"id": 1} and out[0]["info"] is not out[1]["info"]  # deep copies of other entries
    np.testing.assert_array_equal(out[2]["other"], data["other"])
    again = SplitCountsd("sino", 4, 600).set_random_state(seed=0)(data)
    for d, e in zip(out, again):
        np.testing.assert_array_equal(d["sino"], e["sino"])
    with pytest.raises(KeyError):
        SplitCountsd("missing", 2)(data)
    assert len(SplitCountsd(["sino", "missing"], 2, allow_missing_keys=True)(data)) == 2


def test_split_countsd_metatensor_meta():
    data = {"a": MetaTensor(torch.full((2, 2), 4.0), meta={"duration": 120.0})}
    frames = SplitCountsd("a", 2)(data)
    assert [d["a"].meta["frame_index"] for d in frames] == [0, 1]
    assert all(d["a"].meta["duration"] == 60.0 for d in frames)
