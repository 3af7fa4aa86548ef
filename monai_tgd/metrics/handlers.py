"""Ignite handlers for the monai-tgd metrics, following MONAI's ``IgniteMetricHandler`` pattern (e.g. ``MeanDice``).

Attach one to an evaluator, or put it in a MONAI evaluator's ``key_val_metric``/``additional_metrics``; its
``output_transform`` must turn ``engine.state.output`` into the ``(y_pred, y)`` pair of the wrapped metric, e.g. for
the ensemble CoV ``(realisations [B, R, *spatial], liver mask [B, 1, *spatial])``::

    EnsembleCoVHandler(output_transform=lambda out: (out["realizations"], out["liver"])).attach(evaluator, "liver_cov")

See :mod:`monai_tgd.metrics.ensemble` and :mod:`monai_tgd.metrics.roi` for the layouts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from monai.handlers import IgniteMetricHandler
from monai.utils import MetricReduction

from .ensemble import EnsembleBiasMetric, EnsembleCoVMetric
from .roi import BodyPSNRMetric, BodySSIMMetric, ROIMAEMetric, ROIRMSEMetric

__all__ = [
    "EnsembleBiasHandler",
    "EnsembleCoVHandler",
    "ROIRMSEHandler",
    "ROIMAEHandler",
    "BodyPSNRHandler",
    "BodySSIMHandler",
]


def _identity(x):
    return x


class EnsembleBiasHandler(IgniteMetricHandler):
    """Mean (``reduction``) ensemble lesion bias in percent over the studies of an evaluation."""

    def __init__(self, reduction: MetricReduction | str = MetricReduction.MEAN, output_transform: Callable = _identity,
                 save_details: bool = True) -> None:
        super().__init__(EnsembleBiasMetric(reduction=reduction), output_transform=output_transform,
                         save_details=save_details)


class EnsembleCoVHandler(IgniteMetricHandler):
    """Mean (``reduction``) ensemble background CoV in percent over the studies of an evaluation."""

    def __init__(self, ddof: int = 1, reduction: MetricReduction | str = MetricReduction.MEAN,
                 output_transform: Callable = _identity, save_details: bool = True) -> None:
        super().__init__(EnsembleCoVMetric(ddof=ddof, reduction=reduction), output_transform=output_transform,
                         save_details=save_details)


class ROIRMSEHandler(IgniteMetricHandler):
    """Mean (``reduction``) ROI RMSE in image units over the studies of an evaluation."""

    def __init__(self, reduction: MetricReduction | str = MetricReduction.MEAN, output_transform: Callable = _identity,
                 save_details: bool = True) -> None:
        super().__init__(ROIRMSEMetric(reduction=reduction), output_transform=output_transform,
                         save_details=save_details)


class ROIMAEHandler(IgniteMetricHandler):
    """Mean (``reduction``) ROI mean absolute error in image units over the studies of an evaluation."""

    def __init__(self, reduction: MetricReduction | str = MetricReduction.MEAN, output_transform: Callable = _identity,
                 save_details: bool = True) -> None:
        super().__init__(ROIMAEMetric(reduction=reduction), output_transform=output_transform,
                         save_details=save_details)


class BodyPSNRHandler(IgniteMetricHandler):
    """Mean (``reduction``) body PSNR in dB over the studies of an evaluation."""

    def __init__(self, max_val: float | None = None, reduction: MetricReduction | str = MetricReduction.MEAN,
                 output_transform: Callable = _identity, save_details: bool = True) -> None:
        super().__init__(BodyPSNRMetric(max_val=max_val, reduction=reduction), output_transform=output_transform,
                         save_details=save_details)


class BodySSIMHandler(IgniteMetricHandler):
    """Mean (``reduction``) body SSIM over the studies of an evaluation."""

    def __init__(self, data_range: float | None = None, win_size: int | Sequence[int] = 11,
                 kernel_sigma: float | Sequence[float] = 1.5, reduction: MetricReduction | str = MetricReduction.MEAN,
                 output_transform: Callable = _identity, save_details: bool = True) -> None:
        super().__init__(
            BodySSIMMetric(data_range=data_range, win_size=win_size, kernel_sigma=kernel_sigma,
                           reduction=reduction),
            output_transform=output_transform,
            save_details=save_details,
        )
