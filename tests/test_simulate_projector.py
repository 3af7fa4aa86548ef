"""Joseph projector of monai_tgd.simulate: adjointness, line integrals, subsets, errors."""

import numpy as np
import pytest

from monai_tgd.simulate.projector import Geometry, SystemMatrix, joseph_matrix, system_matrix


@pytest.fixture(scope="module")
def geom():
    return Geometry(n_pixels=48, pixel_mm=4.0, n_angles=40, n_bins=48, bin_mm=4.0)


@pytest.mark.parametrize("n_subsets", [1, 8])
def test_adjoint(geom, n_subsets):
    """<H x, y> == <x, H^T y> for zero-mean random x and y, on the full matrix and on every subset.

    The relative error is normalised by ``||H x|| ||y||`` (the scale of the inner products' terms): with zero-mean
    inputs the inner product itself is a small difference of large float32 sums.
    """
    sm = SystemMatrix(geom, n_subsets)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((geom.n_pixels**2, 5)).astype(np.float32)
    for s in [None, *range(n_subsets)]:
        rows = geom.n_rows if s is None else len(sm.subset_rows[s])
        y = rng.standard_normal((rows, 5)).astype(np.float32)
        lhs = np.sum(sm.forward(x, s).astype(np.float64) * y)
        rhs = np.sum(x.astype(np.float64) * sm.back(y, s))
        scale = np.linalg.norm(sm.forward(x, s).astype(np.float64)) * np.linalg.norm(y.astype(np.float64))
        assert abs(lhs - rhs) / scale < 1e-5


def test_matrix_format(geom):
    mat = joseph_matrix(geom)
    assert mat.format == "csr" and mat.dtype == np.float32
    assert mat.indices.dtype == np.int32 and mat.indptr.dtype == np.int32
    assert mat.shape == (geom.n_rows, geom.n_pixels**2)


def test_line_integrals_of_a_disk():
    """The projection of a uniform disk of radius R is the chord length 2 sqrt(R^2 - s^2) at every angle."""
    g = Geometry(n_pixels=128, pixel_mm=2.0, n_angles=36, n_bins=128, bin_mm=2.0)
    c = (np.arange(128) - 63.5) * 2.0
    radius = 80.0
    disk = (c[:, None] ** 2 + c[None, :] ** 2 <= radius**2).astype(np.float32).reshape(-1, 1)
    sino = system_matrix(g).forward(disk).reshape(g.n_angles, g.n_bins)
    s = (np.arange(g.n_bins) - (g.n_bins - 1) / 2) * g.bin_mm
    inner = np.abs(s) < 0.8 * radius
    chord = 2 * np.sqrt(radius**2 - s[inner] ** 2)
    assert np.abs(sino[:, inner] - chord).max() / chord.max() < 0.03
    # total per angle = area / bin width, the same at every angle
    totals = sino.sum(1) * g.bin_mm
    assert np.allclose(totals, disk.sum() * 4.0, rtol=0.01)


def test_rows_and_angles_convention():
    """A point at +x projects onto bin s = x at angle 0 and onto s = 0 at angle 90 degrees."""
    g = Geometry(n_pixels=33, pixel_mm=1.0, n_angles=2, n_bins=33, bin_mm=1.0)
    img = np.zeros((33, 33), np.float32)
    img[16 + 10, 16] = 1.0  # x = +10 mm, y = 0
    sino = system_matrix(g).forward(img.reshape(-1, 1)).reshape(2, 33)
    assert sino[0].argmax() == 16 + 10
    assert sino[1].argmax() == 16


def test_subsets_partition_the_sinogram(geom):
    sm = system_matrix(geom, 4)
    x = np.random.default_rng(1).random((geom.n_pixels**2, 3)).astype(np.float32)
    full = sm.forward(x)
    for s, rows in enumerate(sm.subset_rows):
        np.testing.assert_allclose(sm.forward(x, s), full[rows], rtol=1e-5, atol=1e-4)
    assert sorted(np.concatenate(sm.subset_rows).tolist()) == list(range(geom.n_rows))


def test_cached_per_geometry(geom):
    assert system_matrix(geom, 4) is system_matrix(Geometry(48, 4.0, 40, 48, 4.0), 4)


def test_bad_arguments(geom):
    with pytest.raises(ValueError, match="divide"):
        SystemMatrix(geom, 3)
    with pytest.raises(ValueError, match="pixel_mm"):
        Geometry(48, 0.0, 40, 48, 4.0)
    with pytest.raises(ValueError, match="shape"):
        system_matrix(geom).forward(np.zeros((10, 2)))
