"""Input checks for PET volumes and label maps, run before any long work: readable files, shape, finite values,
voxel sizes, integer labels.

* :class:`ValidatePET` / :class:`ValidatePETd`: MONAI transforms that return the image unchanged (same object,
  metadata untouched) or raise ``ValueError`` naming the file and the expected form.
* :class:`ValidateLabel` / :class:`ValidateLabeld`: the same for a label map, which must also hold whole numbers
  (a float PET image given as a label is refused).
* :func:`load_pet`: the one place that reads a file for a check: it reads the *whole* file (for ``.nii.gz`` the gzip
  stream to its end, so a truncated or corrupted file fails here, its CRC and length checked), then validates it.
  Every error names the file and, when given, where it comes from (e.g. ``study s01, field 'label'``).
* :func:`check_files` / :func:`check_pet_files`: :func:`load_pet` on every input *before* any inference (each
  distinct file read once, all problems reported together), so a bad input among many stops a run before the first
  network runs and before the first output is written.

Expected form: a 3D single-channel volume. After ``LoadImage(ensure_channel_first=True)`` that is ``[1, H, W, D]``;
on disk a 3D NIfTI, a 4D NIfTI with a singleton 4th (channel/time) axis, or a DICOM series folder of one volume.
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from collections.abc import Hashable, Iterable, Mapping, Sequence
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.image_reader import NibabelReader
from monai.transforms import LoadImage, MapTransform, Transform
from monai.utils import ensure_tuple

Image = np.ndarray | torch.Tensor

__all__ = [
    "ValidatePET",
    "ValidatePETd",
    "ValidateLabel",
    "ValidateLabeld",
    "VerifiedNibabelReader",
    "load_pet",
    "check_files",
    "check_pet_files",
    "EXPECTED_FORM",
    "LABEL_FORM",
    "where",
    "check_choice",
]

EXPECTED_FORM = (
    "a 3D single-channel PET volume: a 3D NIfTI (or 4D with a singleton 4th axis) or a DICOM series folder, "
    "i.e. [1, H, W, D] channel-first after LoadImage(ensure_channel_first=True)"
)

LABEL_FORM = (
    "an integer-valued label map: a 3D NIfTI (or 4D with a singleton 4th axis) whose voxels are whole numbers "
    "(integer or float storage), i.e. [1, H, W, D] channel-first after LoadImage(ensure_channel_first=True)"
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

    #: the expected form, quoted in shape errors
    form = EXPECTED_FORM

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
            raise ValueError(f"{name}: expected {self.form}; got shape {list(shape)} ({found}).")
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
        self.check_values(data, name)
        return img

    def check_values(self, data: torch.Tensor, name: str) -> None:
        """Further checks of the voxel values ``data [1, H, W, D]`` (finite); none for a PET volume."""


class ValidateLabel(ValidatePET):
    """Check a channel-first label map ``[1, H, W, D]`` and return it unchanged; raise ``ValueError`` naming the file.

    The checks of :class:`ValidatePET` (shape, finite values, voxel sizes), then: every voxel a whole number (integer
    storage, or float storage holding integers, e.g. a label map saved as float32). A float PET image passed as a
    label fails here instead of being rounded into a meaningless label map.

    Args:
        name: name for messages (default as for :class:`ValidatePET`).
        allow_empty: accept a label map without any voxel > 0; False: such a map is refused (the evaluation needs a
            body, label > 0).
    """

    form = LABEL_FORM

    def __init__(self, name: str | None = None, allow_empty: bool = True) -> None:
        super().__init__(name)
        self.allow_empty = allow_empty

    def check_values(self, data: torch.Tensor, name: str) -> None:
        if data.is_floating_point():
            fractional = data != torch.round(data)
            n_fractional = int(fractional.sum())
            if n_fractional:
                example = float(data[fractional][0])
                raise ValueError(
                    f"{name}: expected {LABEL_FORM}; found {n_fractional} non-integer voxel value(s) of "
                    f"{data.numel()} (e.g. {example:.6g}): is this an image rather than a label map?"
                )
        if not self.allow_empty and not bool((data > 0).any()):
            raise ValueError(
                f"{name}: expected a label map with at least one labelled voxel (value > 0); all {data.numel()} "
                "voxels are <= 0."
            )


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


class ValidateLabeld(ValidatePETd):
    """Dictionary version of :class:`ValidateLabel`: checks ``data[key]`` for every key, returns ``data`` unchanged."""

    def __init__(self, keys: KeysCollection, allow_empty: bool = True, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.validator = ValidateLabel(allow_empty=allow_empty)


def _nifti_bytes(path: str) -> bytes:
    """All bytes of a NIfTI file, gunzipped (gzip magic, not the suffix, decides): a truncated or corrupted
    ``.nii.gz`` raises here (``EOFError``, ``gzip.BadGzipFile`` for a CRC or length mismatch, ``zlib.error``)."""
    raw = Path(path).read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


class VerifiedNibabelReader(NibabelReader):
    """MONAI's ``NibabelReader`` that reads the whole NIfTI file before parsing it.

    nibabel reads a ``.nii.gz`` lazily and stops after the last voxel byte, so the gzip CRC and length are never
    checked (a corrupted stream can decode to wrong voxels without an error) and a truncated file fails only when
    the data is first used. This reader decompresses the whole stream in one go (CRC and length checked; a
    truncated or corrupted file raises in :meth:`read`) and parses NIfTI-1 or NIfTI-2 from memory. A file shorter
    than its header's shape and data type need (a truncated ``.nii``, or a corrupted header promising a huge
    volume) raises ``EOFError`` before any voxel buffer is allocated. Same output as ``NibabelReader``
    (``get_data`` is inherited); ``nib.load`` keyword arguments (e.g. ``mmap``) do not apply.
    """

    def read(self, data: Sequence[os.PathLike | str] | os.PathLike | str, **kwargs):
        import nibabel as nib
        from monai.data.utils import correct_nifti_header_if_necessary

        filenames = ensure_tuple(data)
        self.filenames = filenames
        images = []
        for name in filenames:
            raw = _nifti_bytes(str(name))
            sizeof_hdr = int.from_bytes(raw[:4], "little") if len(raw) >= 4 else 0
            if sizeof_hdr not in (348, 540):
                sizeof_hdr = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else 0
            if sizeof_hdr not in (348, 540):
                raise ValueError(f"not a NIfTI-1 or NIfTI-2 file ({len(raw)} bytes; header size field {sizeof_hdr}).")
            image_class = nib.Nifti1Image if sizeof_hdr == 348 else nib.Nifti2Image
            img = image_class.from_bytes(raw)
            proxy = img.dataobj  # where the header says the voxels are (the loaded header's vox_offset reads 0)
            offset, shape, dtype = int(proxy.offset), tuple(proxy.shape), np.dtype(proxy.dtype)
            need = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if offset + need > len(raw):  # before any allocation: a corrupted header can promise terabytes
                raise EOFError(
                    f"the header promises {need} bytes of voxels {list(shape)} ({dtype}) from byte {offset}, the "
                    f"file holds {len(raw)} bytes."
                )
            images.append(correct_nifti_header_if_necessary(img))
        return images if len(filenames) > 1 else images[0]


_READ_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


def check_choice(value: object, field: str, choices: Sequence[object]) -> object:
    """``value`` if it is one of ``choices``; else ``ValueError``: ``"<field> must be one of [...], got <value>."``
    (transform arguments, bundle settings such as ``output_format``)."""
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f"{field} must be one of {list(choices)}, got {value!r}.")
    return value


def where(study: str, field: str) -> str:
    """How messages name a file of a record: ``study <study>, field '<field>'``."""
    return f"study {study}, field '{field}'"


def _where(path: str, where: str | None) -> str:
    """``"<where>, file <path>"``: how messages name a file (just the path without ``where``)."""
    return f"{where}, file {path}" if where else path


def _not_found(path: str, where: str | None) -> str:
    return f"{where}: file {path} not found." if where else f"{path} not found."


def _dtype(label: bool):
    return None if label else np.float32  # labels keep the file's dtype (int labels exact), images float32


@functools.cache
def _default_loader(label: bool) -> LoadImage:
    """One ``LoadImage`` per kind (building one imports and registers every reader, a few ms)."""
    return LoadImage(image_only=True, ensure_channel_first=True, dtype=_dtype(label))


def load_pet(
    path: str | os.PathLike,
    where: str | None = None,
    label: bool = False,
    allow_empty_label: bool = True,
    reader=None,
) -> MetaTensor:
    """Read the whole file at ``path`` and validate it; the one read behind every input check.

    NIfTI files (``.nii``/``.nii.gz``) are read with :class:`VerifiedNibabelReader` (whole file, gzip CRC and
    length checked); other paths (e.g. DICOM series folders) with MONAI's default reader for them.

    Args:
        path: a NIfTI file or a DICOM series folder.
        where: where the path comes from, for messages, e.g. ``"study s01, field 'label'"``.
        label: validate as a label map (:class:`ValidateLabel`; voxels kept in the file's dtype) instead of a PET
            volume (:class:`ValidatePET`; voxels as float32, image units).
        allow_empty_label: with ``label``, accept a map without a voxel > 0.
        reader: a MONAI reader (name, class or instance) for ``LoadImage``, replacing the choice above.

    Returns:
        The volume ``[1, H, W, D]`` as a MetaTensor (affine and header in ``.meta``).

    Raises:
        FileNotFoundError: ``path`` does not exist (message: ``"<where>: file <path> not found."``).
        ValueError: the file cannot be read in full (truncated, corrupted, not an image) or fails validation; the
            message starts with ``"<where>, file <path>: "`` and says what was expected.
    """
    path = os.fspath(path)
    name = _where(path, where)
    form = LABEL_FORM if label else EXPECTED_FORM
    if not os.path.exists(path):
        raise FileNotFoundError(_not_found(path, where))
    if os.path.isdir(path) and not any(Path(path).iterdir()):
        raise ValueError(f"{name}: empty folder (expected a DICOM series folder).")
    try:
        if reader is not None:
            img = LoadImage(reader=reader, image_only=True, ensure_channel_first=True, dtype=_dtype(label))(path)
        else:
            loader = _default_loader(label)
            verified = VerifiedNibabelReader()
            nifti = os.path.isfile(path) and verified.verify_suffix(path)
            img = loader(path, reader=verified) if nifti else loader(path)
    except Exception as e:  # readers raise many types; report them all the same way, naming the file
        if os.path.isdir(path):
            hint = (" (a DICOM series folder: reading it needs `pip install pydicom`)" if find_spec("pydicom") is None
                    else " (a folder is read as a DICOM series: it must hold one PET series' slices)")
        elif isinstance(e, _READ_ERRORS) or (type(e) is OSError and "Expected" in str(e)):
            hint = " (truncated or corrupted file)"
        else:
            hint = ""
        raise ValueError(f"{name}: cannot read it as {form}{hint}: {type(e).__name__}: {e}") from e
    (ValidateLabel(allow_empty=allow_empty_label) if label else ValidatePET())(img, name)
    return img


def check_files(
    entries: Iterable[tuple[str | os.PathLike, str | None, str]], reader=None, allow_empty_labels: bool = True
) -> dict[str, tuple[int, ...]]:
    """:func:`load_pet` on every file before any long work; returns ``{path: spatial shape (H, W, D)}``.

    Each distinct path is read once (as a label map if any entry uses it as one) and not kept. All problems are
    reported together: missing files first (``FileNotFoundError``, before anything is read), then unreadable or
    invalid files (``ValueError``, one line per file, each naming the file and every place that uses it).

    Args:
        entries: ``(path, where, kind)`` for every file a workflow will read; ``where`` names its origin in
            messages (e.g. ``"study s01, field 'realizations[3]'"``, or None), ``kind`` is ``"image"`` (a PET
            volume) or ``"label"`` (an integer-valued label map).
        reader: as for :func:`load_pet`.
        allow_empty_labels: accept label maps without a voxel > 0.
    """
    uses: dict[str, list[str]] = {}
    labels: set[str] = set()
    for path, where, kind in entries:
        if kind not in ("image", "label"):
            raise ValueError(f"check_files: kind must be 'image' or 'label', got {kind!r} for {path}.")
        path = os.fspath(path)
        found = uses.setdefault(path, [])
        if where and where not in found:
            found.append(where)
        if kind == "label":
            labels.add(path)
    if not uses:
        raise ValueError(f"no input files given (expected paths to {EXPECTED_FORM}).")

    def where_of(path: str) -> str | None:
        found = uses[path]
        if len(found) > 3:
            found = found[:3] + [f"{len(found) - 3} more"]
        return "; ".join(found) or None

    missing = [_not_found(p, where_of(p)) for p in uses if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(
            "\n  ".join([f"{len(missing)} of {len(uses)} input(s) not found, nothing was processed:", *missing])
        )
    shapes, problems = {}, []
    for path in uses:
        try:
            img = load_pet(path, where_of(path), path in labels, allow_empty_labels, reader)
        except ValueError as e:
            problems.append(str(e))
            continue
        shapes[path] = tuple(int(s) for s in img.shape[1:])
    if problems:
        summary = f"{len(problems)} of {len(uses)} input(s) rejected, nothing was processed:"
        raise ValueError("\n  ".join([summary, *problems]))
    return shapes


def check_pet_files(files: str | os.PathLike | Sequence[str | os.PathLike], reader=None) -> list[str]:
    """Load and check every input before any inference; return their absolute, normalised paths.

    All files are checked and all problems reported together: missing paths first (``FileNotFoundError``, before
    anything is loaded), then unreadable files and failed :class:`ValidatePET` checks (``ValueError``, one line per
    file). Each file is read in full once by :func:`load_pet` (so a truncated ``.nii.gz`` is caught here) and not
    kept.

    Args:
        files: one path or a list; each a NIfTI file (``.nii``/``.nii.gz``) or a DICOM series folder (needs
            ``pydicom``; MONAI's ``PydicomReader`` is used, values rescaled by the series' rescale slope/intercept).
        reader: passed to ``monai.transforms.LoadImage`` (None: :class:`VerifiedNibabelReader` for NIfTI files,
            MONAI's choice from the file name otherwise).
    """
    paths = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    if not paths:
        raise ValueError(f"no input files given (expected a list of paths to {EXPECTED_FORM}).")
    blank = [p for p in paths if not os.fspath(p).strip()]
    if blank:  # os.path.abspath("") is the working directory: never read it as an input
        raise ValueError(f"input path(s) {blank} are not paths; expected NIfTI files or DICOM series folders.")
    paths = [os.path.normpath(os.path.abspath(os.fspath(p))) for p in paths]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} input(s) not found: {missing} (each must be a NIfTI file or a DICOM series folder)."
        )
    check_files([(p, None, "image") for p in paths], reader)
    return paths
