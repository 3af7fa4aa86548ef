"""2D parallel-beam PET projector: a Joseph-style sparse system matrix, built vectorised and cached per geometry.

Conventions (used by every module of :mod:`monai_tgd.simulate`):

* An image slice has ``n_pixels x n_pixels`` square pixels of side ``pixel_mm``, centred on the scanner axis.
  Array axis 0 is x (RAS: +x toward the patient's right), axis 1 is y (+y anterior); a slice flattens C-order, so pixel
  ``(ix, iy)`` is column ``ix * n_pixels + iy`` of the system matrix.
* A sinogram has ``n_angles`` projection angles ``theta_k = k * pi / n_angles (+ angle_offset)`` and ``n_bins``
  radial bins of width ``bin_mm`` centred on the axis; row ``k * n_bins + b`` of the system matrix is the line of
  response (LOR) ``{x cos(theta) + y sin(theta) = s_b}`` with ``s_b = (b - (n_bins - 1) / 2) * bin_mm``.
* Matrix entries are path lengths in mm, so ``H @ image`` gives line integrals: activity x mm for an emission
  image, or the dimensionless attenuation exponent for a linear attenuation map in 1/mm.

Joseph's method steps along the axis the ray is most parallel to, one row (or column) of pixels per step, and
linearly interpolates between the two pixels it crosses; the weight is the path length per step,
``pixel_mm / max(|cos|, |sin|)``. Pixels outside the image contribute zero.

Many images (slices x noise levels) are projected at once as the columns of a ``(n_pixels**2, n_columns)``
matrix, in chunks of :data:`CHUNK_COLUMNS` columns to bound memory. The matrix is built with SciPy and applied
with torch's sparse CSR x dense product (MKL, multi-threaded), about 3x faster than SciPy's on 2 cores.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["Geometry", "SystemMatrix", "joseph_matrix", "system_matrix", "CHUNK_COLUMNS"]

CHUNK_COLUMNS = 128
"""Number of image columns (slices x noise levels) projected together; bounds the dense work arrays."""


@dataclass(frozen=True)
class Geometry:
    """A 2D parallel-beam geometry (hashable, so it keys the system-matrix cache).

    Attributes:
        n_pixels: image side in pixels (square image).
        pixel_mm: pixel side in mm.
        n_angles: number of projection angles over [0, pi).
        n_bins: number of radial detector bins.
        bin_mm: radial bin width in mm.
        angle_offset: rotation of the first angle, in radians.
    """

    n_pixels: int
    pixel_mm: float
    n_angles: int
    n_bins: int
    bin_mm: float
    angle_offset: float = 0.0

    def __post_init__(self) -> None:
        for name in ("n_pixels", "n_angles", "n_bins"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"Geometry.{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("pixel_mm", "bin_mm"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"Geometry.{name} must be > 0 mm, got {getattr(self, name)}.")

    @property
    def angles(self) -> np.ndarray:
        """Projection angles in radians, shape ``(n_angles,)``."""
        return self.angle_offset + np.arange(self.n_angles) * (math.pi / self.n_angles)

    @property
    def n_rows(self) -> int:
        """Number of LORs (sinogram elements) per slice."""
        return self.n_angles * self.n_bins

    @property
    def fov_mask(self) -> np.ndarray:
        """Boolean ``(n_pixels, n_pixels)`` mask of the pixels inside the circle seen at every angle."""
        c = (np.arange(self.n_pixels) - (self.n_pixels - 1) / 2) * self.pixel_mm
        radius = min(self.n_pixels * self.pixel_mm, self.n_bins * self.bin_mm) / 2
        return (c[:, None] ** 2 + c[None, :] ** 2) <= (radius - self.pixel_mm / 2) ** 2


def joseph_matrix(geometry: Geometry, angle_block: int = 16) -> sp.csr_matrix:
    """Build the Joseph system matrix of ``geometry``, vectorised over blocks of ``angle_block`` angles.

    Returns:
        CSR matrix of shape ``(n_angles * n_bins, n_pixels**2)``, float32 path lengths in mm, int32 indices.
    """
    g = geometry
    n = g.n_pixels
    steps = np.arange(n)
    centre = (n - 1) / 2
    s = (np.arange(g.n_bins) - (g.n_bins - 1) / 2) * g.bin_mm
    rows_all, cols_all, vals_all = [], [], []
    for k0 in range(0, g.n_angles, angle_block):
        theta = g.angles[k0 : k0 + angle_block]
        c, si = np.cos(theta), np.sin(theta)
        along_y = np.abs(c) >= np.abs(si)  # ray direction (-sin, cos) is closer to the y axis: step over rows iy
        # stepped coordinate t (pixel index along the stepping axis) -> the other coordinate, in pixel units:
        #   stepping iy: y = s sin + t cos  =>  x = (s - y sin) / cos
        #   stepping ix: x = s cos - t sin  =>  y = (s - x cos) / sin
        denom = np.where(along_y, c, si)
        slope = np.where(along_y, si, c) / denom  # d(other)/d(stepped)
        weight = (g.pixel_mm / np.abs(denom)).astype(np.float32)
        stepped_mm = (steps - centre) * g.pixel_mm
        other = (s[None, :, None] / denom[:, None, None] - stepped_mm[None, None, :] * slope[:, None, None])
        other = other / g.pixel_mm + centre  # fractional pixel index, shape (angles, bins, steps)
        i0 = np.floor(other).astype(np.int32)
        frac = (other - i0).astype(np.float32)
        shape = other.shape
        row = (k0 + np.arange(shape[0], dtype=np.int32))[:, None, None] * g.n_bins + np.arange(
            g.n_bins, dtype=np.int32
        )[None, :, None]
        row = np.broadcast_to(row, shape)
        stepped = np.broadcast_to(steps.astype(np.int32)[None, None, :], shape)
        ay = np.broadcast_to(along_y[:, None, None], shape)
        w = np.broadcast_to(weight[:, None, None], shape)
        for idx, wi in ((i0, 1 - frac), (i0 + 1, frac)):
            ok = (idx >= 0) & (idx < n) & (wi > 0)
            ix = np.where(ay, idx, stepped)[ok]
            iy = np.where(ay, stepped, idx)[ok]
            rows_all.append(row[ok])
            cols_all.append(ix * n + iy)
            vals_all.append((w * wi)[ok])
    rows = np.concatenate(rows_all)
    cols = np.concatenate(cols_all).astype(np.int32)
    vals = np.concatenate(vals_all).astype(np.float32)
    mat = sp.csr_matrix((vals, (rows, cols)), shape=(g.n_rows, n * n), dtype=np.float32)
    mat.sum_duplicates()
    mat.indices = mat.indices.astype(np.int32)
    mat.indptr = mat.indptr.astype(np.int32)
    return mat


def _to_torch(mat: sp.csr_matrix) -> torch.Tensor:
    """A torch sparse CSR tensor sharing ``mat``'s float32 data and int32 index arrays."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta state"
        return torch.sparse_csr_tensor(
            torch.from_numpy(mat.indptr.astype(np.int32, copy=False)),
            torch.from_numpy(mat.indices.astype(np.int32, copy=False)),
            torch.from_numpy(mat.data.astype(np.float32, copy=False)),
            size=mat.shape,
        )


