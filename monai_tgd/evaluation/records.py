"""Datalist records of the evaluation workflows: reading their images and checking them before any inference.

The checks read the image headers only (no voxel data), so a workflow checks every record first and fails before
spending time on inference. Test records (Table 1, KSE sweep) hold ``reference``, ``realizations`` (>= 2 images) and
``label``, optionally ``truth`` and ``lesions``; out-of-distribution records hold the input image (``input_120s``),
``reference``, ``label`` and the integer ``ood_label``. Images are 3D volumes ``[*spatial]``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["load_image", "load_label", "image_shape", "same_shape", "check_test_record", "check_ood_record"]


def load_image(path: str | os.PathLike) -> np.ndarray:
    """The voxels of a NIfTI image as float32 ``[*spatial]`` (image units)."""
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)


def load_label(path: str | os.PathLike) -> np.ndarray:
    """A label map as int64 ``[*spatial]`` (rounded to the nearest label value)."""
    return np.rint(load_image(path)).astype(np.int64)


def image_shape(path: str, where: str) -> tuple[int, ...]:
    """Shape of the image at ``path`` from its header; ``where`` names the field in errors."""
    import nibabel as nib

    if not Path(path).is_file():
        raise FileNotFoundError(f"{where}: file {path} not found.")
    try:
        return tuple(nib.load(path).shape)
    except Exception as e:
        raise ValueError(f"{where}: cannot read image {path} ({type(e).__name__}: {e}).") from e


def same_shape(paths: Mapping[str, str | os.PathLike], study: str, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """``{field: shape}`` of the images ``{field: path}`` of study ``study``; raises unless all shapes are equal."""
    shapes = {f: image_shape(str(p), f"study {study}, field '{f}'") for f, p in paths.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"{prefix}study {study}: images of different shapes: {shapes}.")
    return shapes


def check_test_record(record: Mapping, index: int) -> None:
    """Fields and image shapes of test record number ``index`` (Table 1)."""
    name = record.get("study", f"#{index}")
    for field in ("reference", "realizations", "label"):
        if field not in record:
            raise ValueError(
                f"study {name}: missing field '{field}' (test records need reference, realizations, label)."
            )
    realizations = record["realizations"]
    if not isinstance(realizations, (list, tuple)) or len(realizations) < 2:
        raise ValueError(f"study {name}: 'realizations' must list at least 2 images, got {realizations!r}.")
    fields = {"reference": record["reference"], "label": record["label"]}
    if record.get("truth"):
        fields["truth"] = record["truth"]
    fields.update({f"realizations[{i}]": p for i, p in enumerate(realizations)})
    shapes = same_shape(fields, name)
    if len(shapes["reference"]) != 3:
        raise ValueError(f"study {name}: images must be 3D volumes, got shape {shapes['reference']}.")
    for i, lesion in enumerate(record.get("lesions") or []):
        if not isinstance(lesion, Mapping) or "label" not in lesion:
            raise ValueError(f"study {name}: lesions[{i}] has no 'label' (got {lesion!r}).")


def check_ood_record(record: Mapping, index: int, input_key: str) -> None:
    """Fields and image shapes of out-of-distribution record number ``index`` (Fig. 6), input image ``input_key``."""
    name = record.get("study", f"#{index}")
    for field in (input_key, "reference", "label", "ood_label"):
        if field not in record:
            raise ValueError(f"study {name}: missing field '{field}' (out-of-distribution records need it).")
    same_shape({f: record[f] for f in (input_key, "reference", "label")}, name)
    if isinstance(record["ood_label"], bool) or not isinstance(record["ood_label"], int):
        raise ValueError(f"study {name}: 'ood_label' must be an integer label value, got {record['ood_label']!r}.")
