"""Atomic file output: a file either appears complete under its final name or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path"]


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
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
