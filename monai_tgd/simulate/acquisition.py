"""2D PET acquisition: expected count rates per line of response, Poisson draw, and count-domain rebinning.

For every axial slice independently (2D PET, no time of flight), the expected coincidence rate of LOR ``i`` is

    rate_i = kappa * (t_i + s_i + r_i)       [counts / s]

* ``t`` (trues): the line integral of activity, attenuated by ``exp(-line integral of mu)``, blurred along the
  radial axis by the detector response (Gaussian, ``psf_fwhm_mm``). To avoid the inverse crime it is computed on
  a finer grid than any reconstruction uses (``inplane_oversampling`` finer pixels and radial bins,
  ``angular_oversampling`` times more angles) and integrated back onto the scanner's bins and angles, from a
  phantom sampled ``axial_oversampling`` times per slice thickness.
* ``s`` (scatter): a smooth, wide (``scatter_fwhm_mm``) radial blur of the trues that also covers LORs outside
  the body, scaled to a scatter fraction ``s / (t + s) = scatter_fraction_max * (1 - transmission)`` where the
  transmission is the emission-weighted mean attenuation factor of the slice: larger bodies scatter more.
* ``r`` (randoms): uniform over the sinogram, ``randoms_fraction`` of the slice's trues. With the scatter it forms
  the floor that keeps every LOR's expected counts above zero.
* ``kappa`` (``sensitivity``): expected counts per second per unit (SUV x mm) of line integral; it sets the count
  level and so the noise level. Expected counts are ``duration x rate``: linear in the scan duration.

A 600 s acquisition is a Poisson draw of the expected counts; shorter acquisitions are derived from it exactly
as list-mode data are rebinned, with the count-domain transforms of :mod:`monai_tgd.transforms`
(:class:`~monai_tgd.transforms.ThinCounts` for noise levels, :class:`~monai_tgd.transforms.SplitCounts` for
disjoint frames).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from monai_tgd.transforms import SplitCounts, ThinCounts

from .projector import Geometry, system_matrix

__all__ = ["ScannerModel", "Rates", "expected_rates", "draw_counts", "thin_counts", "split_counts", "gaussian_kernel"]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


@dataclass(frozen=True)
class ScannerModel:
    """Physics of the simulated scanner (lengths in mm). See the module docstring for each term."""

    sensitivity: float = 2.0e-4
    psf_fwhm_mm: float = 6.5
    scatter_fraction_max: float = 0.5
    scatter_fwhm_mm: float = 150.0
    randoms_fraction: float = 0.2
    inplane_oversampling: int = 2
    angular_oversampling: int = 2
    axial_oversampling: int = 3

    def __post_init__(self) -> None:
        if not self.sensitivity > 0:
            raise ValueError(f"sensitivity must be > 0 counts/(s SUV mm), got {self.sensitivity}.")
        if self.psf_fwhm_mm < 0 or self.scatter_fwhm_mm <= 0:
            raise ValueError("psf_fwhm_mm must be >= 0 and scatter_fwhm_mm > 0.")
        if not (0 <= self.scatter_fraction_max < 1 and 0 < self.randoms_fraction):
            raise ValueError("need 0 <= scatter_fraction_max < 1 and randoms_fraction > 0 (the counts floor).")
        for name in ("inplane_oversampling", "angular_oversampling", "axial_oversampling"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be an integer >= 1.")

    def fine_geometry(self, geometry: Geometry) -> Geometry:
        """The oversampled geometry on which the scanner's data are simulated before integration onto its bins."""
        f, k = self.inplane_oversampling, self.angular_oversampling
        step = math.pi / geometry.n_angles
        return Geometry(
            n_pixels=geometry.n_pixels * f,
            pixel_mm=geometry.pixel_mm / f,
            n_angles=geometry.n_angles * k,
            n_bins=geometry.n_bins * f,
            bin_mm=geometry.bin_mm / f,
            angle_offset=geometry.angle_offset + step * (0.5 / k - 0.5),  # sub-angles centred on each angle
        )


@dataclass
class Rates:
    """Expected rates of one study, each ``(n_angles * n_bins, n_slices)`` float32 in the scanner's geometry.

    Attributes:
        trues: expected true coincidences per second (``kappa * t``).
        background: expected scatter + randoms per second (``kappa * (s + r)``), > 0 everywhere.
        attenuation: attenuation factors ``exp(-H mu)`` from the reconstruction-grid mu map (the "CT-based"
            correction factors the reconstruction uses; not the fine-grid ones that made the data).
        scatter_fraction: per-slice scatter fraction ``s / (t + s)``, shape ``(n_slices,)``.
    """

    trues: np.ndarray
    background: np.ndarray
    attenuation: np.ndarray
    scatter_fraction: np.ndarray

    def expected_counts(self, duration: float) -> np.ndarray:
        """Expected counts for an acquisition of ``duration`` seconds, ``(n_rows, n_slices)``."""
        return duration * (self.trues + self.background)


