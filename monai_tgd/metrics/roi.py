"""Image-quality metrics restricted to a region of interest: RMSE, MAE, bias, CoV, and PSNR/SSIM over the body.

Plain functions take one study, ``image`` and ``reference`` of the same shape (e.g. ``[H, W, D]`` or
``[1, H, W, D]``) and a boolean ``roi`` of that shape; they accept numpy arrays or torch tensors, compute in float64
(SSIM too, through MONAI's ``SSIMMetric``) and return a Python float. RMSE and MAE are in the units of the images (e.g.
Bq/mL or SUV); bias and CoV in percent; PSNR in dB; SSIM is unitless.

The ``Cumulative`` classes aggregate these per-study values over an evaluation (``aggregate()``, ``reset()``) and
take MONAI's batch-first layout:

* ``y_pred``: images ``[B, 1, *spatial]``;
* ``y``: ``[B, 2, *spatial]``, channel 0 the reference and channel 1 the ROI mask (non-zero inside), which is
  what an Ignite ``output_transform`` can produce as the ``(y_pred, y)`` pair; or ``y`` the reference
  ``[B, 1, *spatial]`` with the ROI passed as ``roi=[B, 1, *spatial]``.

``aggregate()`` reduces the ``[N, 1]`` per-study buffer with ``reduction`` (MONAI's ``MetricReduction``, default
mean over studies).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric, PSNRMetric
from monai.metrics.regression import compute_ssim_and_cs
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction, ensure_tuple_rep

__all__ = [
    "roi_rmse",
    "roi_mae",
    "roi_bias",
    "roi_cov",
    "body_psnr",
    "body_ssim",
    "ROIRMSEMetric",
    "ROIMAEMetric",
    "BodyPSNRMetric",
    "BodySSIMMetric",
    "StudyMetric",
]

ArrayLike = np.ndarray | torch.Tensor


def as_float64(x: ArrayLike) -> np.ndarray:
    """``x`` (numpy or torch, any device) as a float64 numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().as_subclass(torch.Tensor).to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def as_mask(roi: ArrayLike, name: str = "roi") -> np.ndarray:
    """``roi`` as a non-empty boolean numpy array; accepts booleans or 0/1 values."""
    if isinstance(roi, torch.Tensor):
        roi = roi.detach().cpu().as_subclass(torch.Tensor).numpy()
    roi = np.asarray(roi)
    if roi.dtype != bool:
        if not np.isin(roi, (0, 1)).all():
            raise ValueError(f"{name} must be a boolean mask (or hold only 0/1 values), got values outside {{0, 1}}.")
        roi = roi.astype(bool)
    if not roi.any():
        raise ValueError(f"{name} is empty (no voxel inside, shape {roi.shape}); the metric is undefined.")
    return roi


