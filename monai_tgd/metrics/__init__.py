"""PET image-quality metrics: ensemble bias and CoV, ROI RMSE/MAE/bias/CoV, body PSNR/SSIM; functions, MONAI ``Cumulative``
metrics and Ignite handlers."""

from .ensemble import EnsembleBiasMetric, EnsembleCoVMetric, ensemble_bias, ensemble_cov
from .handlers import (
    BodyPSNRHandler,
    BodySSIMHandler,
    EnsembleBiasHandler,
    EnsembleCoVHandler,
    ROIMAEHandler,
    ROIRMSEHandler,
)
from .roi import (
    BodyPSNRMetric,
    BodySSIMMetric,
    ROIMAEMetric,
    ROIRMSEMetric,
    body_psnr,
    body_ssim,
    roi_bias,
    roi_cov,
    roi_mae,
    roi_rmse,
)

__all__ = [
    "ensemble_bias",
    "ensemble_cov",
    "roi_rmse",
    "roi_mae",
    "roi_bias",
    "roi_cov",
    "body_psnr",
    "body_ssim",
    "EnsembleBiasMetric",
    "EnsembleCoVMetric",
    "ROIRMSEMetric",
    "ROIMAEMetric",
    "BodyPSNRMetric",
    "BodySSIMMetric",
    "EnsembleBiasHandler",
    "EnsembleCoVHandler",
    "ROIRMSEHandler",
    "ROIMAEHandler",
    "BodyPSNRHandler",
    "BodySSIMHandler",
]
