"""OSEM reconstruction with attenuation correction, in the two protocol versions of the paper (v1 and v2).

The forward model of frame ``f`` (duration ``T_f``) and slice ``z`` is

    E[y] = T_f * kappa * a_z * (B H x) + T_f * b_z

with ``H`` the Joseph system matrix (:mod:`.projector`), ``a_z`` the attenuation factors, ``b_z`` the known
scatter + randoms rate, ``kappa`` the scanner sensitivity and ``B`` the detector blur along the radial bins
(identity for v1). Since ``T_f`` and ``kappa`` are in the model, the images are activity concentrations in the
phantom's SUV-like units whatever the duration, so a 60 s image and a 600 s image share one scale.

* v1: no resolution modelling (``B = I``), more iterations (the cohort's ``Profile.v1_iterations``), an in-plane
  post-filter of FWHM ``1.25 x`` the detector PSF and, in the simulated cohorts, an axial one of 12 mm
  (:data:`V1_AXIAL_FWHM_MM`, a mis-modelled axial resolution that elongates structures): coarse noise grain in
  and across slices, lower resolution.
* v2: the detector blur modelled in the system (``B`` = Gaussian of the PSF FWHM) and a post-filter of
  ``0.67 x`` the PSF: finer noise grain at about the v1 noise level (the paper's protocol change: texture and
  resolution, not noise level).

Post-filters are Gaussians in the slice plane (the acquisition is 2D), then across slices where the protocol has an
axial FWHM. All slices and frames of a study are reconstructed together as the columns of one matrix, in chunks of
:data:`~.projector.CHUNK_COLUMNS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .acquisition import FWHM_PER_SIGMA, gaussian_kernel
from .projector import CHUNK_COLUMNS, Geometry, system_matrix

__all__ = ["ReconProtocol", "protocol", "osem", "postfilter", "V1_POSTFILTER_PER_PSF", "V2_POSTFILTER_PER_PSF",
           "V1_AXIAL_FWHM_MM"]

V1_POSTFILTER_PER_PSF = 1.25
"""v1 post-filter FWHM as a multiple of the detector PSF FWHM."""
V1_AXIAL_FWHM_MM = 12.0
"""FWHM (mm) of the v1 protocol's axial post-filter in the simulated cohorts (:class:`~.cohort.Profile`): the old
protocol's mis-modelled axial resolution, which elongates structures across slices."""
V2_POSTFILTER_PER_PSF = 0.67
"""v2 post-filter FWHM as a multiple of the detector PSF FWHM."""


@dataclass(frozen=True)
class ReconProtocol:
    """An OSEM protocol.

    Attributes:
        name: "v1" or "v2" (free text for custom protocols).
        iterations: full OSEM iterations.
        subsets: ordered subsets (must divide the number of angles).
        resolution_fwhm_mm: FWHM of the radial detector blur modelled in the system matrix; 0 models none.
        postfilter_fwhm_mm: FWHM of the in-plane Gaussian post-filter; 0 for none.
        axial_fwhm_mm: FWHM of a Gaussian post-filter across slices (a resolution the protocol mis-models along the
            axis: it elongates structures axially); 0 for none (the default; :func:`osem` then needs no slice
            thickness).
    """

    name: str
    iterations: int
    subsets: int
    resolution_fwhm_mm: float
    postfilter_fwhm_mm: float
    axial_fwhm_mm: float = 0.0

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.subsets < 1:
            raise ValueError(f"iterations and subsets must be >= 1, got {self.iterations} and {self.subsets}.")
        if self.resolution_fwhm_mm < 0 or self.postfilter_fwhm_mm < 0 or not self.axial_fwhm_mm >= 0:
            raise ValueError("resolution_fwhm_mm, postfilter_fwhm_mm and axial_fwhm_mm must be >= 0 (mm), got "
                             f"{self.resolution_fwhm_mm}, {self.postfilter_fwhm_mm} and {self.axial_fwhm_mm}.")