def check_same_shape(**arrays: ArrayLike) -> None:
    """ValueError naming every shape unless all ``arrays`` share one shape."""
    shapes = {name: tuple(a.shape) for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError("shape mismatch: " + ", ".join(f"{n} {s}" for n, s in shapes.items()) + ".")


def _image_roi(image: ArrayLike, reference: ArrayLike, roi: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    check_same_shape(image=image, reference=reference, roi=roi)
    return as_float64(image), as_float64(reference), as_mask(roi)


def roi_rmse(image: ArrayLike, reference: ArrayLike, roi: ArrayLike) -> float:
    """Root-mean-square error of ``image`` against ``reference`` over the voxels of ``roi`` (image units)."""
    image, reference, roi = _image_roi(image, reference, roi)
    return float(np.sqrt(np.mean((image[roi] - reference[roi]) ** 2)))


def roi_mae(image: ArrayLike, reference: ArrayLike, roi: ArrayLike) -> float:
    """Mean absolute error of ``image`` against ``reference`` over the voxels of ``roi`` (image units)."""
    image, reference, roi = _image_roi(image, reference, roi)
    return float(np.mean(np.abs(image[roi] - reference[roi])))


def roi_bias(image: ArrayLike, reference: ArrayLike, roi: ArrayLike) -> float:
    """Bias of one image in percent of the reference's ROI mean: ``100 * (mean_roi(image) - mean_roi(ref)) /
    mean_roi(ref)`` (the single-image counterpart of :func:`monai_tgd.metrics.ensemble_bias`)."""
    image, reference, roi = _image_roi(image, reference, roi)
    truth = reference[roi].mean()
    if truth == 0:
        raise ValueError("the reference mean in the ROI is 0; a bias relative to it is undefined.")
    return float(100.0 * (image[roi].mean() - truth) / truth)


def roi_cov(image: ArrayLike, roi: ArrayLike, ddof: int = 1) -> float:
    """Spatial coefficient of variation of one image in percent: ``100 * std_roi(image) / mean_roi(image)``
    (``ddof`` 1 by default). The noise left in a uniform region of a single image, e.g. the liver of an online study
    that has one realisation; with several realisations use :func:`monai_tgd.metrics.ensemble_cov`."""
    check_same_shape(image=image, roi=roi)
    values = as_float64(image)[as_mask(roi)]
    if values.size <= ddof:
        raise ValueError(f"the ROI has {values.size} voxel(s); a standard deviation with ddof={ddof} needs more.")
    mean = values.mean()
    if mean == 0:
        raise ValueError("the image mean in the ROI is 0; a coefficient of variation is undefined.")
    return float(100.0 * values.std(ddof=ddof) / mean)


def body_psnr(image: ArrayLike, reference: ArrayLike, body: ArrayLike, max_val: float | None = None) -> float:
    """PSNR in dB over the voxels of ``body``, computed by MONAI's ``PSNRMetric`` on those voxels.

    ``20 log10(max_val) - 10 log10(MSE_body)``; ``max_val`` (image units) defaults to the reference's maximum
    inside the body. Identical images give ``inf``.
    """
    image, reference, body = _image_roi(image, reference, body)
    peak = float(reference[body].max()) if max_val is None else float(max_val)
    if not (math.isfinite(peak) and peak > 0):
        raise ValueError(f"max_val must be finite and > 0, got {peak}.")
    vectors = [torch.from_numpy(a[body]).reshape(1, 1, -1) for a in (image, reference)]
    return float(PSNRMetric(max_val=peak, reduction=MetricReduction.NONE)(*vectors).item())


def body_ssim(
    image: ArrayLike,
    reference: ArrayLike,
    body: ArrayLike,
    data_range: float | None = None,
    win_size: int | Sequence[int] = 11,
    kernel_sigma: float | Sequence[float] = 1.5,
) -> float:
    """SSIM averaged over the voxels of ``body``, from MONAI's SSIM map (``monai.metrics.regression``).

    ``image``, ``reference`` and ``body`` are ``[*spatial]`` with 2 or 3 spatial dimensions, each at least
    ``win_size`` long. The SSIM map (Gaussian window ``win_size``/``kernel_sigma``, as in MONAI's
    ``SSIMMetric``) is defined at window centres, i.e. ``win_size // 2`` voxels away from the border; it is
    averaged over the body voxels among them. ``data_range`` (image units) defaults to the reference's
    ``max - min`` inside the body.
    """
    image, reference, body = _image_roi(image, reference, body)
    ndim = image.ndim
    if ndim not in (2, 3):
        raise ValueError(f"body_ssim needs 2D or 3D images [*spatial], got shape {image.shape}.")
    kernel = ensure_tuple_rep(win_size, ndim)
    if any(k > s for k, s in zip(kernel, image.shape)):
        raise ValueError(f"win_size {kernel} is larger than the image shape {image.shape}.")
    span = float(np.ptp(reference[body])) if data_range is None else float(data_range)
    if not (math.isfinite(span) and span > 0):
        raise ValueError(f"data_range must be finite and > 0, got {span}.")
    ssim_map, _ = compute_ssim_and_cs(
        torch.from_numpy(image)[None, None],
        torch.from_numpy(reference)[None, None],
        spatial_dims=ndim,
        data_range=span,
        kernel_type="gaussian",
        kernel_size=kernel,
        kernel_sigma=ensure_tuple_rep(kernel_sigma, ndim),
    )
    centres = body[tuple(slice(k // 2, s - (k - 1 - k // 2)) for k, s in zip(kernel, body.shape))]
    if not centres.any():
        raise ValueError(f"body has no voxel at least win_size // 2 = {[k // 2 for k in kernel]} from the border.")
    return float(ssim_map[0, 0].double().numpy()[centres].mean())


class StudyMetric(CumulativeIterationMetric):
    """Base of the per-study metrics: one value per batch item, aggregated over studies.

    Subclasses set :attr:`study_fn` and :meth:`_study_args` that map one study's ``y_pred[b]``, ``y[b]`` and
    ``roi[b]`` to the arguments of the plain function.

    Args:
        reduction: MONAI ``MetricReduction`` applied by ``aggregate()`` over the ``[N, 1]`` per-study buffer.
        get_not_nans: ``aggregate()`` also returns the number of non-NaN values.
    """

    #: plain per-study function returning a float
    study_fn: Callable[..., float]
    #: whether ``y`` carries a reference image (else ``y`` is only the ROI mask)
    needs_reference = True

    def __init__(
        self, reduction: MetricReduction | str = MetricReduction.MEAN, get_not_nans: bool = False, **kwargs: Any
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.get_not_nans = get_not_nans
        self.kwargs = kwargs

    def _study_args(self, y_pred: torch.Tensor, y: torch.Tensor, roi: torch.Tensor) -> tuple:
        """Image metrics: ``image [1, *spatial]``, ``reference [1, *spatial]``, ``roi [1, *spatial]``."""
        return y_pred, y[:1], roi

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, roi: torch.Tensor | None = None
    ) -> torch.Tensor:
        name = type(self).__name__
        if roi is None:
            channels = 2 if self.needs_reference else 1
            if y is None or y.ndim < 2 or y.shape[1] != channels:
                got = None if y is None else tuple(y.shape)
                raise ValueError(
                    f"{name}: without roi=..., y must be [B, {channels}, *spatial] with the ROI mask as its last "
                    f"channel, got y of shape {got}."
                )
            y, roi = y[:, :-1], y[:, -1:]
        elif y is None and self.needs_reference:
            raise ValueError(f"{name} needs the reference image as y [B, 1, *spatial].")
        elif y is not None and not self.needs_reference:
            raise ValueError(f"{name}: give the ROI mask either as y or as roi, not both.")
        if y is None:
            y = roi[:, :0]  # no reference: an empty channel axis keeps the per-study loop uniform
        if len({y_pred.shape[0], y.shape[0], roi.shape[0]}) > 1:
            raise ValueError(
                f"batch sizes differ: y_pred {tuple(y_pred.shape)}, y {tuple(y.shape)}, roi {tuple(roi.shape)}."
            )
        values = [type(self).study_fn(*self._study_args(p, t, r), **self.kwargs) for p, t, r in zip(y_pred, y, roi)]
        return torch.tensor(values, dtype=torch.float64).reshape(-1, 1)

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reduce the per-study values ``[N, 1]`` (``reduction`` overrides the one given at construction)."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"{type(self).__name__} has no values to aggregate; call it on a batch first.")
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f


class ROIRMSEMetric(StudyMetric):
    """Cumulative :func:`roi_rmse` over studies (layout: see the module docstring)."""

    study_fn = staticmethod(roi_rmse)


class ROIMAEMetric(StudyMetric):
    """Cumulative :func:`roi_mae` over studies (layout: see the module docstring)."""

    study_fn = staticmethod(roi_mae)


class BodyPSNRMetric(StudyMetric):
    """Cumulative :func:`body_psnr` over studies; ROI = body mask (layout: see the module docstring).

    Args:
        max_val: peak value in image units; None: each study's reference maximum in the body.
    """

    study_fn = staticmethod(body_psnr)

    def __init__(self, max_val: float | None = None, reduction: MetricReduction | str = MetricReduction.MEAN,
                 get_not_nans: bool = False) -> None:
        super().__init__(reduction, get_not_nans, max_val=max_val)


class BodySSIMMetric(StudyMetric):
    """Cumulative :func:`body_ssim` over studies; ROI = body mask (layout: see the module docstring).

    Args:
        data_range: in image units; None: each study's reference ``max - min`` in the body.
        win_size, kernel_sigma: Gaussian SSIM window, as in MONAI's ``SSIMMetric``.
    """

    study_fn = staticmethod(body_ssim)

    def __init__(self, data_range: float | None = None, win_size: int | Sequence[int] = 11,
                 kernel_sigma: float | Sequence[float] = 1.5, reduction: MetricReduction | str = MetricReduction.MEAN,
                 get_not_nans: bool = False) -> None:
        super().__init__(reduction, get_not_nans, data_range=data_range, win_size=win_size,
                         kernel_sigma=kernel_sigma)

    def _study_args(self, y_pred: torch.Tensor, y: torch.Tensor, roi: torch.Tensor) -> tuple:
        """SSIM needs the spatial images: ``[*spatial]`` (the single channel dropped)."""
        check_same_shape(y_pred=y_pred, y=y[:1], roi=roi)
        return y_pred[0], y[0], roi[0]
