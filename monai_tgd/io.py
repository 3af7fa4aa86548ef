"""Atomic file output: a file either appears complete under its final name or not at all.

* :func:`atomic_path`: a temporary path renamed onto the final one only if the writing block succeeds.
* :class:`AtomicNibabelWriter`: MONAI's ``NibabelWriter`` writing through :func:`atomic_path`, for
  ``SaveImage(d)(..., writer=AtomicNibabelWriter)``; it also carries the input's NIfTI units and timing fields.
* :func:`folder_lock`: one writer at a time in a folder (the cohort generator, the reproduction study).
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.data import NibabelWriter
from monai.utils import convert_data_type, get_equivalent_dtype

__all__ = ["atomic_path", "folder_lock", "AtomicNibabelWriter"]


@contextmanager
def folder_lock(root: str | os.PathLike, on_busy: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``root/.lock`` for the block (released on exit or if the process dies).

    If another process holds it, ``on_busy()`` is called first: it may raise to give up, or return to wait for it.
    """
    with open(Path(root) / ".lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_busy is not None:
                on_busy()
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds.

    The temporary name keeps the final name's suffixes (``.nii.gz``, ``.pt``, ...) so writers that choose the
    format from the extension (nibabel, SimpleITK) work unchanged. On error the temporary file is removed and
    ``path`` is left as it was, so an interrupted run never leaves a file a later run would take for complete.

    Example::

        with atomic_path("out/image.nii.gz") as tmp:
            nib.save(img, tmp)
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".partial-", suffix="-" + final.name, dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)  # mkstemp makes 0600 files; give the final file the mode open() would
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


# NIfTI header fields copied from the input's metadata (MONAI's NibabelReader puts every header field into the
# MetaTensor's ``meta``); geometry (dim, pixdim, qform, sform) comes from the data and the affine instead.
NIFTI_HEADER_FIELDS = (
    "xyzt_units", "dim_info", "slice_code", "slice_start", "slice_end", "slice_duration", "toffset",
    "intent_code", "intent_p1", "intent_p2", "intent_p3",
)  # fmt: skip


class AtomicNibabelWriter(NibabelWriter):
    """``monai.data.NibabelWriter`` that writes through :func:`atomic_path` and keeps the input's NIfTI units.

    Use it as ``SaveImage(d)(..., writer=AtomicNibabelWriter)`` (or ``"writer": "$monai_tgd.io.AtomicNibabelWriter"``
    in a bundle config): the output appears complete under its final name or not at all (an interrupted or failing
    write leaves no partial ``.nii.gz``).

    Header: the affine is written as sform and qform (code 1, as ``NibabelWriter`` does). The NIfTI fields in
    :data:`NIFTI_HEADER_FIELDS` (``xyzt_units``, slice timing, ``toffset``, intent) are copied from the image's
    metadata when present (NIfTI inputs read by MONAI's ``NibabelReader``); otherwise ``xyzt_units`` is set to mm and
    s, the units of MONAI affines. Voxel values are written as given (no rescaling), so they keep the input's units
    when the pipeline does not rescale them; NIfTI has no field for intensity units.
    """

    def set_metadata(self, meta_dict: Mapping | None, resample: bool = True, **options) -> None:
        super().set_metadata(meta_dict, resample=resample, **options)
        self.header_fields = {}
        for key in NIFTI_HEADER_FIELDS:
            if meta_dict is not None and key in meta_dict:
                self.header_fields[key] = np.asarray(convert_data_type(meta_dict[key], np.ndarray)[0]).reshape(-1)[0]

    def write(self, filename: str | os.PathLike, verbose: bool = False, **obj_kwargs) -> None:
        header = obj_kwargs.pop("header", None) or nib.Nifti1Header()
        fields = getattr(self, "header_fields", {})
        for key, value in fields.items():
            header[key] = value
        if "xyzt_units" not in fields:
            header.set_xyzt_units("mm", "sec")
        # a given header's data type wins over the array's in nibabel: keep the requested output dtype
        dtype = self.output_dtype if self.output_dtype is not None else self.data_obj.dtype
        header.set_data_dtype(get_equivalent_dtype(dtype, np.ndarray))
        with atomic_path(filename) as tmp:
            super().write(tmp, verbose=False, header=header, **obj_kwargs)
        if verbose:
            logging.getLogger(__name__).info(f"writing: {filename}")
