"""Input checks for PET volumes, run before any long work: shape, finite values, voxel sizes, readable files.

* :class:`ValidatePET` / :class:`ValidatePETd`: MONAI transforms that return the image unchanged (same object,
  metadata untouched) or raise ``ValueError`` naming the file and the expected form.
* :func:`check_pet_files`: load and check every input file or DICOM series folder *before* any inference, so a
  bad input among many stops a run before the first output is written.

Expected form: a 3D single-channel volume. After ``LoadImage(ensure_channel_first=True)`` that is ``[1, H, W, D]``;
on disk a 3D NIfTI, a 4D NIfTI with a singleton 4th (channel/time) axis, or a DICOM series folder of one volume.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform, Transform

Image = np.ndarray | torch.Tensor

__all__ = ["ValidatePET", "ValidatePETd", "check_pet_files", "EXPECTED_FORM"]

EXPECTED_FORM = (
    "a 3D single-channel PET volume: a 3D NIfTI (or 4D with a singleton 4th axis) or a DICOM series folder, "
    "i.e. [1, H, W, D] channel-first after LoadImage(ensure_channel_first=True)"
)


def _name(img, name: str | None = None) -> str:
    if name:
        return str(name)
    if isinstance(img, MetaTensor):
        filename = img.meta.get("filename_or_obj")
        if filename:
            return str(filename)
    return "input image"


class ValidatePET(Transform):
    """Check a channel-first PET volume and return it unchanged; raise ``ValueError`` naming the file otherwise.

    Checks, in order:

    * shape ``[1, H, W, D]`` (one channel, three spatial dimensions, none empty): 2D images, 5D or multi-channel /
      multi-frame data are rejected;
    * all values finite (no NaN or inf; the message gives their numbers);
    * voxel sizes > 0 and finite: the norms of the affine's three spatial columns (MetaTensor inputs) and, when the
      metadata carries them (NIfTI), ``pixdim[1:4]``. Plain arrays without an affine skip this check.

    Args:
        name: name for messages; default: ``meta["filename_or_obj"]`` of a MetaTensor, else "input image".
    """

    def __init__(self, name: str | None = None) -> None:
        self.name = name

    def __call__(self, img: np.ndarray | torch.Tensor, name: str | None = None) -> np.ndarray | torch.Tensor:
        name = _name(img, name or self.name)
        shape = tuple(img.shape)
        if len(shape) != 4 or shape[0] != 1 or min(shape) < 1:
            if len(shape) == 4 and shape[0] > 1:
                found = f"{shape[0]} channels or frames"
            elif len(shape) < 4:
                found = f"{len(shape) - 1} spatial dimension(s)"
            else:
                found = f"{len(shape)} dimensions"
            raise ValueError(f"{name}: expected {EXPECTED_FORM}; got shape {list(shape)} ({found}).")
        data = torch.as_tensor(img.as_tensor() if isinstance(img, MetaTensor) else img)
        if data.is_floating_point() and not bool(torch.isfinite(data).all()):
            n_nan = int(torch.isnan(data).sum())
            n_inf = int(torch.isinf(data).sum())
            raise ValueError(
                f"{name}: expected finite voxel values; found {n_nan} NaN and {n_inf} inf voxel(s) of {data.numel()}."
            )
        if isinstance(img, MetaTensor):
            affine = img.affine.detach().cpu().to(torch.float64)
            sizes = torch.linalg.norm(affine[:3, :3], dim=0).tolist()
            pixdim = img.meta.get("pixdim")
            if pixdim is not None:
                pixdim = np.asarray(pixdim.cpu() if isinstance(pixdim, torch.Tensor) else pixdim, dtype=float)
                pixdim = pixdim.reshape(-1)[1:4].tolist() if pixdim.size >= 4 else []
            for label, values in (("affine", sizes), ("header pixdim", pixdim or [])):
                if any(not np.isfinite(v) or v <= 0 for v in values):
                    raise ValueError(
                        f"{name}: expected finite voxel sizes > 0; got {[round(float(v), 6) for v in values]} from the "
                        f"{label}."
                    )
        return img


class ValidatePETd(MapTransform):
    """Dictionary version of :class:`ValidatePET`: checks ``data[key]`` for every key, returns ``data`` unchanged."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.validator = ValidatePET()

    def __call__(self, data: Mapping[Hashable, Image]) -> Mapping[Hashable, Image]:
        for key in self.key_iterator(data):
            img = data[key]
            name = None if isinstance(img, MetaTensor) and img.meta.get("filename_or_obj") else f"'{key}'"
            self.validator(img, name)
        return data


def check_pet_files(files: str | os.PathLike | Sequence[str | os.PathLike], reader=None) -> list[str]:
    """Load and check every input before any inference; return their absolute, normalised paths.

    All files are checked and all problems reported together: missing paths first (``FileNotFoundError``, before
    anything is loaded), then unreadable files and failed :class:`ValidatePET` checks (``ValueError``, one line per
    file). Volumes are loaded one at a time and not kept.

    Args:
        files: one path or a list; each a NIfTI file (``.nii``/``.nii.gz``) or a DICOM series folder (needs
            ``pydicom``; MONAI's ``PydicomReader`` is used, values rescaled by the series' rescale slope/intercept).
        reader: passed to ``monai.transforms.LoadImage`` (None: MONAI picks a reader from the file name).
    """
    paths = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    if not paths:
        raise ValueError(f"no input files given (expected a list of paths to {EXPECTED_FORM}).")
    paths = [os.path.normpath(os.path.abspath(os.fspath(p))) for p in paths]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} input(s) not found: {missing} (each must be a NIfTI file or a DICOM series folder)."
        )
    loader = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)
    validator = ValidatePET()
    problems = []
    for path in paths:
        if os.path.isdir(path) and not any(Path(path).iterdir()):
            problems.append(f"{path}: empty folder (expected a DICOM series folder).")
            continue
        try:
            img = loader(path)
        except Exception as e:  # readers raise many types; report them all the same way
            hint = " (reading DICOM series folders needs `pip install pydicom`)" if os.path.isdir(path) else ""
            problems.append(f"{path}: cannot read it as {EXPECTED_FORM}{hint}: {type(e).__name__}: {e}")
            continue
        try:
            validator(img, path)
        except ValueError as e:
            problems.append(str(e))
    if problems:
        summary = f"{len(problems)} of {len(paths)} input(s) rejected, nothing was processed:"
        raise ValueError("\n  ".join([summary, *problems]))
    return paths
