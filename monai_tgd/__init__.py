"""monai-tgd: Targeted Gradient Descent (Chen, Asma, Chan, MICCAI 2021) for PET denoising with MONAI."""

__version__ = "0.1.0"