def gaussian_kernel(fwhm: float, spacing: float) -> np.ndarray:
    """Normalised Gaussian of FWHM ``fwhm`` sampled every ``spacing`` (same unit), truncated at 3 sigma."""
    sigma = fwhm / FWHM_PER_SIGMA / spacing
    if sigma <= 0:
        return np.ones(1, np.float32)
    half = max(1, int(math.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def _block_mean(a: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """Mean over blocks of ``factors`` along each axis of ``a``."""
    shape = []
    for n, f in zip(a.shape, factors):
        shape += [n // f, f]
    return a.reshape(shape).mean(axis=tuple(range(1, 2 * a.ndim, 2)))


def expected_rates(activity: np.ndarray, mu: np.ndarray, geometry: Geometry, scanner: ScannerModel) -> Rates:
    """Expected count rates of a phantom sampled on the oversampled grid.

    Args:
        activity: ``(n_fine, n_fine, n_slices * axial_oversampling)`` activity in SUV-like units, with
            ``n_fine = geometry.n_pixels * inplane_oversampling`` (see :meth:`ScannerModel.fine_geometry`).
        mu: the matching linear attenuation map in 1/mm.
        geometry: the scanner's (reconstruction) geometry.
        scanner: the physics model.

    Returns:
        :class:`Rates` on ``geometry``'s sinogram for the ``n_slices`` slices.
    """
    fine = scanner.fine_geometry(geometry)
    f, k, za = scanner.inplane_oversampling, scanner.angular_oversampling, scanner.axial_oversampling
    if activity.shape != mu.shape or activity.shape[:2] != (fine.n_pixels,) * 2 or activity.shape[2] % za:
        raise ValueError(
            f"activity and mu must share the shape ({fine.n_pixels}, {fine.n_pixels}, n_slices * {za}), got "
            f"{activity.shape} and {mu.shape}."
        )
    nz = activity.shape[2] // za
    act = _block_mean(activity, (1, 1, za)).reshape(-1, nz)
    mu_f = _block_mean(mu, (1, 1, za)).reshape(-1, nz)
    proj = system_matrix(fine).forward(np.concatenate([act, mu_f], axis=1))
    emission, exponent = proj[:, :nz], proj[:, nz:]
    attenuated = (emission * np.exp(-exponent)).reshape(fine.n_angles, fine.n_bins, nz)
    psf = gaussian_kernel(scanner.psf_fwhm_mm, fine.bin_mm)
    attenuated = ndimage.correlate1d(attenuated, psf, axis=1, mode="constant")
    trues = _block_mean(attenuated, (k, f, 1)).reshape(geometry.n_rows, nz)

    mu_recon = _block_mean(mu, (f, f, za)).reshape(-1, nz)
    attenuation = np.exp(-system_matrix(geometry).forward(mu_recon))

    transmission = emission.reshape(fine.n_rows, nz).sum(0)
    transmission = np.divide(trues.sum(0) * k * f, transmission, out=np.ones(nz), where=transmission > 0)
    sf = scanner.scatter_fraction_max * (1.0 - np.clip(transmission, 0.0, 1.0))
    wide = gaussian_kernel(scanner.scatter_fwhm_mm, geometry.bin_mm)
    shape = ndimage.correlate1d(trues.reshape(geometry.n_angles, geometry.n_bins, nz), wide, axis=1, mode="constant")
    shape = shape.reshape(geometry.n_rows, nz)
    total = trues.sum(0)
    scatter = shape * np.divide(sf / (1 - sf) * total, shape.sum(0), out=np.zeros(nz), where=shape.sum(0) > 0)
    randoms = np.broadcast_to(scanner.randoms_fraction * total / geometry.n_rows, trues.shape)
    floor = np.float32(1e-6 * max(float(total.max()), 1.0) / geometry.n_rows)  # empty slices keep a floor too
    kappa = scanner.sensitivity
    return Rates(
        trues=(kappa * trues).astype(np.float32),
        background=(kappa * (scatter + randoms + floor)).astype(np.float32),
        attenuation=attenuation.astype(np.float32),
        scatter_fraction=sf.astype(np.float32),
    )


def draw_counts(rates: Rates, duration: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson counts of an acquisition of ``duration`` s: int32 ``(n_rows, n_slices)``."""
    if not duration > 0:
        raise ValueError(f"duration must be > 0 s, got {duration}.")
    return rng.poisson(rates.expected_counts(duration)).astype(np.int32)


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**32 - 1))


def thin_counts(counts: np.ndarray, duration: float, source_duration: float, rng: np.random.Generator) -> np.ndarray:
    """Counts of a ``duration`` s acquisition thinned from ``source_duration`` s (list-mode style rebinning)."""
    return ThinCounts(duration, source_duration).set_random_state(seed=_seed(rng))(counts)


def split_counts(counts: np.ndarray, num_frames: int, source_duration: float, rng: np.random.Generator) -> list:
    """``num_frames`` disjoint, equal-duration frames that sum exactly to ``counts``."""
    return SplitCounts(num_frames, source_duration).set_random_state(seed=_seed(rng))(counts)
