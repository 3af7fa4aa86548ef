"""MONAI transforms for PET denoising with TGD: count-domain rebinning, 2.5D slab sampling, noise-level picks,
input checks."""

from .counts import SplitCounts, SplitCountsd, ThinCounts, ThinCountsd
from .noise_level import RandNoiseLeveld
from .slab import RandSlab25Dd, Slab25D, Slab25Dd, extract_slabs
from .validate import (
    LABEL_FORM,
    ValidateLabel,
    ValidateLabeld,
    ValidatePET,
    ValidatePETd,
    VerifiedNibabelReader,
    check_files,
    check_pet_files,
    load_pet,
)

__all__ = [
    "ThinCounts",
    "SplitCounts",
    "ThinCountsd",
    "SplitCountsd",
    "RandNoiseLeveld",
    "Slab25D",
    "Slab25Dd",
    "RandSlab25Dd",
    "extract_slabs",
    "ValidatePET",
    "ValidatePETd",
    "check_pet_files",
    "ValidateLabel",
    "ValidateLabeld",
    "VerifiedNibabelReader",
    "load_pet",
    "check_files",
    "LABEL_FORM",
]
