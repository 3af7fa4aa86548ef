"""Ensemble bias and coefficient of variation over noise realisations (the paper's lesion/liver metrics).

Given ``R`` independent noise realisations of a study (e.g. ``R`` denoised 60 s images from disjoint list-mode
subsets) and a reference (the 600 s image, or the phantom truth):

* lesion ensemble bias, in percent::

      BIAS = 100 * ((1/R) sum_r mu_r - T) / T

  with ``mu_r`` the mean of realisation ``r`` in the lesion ROI and ``T`` the same ROI's mean in the reference;
* background (liver) ensemble CoV, in percent::

      CoV = 100 * ((1/N) sum_{i in B} sigma_i) / mean_B

  with ``sigma_i`` the standard deviation over the ``R`` realisations at voxel ``i`` (``ddof=1``, the unbiased
  sample estimate, by default), ``N`` the number of voxels in the ROI ``B`` and ``mean_B`` the ROI mean of the
  ensemble-mean image.

The plain functions take ``realizations [R, *spatial]``, ``reference [*spatial]`` and a boolean ``roi [*spatial]``
(numpy or torch), compute in float64 and return Python floats. The ``Cumulative`` classes aggregate per-study values
over an evaluation and take MONAI's batch-first layout: ``y_pred`` = realisations ``[B, R, *spatial]`` (the
realisations as channels), and

* :class:`EnsembleBiasMetric`: ``y = [B, 2, *spatial]`` (channel 0 the reference, channel 1 the lesion mask), or
  ``y = [B, 1, *spatial]`` (reference) with ``roi=[B, 1, *spatial]``;
* :class:`EnsembleCoVMetric`: ``y = [B, 1, *spatial]`` the background mask, or ``y=None`` with ``roi=...``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.utils import MetricReduction

from .roi import ArrayLike, StudyMetric, as_float64, as_mask, check_same_shape

__all__ = ["ensemble_bias", "ensemble_cov", "EnsembleBiasMetric", "EnsembleCoVMetric"]


def _realizations(realizations: ArrayLike, **spatial: ArrayLike) -> np.ndarray:
    """Validate ``realizations [R >= 2, *spatial]`` against the ``spatial`` arrays; return them in float64."""
    if realizations.ndim < 1 or realizations.shape[0] < 2:
        raise ValueError(
            f"need at least 2 realisations along the first axis of realizations [R, *spatial], got shape "
            f"{tuple(realizations.shape)}."
        )
    check_same_shape(**{"realizations[0]": realizations[0]}, **spatial)
    return as_float64(realizations)


def ensemble_bias(realizations: ArrayLike, reference: ArrayLike, roi: ArrayLike) -> float:
    """Ensemble bias in percent of the ROI mean: ``100 * (mean_r mean_roi(x_r) - mean_roi(ref)) / mean_roi(ref)``.

    Args:
        realizations: ``[R, *spatial]``, ``R >= 2`` noise realisations (image units, e.g. Bq/mL).
        reference: ``[*spatial]`` reference image, same units.
        roi: ``[*spatial]`` boolean lesion mask (0/1 values accepted), not empty.

    Raises:
        ValueError: fewer than 2 realisations, shape mismatch (all shapes named), empty ROI, or a reference ROI mean
            of 0.
    """
    x = _realizations(realizations, reference=reference, roi=roi)
    mask = as_mask(roi)
    truth = as_float64(reference)[mask].mean()
    if truth == 0:
        raise ValueError("the reference mean in the ROI is 0; a bias relative to it is undefined.")
    return float(100.0 * (x[:, mask].mean() - truth) / truth)


def ensemble_cov(realizations: ArrayLike, roi: ArrayLike, ddof: int = 1) -> float:
    """Ensemble coefficient of variation in percent: ROI mean of the voxelwise std over realisations / ROI mean.

    Args:
        realizations: ``[R, *spatial]``, ``R >= 2`` noise realisations.
        roi: ``[*spatial]`` boolean background (e.g. liver) mask, not empty.
        ddof: delta degrees of freedom of the voxelwise standard deviation (1: divide by ``R - 1``).

    Raises:
        ValueError: fewer than 2 realisations, shape mismatch (shapes named), empty ROI, or an ROI mean of 0.
    """
    x = _realizations(realizations, roi=roi)[:, as_mask(roi)]  # [R, N]
    mean = x.mean()
    if mean == 0:
        raise ValueError("the ensemble mean in the ROI is 0; a coefficient of variation is undefined.")
    return float(100.0 * x.std(axis=0, ddof=ddof).mean() / mean)


class EnsembleBiasMetric(StudyMetric):
    """Cumulative :func:`ensemble_bias` (percent) over studies.

    ``y_pred``: realisations ``[B, R, *spatial]``; ``y``: ``[B, 2, *spatial]`` (reference, lesion mask) or
    ``[B, 1, *spatial]`` with ``roi=[B, 1, *spatial]``. ``aggregate()`` reduces the ``[N, 1]`` per-study biases.
    """

    study_fn = staticmethod(ensemble_bias)

    def _study_args(self, y_pred: torch.Tensor, y: torch.Tensor, roi: torch.Tensor) -> tuple:
        check_same_shape(y=y, roi=roi)
        return y_pred, y[0], roi[0]


class EnsembleCoVMetric(StudyMetric):
    """Cumulative :func:`ensemble_cov` (percent) over studies.

    ``y_pred``: realisations ``[B, R, *spatial]``; ``y``: the background mask ``[B, 1, *spatial]`` (or ``y=None``
    and ``roi=[B, 1, *spatial]``). ``aggregate()`` reduces the ``[N, 1]`` per-study CoVs.

    Args:
        ddof: see :func:`ensemble_cov`.
        reduction, get_not_nans: as for MONAI metrics.
    """

    study_fn = staticmethod(ensemble_cov)
    needs_reference = False

    def __init__(self, ddof: int = 1, reduction: MetricReduction | str = MetricReduction.MEAN,
                 get_not_nans: bool = False) -> None:
        super().__init__(reduction, get_not_nans, ddof=ddof)

    def _study_args(self, y_pred: torch.Tensor, y: torch.Tensor, roi: torch.Tensor) -> tuple[Any, ...]:
        return y_pred, roi[0]
