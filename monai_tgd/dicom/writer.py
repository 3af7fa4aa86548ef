"""A denoised volume written as a new DICOM PET series that a viewer opens beside the original.

* :func:`write_pet_series`: a volume written as a DERIVED PET series of the same study, frame of reference and
  geometry as the reference series, atomically (a temporary sibling folder renamed into place).
* :class:`SaveDicomSeriesd`: the same as a MONAI dictionary transform, the last postprocessing step of a bundle:
  output folder ``<output_dir>/<reference folder name>_<postfix>``.
* :func:`dicom_output_dir` / :func:`check_dicom_output` / :func:`plan_dicom_outputs`: that folder, and the checks of
  it, before any work.

Volumes are in the array order of :mod:`monai_tgd.dicom.series` (:data:`~monai_tgd.dicom.series.ARRAY_ORDER`).
"""

from __future__ import annotations

import copy
import datetime
import os
import shutil
import tempfile
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import MetaKeys
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from monai_tgd.io import OUTPUT_MARK, check_name

from .series import ARRAY_ORDER, read_series_headers, reference_affine, tag_label

#: Attributes dropped from the written slices: statistics of the old pixel values, padding values in stored units,
#: and the thumbnail of the old image (private attributes are dropped too, see :func:`write_pet_series`).
_DROPPED = (
    "SmallestImagePixelValue", "LargestImagePixelValue", "SmallestPixelValueInSeries", "LargestPixelValueInSeries",
    "PixelPaddingValue", "PixelPaddingRangeLimit", "IconImageSequence", "NumberOfFrames",
)  # fmt: skip


def _as_array(volume) -> np.ndarray:
    if isinstance(volume, torch.Tensor):
        volume = volume.detach().cpu()
        volume = volume.as_tensor() if isinstance(volume, MetaTensor) else volume
        return volume.to(torch.float64).numpy()
    return np.asarray(volume, dtype=np.float64)


def _check_volume(volume, headers: list[tuple[Path, Dataset]], reference_dir: Path) -> np.ndarray:
    """``volume`` as float64 ``[Columns, Rows, N]``, checked against the reference series."""
    data = _as_array(volume)
    rows, columns, n = int(headers[0][1].Rows), int(headers[0][1].Columns), len(headers)
    expected = (columns, rows, n)
    shape = data.shape
    if data.ndim == 4 and shape[0] == 1:
        data = data[0]
    elif data.ndim == 3 and shape[0] == 1 and n == 1 and shape[1:] == (columns, rows):
        data = data[0][..., None]  # a one-slice series: MONAI gives [1, Columns, Rows]
    if data.ndim == 2 and n == 1:
        data = data[..., None]
    if data.shape != expected:
        raise ValueError(
            f"volume of shape {list(shape)} does not match the reference series {reference_dir} "
            f"({n} slices of {rows} rows x {columns} columns): expected [1, {columns}, {rows}, {n}], i.e. "
            f"{ARRAY_ORDER}."
        )
    if not np.isfinite(data).all():
        raise ValueError(f"volume for {reference_dir}: {int((~np.isfinite(data)).sum())} voxel(s) are NaN or inf; "
                         "expected finite values.")  # fmt: skip
    if isinstance(volume, MetaTensor) and MetaKeys.ORIGINAL_AFFINE in volume.meta:
        # a volume loaded by a MONAI reader: its affine must be the reference's (not resampled, reoriented, cropped)
        ras = str(volume.meta.get(MetaKeys.SPACE, "RAS")).upper() != "LPS"
        expected_affine = reference_affine(headers, ras=ras)
        affine = np.asarray(volume.affine.detach().cpu(), dtype=np.float64)
        if affine.shape != (4, 4) or not np.allclose(affine, expected_affine, rtol=1e-4, atol=1e-3):
            raise ValueError(
                f"volume for {reference_dir}: its affine\n{np.round(affine, 4)}\ndiffers from the reference series' "
                f"\n{np.round(expected_affine, 4)}\n(resampled, reoriented or cropped and not inverted?). Expected "
                f"{ARRAY_ORDER}."
            )
    return data