class SystemMatrix:
    """Forward and back projection for one geometry, whole or by ordered subsets of angles.

    Subset ``s`` of ``n_subsets`` holds the interleaved angles ``s, s + n_subsets, ...``; its rows and an explicit
    CSR transpose are extracted once (transposes on first use), so an OSEM sub-iteration is two sparse x dense
    products. The rows of a
    subset are ordered angle-major like the full sinogram: ``subset_rows[s]`` lists them.

    Args:
        geometry: the projection geometry.
        n_subsets: number of ordered subsets (must divide ``n_angles``).
    """

    def __init__(self, geometry: Geometry, n_subsets: int = 1) -> None:
        if n_subsets < 1 or geometry.n_angles % n_subsets:
            raise ValueError(f"n_subsets ({n_subsets}) must be >= 1 and divide n_angles ({geometry.n_angles}).")
        self.geometry = geometry
        self.n_subsets = n_subsets
        matrix = joseph_matrix(geometry)
        self.nnz = matrix.nnz
        rows = np.arange(geometry.n_rows).reshape(geometry.n_angles, geometry.n_bins)
        self.subset_rows = [rows[s::n_subsets].ravel() for s in range(n_subsets)]
        self._matrix = matrix
        self._forward = [_to_torch(matrix)] + [_to_torch(matrix[r]) for r in self.subset_rows if n_subsets > 1]
        self._back: list[torch.Tensor | None] = [None] * len(self._forward)  # transposes, built on first use

    def _operator(self, subset: int | None, adjoint: bool) -> torch.Tensor:
        i = 0 if subset is None else (subset + 1 if self.n_subsets > 1 else 0)
        if not adjoint:
            return self._forward[i]
        if self._back[i] is None:
            block = self._matrix if i == 0 else self._matrix[self.subset_rows[i - 1]]
            self._back[i] = _to_torch(block.T.tocsr())
        return self._back[i]

    @staticmethod
    def _apply(mat: torch.Tensor, x: np.ndarray) -> np.ndarray:
        """``mat @ x`` for a 2D ``x`` (cast to float32), in column chunks of :data:`CHUNK_COLUMNS`."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] != mat.shape[1]:
            raise ValueError(f"expected an array of shape ({mat.shape[1]}, n_columns), got {x.shape}.")
        out = np.empty((mat.shape[0], x.shape[1]), dtype=np.float32)
        for c0 in range(0, x.shape[1], CHUNK_COLUMNS):
            chunk = torch.from_numpy(np.ascontiguousarray(x[:, c0 : c0 + CHUNK_COLUMNS]))
            out[:, c0 : c0 + CHUNK_COLUMNS] = (mat @ chunk).numpy()
        return out

    def forward(self, images: np.ndarray, subset: int | None = None) -> np.ndarray:
        """Line integrals of ``images`` ``(n_pixels**2, n_columns)`` -> ``(rows of the subset or all, n_columns)``."""
        return self._apply(self._operator(subset, adjoint=False), images)

    def back(self, sinograms: np.ndarray, subset: int | None = None) -> np.ndarray:
        """Adjoint of :meth:`forward`: ``(rows of the subset or all, n_columns)`` -> ``(n_pixels**2, n_columns)``."""
        return self._apply(self._operator(subset, adjoint=True), sinograms)


@functools.lru_cache(maxsize=4)
def system_matrix(geometry: Geometry, n_subsets: int = 1) -> SystemMatrix:
    """The :class:`SystemMatrix` of ``geometry`` and ``n_subsets``, built once per process and cached."""
    return SystemMatrix(geometry, n_subsets)
