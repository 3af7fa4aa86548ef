"""MONAI transforms for PET denoising with TGD: count-domain rebinning, 2.5D slab sampling, noise-level picks,
input checks, canonical orientation and voxel size."""

from .counts import SplitCounts, SplitCountsd, ThinCounts, ThinCountsd
from .geometry import (
    SPACING_POLICIES,
    CanonicalPETOrientation,
    CanonicalPETOrientationd,
    PETSpacing,
    PETSpacingd,
    RestoreGeometryd,
)
from .noise_level import RandNoiseLeveld
from .suv import FromSUV, FromSUVd, ToSUV, ToSUVd
from .slab import RandSlab25Dd, Slab25D, Slab25Dd, extract_slabs
from .validate import (
    LABEL_FORM,
    ValidateLabel,
    ValidateLabeld,
    ValidatePET,
    ValidatePETd,
    VerifiedNibabelReader,
    check_choice,
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
    "check_choice",
    "LABEL_FORM",
    "CanonicalPETOrientation",
    "CanonicalPETOrientationd",
    "PETSpacing",
    "PETSpacingd",
    "RestoreGeometryd",
    "SPACING_POLICIES",
    "ToSUV",
    "ToSUVd",
    "FromSUV",
    "FromSUVd",
]
