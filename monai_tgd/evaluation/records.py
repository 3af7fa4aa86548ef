"""Datalist records of the evaluation workflows: reading their images and checking them before any inference.

Every file a record names is read in full and validated by one mechanism,
:func:`monai_tgd.transforms.validate.load_pet` (``.nii.gz`` streams read to the end with their CRC checked; images
finite with voxel sizes > 0; label maps integer-valued with a body voxel). :func:`check_test_records` and
:func:`check_ood_records` run it on every file of every record *before* any inference, each distinct file once, and
raise one error listing every bad file with its path, study and field (datalist key); the evaluation then reads
each study's files again through the same function (:func:`load_image`, :func:`load_label`) when it reaches it.

Test records (Table 1, KSE sweep) hold ``reference``, ``realizations`` (>= 2 images) and ``label``, optionally
``truth`` and ``lesions``; out-of-distribution records hold the input image (``input_120s``), ``reference``,
``label`` and the integer ``ood_label``. Images are 3D volumes ``[*spatial]`` in the canonical orientation of
:class:`monai_tgd.transforms.geometry.CanonicalPETOrientation` (last axis superior-inferior, the axis the slab inferer
and the ROI slices run along), whatever the array order of the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from monai_tgd.transforms.geometry import CanonicalPETOrientation
from monai_tgd.transforms.validate import check_files, load_pet, where

__all__ = [
    "load_image",
    "load_label",
    "where",
    "table1_files",
    "ood_files",
    "check_study_files",
    "check_test_records",
    "check_ood_records",
]

#: fields of the records that hold label maps (checked as integer-valued); every other file field is an image
LABEL_FIELDS = ("label",)


def load_image(path: str | os.PathLike, study: str | None = None, field: str | None = None) -> np.ndarray:
    """The voxels of a PET image as float32 ``[*spatial]`` (image units, canonical orientation), read in full and
    validated (:func:`monai_tgd.transforms.validate.load_pet`); errors name the path and, when given, the study and
    field."""
    named = where(study, field) if study is not None and field else None
    return _canonical(load_pet(path, named), named or str(path))


def load_label(path: str | os.PathLike, study: str | None = None, field: str | None = "label") -> np.ndarray:
    """A label map as int64 ``[*spatial]``, read in full and validated as integer-valued with a body voxel
    (label > 0); errors name the path and, when given, the study and field."""
    named = where(study, field) if study is not None and field else None
    label = _canonical(load_pet(path, named, label=True, allow_empty_label=False), named or str(path))
    return label.astype(np.int64) if label.dtype.kind in "iub" else np.rint(label).astype(np.int64)


def _canonical(img, name: str) -> np.ndarray:
    """``[*spatial]`` voxels of a loaded ``[1, *spatial]`` MetaTensor in the canonical orientation (a permutation and
    flips of the array: values are not interpolated)."""
    return np.asarray(CanonicalPETOrientation()(img, name=name))[0]


def _name(record: Mapping, index: int) -> str:
    return str(record.get("study", f"#{index}"))


def table1_files(record: Mapping, index: int) -> dict[str, str]:
    """``{field: path}`` of test record number ``index`` (Table 1), after checking its fields (no file is read)."""
    name = _name(record, index)
    for field in ("reference", "realizations", "label"):
        if field not in record:
            raise ValueError(
                f"study {name}: missing field '{field}' (test records need reference, realizations, label)."
            )
    realizations = record["realizations"]
    if not isinstance(realizations, (list, tuple)) or len(realizations) < 2:
        raise ValueError(f"study {name}: 'realizations' must list at least 2 images, got {realizations!r}.")
    for i, lesion in enumerate(record.get("lesions") or []):
        if not isinstance(lesion, Mapping) or "label" not in lesion:
            raise ValueError(f"study {name}: lesions[{i}] has no 'label' (got {lesion!r}).")
    fields = {"reference": record["reference"], "label": record["label"]}
    if record.get("truth"):
        fields["truth"] = record["truth"]
    fields.update({f"realizations[{i}]": p for i, p in enumerate(realizations)})
    return {f: os.fspath(p) for f, p in fields.items()}


def ood_files(record: Mapping, index: int, input_key: str) -> dict[str, str]:
    """``{field: path}`` of out-of-distribution record number ``index`` (Fig. 6), input image ``input_key``, after
    checking its fields (no file is read)."""
    name = _name(record, index)
    for field in (input_key, "reference", "label", "ood_label"):
        if field not in record:
            raise ValueError(f"study {name}: missing field '{field}' (out-of-distribution records need it).")
    if isinstance(record["ood_label"], bool) or not isinstance(record["ood_label"], int):
        raise ValueError(f"study {name}: 'ood_label' must be an integer label value, got {record['ood_label']!r}.")
    return {f: os.fspath(record[f]) for f in (input_key, "reference", "label")}


def check_study_files(
    studies: Sequence[tuple[str, Mapping[str, str]]], prefix: str = ""
) -> dict[str, tuple[int, ...]]:
    """Read and validate every file of every study before any inference, then check that each study's images share
    one shape. Returns ``{path: spatial shape}`` of the distinct files (each read once).

    Args:
        studies: ``(study name, {field: path})`` per study; fields in :data:`LABEL_FIELDS` are label maps
            (integer-valued, with a voxel > 0), the others PET images (finite, voxel sizes > 0).
        prefix: put before the shape-mismatch message (e.g. the function's name).

    Raises:
        FileNotFoundError: missing files (all listed, each with its study and field).
        ValueError: unreadable (truncated, corrupted), non-finite or wrongly shaped images and non-integer or empty
            label maps (all listed, each with its path, study and field and the expected form); images of
            different shapes within a study.
    """
    entries = [
        (path, where(name, field), "label" if field in LABEL_FIELDS else "image")
        for name, fields in studies
        for field, path in fields.items()
    ]
    shapes = check_files(entries, allow_empty_labels=False)
    for name, fields in studies:
        found = {f: shapes[p] for f, p in fields.items()}
        if len(set(found.values())) > 1:
            raise ValueError(f"{prefix}study {name}: images of different shapes: {found}.")
    return shapes


def check_test_records(records: Sequence[Mapping]) -> dict[str, tuple[int, ...]]:
    """Fields of every test record (Table 1), then :func:`check_study_files` on all their files."""
    return check_study_files([(_name(r, i), table1_files(r, i)) for i, r in enumerate(records)])


def check_ood_records(records: Sequence[Mapping], input_key: str) -> dict[str, tuple[int, ...]]:
    """Fields of every out-of-distribution record (Fig. 6), then :func:`check_study_files` on all their files."""
    return check_study_files([(_name(r, i), ood_files(r, i, input_key)) for i, r in enumerate(records)])