def protocol(version: str, psf_fwhm_mm: float, iterations: int = 3, subsets: int = 8,
             v1_postfilter_per_psf: float = V1_POSTFILTER_PER_PSF, v1_axial_fwhm_mm: float = 0.0) -> ReconProtocol:
    """The paper's v1 or v2 protocol for a scanner of detector PSF ``psf_fwhm_mm`` (see the module docstring).

    ``v1_postfilter_per_psf`` and ``v1_axial_fwhm_mm`` (mm) set the v1 protocol's in-plane post-filter (a multiple of
    the PSF FWHM) and its axial post-filter; v2 ignores them."""
    if version == "v1":
        return ReconProtocol("v1", iterations, subsets, 0.0, v1_postfilter_per_psf * psf_fwhm_mm, v1_axial_fwhm_mm)
    if version == "v2":
        return ReconProtocol("v2", iterations, subsets, psf_fwhm_mm, V2_POSTFILTER_PER_PSF * psf_fwhm_mm)
    raise ValueError(f"unknown reconstruction version {version!r}; expected 'v1' or 'v2'.")


def postfilter(images: np.ndarray, fwhm_mm: float, pixel_mm: float) -> np.ndarray:
    """In-plane Gaussian filter of ``images`` ``(nx, ny, ...)``; returns a new float32 array of the same shape."""
    if fwhm_mm <= 0:
        return np.array(images, dtype=np.float32)
    sigma = fwhm_mm / FWHM_PER_SIGMA / pixel_mm
    sigmas = (sigma, sigma) + (0,) * (images.ndim - 2)
    return ndimage.gaussian_filter(np.asarray(images, np.float32), sigmas, mode="constant", truncate=3.0)


