"""PET-likeness of the simulated data: count statistics, noise texture v1/v2, recovery, BMI, bias.

A small geometry (64 x 64 pixels of 7 mm, 4 slices of 10 mm through the liver) and several independent noise
realisations of the same phantom are reconstructed together, so ensemble (per-pixel) statistics separate noise
from structure.
"""

import numpy as np
import pytest
from scipy import ndimage

from monai_tgd.simulate.acquisition import ScannerModel, draw_counts, expected_rates, split_counts, thin_counts
from monai_tgd.simulate.osem import osem, protocol
from monai_tgd.simulate.phantom import LABELS, Grid, place_lesions, random_phantom, rasterize
from monai_tgd.simulate.projector import Geometry

GEOM = Geometry(n_pixels=64, pixel_mm=7.0, n_angles=48, n_bins=64, bin_mm=7.0)
GRID = Grid((64, 64, 4), (7.0, 7.0, 10.0), center_mm=(0.0, 0.0, 40.0))
SCANNER = ScannerModel(sensitivity=4.0e-3)
N_REAL = 12


def _study(bmi_class, seed):
    rng = np.random.default_rng(seed)
    spec = place_lesions(random_phantom(rng, bmi_class), GRID, rng, [("liver", 21.0, 4.0)], margin_mm=7.0)
    fine = GRID.refined(SCANNER.inplane_oversampling, SCANNER.axial_oversampling)
    act, mu, _ = rasterize(spec, fine)
    _, _, lab = rasterize(spec, GRID)
    truth = act.reshape(64, 2, 64, 2, 4, 3).mean(axis=(1, 3, 5))
    return rng, expected_rates(act, mu, GEOM, SCANNER), lab, truth


def _recon(rates, counts, durations, version):
    return osem(np.stack(counts), durations, rates.attenuation, rates.background, SCANNER.sensitivity, GEOM,
                protocol(version, SCANNER.psf_fwhm_mm))  # fmt: skip


@pytest.fixture(scope="module")
def low():
    """Low-BMI study: N_REAL independent 600 s acquisitions, each thinned to 60 s, reconstructed in v1 and v2."""
    rng, rates, lab, truth = _study("low", 0)
    c600 = [draw_counts(rates, 600, rng) for _ in range(N_REAL)]
    c60 = [thin_counts(c, 60, 600, rng) for c in c600]
    durations = [600] * N_REAL + [60] * N_REAL
    images = {v: _recon(rates, c600 + c60, durations, v) for v in ("v1", "v2")}
    return {"rates": rates, "lab": lab, "truth": truth, "c600": c600, "c60": c60, "images": images}


@pytest.fixture(scope="module")
def high():
    rng, rates, lab, truth = _study("high", 1)
    c60 = [draw_counts(rates, 60, rng) for _ in range(N_REAL)]
    return {"rates": rates, "lab": lab, "truth": truth, "v2_60": _recon(rates, c60, [60] * N_REAL, "v2")}


