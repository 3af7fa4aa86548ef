"""Regions of interest of the evaluation, from a study's label map ``[*spatial]`` (int labels).

Conventions of the datalist's label maps: 0 is outside the body, :data:`LIVER_LABEL` (2) the liver, lesions carry
their own labels from :data:`FIRST_LESION_LABEL` (10) up, and an out-of-distribution structure the record's
``ood_label``. Erosion and dilation are in-plane only (never across slices along ``axial_axis``), so a ROI's slices
stay those of the label map.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["LIVER_LABEL", "FIRST_LESION_LABEL", "body_roi", "liver_roi", "ood_roi", "roi_slices"]

#: label of the liver in the datalist's label maps (lesions carry their own labels 10+ and so are excluded)
LIVER_LABEL = 2

#: lowest lesion label of the datalist's label maps (every lesion has its own label from here on)
FIRST_LESION_LABEL = 10


def _in_plane(ndim: int, axial_axis: int) -> np.ndarray:
    """3x3 structuring element in the plane perpendicular to ``axial_axis`` (size 1 along it): erosion and dilation
    with it never cross slices."""
    shape = [3] * ndim
    shape[axial_axis] = 1
    return np.ones(shape, dtype=bool)


def body_roi(label: np.ndarray) -> np.ndarray:
    """The body: every labelled voxel (label > 0)."""
    return label > 0


def liver_roi(label: np.ndarray, erosion: int = 1, axial_axis: int = -1) -> tuple[np.ndarray, int]:
    """Liver mask (label 2) eroded by ``erosion`` voxels in-plane (not along ``axial_axis``).

    Lesions carry their own labels (10+), so they are never inside it. If the erosion would empty the mask (coarse
    images), the un-eroded mask is used. Returns ``(mask, erosion actually applied)``.
    """
    liver = np.asarray(label) == LIVER_LABEL
    if erosion > 0 and liver.any():
        eroded = ndimage.binary_erosion(liver, structure=_in_plane(liver.ndim, axial_axis), iterations=erosion)
        if eroded.any():
            return eroded, erosion
    return liver, 0


def ood_roi(label: np.ndarray, ood_label: int, dilation: int = 1, axial_axis: int = -1) -> np.ndarray:
    """The voxels labelled ``ood_label``, dilated by ``dilation`` voxels in-plane (so artefacts at the structure's
    rim count); empty when no voxel carries the label."""
    ood = label == int(ood_label)
    if dilation > 0 and ood.any():
        ood = ndimage.binary_dilation(ood, structure=_in_plane(ood.ndim, axial_axis), iterations=dilation)
    return ood


def roi_slices(roi: np.ndarray, axial_axis: int, halo: int) -> tuple[np.ndarray, slice]:
    """Slices to denoise for the metrics in ``roi``: from ``halo`` before its first slice along ``axial_axis`` to
    ``halo`` after its last (the 2.5D input of every ROI slice is then that of the whole volume), and the part of
    them that holds the ROI (where the metrics are taken; the halo's own outputs see a clipped border)."""
    axis = axial_axis % roi.ndim
    occupied = np.flatnonzero(roi.any(axis=tuple(a for a in range(roi.ndim) if a != axis)))
    if occupied.size == 0:
        return np.arange(roi.shape[axis]), slice(None)
    first, last = int(occupied[0]), int(occupied[-1])
    keep = np.arange(max(first - halo, 0), min(last + halo + 1, roi.shape[axis]))
    return keep, slice(first - int(keep[0]), last - int(keep[0]) + 1)