def osem(
    counts: np.ndarray,
    durations: Sequence[float],
    attenuation: np.ndarray,
    background_rate: np.ndarray,
    sensitivity: float,
    geometry: Geometry,
    recon: ReconProtocol,
    slice_mm: float | None = None,
) -> np.ndarray:
    """Reconstruct frames of a study with OSEM and attenuation correction.

    Args:
        counts: ``(n_frames, n_rows, n_slices)`` measured counts (any numeric dtype).
        durations: ``n_frames`` frame durations in seconds.
        attenuation: ``(n_rows, n_slices)`` attenuation factors in (0, 1].
        background_rate: ``(n_rows, n_slices)`` expected scatter + randoms per second (> 0).
        sensitivity: ``kappa``, expected counts per second per unit SUV x mm of line integral.
        geometry: sinogram/image geometry (``n_rows = n_angles * n_bins``).
        recon: the protocol.
        slice_mm: slice thickness in mm; needed (> 0) only when ``recon.axial_fwhm_mm`` > 0.

    Returns:
        ``(n_frames, n_pixels, n_pixels, n_slices)`` float32 activity images in SUV-like units, zero outside the
        field-of-view circle.

    Raises:
        ValueError: before any iteration, naming the argument and its expected form, if ``counts`` is not a 3-D
            ``(n_frames, n_rows, n_slices)`` array of finite non-negative values, ``durations`` are not positive,
            ``attenuation`` is not ``(n_rows, n_slices)`` in (0, 1], ``background_rate`` is not ``(n_rows,
            n_slices)`` and > 0, or ``sensitivity`` is not > 0.
    """
    counts = np.asarray(counts)
    n_rows = geometry.n_rows
    if counts.ndim != 3 or counts.shape[1] != n_rows:
        raise ValueError(f"counts must be a 3-D array (n_frames, {n_rows}, n_slices), got shape {counts.shape}.")
    if not np.issubdtype(counts.dtype, np.number) or not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError("counts must be finite and non-negative (measured counts per sinogram bin).")
    n_frames, _, nz = counts.shape
    durations = np.asarray(durations, dtype=np.float64)
    if durations.shape != (n_frames,) or not (np.isfinite(durations) & (durations > 0)).all():
        raise ValueError(f"durations must be {n_frames} positive values in seconds, got {durations.tolist()}.")
    attenuation, background_rate = np.asarray(attenuation), np.asarray(background_rate)
    for name, arr, form in (("attenuation", attenuation, "factors in (0, 1]"),
                            ("background_rate", background_rate, "finite rates > 0 (counts per second)")):
        if arr.shape != (n_rows, nz):
            raise ValueError(f"{name} must be a ({n_rows}, {nz}) array (n_rows, n_slices) of {form}, got shape "
                             f"{arr.shape}.")
    if not ((attenuation > 0) & (attenuation <= 1)).all():
        raise ValueError(f"attenuation must be a ({n_rows}, {nz}) array of factors in (0, 1].")
    if not (np.isfinite(background_rate) & (background_rate > 0)).all():
        raise ValueError(f"background_rate must be a ({n_rows}, {nz}) array of finite rates > 0 (counts per second).")
    if not (np.isfinite(sensitivity) and sensitivity > 0):
        raise ValueError(f"sensitivity must be a finite number > 0, got {sensitivity!r}.")
    if recon.axial_fwhm_mm > 0 and not (slice_mm is not None and np.isfinite(slice_mm) and slice_mm > 0):
        raise ValueError(f"slice_mm must be a slice thickness > 0 in mm for the protocol's axial post-filter "
                         f"(axial_fwhm_mm {recon.axial_fwhm_mm}), got {slice_mm!r}.")
    sm = system_matrix(geometry, recon.subsets)
    blur = gaussian_kernel(recon.resolution_fwhm_mm, geometry.bin_mm)
    n_bins = geometry.n_bins

    def radial_blur(sino: np.ndarray) -> np.ndarray:  # symmetric kernel, zero boundary: self-adjoint
        if blur.size == 1:
            return sino
        out = ndimage.correlate1d(sino.reshape(-1, n_bins, sino.shape[1]), blur, axis=1, mode="constant")
        return out.reshape(sino.shape)

    # columns are (frame, slice) pairs, frame-major
    frame_of = np.repeat(np.arange(n_frames), nz)
    slice_of = np.tile(np.arange(nz), n_frames)
    y_all = counts.transpose(1, 0, 2).reshape(n_rows, -1)
    fov = geometry.fov_mask.reshape(-1, 1).astype(np.float32)
    images = np.empty((geometry.n_pixels**2, n_frames * nz), dtype=np.float32)
    for c0 in range(0, n_frames * nz, CHUNK_COLUMNS):
        cols = slice(c0, min(c0 + CHUNK_COLUMNS, n_frames * nz))
        t = durations[frame_of[cols]].astype(np.float32)
        scale = sensitivity * t * attenuation[:, slice_of[cols]]
        bg = t * background_rate[:, slice_of[cols]]
        y = y_all[:, cols].astype(np.float32)
        x = np.repeat(fov, y.shape[1], axis=1)
        subsets = []
        for s, rows in enumerate(sm.subset_rows):
            sens = sm.back(radial_blur(scale[rows]), s)
            inv_sens = np.divide(1.0, sens, out=np.zeros_like(sens), where=sens > 1e-12 * sens.max()) * fov
            subsets.append((rows, inv_sens))
        for _ in range(recon.iterations):
            for s, (rows, inv_sens) in enumerate(subsets):
                expected = scale[rows] * radial_blur(sm.forward(x, s)) + bg[rows]
                x *= sm.back(radial_blur(scale[rows] * (y[rows] / expected)), s) * inv_sens
        images[:, cols] = x
    n = geometry.n_pixels
    images = images.reshape(n, n, n_frames, nz)
    images = postfilter(images, recon.postfilter_fwhm_mm, geometry.pixel_mm)
    if recon.axial_fwhm_mm > 0:  # across slices (axis 3); the body goes on beyond the first and last slice
        sigma_z = recon.axial_fwhm_mm / FWHM_PER_SIGMA / slice_mm
        images = ndimage.gaussian_filter1d(images, sigma_z, axis=3, mode="nearest", truncate=3.0)
    return np.ascontiguousarray(images.transpose(2, 0, 1, 3))