def _check_units(volume, first: Dataset, reference_dir: Path) -> None:
    """A volume converted to SUV (meta ``pet_units`` GML) cannot be written into a Bq/ml series."""
    if not isinstance(volume, MetaTensor):
        return
    from monai_tgd.transforms.suv import UNITS_KEY  # noqa: PLC0415  (suv imports this module)

    units = volume.meta.get(UNITS_KEY)
    if isinstance(units, (list, tuple)) and len(units) == 1:
        units = units[0]
    ref_units = str(first.get("Units", "") or "").upper()
    if units is not None and ref_units and str(units).upper() != ref_units:
        raise ValueError(
            f"volume for {reference_dir} is in {units} (metadata '{UNITS_KEY}') but the reference series' "
            f"{tag_label('Units')} is {ref_units}: convert it back first (FromSUVd, or Invertd of ToSUVd) so the "
            "written series holds the values its Units say."
        )


def is_own_series(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a series written by :func:`write_pet_series` (every entry a DICOM file whose
    ``DerivationDescription`` carries :data:`monai_tgd.io.OUTPUT_MARK`), which a later run may replace. An empty
    folder counts as replaceable too; anything else (a user's files, subfolders) is not."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    for entry in folder.iterdir():
        if entry.is_symlink() or not entry.is_file():
            return False
        try:
            ds = pydicom.dcmread(entry, stop_before_pixels=True, specific_tags=["DerivationDescription"])
        except Exception:  # not DICOM, unreadable: not ours
            return False
        if OUTPUT_MARK not in str(ds.get("DerivationDescription", "")):
            return False
    return True


def _absolute(path: str | os.PathLike) -> Path:
    return Path(os.path.normpath(os.path.abspath(os.path.expanduser(os.fspath(path)))))


def check_dicom_output(out_dir: str | os.PathLike, reference_dir: str | os.PathLike | None = None,
                       replace_own: bool = True) -> Path:  # fmt: skip
    """The checks :func:`write_pet_series` makes of its output folder before writing anything; returns it absolute.

    Refused (``ValueError`` naming the folder): an existing file or symbolic link at ``out_dir``; an existing
    non-empty folder that is not a series written by monai-tgd (:func:`is_own_series`), or any non-empty folder if
    ``replace_own`` is False; ``out_dir`` equal to, inside, or holding ``reference_dir``; a name too long for the
    temporary sibling; a parent that cannot be created or written.
    """
    out = _absolute(out_dir)
    if reference_dir is not None:
        ref = _absolute(reference_dir)
        if out == ref or ref in out.parents or out in ref.parents:
            raise ValueError(
                f"output folder {out} is, is inside, or holds the reference series folder {ref}; write the "
                "denoised series beside the input series, not into it."
            )
    if len(out.name.encode("utf-8", "surrogateescape")) + 40 > 255:
        raise ValueError(f"output folder name {out.name!r} is too long (the atomic write adds a temporary prefix "
                         "and suffix to it; file names are limited to 255 bytes).")  # fmt: skip
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ValueError(f"output folder {out} exists and is not a folder (a file or a link); refusing to replace it.")
    if out.is_dir() and any(out.iterdir()):
        if not replace_own:
            raise ValueError(f"output folder {out} exists and is not empty; refusing to write into it (remove it, "
                             "or choose another output folder).")  # fmt: skip
        if not is_own_series(out):
            raise ValueError(
                f"output folder {out} exists and holds files monai-tgd did not write; refusing to write into it "
                "(remove it, or choose another output folder or postfix). Only an empty folder or a series written "
                "by monai-tgd is replaced."
            )
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"output folder {out}: cannot create it ({parent} is not a writable folder).")
    return out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _quantize(values: np.ndarray, signed: bool) -> tuple[np.ndarray, str]:
    """``values`` (real-world units) as 16-bit integers and the RescaleSlope (DS text) with intercept 0."""
    top = 32767 if signed else 65535
    peak = float(np.abs(values).max()) if values.size else 0.0
    slope_text = format_number_as_ds(peak / top) if peak > 0 else "1"
    slope = float(slope_text)
    stored = np.clip(np.rint(values / slope), -32768 if signed else 0, top)
    return stored.astype(np.int16 if signed else np.uint16), slope_text


def _derived_slice(
    header: Dataset,
    pixels: np.ndarray,
    slope: str,
    signed: bool,
    series_uid: str,
    description: str,
    series_number: int | None,
    mark: str,
    now: datetime.datetime,
) -> Dataset:
    ds = copy.deepcopy(header)
    ds.remove_private_tags()
    for keyword in _DROPPED:
        if keyword in ds:
            delattr(ds, keyword)
    source = Dataset()
    source.ReferencedSOPClassUID = header.SOPClassUID
    source.ReferencedSOPInstanceUID = header.SOPInstanceUID
    ds.SourceImageSequence = DicomSequence([source])
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series_uid
    image_type = [str(v) for v in (header.get("ImageType") or [])]
    ds.ImageType = ["DERIVED", "PRIMARY", *image_type[2:]]
    ds.SeriesDescription = description
    if series_number is not None:
        ds.SeriesNumber = series_number
    ds.DerivationDescription = mark
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = slope
    if "PixelData" in ds:
        del ds.PixelData
    ds.add_new(0x7FE00010, "OW", np.ascontiguousarray(pixels).astype("<i2" if signed else "<u2").tobytes())
    meta = FileMetaDataset(copy.deepcopy(header.file_meta)) if getattr(header, "file_meta", None) else FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    for keyword in ("ImplementationVersionName", "SourceApplicationEntityTitle"):
        if keyword in meta:
            delattr(meta, keyword)
    ds.file_meta = meta
    return ds


def _write_slice(path: Path, ds: Dataset) -> None:
    """Write one slice and flush it to disk (a seam for tests that simulate a failing write)."""
    pydicom.dcmwrite(path, ds, enforce_file_format=True, implicit_vr=False, little_endian=True)
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_pet_series(
    volume: np.ndarray | torch.Tensor,
    reference_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    description_suffix: str = "denoised",
    series_description: str | None = None,
    series_number: int | None = None,
    replace_own: bool = True,
) -> Path:
    """Write ``volume`` as a new DICOM PET series derived from the series in ``reference_dir``; returns ``out_dir``.

    Args:
        volume: the voxel values, in the reference series' units (its ``Units`` (0054,1001), e.g. BQML: Bq/ml),
            ``[1, Columns, Rows, N]`` (or ``[Columns, Rows, N]``) with slice ``k`` the reference slice of the
            ``k``-th lowest ``InstanceNumber``: the array ``LoadImage(reader="PydicomReader",
            ensure_channel_first=True)`` returns for ``reference_dir`` (``volume[0, c, r, k]`` is
            ``pixel_array[r, c]`` of that slice; a pydicom-stacked ``[N, Rows, Columns]`` array ``a`` is
            ``a.transpose(2, 1, 0)[None]``). numpy array or (Meta)Tensor. A MetaTensor loaded by a MONAI reader must
            still have the reference's affine (spatial transforms inverted), and if its metadata says it is in SUV
            (``pet_units`` GML, set by :class:`~monai_tgd.transforms.suv.ToSUV`) while the reference is in BQML, it is
            refused: convert it back first.
        reference_dir: the input series folder (one file per slice).
        out_dir: the folder to create; it must not exist, be empty, or hold a series written by monai-tgd (replaced
            whole, ``replace_own``): see :func:`check_dicom_output`.
        description_suffix: appended to the reference's ``SeriesDescription`` in parentheses, e.g.
            ``"PET WB AC (denoised)"`` (cut to the 64 characters of the LO value representation).
        series_description: the whole ``SeriesDescription`` instead.
        series_number: ``SeriesNumber`` of the new series; default the reference's + 1000 (kept distinct so a
            viewer lists both).

    Each written slice is a copy of its reference slice's header (so ``StudyInstanceUID``,
    ``FrameOfReferenceUID``, patient, ``ImagePositionPatient``, ``ImageOrientationPatient``, ``PixelSpacing``,
    ``SliceThickness``, ``InstanceNumber``, ``Units``, ``DecayCorrection``, ``SeriesDate``/``SeriesTime`` and the
    radiopharmaceutical data, hence a viewer's SUV, are those of the input) with:

    * a new ``SeriesInstanceUID`` (one for the series) and new ``SOPInstanceUID`` per slice (``generate_uid``);
      ``SourceImageSequence`` references the input slice;
    * ``ImageType`` ``DERIVED\\PRIMARY`` (values 3 and on kept): DERIVED because the pixels are computed from another
      image; value 2 stays PRIMARY because the PET Image module (PS3.3 C.8.9.4) allows only PRIMARY there, and the
      image is still the quantitative activity image a reader reads, not a secondary rendering;
    * ``SeriesDescription`` marked (above), ``DerivationDescription`` ``"<suffix>; written by monai-tgd"`` (how
      :func:`is_own_series` recognises a folder it may replace), ``InstanceCreationDate/Time`` now;
    * pixel data 16-bit (``BitsAllocated``/``BitsStored`` 16, ``HighBit`` 15), unsigned, or signed for the whole
      series if any value is negative; per slice ``RescaleIntercept`` 0 (required by the PET Image module) and
      ``RescaleSlope`` = slice max |value| / 65535 (signed: / 32767), so the stored values are within
      slope / 2 <= 1.6e-5 x the slice max of the given ones;
    * private attributes, pixel statistics (``Smallest/LargestImagePixelValue``...), padding values and icon images
      removed (vendor private scale factors would no longer describe the pixels); written as Explicit VR Little
      Endian.

    The slices are written into a temporary sibling folder ``.<name>.partial-*`` that is renamed to ``out_dir`` only
    once all are written and flushed; on any error it is removed, so no partial series ever stands under the final
    name (a killed process can leave a hidden ``.partial-*`` folder, never a partial ``out_dir``). An existing
    ``out_dir`` written by monai-tgd is replaced only after the new series is complete.

    Raises:
        ValueError: the reference folder is not one readable series; the volume's shape, values, affine or units do
            not fit it; ``out_dir`` is refused (:func:`check_dicom_output`).
    """
    reference_dir = _absolute(reference_dir)
    headers = read_series_headers(reference_dir)
    first = headers[0][1]
    data = _check_volume(volume, headers, reference_dir)
    _check_units(volume, first, reference_dir)
    out = check_dicom_output(out_dir, reference_dir, replace_own=replace_own)

    if series_description is None:
        base = str(first.get("SeriesDescription", "") or "").strip()
        suffix = f"({description_suffix})" if description_suffix else ""
        series_description = f"{base[: max(0, 63 - len(suffix))]} {suffix}".strip() if base else suffix
    series_description = series_description[:64]
    if series_number is None and first.get("SeriesNumber") not in (None, ""):
        series_number = int(first.SeriesNumber) + 1000
    mark = f"{description_suffix}; {OUTPUT_MARK}" if description_suffix else OUTPUT_MARK
    series_uid = generate_uid()
    signed = bool((data < 0).any())
    now = datetime.datetime.now()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    old: Path | None = None
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700 folders; give it the mode mkdir would
        width = max(4, len(str(len(headers))))
        for k, (_, header) in enumerate(headers):
            pixels, slope = _quantize(data[:, :, k].T, signed)  # [Columns, Rows] -> pixel_array [Rows, Columns]
            ds = _derived_slice(header, pixels, slope, signed, series_uid, series_description, series_number, mark,
                                now)  # fmt: skip
            _write_slice(tmp / f"{k + 1:0{width}d}.dcm", ds)
        _fsync_dir(tmp)
        if out.is_dir():  # empty, or a previous monai-tgd series (checked above): swap it out, then remove it
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old)
        try:
            os.rename(tmp, out)
        except OSError:
            if old is not None and not out.exists():
                os.replace(old, out)  # put the previous series back
                old = None
            raise
        _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out


