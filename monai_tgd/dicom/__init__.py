"""DICOM PET series in and out: the headers of a series as MONAI reads it (:mod:`.series`), the SUV factor from
its header (:mod:`.suv`), and a denoised volume written as a new PET series beside the original (:mod:`.writer`).
pydicom is enough for all of it (highdicom's strengths, segmentations and structured reports, are not needed for an
image series), so no further dependency."""

from .series import (
    ARRAY_ORDER,
    read_pet_header,
    read_series_headers,
    reference_affine,
    tag_label,
)
from .suv import (
    SUVFactor,
    suv_factor_explicit,
    suv_factor_from_dataset,
    suv_factor_from_meta,
)
from .writer import (
    SaveDicomSeriesd,
    check_dicom_output,
    dicom_output_dir,
    is_own_series,
    plan_dicom_outputs,
    write_pet_series,
)

__all__ = [
    "ARRAY_ORDER", "read_pet_header", "read_series_headers", "reference_affine", "tag_label", "SUVFactor",
    "suv_factor_explicit", "suv_factor_from_dataset", "suv_factor_from_meta", "SaveDicomSeriesd", "check_dicom_output",
    "dicom_output_dir", "is_own_series", "plan_dicom_outputs", "write_pet_series",
]  # fmt: skip