def _core(lab, name, erosion=2):
    """Organ mask eroded in-plane (2D, per slice) by ``erosion`` pixels."""
    structure = np.zeros((3, 3, 3), bool)
    structure[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_erosion(lab == LABELS[name], structure, iterations=erosion)


def _ensemble_cov(stack, mask):
    """Mean over ``mask`` of the per-pixel standard deviation across realisations / mean over ``mask``."""
    return float(stack.std(0, ddof=1)[mask].mean() / stack.mean(0)[mask].mean())


def test_counts_scale_with_duration(low):
    rates = low["rates"]
    rate_sum = float(rates.trues.sum(dtype=np.float64) + rates.background.sum(dtype=np.float64))  # counts / s
    rng = np.random.default_rng(5)
    direct60 = [draw_counts(rates, 60, rng) for _ in range(N_REAL)]

    def total(frames):
        return sum(float(c.sum(dtype=np.float64)) for c in frames)

    # drawn Poisson totals match duration x the expected rates within 4 standard deviations (sd = sqrt(mean))
    for frames, duration in ((low["c600"], 600), (direct60, 60), (low["c60"], 60)):
        mean = N_REAL * duration * rate_sum
        assert abs(total(frames) - mean) < 4 * np.sqrt(mean), (duration, total(frames), mean)
    # 60 s thinned from 600 s has the mean of a direct 60 s draw (difference of two Poisson totals)
    assert abs(total(low["c60"]) - total(direct60)) < 4 * np.sqrt(2 * N_REAL * 60 * rate_sum)
    ratio = total(low["c60"]) / total(low["c600"])
    assert abs(ratio - 0.1) < 0.002
    # ... and its Poisson statistics: same mean and variance over the bins as a direct 60 s draw
    direct = direct60[0]
    assert abs(low["c60"][0].sum() / direct.sum() - 1) < 0.01
    assert abs(low["c60"][0].var() / direct.var() - 1) < 0.05


def test_counts_floor_and_scatter(low, high):
    for rates in (low["rates"], high["rates"]):
        assert (rates.background > 0).all() and (rates.expected_counts(30) > 0).all()
        assert ((rates.attenuation > 0) & (rates.attenuation <= 1)).all()
    assert 0.25 < low["rates"].scatter_fraction.mean() < high["rates"].scatter_fraction.mean() < 0.5


def test_split_frames_are_disjoint_and_exact(low):
    frames = split_counts(low["c600"][0], 10, 600, np.random.default_rng(0))
    np.testing.assert_array_equal(np.sum(frames, axis=0), low["c600"][0])
    assert all(abs(f.sum() / low["c600"][0].sum() - 0.1) < 0.005 for f in frames)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_cov_ratio_sqrt10(low, version):
    """In the uniform liver, CoV(60 s) / CoV(600 s) is within 10 % of sqrt(10)."""
    img, core = low["images"][version], _core(low["lab"], "liver")
    ratio = _ensemble_cov(img[N_REAL:], core) / _ensemble_cov(img[:N_REAL], core)
    assert abs(ratio / np.sqrt(10) - 1) < 0.10, ratio


def _lag1_correlation(noise, mask):
    """Correlation coefficient of noise between in-plane neighbours inside ``mask`` (mean of x and y lags)."""
    out = []
    for axis in (1, 2):
        a, b = noise, np.roll(noise, 1, axis=axis)
        m = mask & np.roll(mask, 1, axis=axis - 1)
        out.append(np.sum(a[:, m] * b[:, m]) / np.sqrt(np.sum(a[:, m] ** 2) * np.sum(b[:, m] ** 2)))
    return float(np.mean(out))


def test_v2_noise_texture_finer(low):
    body = _core(low["lab"], "body") | _core(low["lab"], "liver")
    corr = {}
    for v in ("v1", "v2"):
        frames = low["images"][v][N_REAL:]
        corr[v] = _lag1_correlation(frames - frames.mean(0), body)
    assert corr["v2"] < corr["v1"] - 0.1, corr


def test_v2_lesion_recovery_higher(low):
    lesion = low["lab"] == 10
    truth = low["truth"][lesion].mean()
    recovery = {v: low["images"][v][:N_REAL].mean(0)[lesion].mean() / truth for v in ("v1", "v2")}
    assert recovery["v1"] < recovery["v2"] < 1.05, recovery


def test_high_bmi_noisier(low, high):
    cov_low = _ensemble_cov(low["images"]["v2"][N_REAL:], _core(low["lab"], "liver"))
    cov_high = _ensemble_cov(high["v2_60"], _core(high["lab"], "liver"))
    assert cov_high > 1.2 * cov_low, (cov_low, cov_high)


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("organ", ["liver", "body"])
def test_roi_means_unbiased_at_600s(low, version, organ):
    """Mean of 600 s images within 3 % of the truth in large uniform regions (liver, soft tissue)."""
    roi = _core(low["lab"], organ, erosion=3)
    if organ == "body":
        roi &= np.isclose(low["truth"], 1.0, atol=1e-3)  # pure soft tissue, away from fat and organs
    assert roi.sum() > 50
    mean = low["images"][version][:N_REAL].mean(0)[roi].mean()
    assert abs(mean / low["truth"][roi].mean() - 1) < 0.03


def test_osem_input_validation():
    """Bad inputs are refused before iterating, with a message naming the array and its expected form."""
    geom = Geometry(n_pixels=8, pixel_mm=10.0, n_angles=4, n_bins=8, bin_mm=10.0)
    rows, nz = geom.n_rows, 2
    ok = {"counts": np.ones((1, rows, nz)), "durations": [60.0], "attenuation": np.full((rows, nz), 0.5),
          "background_rate": np.ones((rows, nz)), "sensitivity": 1e-3}  # fmt: skip

    def run(**bad):
        args = {**ok, **bad}
        return osem(args["counts"], args["durations"], args["attenuation"], args["background_rate"],
                    args["sensitivity"], geom, protocol("v1", 5.0, 1, 1))  # fmt: skip

    assert run().shape == (1, 8, 8, nz)
    for bad, match in (
        ({"counts": np.ones((rows, nz))}, r"counts must be a 3-D array \(n_frames, 32, n_slices\)"),
        ({"counts": np.ones((1, rows + 1, nz))}, r"counts must be a 3-D array"),
        ({"counts": np.full((1, rows, nz), -1.0)}, "counts must be finite and non-negative"),
        ({"counts": np.full((1, rows, nz), np.nan)}, "counts must be finite and non-negative"),
        ({"attenuation": np.ones((rows, nz + 1))}, r"attenuation must be a \(32, 2\) array"),
        ({"attenuation": np.full((rows, nz), 1.5)}, r"attenuation must be .* in \(0, 1\]"),
        ({"attenuation": np.zeros((rows, nz))}, r"attenuation must be .* in \(0, 1\]"),
        ({"background_rate": np.zeros((rows, nz))}, "background_rate must be .* > 0"),
        ({"background_rate": np.full((rows, nz), np.inf)}, "background_rate must be .* > 0"),
        ({"sensitivity": 0.0}, "sensitivity must be a finite number > 0"),
        ({"durations": [0.0]}, "durations must be 1 positive"),
    ):
        with pytest.raises(ValueError, match=match):
            run(**bad)


def _adjacent_slice_noise_correlation(images, roi):
    """Correlation of the ensemble noise (image minus the ensemble mean) between neighbouring slices, in ``roi``."""
    noise = images - images.mean(0, keepdims=True)
    a, b = noise[..., :-1], noise[..., 1:]
    both = roi[..., :-1] & roi[..., 1:]
    a, b = a[:, both], b[:, both]
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_v1_axial_postfilter_correlates_slices_as_its_fwhm_in_mm_says(low):
    """The v1 protocol's axial post-filter (a mis-modelled axial resolution) acts across slices with its FWHM in mm:
    the 2D acquisition's slices have independent noise without it, and with a FWHM of 2 slices (sigma 0.85 slices)
    neighbouring slices' noise correlates as a Gaussian's does at lag 1, exp(-1 / (4 sigma^2)) = 0.71 for white
    noise (the in-plane-correlated OSEM noise gives about that); the ensemble CoV drops."""
    rates, liver = low["rates"], _core(low["lab"], "liver")
    base = protocol("v1", SCANNER.psf_fwhm_mm)
    axial = protocol("v1", SCANNER.psf_fwhm_mm, v1_axial_fwhm_mm=2 * GRID.voxel_mm[2])
    assert (axial.postfilter_fwhm_mm, axial.iterations) == (base.postfilter_fwhm_mm, base.iterations)
    args = (np.stack(low["c60"]), [60] * N_REAL, rates.attenuation, rates.background, SCANNER.sensitivity, GEOM)
    plain, filtered = osem(*args, base), osem(*args, axial, slice_mm=GRID.voxel_mm[2])
    np.testing.assert_array_equal(plain, low["images"]["v1"][N_REAL:])  # the default has no axial filter
    r_plain = _adjacent_slice_noise_correlation(plain, liver)
    r_filtered = _adjacent_slice_noise_correlation(filtered, liver)
    assert abs(r_plain) < 0.15, r_plain
    assert 0.55 < r_filtered < 0.85, r_filtered

    def cov(images):
        return float(np.mean(images.std(0, ddof=1)[liver] / images.mean(0)[liver]))

    assert cov(filtered) < 0.9 * cov(plain)
    with pytest.raises(ValueError, match=r"slice_mm must be a slice thickness > 0 in mm .*axial_fwhm_mm 20"):
        osem(*args, axial)
    with pytest.raises(ValueError, match="axial_fwhm_mm must be >= 0"):
        protocol("v1", 5.0, v1_axial_fwhm_mm=-1.0)