def dicom_output_dir(reference_dir: str | os.PathLike, output_dir: str | os.PathLike, postfix: str = "denoised",
                     field: str = "postfix") -> Path:  # fmt: skip
    """``<output_dir>/<name of reference_dir>_<postfix>``, absolute (``postfix`` checked as a file-name part)."""
    check_name(postfix, field)
    name = _absolute(reference_dir).name
    if not name:
        raise ValueError(f"reference series folder {reference_dir!r} has no name to derive the output folder from.")
    return _absolute(output_dir) / f"{name}_{postfix}"


def plan_dicom_outputs(inputs: str | os.PathLike | Sequence[str | os.PathLike], output_dir: str | os.PathLike,
                       postfix: str = "denoised", input_field: str = "input_files") -> dict[str, Path]:  # fmt: skip
    """The output series folder of every input series, planned and checked before any input is read.

    The DICOM counterpart of :class:`monai_tgd.io.OutputLayout` (a bundle's first ``run`` step with ``output_format``
    "dicom"): every input must be a DICOM series folder, two inputs must not share an output folder, and each output
    passes :func:`check_dicom_output` (no foreign files replaced, not inside its input). Returns ``{input: output}``.

    Raises:
        ValueError: naming ``input_field`` and the offending paths.
    """
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not paths:
        raise ValueError(f"{input_field}: expected DICOM series folders for output_format 'dicom', got none.")
    not_folders = [os.fspath(p) for p in paths if not os.path.isdir(os.fspath(p))]
    if not_folders:
        raise ValueError(
            f"{input_field}: output_format 'dicom' writes a DICOM series beside a DICOM series input; these inputs "
            f"are not DICOM series folders: {not_folders} (use output_format 'nifti' for NIfTI inputs)."
        )
    planned: dict[str, Path] = {}
    for path in paths:
        out = dicom_output_dir(path, output_dir, postfix, "output_postfix")
        clash = [src for src, o in planned.items() if o == out and _absolute(src) != _absolute(path)]
        if clash:
            raise ValueError(f"{input_field}: inputs {clash[0]} and {os.fspath(path)} would both be written to {out}; "
                             "give the input folders distinct names.")  # fmt: skip
        planned[os.fspath(path)] = check_dicom_output(out, path)
    return planned


