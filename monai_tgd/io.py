"""Atomic file output: a file either appears complete under its final name or not at all.

* :func:`atomic_path`: a temporary path renamed onto the final one only if the writing block succeeds.
* :class:`AtomicNibabelWriter`: MONAI's ``NibabelWriter`` writing through :func:`atomic_path`, for
  ``SaveImage(d)(..., writer=AtomicNibabelWriter)``; it also carries the input's NIfTI units and timing fields.
* :func:`folder_lock`: one writer at a time in a folder (the cohort generator, the reproduction study).

Output names and places, checked before any long work (every bundle workflow runs them first):

* :func:`check_name`: the one validation of identifiers that become file or folder names (run names, study names,
  network base names, output postfixes); :func:`check_names` for several at once.
* :func:`output_path`: ``folder/<prefix><name><suffix>`` for a name, checked to stay inside ``folder``.
* :func:`check_output_folder` / :func:`check_output_folders`: output folders that can be created and written.
* :class:`OutputLayout`: the output file of every input of a denoising run, planned and checked (no two inputs on one
  output, no output on an input or on a file monai-tgd did not write) before any input is read.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.data import NibabelWriter
from monai.data.folder_layout import FolderLayoutBase
from monai.utils import convert_data_type, ensure_tuple, get_equivalent_dtype

__all__ = [
    "atomic_path",
    "folder_lock",
    "AtomicNibabelWriter",
    "NAME_FORM",
    "OUTPUT_MARK",
    "check_name",
    "check_names",
    "output_path",
    "check_output_folder",
    "check_output_folders",
    "is_own_output",
    "OutputLayout",
]


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


#: Longest identifier accepted as a file or folder name, in UTF-8 bytes: room, within the 255-byte file-name limit of
#: common file systems, for what the workflows add around it (``model_<run_name>.pt``, ``<study>_denoised.nii.gz``)
#: and for :func:`atomic_path`'s temporary prefix.
MAX_NAME_BYTES = 128
#: File-name limit (bytes) of common file systems (ext4, xfs, btrfs, APFS, NTFS in UTF-16 units).
NAME_MAX = 255
#: What :func:`atomic_path` adds to a file name for its temporary file (``.partial-`` + 8 random characters + ``-``).
PARTIAL_PREFIX_BYTES = len(".partial-") + 8 + 1

NAME_FORM = (
    "a single file-name component: non-empty text without '/' or '\\', not '.' or '..', without control "
    f"characters or leading/trailing whitespace, at most {MAX_NAME_BYTES} bytes in UTF-8 "
    "(e.g. 'v1', 'n2n_ood_bladder_v2', 'denoised')"
)
"""The allowed form of an identifier that becomes a file or folder name (quoted in the errors of :func:`check_name`)."""


def _name_problem(value: object) -> str | None:
    """Why ``value`` cannot be a file-name component, or None if it can."""
    if not isinstance(value, str):
        return f"it is {type(value).__name__}, not text (pass it as a string)"
    if value == "":
        return "it is empty"
    if "/" in value or "\\" in value:
        return "it contains a path separator ('/' or '\\')"
    if value in (".", ".."):
        return "it is a folder reference ('.' or '..')"
    if any(unicodedata.category(c) == "Cc" for c in value):
        return "it contains a control character (e.g. NUL, newline, tab)"
    if any(unicodedata.category(c) == "Cs" for c in value):
        return "it is not valid Unicode text (a lone surrogate)"
    if value != value.strip():
        return "it starts or ends with whitespace"
    size = len(value.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        return f"it is {size} bytes long in UTF-8"
    return None


def check_name(value: object, field: str) -> str:
    """The one check of an identifier that becomes a file or folder name (a run name, a study name, a network's base
    name, an output postfix): ``value`` unchanged if it is :data:`NAME_FORM`, else ``ValueError``.

    Such a name can neither leave the folder it is joined to (no separator, no ``..``, not absolute) nor fail later
    when the file is created (empty, control characters, too long, not encodable).

    Args:
        value: the identifier.
        field: what it is, for the message (the config id, e.g. ``"run_name"``).

    Raises:
        ValueError: naming ``field``, ``value``, why, and the allowed form, e.g. ``run_name '../x' cannot be used as a
            file name: it contains a path separator ('/' or '\\'). Expected a single file-name component: ...``.
    """
    problem = _name_problem(value)
    if problem is not None:
        raise ValueError(f"{field} {value!r} cannot be used as a file name: {problem}. Expected {NAME_FORM}.")
    return value  # type: ignore[return-value]


def check_names(names: Mapping[str, object]) -> dict[str, str]:
    """:func:`check_name` on every ``{field: value}``: one ``ValueError`` lists all invalid ones. Returns ``names``.

    The first step of every bundle workflow (``check_outputs`` in the configs: ``output_names``, then the output
    folders built from them), before any data is read. E.g. ``n2n_study '../x': it contains a path separator ('/' or
    '\\'); run_name 'n2n_../x_v2': it contains a path separator ('/' or '\\'). These cannot be used as file names.
    Expected a single file-name component: ...``
    """
    if not isinstance(names, Mapping):
        raise ValueError(f"check_names: expected a {{field: name}} mapping, got {type(names).__name__}.")
    problems = [f"{field} {value!r}: {_name_problem(value)}" for field, value in names.items()
                if _name_problem(value) is not None]  # fmt: skip
    if problems:
        raise ValueError(
            f"{'; '.join(problems)}. "
            f"{'These cannot be used as file names' if len(problems) > 1 else 'It cannot be used as a file name'}. "
            f"Expected {NAME_FORM}."
        )
    return dict(names)  # type: ignore[arg-type]


def _absolute(path: str | os.PathLike) -> str:
    """Absolute and normalised (``..`` collapsed), ``~`` kept as written: where a writer given ``path`` writes."""
    return os.path.normpath(os.path.abspath(os.fspath(path)))


def _input_key(path: str | os.PathLike) -> str:
    """An input path as MONAI's ``LoadImage`` reads it (``~`` expanded), absolute and normalised."""
    return _absolute(os.path.expanduser(os.fspath(path)))


