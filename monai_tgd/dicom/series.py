"""The headers of a DICOM PET series as MONAI reads it: its slices in ``PydicomReader``'s order, the first slice's
header (the one MONAI keeps metadata of), the affine MONAI gives the series, and the tag labels every message uses.

Array order (the one convention of :mod:`monai_tgd.dicom`): a volume of a series of ``N`` slices with ``Rows`` x
``Columns`` pixels is ``[1, Columns, Rows, N]`` (channel first; ``[Columns, Rows, N]`` also accepted), exactly the
array ``LoadImage(reader="PydicomReader", ensure_channel_first=True)`` returns for the series folder (MONAI's
defaults ``swap_ij=True``, ``affine_lps_to_ras=True``): ``volume[0, c, r, k] == pixel_array[r, c]`` of the ``k``-th
slice in ascending ``InstanceNumber`` (0020,0013), in the slice's stored units after RescaleSlope/Intercept.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

#: The array order of :func:`write_pet_series` and of MONAI's ``PydicomReader`` (quoted in shape errors).
ARRAY_ORDER = (
    "[1, Columns, Rows, slices] (or [Columns, Rows, slices]), slices in ascending InstanceNumber (0020,0013): the "
    "array LoadImage(reader='PydicomReader', ensure_channel_first=True) returns for the reference series folder"
)


def tag_label(keyword: str) -> str:
    """``"PatientWeight (0010,1030)"``: a DICOM keyword with its tag, as every error message here names it."""
    tag = pydicom.datadict.tag_for_keyword(keyword)
    return keyword if tag is None else f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _series_paths(folder: Path) -> list[Path]:
    # the files MONAI's PydicomReader reads for a folder: glob "<folder>/*" (no hidden files, not recursive)
    return [Path(p) for p in sorted(glob.glob(os.path.join(glob.escape(str(folder)), "*"))) if Path(p).is_file()]


def read_series_headers(folder: str | os.PathLike) -> list[tuple[Path, Dataset]]:
    """The slices of the DICOM series in ``folder``, headers only (pixel data not read), in ascending
    ``InstanceNumber``: the order in which MONAI's ``PydicomReader`` stacks them along the last array axis.

    As that reader does, files that are not DICOM are skipped; unlike it, every slice must have an
    ``InstanceNumber``, a distinct one, and all must belong to one series (``SeriesInstanceUID``), have the same
    ``Rows``/``Columns`` and be single-frame: otherwise the slice order, and so which written slice belongs to which
    input slice, would be ambiguous. Raises ``ValueError`` naming the folder and the attribute.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: expected a folder holding one DICOM series (one file per slice); not a folder.")
    slices = []
    for path in _series_paths(folder):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, OSError):
            continue
        if "InstanceNumber" not in ds or ds.InstanceNumber in (None, ""):
            if "SOPClassUID" in ds and "ImagePositionPatient" in ds:
                raise ValueError(
                    f"{path}: {tag_label('InstanceNumber')} is missing; the slice order of the series in {folder} "
                    "is defined by it (as MONAI's PydicomReader stacks slices). Expected an integer on every slice."
                )
            continue  # e.g. a DICOMDIR: not a slice
        slices.append((path, ds))
    if not slices:
        raise ValueError(f"{folder}: no DICOM image files found; expected a folder holding one DICOM series.")
    slices.sort(key=lambda s: int(s[1].InstanceNumber))
    numbers = [int(ds.InstanceNumber) for _, ds in slices]
    if len(set(numbers)) != len(numbers):
        dup = sorted({n for n in numbers if numbers.count(n) > 1})
        raise ValueError(
            f"{folder}: {tag_label('InstanceNumber')} {dup} occur(s) on more than one file; expected one series with "
            "a distinct InstanceNumber per slice (several series in one folder?)."
        )
    for keyword in ("SeriesInstanceUID", "Rows", "Columns"):
        values = {str(ds.get(keyword)) for _, ds in slices}
        if len(values) > 1:
            raise ValueError(
                f"{folder}: the files differ in {tag_label(keyword)} ({sorted(values)}); expected one series whose "
                "slices all have the same size."
            )
    for path, ds in slices:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise ValueError(f"{path}: a multi-frame image ({tag_label('NumberOfFrames')} {ds.NumberOfFrames}); "
                             "expected a series of single-frame slices.")  # fmt: skip
    return slices


def read_pet_header(path: str | os.PathLike) -> Dataset:
    """The header (no pixel data) of the slice MONAI's ``PydicomReader`` keeps the metadata of: for a series folder
    the slice with the lowest ``InstanceNumber``, for a file that file."""
    path = Path(path)
    if path.is_dir():
        return read_series_headers(path)[0][1]
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError) as e:
        raise ValueError(f"{path}: cannot be read as a DICOM file ({e}).") from e


def reference_affine(headers: Sequence[tuple[Path, Dataset]] | Sequence[Dataset], ras: bool = True) -> np.ndarray:
    """The 4x4 affine MONAI's ``PydicomReader`` (``swap_ij=True``) gives the series (slices in the order of
    :func:`read_series_headers`): voxel ``[c, r, k]`` to patient mm, RAS (``ras=True``, MONAI's default) or LPS."""
    datasets = [h[1] if isinstance(h, tuple) else h for h in headers]
    first = datasets[0]
    rx, ry, rz, cx, cy, cz = (float(v) for v in first.ImageOrientationPatient)
    dr, dc = (float(v) for v in first.PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = np.array([rx, ry, rz]) * dc  # along a row: the column index c
    affine[:3, 1] = np.array([cx, cy, cz]) * dr  # along a column: the row index r
    affine[:3, 3] = [float(v) for v in first.ImagePositionPatient]
    if len(datasets) > 1:
        last = np.array([float(v) for v in datasets[-1].ImagePositionPatient])
        affine[:3, 2] = (last - affine[:3, 3]) / (len(datasets) - 1)
    else:
        affine[2, 2] = 1.0
    if ras:
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    return affine