def _single(value):
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return value[0]
    return value


class SaveDicomSeriesd(MapTransform):
    """Write each ``keys`` volume as a DICOM PET series beside its input series (:func:`write_pet_series`).

    The last postprocessing step of a bundle: the output of input series folder ``.../<name>`` is the folder
    ``<output_dir>/<name>_<postfix>``. The volume must be in the input's units and array order (see
    :func:`write_pet_series`): put ``FromSUVd`` (or ``Invertd``) before it when the preprocessing converted to SUV.

    Args:
        keys: the volumes to write (e.g. ``"pred"``), ``[1, Columns, Rows, N]`` each.
        output_dir: where the output series folders go (created).
        reference_key: where the input series folder is found: a key of the data whose value is a MetaTensor (its
            ``meta[meta_key]``, e.g. ``"image"`` loaded by ``LoadImaged``) or a path; else a field of the written
            volume's own ``meta`` (e.g. ``"filename_or_obj"``). Default ``"image"``.
        postfix: appended to the input folder's name after ``_``; also the ``SeriesDescription`` mark.
        meta_key: the metadata field holding the folder; ``"filename_or_obj"`` is where ``LoadImage`` puts it.
        series_description, replace_own: as for :func:`write_pet_series`.

    Two different inputs of one run mapping to the same output folder raise ``ValueError``. The written folder is
    stored in the volume's ``meta["saved_to"]``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        reference_key: str = "image",
        postfix: str = "denoised",
        meta_key: str = "filename_or_obj",
        series_description: str | None = None,
        replace_own: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = output_dir
        self.reference_key = reference_key
        self.postfix = check_name(postfix, "postfix")
        self.meta_key = meta_key
        self.series_description = series_description
        self.replace_own = replace_own
        self._written: dict[Path, Path] = {}

    def reference_dir(self, data: Mapping[Hashable, object], key: Hashable) -> Path:
        """The input series folder of ``data[key]``."""
        ref = self.reference_key
        path = None
        if ref in data:
            value = data[ref]
            path = value.meta.get(self.meta_key) if isinstance(value, MetaTensor) else value
        elif isinstance(data[key], MetaTensor):
            path = data[key].meta.get(ref)
        path = _single(path)
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise ValueError(
                f"SaveDicomSeriesd: no input series folder for '{key}': expected data['{ref}'] to be a MetaTensor "
                f"with meta['{self.meta_key}'] (as LoadImaged sets it) or a folder path, or meta['{ref}'] of "
                f"'{key}'; got {type(data.get(ref, path)).__name__}."
            )
        return _absolute(path)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            reference = self.reference_dir(d, key)
            out = dicom_output_dir(reference, self.output_dir, self.postfix)
            if self._written.get(out, reference) != reference:
                raise ValueError(
                    f"SaveDicomSeriesd: input series {reference} and {self._written[out]} both map to the output "
                    f"folder {out}; give the input folders distinct names."
                )
            write_pet_series(
                d[key],
                reference,
                out,
                description_suffix=self.postfix,
                series_description=self.series_description,
                replace_own=self.replace_own,
            )
            self._written[out] = reference
            if isinstance(d[key], MetaTensor):
                d[key].meta["saved_to"] = str(out)
        return d
