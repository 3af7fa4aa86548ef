"""Torso phantoms of monai_tgd.simulate: anatomy, uptake, attenuation, BMI, lesions, OOD structures."""

import numpy as np
import pytest

from monai_tgd.simulate.phantom import (
    LABELS,
    MU_PER_MM,
    Grid,
    label_names,
    place_lesions,
    random_phantom,
    rasterize,
)

GRID = Grid((64, 64, 26), (8.0, 8.0, 20.0))  # 512 mm FOV, chest to pelvis


def _phantom(seed, bmi_class="low", ood=None, lesions=()):
    rng = np.random.default_rng(seed)
    spec = random_phantom(rng, bmi_class, ood)
    return place_lesions(spec, GRID, rng, list(lesions))


def test_deterministic_by_seed():
    a, b, c = _phantom(3), _phantom(3), _phantom(4)
    assert a == b and a != c
    for x, y in zip(rasterize(a, GRID), rasterize(b, GRID)):
        np.testing.assert_array_equal(x, y)


def test_organs_uptake_and_attenuation():
    spec = _phantom(0)
    act, mu, lab = rasterize(spec, GRID)
    for name in ("body", "liver", "lung", "bladder", "heart", "kidney", "bone"):
        assert (lab == LABELS[name]).sum() > 0, name
    assert not (lab == LABELS["ood"]).any()
    med = {k: float(np.median(act[lab == LABELS[k]])) for k in ("liver", "lung", "bladder")}
    assert 2.0 < med["liver"] < 3.0 and 0.2 < med["lung"] < 0.4 and med["bladder"] > 5
    assert np.isclose(np.median(act[lab == LABELS["body"]]), 1.0)  # soft tissue is the unit
    assert np.percentile(act[lab == LABELS["heart"]], 90) > 3  # hot myocardium
    assert np.allclose(mu[lab == LABELS["lung"]], MU_PER_MM["lung"])
    assert np.allclose(mu[lab == LABELS["bone"]], MU_PER_MM["bone"])
    assert np.allclose(mu[lab == LABELS["liver"]], MU_PER_MM["water"])
    assert (act[lab == 0] == 0).all() and (mu[lab == 0] == 0).all()
    # anatomy: liver on the patient's right (+x), heart on the left, spine posterior, lungs above the kidneys
    xs, ys, zs = GRID.axes()
    centroid = lambda name: np.argwhere(lab == LABELS[name]).mean(0)  # noqa: E731
    assert xs[int(centroid("liver")[0])] > 0 > xs[int(centroid("heart")[0])]
    assert ys[int(centroid("bone")[1])] < 0
    assert zs[int(centroid("lung")[2])] > zs[int(centroid("kidney")[2])] > zs[int(centroid("bladder")[2])]


def test_bmi_classes():
    lows = [_phantom(s, "low") for s in range(5)]
    highs = [_phantom(s, "high") for s in range(5)]
    assert all(p.bmi < 23 for p in lows) and all(p.bmi > 28 for p in highs)
    assert max(p.fat_mm for p in lows) < min(p.fat_mm for p in highs)
    body = lambda p: (rasterize(p, GRID)[2] > 0).sum()  # noqa: E731
    assert body(highs[0]) > 1.4 * body(lows[0])
    with pytest.raises(ValueError, match="bmi_class"):
        random_phantom(np.random.default_rng(0), "medium")


def test_lesions_inside_their_organ():
    lesions = [("liver", 15.0, 4.0), ("liver", 10.0, 3.0), ("lung", 12.0, 8.0)]
    spec = _phantom(1, lesions=lesions)
    base = rasterize(_phantom(1), GRID)[2]
    act, _, lab = rasterize(spec, GRID)
    assert [les.label for les in spec.lesions] == [10, 11, 12]
    for les, (organ, diameter, contrast) in zip(spec.lesions, lesions):
        assert les.organ == organ and les.diameter_mm == diameter and les.contrast == contrast
        voxels = lab == les.label
        assert voxels.any()
        assert (base[voxels] == LABELS[organ]).all()  # entirely inside the host organ
        assert np.allclose(act[voxels], spec.uptake[organ] * contrast)
    assert label_names(spec)[10] == "lesion_0_liver"
    with pytest.raises(ValueError, match="room"):
        place_lesions(_phantom(1), GRID, np.random.default_rng(0), [("liver", 400.0, 2.0)])
    with pytest.raises(ValueError, match="organ"):
        place_lesions(_phantom(1), GRID, np.random.default_rng(0), [("brain", 10.0, 2.0)])


def test_out_of_distribution_structures():
    normal = rasterize(_phantom(2), GRID)
    bladder = rasterize(_phantom(2, ood="bladder"), GRID)
    catheter = rasterize(_phantom(2, ood="catheter"), GRID)
    ood = LABELS["ood"]
    normal_volume = (normal[2] == LABELS["bladder"]).sum()
    # enlarged, irregular, hotter bladder replaces the normal one
    assert (bladder[2] == ood).sum() > 2.5 * normal_volume and not (bladder[2] == LABELS["bladder"]).any()
    assert bladder[0][bladder[2] == ood].mean() > normal[0][normal[2] == LABELS["bladder"]].mean()
    # thin hot catheter, partly outside the body outline, next to a normal bladder
    tube = catheter[2] == ood
    assert 0 < tube.sum() < 0.5 * normal_volume and (catheter[2] == LABELS["bladder"]).any()
    assert catheter[0][tube].min() > 10
    assert label_names(_phantom(2, ood="catheter"))[ood] == "ood_catheter"
    with pytest.raises(ValueError, match="ood"):
        random_phantom(np.random.default_rng(0), "low", "tumour")


def test_grid_affine():
    g = Grid((10, 12, 5), (4.0, 4.0, 8.0), center_mm=(0.0, 0.0, 50.0))
    aff = g.affine()
    np.testing.assert_allclose(np.diag(aff)[:3], [4.0, 4.0, 8.0])
    xs, ys, zs = g.axes()
    np.testing.assert_allclose(aff @ [3, 7, 2, 1], [xs[3], ys[7], zs[2], 1])
    assert np.isclose(zs.mean(), 50.0) and np.isclose(xs.mean(), 0.0)
    fine = g.refined(2, 3)
    assert fine.shape == (20, 24, 15) and np.isclose(fine.axes()[2].mean(), 50.0)


@pytest.mark.parametrize("profile", ["tiny", "quick"])
def test_high_bmi_bodies_inside_fov(profile):
    """No activity outside the reconstruction FOV circle (OSEM forces it to 0): every body within 0.9 x its radius."""
    from monai_tgd.simulate import PROFILES

    prof = PROFILES[profile]
    geom, grid = prof.geometry, prof.grid
    x, y, _ = grid.axes()
    radius = np.hypot(x[:, None], y[None, :])
    inner = radius <= 0.9 * (geom.n_pixels * geom.pixel_mm / 2 - geom.pixel_mm / 2)
    assert inner.sum() < geom.fov_mask.sum()
    for seed in range(50):
        ood = (None, "catheter")[seed % 2]
        act = rasterize(random_phantom(np.random.default_rng(seed), "high", ood), grid)[0]
        body = act.max(axis=2) > 0
        assert not (body & ~geom.fov_mask).any(), seed
        if ood is None:  # the catheter runs outside the body outline, the body itself within 0.9 x the radius
            assert not (body & ~inner).any(), (seed, float(radius[body].max()))