def _is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """``path`` is strictly below ``folder`` once both are made absolute and normalised (``..`` collapsed)."""
    p, f = _absolute(path), _absolute(folder)
    return p != f and os.path.commonpath([p, f]) == f


def _check_path_text(path: object, field: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{field} must be a path (text), got {type(path).__name__} {path!r}.")
    text = os.fspath(path)
    if isinstance(text, bytes) or not text.strip():
        raise ValueError(f"{field} {text!r} is not a path; give a folder or file path.")
    if "\0" in text:
        raise ValueError(f"{field} {text!r} contains a NUL character; give a folder or file path.")
    return text


def _check_file_name_length(path: str, field: str) -> None:
    name = os.path.basename(path)
    size = len(name.encode("utf-8", "surrogateescape"))
    if size + PARTIAL_PREFIX_BYTES > NAME_MAX:
        raise ValueError(
            f"{field}: output file name {name!r} is {size} bytes long; file names are limited to {NAME_MAX} bytes, "
            f"{NAME_MAX - PARTIAL_PREFIX_BYTES} with the temporary prefix of the atomic write. Use a shorter name."
        )


def output_path(folder: str | os.PathLike, name: object, field: str, prefix: str = "", suffix: str = "") -> str:
    """``folder/<prefix><name><suffix>``: the output named after identifier ``name``, checked to stay in ``folder``.

    ``name`` is checked with :func:`check_name` (``field`` names it in the message), the result to be strictly inside
    ``folder`` and its file name to fit the file-name limit. Nothing is created.

    Example: ``output_path("models", "v1", "run_name", prefix="model_", suffix=".pt") == "models/model_v1.pt"``.
    """
    folder = _check_path_text(folder, f"the output folder of {field}")
    check_name(name, field)
    path = os.path.join(folder, f"{prefix}{name}{suffix}")
    if not _is_inside(path, folder):
        raise ValueError(f"{field} {name!r}: output {path} is not inside its folder {folder}.")
    _check_file_name_length(path, field)
    return path


def check_output_folder(folder: object, field: str) -> str:
    """``folder`` if the workflow can create or write it, else ``ValueError`` (before any work; nothing is created).

    Checks: a non-empty path; no existing part of it is a file; the folder, or its nearest existing parent, is a
    writable folder.
    """
    text = _check_path_text(folder, field)
    current = Path(_absolute(text))
    while not current.exists():
        if current.is_symlink():  # a dangling link: creating the folder would fail
            raise ValueError(f"{field} {text}: {current} is a broken symbolic link.")
        current = current.parent
    if not current.is_dir():
        raise ValueError(f"{field} {text}: {current} is a file, not a folder.")
    if not os.access(current, os.W_OK | os.X_OK):
        verb = "write" if str(current) == _absolute(text) else "create"
        raise ValueError(f"{field} {text}: cannot {verb} it ({current} is not writable).")
    return text


def check_output_folders(folders: Mapping[str, object]) -> dict[str, str]:
    """:func:`check_output_folder` on every ``{field: path}`` (a workflow's output folders); returns ``folders``.

    The bundle's workflows run it second, after :func:`check_names` on their ``output_names`` (the folders are built
    from those names), before any data is read."""
    if not isinstance(folders, Mapping):
        raise ValueError(f"check_output_folders: expected a {{field: folder}} mapping, got {type(folders).__name__}.")
    return {field: check_output_folder(folder, field) for field, folder in folders.items()}


#: NIfTI ``descrip`` of every file :class:`AtomicNibabelWriter` writes: marks it as a monai-tgd output, which a later
#: run may replace (:func:`is_own_output`).
OUTPUT_MARK = "written by monai-tgd"


def is_own_output(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a NIfTI file written by :class:`AtomicNibabelWriter` (its ``descrip`` is
    :data:`OUTPUT_MARK`); only its header is read. False for anything else (other files, unreadable ones, folders)."""
    try:
        header = nib.load(os.fspath(path)).header
        return np.asarray(header["descrip"]).item() == OUTPUT_MARK.encode()
    except Exception:  # not a NIfTI, truncated, a folder...: not ours
        return False


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
    when the pipeline does not rescale them; NIfTI has no field for intensity units. ``descrip`` is
    :data:`OUTPUT_MARK`, by which :class:`OutputLayout` tells a file it may replace (:func:`is_own_output`).
    """

    def set_data_array(self, data_array, channel_dim: int | None = 0, squeeze_end_dims: bool = True, **kwargs) -> None:
        """As ``NibabelWriter``'s, except that ``squeeze_end_dims`` drops singleton axes only down to the input's own
        spatial dimensions: MONAI's drops every trailing singleton axis, so a one-slice volume ``[1, H, W, 1]`` would
        be written as a 2D ``(H, W)`` image without its slice thickness (``pixdim[3]``)."""
        super().set_data_array(data_array, channel_dim=channel_dim, squeeze_end_dims=False, **kwargs)
        spatial = data_array.ndim - (0 if channel_dim is None else len(ensure_tuple(channel_dim)))
        while squeeze_end_dims and self.data_obj.ndim > max(spatial, 1) and self.data_obj.shape[-1] == 1:
            self.data_obj = self.data_obj[..., 0]

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
        header["descrip"] = OUTPUT_MARK.encode()
        # a given header's data type wins over the array's in nibabel: keep the requested output dtype
        dtype = self.output_dtype if self.output_dtype is not None else self.data_obj.dtype
        header.set_data_dtype(get_equivalent_dtype(dtype, np.ndarray))
        with atomic_path(filename) as tmp:
            super().write(tmp, verbose=False, header=header, **obj_kwargs)
        if verbose:
            logging.getLogger(__name__).info(f"writing: {filename}")


def _stem(path: str) -> str:
    """File name without its extension, as MONAI's ``SaveImage`` names outputs: ``x.nii.gz``, ``x.nii`` -> ``x``."""
    stem, ext = os.path.splitext(os.path.basename(path))
    if ext == ".gz":
        stem, _ = os.path.splitext(stem)
    return stem


class OutputLayout(FolderLayoutBase):
    """The output file of every input of a denoising run, planned and checked before any input is read: the
    ``folder_layout`` of ``SaveImage(d)``, so the files written are exactly the ones checked.

    The output of input ``<dir>/<stem>.<ext>`` is ``output_dir/<dir relative to the inputs' common folder>/
    <stem>_<postfix><extension>`` (MONAI's layout with ``data_root_dir`` the common folder of the inputs and
    ``separate_folder=False``; a DICOM series folder's name is its stem); with ``names``, the i-th output is
    ``output_dir/<names[i]>_<postfix><extension>``.

    Checked when constructed (``ValueError`` naming the inputs and the outputs concerned):

    * every input is a non-empty path, none is given twice;
    * ``postfix`` and every name of ``names`` pass :func:`check_name`;
    * no two inputs share an output (``x.nii`` and ``x.nii.gz``, or a series folder ``x`` beside ``x.nii.gz``), and
      no output is one of the inputs;
    * every output is inside ``output_dir`` and its file name fits the file-name limit;
    * no output is an existing folder, or an existing file that monai-tgd did not write (:func:`is_own_output`:
      a previous run's output is replaced, a user's file never);
    * ``output_dir`` and each output's folder can be created and written (:func:`check_output_folder`).

    Args:
        inputs: input paths (NIfTI files, DICOM series folders), or one path.
        output_dir: where the outputs go.
        postfix: appended to each output's name after ``_``.
        extension: of the outputs.
        names: optional output names, one per input, instead of the inputs' stems.
        input_field: the config id of the inputs, for messages (e.g. ``"input_files"``).

    Example::

        layout = OutputLayout(["/data/a/x.nii.gz", "/data/b/x.nii.gz"], "out", "denoised")
        layout.outputs  # {"/data/a/x.nii.gz": "<cwd>/out/a/x_denoised.nii.gz", "/data/b/x.nii.gz": "<cwd>/out/b/...}
        SaveImaged(keys="pred", folder_layout=layout, output_ext=".nii.gz", writer=AtomicNibabelWriter)
    """

    def __init__(
        self,
        inputs: str | os.PathLike | Sequence[str | os.PathLike],
        output_dir: str | os.PathLike,
        postfix: str = "denoised",
        extension: str = ".nii.gz",
        names: Sequence[str] | None = None,
        input_field: str = "inputs",
    ) -> None:
        paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs
        if not isinstance(paths, Sequence) or isinstance(paths, bytes) or not paths:
            raise ValueError(
                f"{input_field}: expected a path or a non-empty list of paths (NIfTI files or DICOM series folders), "
                f"got {inputs!r}."
            )
        for path in paths:
            if not isinstance(path, (str, os.PathLike)) or not os.fspath(path).strip():
                where = "" if isinstance(inputs, (str, os.PathLike)) else f" (in {list(paths)!r})"
                raise ValueError(
                    f"{input_field}: {path!r} is not a path{where}; expected NIfTI files or DICOM series folders."
                )
        check_name(postfix, "output postfix")
        if names is not None:
            if isinstance(names, str) or len(names) != len(paths):
                raise ValueError(f"OutputLayout: names must be one name per input ({len(paths)}), got {names!r}.")
            for name in names:
                check_name(name, "output name")
        self.output_dir = _absolute(_check_path_text(output_dir, "output folder"))
        self.postfix, self.extension = postfix, extension
        absolute = [_input_key(p) for p in paths]
        repeated = sorted({p for p in absolute if absolute.count(p) > 1})
        if repeated:
            raise ValueError(f"{input_field}: {repeated} given more than once; each input must appear once.")
        root = os.path.commonpath([os.path.dirname(p) for p in absolute])
        outputs: dict[str, str] = {}
        for i, path in enumerate(absolute):
            stem = names[i] if names is not None else _stem(path)
            if not stem:
                raise ValueError(f"{input_field}: {path!r} has no file name to name its output after.")
            below = "." if names is not None else os.path.relpath(os.path.dirname(path), root)
            out = os.path.normpath(os.path.join(self.output_dir, below, f"{stem}_{postfix}{extension}"))
            if not _is_inside(out, self.output_dir):
                raise ValueError(f"{input_field}: output {out} of {path} is not inside the output folder "
                                 f"{self.output_dir}.")  # fmt: skip
            _check_file_name_length(out, input_field)
            outputs[path] = out
        self.outputs = outputs
        self._check_collisions(input_field)

    def _check_collisions(self, field: str) -> None:
        by_output: dict[str, list[str]] = {}
        for src, out in self.outputs.items():
            by_output.setdefault(_absolute(out), []).append(src)
        shared = [f"{srcs} -> {out}" for out, srcs in by_output.items() if len(srcs) > 1]
        if shared:
            raise ValueError(
                f"{field}: several inputs would be written to one output: {'; '.join(shared)}. Give inputs with "
                "distinct names (without extension) in each folder, or denoise them in separate runs."
            )
        for out, srcs in by_output.items():
            if out in self.outputs:
                raise ValueError(f"{field}: the output of {srcs[0]} would replace the input {out}; choose another "
                                 "output folder or postfix.")  # fmt: skip
            if os.path.isdir(out):
                raise ValueError(f"{field}: the output of {srcs[0]} is {out}, an existing folder.")
            if os.path.lexists(out) and not is_own_output(out):
                raise ValueError(
                    f"{field}: the output of {srcs[0]} would replace {out}, an existing file monai-tgd did not "
                    "write; move it away, or choose another output folder or postfix."
                )
        for folder in sorted({os.path.dirname(out) for out in self.outputs.values()}):
            check_output_folder(folder, "output folder")

    def filename(self, subject: str | os.PathLike = "subject", idx=None, **kwargs) -> str:
        """The planned output of input ``subject`` (``SaveImage`` passes the input's ``filename_or_obj``)."""
        if idx is not None or kwargs:
            raise ValueError(f"OutputLayout plans one output per input; got index {idx!r} and {kwargs!r}.")
        key = _input_key(subject)
        if key not in self.outputs:
            raise ValueError(f"OutputLayout: no output planned for {subject!r}; planned inputs: {list(self.outputs)}.")
        return self.outputs[key]
