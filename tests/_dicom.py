"""A synthetic whole-body FDG PET DICOM series for tests, with the tag values a PET/CT scanner writes.

The series (defaults): 8 axial slices of 16 rows x 12 columns (non-square, so a row/column swap shows), 4 mm
pixels, 8 mm slices, Units BQML, patient 75 kg, 350 MBq F-18 (half-life 6586.2 s) injected at 09:30:00, series
(and acquisition) time 10:30:00 (60 min later), DecayCorrection START, CorrectedImage with DECY. Pixel data are
16-bit unsigned with a different RescaleSlope on every slice and RescaleIntercept 0. InstanceNumber 1 is the
highest slice (z = +100 mm, z falls by 8 mm per instance, as head-first whole-body series are stored) and the
file names are in a shuffled order, so code that sorts by file name or by z instead of InstanceNumber is caught.

The voxel values come from an SUV phantom (:func:`suv_phantom`; body ~1 rising with slice, "liver" block 2.0,
"lesion" 6.0, air 0.02) converted to Bq/ml with the SUV factor written out below, independently of the library:

    decayed dose [Bq] = 350e6 * 2 ** (-3600 / 6586.2)
    Bq/ml            = SUV * decayed dose / (75 kg * 1000 g/kg)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

PET_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.128"  # Positron Emission Tomography Image Storage

N_SLICES, ROWS, COLUMNS = 8, 16, 12
PIXEL_MM, SLICE_MM = 4.0, 8.0
WEIGHT_KG = 75.0
DOSE_BQ = 350e6
HALF_LIFE_S = 6586.2
UPTAKE_S = 3600.0
SERIES_DATE, SERIES_TIME, INJECTION_TIME = "20240315", "103000", "093000"
TOP_Z = 100.0
ORIGIN_XY = (-22.0, -30.0)
# liver block and lesion of the phantom, in the stored order [instance index (0 = InstanceNumber 1), row, column]
LIVER = (slice(2, 6), slice(3, 9), slice(1, 6))
LESION = (5, slice(10, 12), slice(8, 10))

#: SUV per Bq/ml of the default series, written out: weight [g] / dose decayed from injection to series time [Bq].
HAND_FACTOR = (WEIGHT_KG * 1000.0) / (DOSE_BQ * 2.0 ** (-UPTAKE_S / HALF_LIFE_S))


def suv_phantom(n_slices: int = N_SLICES, rows: int = ROWS, columns: int = COLUMNS) -> np.ndarray:
    """SUV volume ``[instance, row, column]`` (instance 0 = InstanceNumber 1): air 0.02, a body ellipse of SUV
    1.0 + 0.05 * instance, a liver block of SUV 2.0 (instances 2-5), a lesion of SUV 6.0 (instance 5 only)."""
    r, c = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
    body = ((r - rows / 2 + 0.5) / (rows / 2)) ** 2 + ((c - columns / 2 + 0.5) / (columns / 2)) ** 2 <= 1.0
    suv = np.full((n_slices, rows, columns), 0.02)
    for k in range(n_slices):
        suv[k][body] = 1.0 + 0.05 * k
    suv[LIVER] = 2.0
    suv[LESION] = 6.0
    return suv


def radiopharmaceutical_item(**overrides) -> Dataset:
    """The RadiopharmaceuticalInformationSequence item; keyword overrides, ``None`` deletes the attribute."""
    item = Dataset()
    item.Radiopharmaceutical = "Fluorodeoxyglucose"
    item.RadiopharmaceuticalStartTime = INJECTION_TIME + ".00"
    item.RadiopharmaceuticalStartDateTime = SERIES_DATE + INJECTION_TIME + ".00"
    item.RadionuclideTotalDose = "350000000"
    item.RadionuclideHalfLife = "6586.2"
    item.RadionuclidePositronFraction = "0.9673"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "C-111A1", "SRT", "^18^Fluorine"
    item.RadionuclideCodeSequence = Sequence([code])
    _apply(item, overrides)
    return item


def _apply(ds: Dataset, overrides: dict) -> None:
    for keyword, value in overrides.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)


@dataclass
class SeriesInfo:
    """What :func:`make_pet_series` wrote."""

    folder: Path
    #: Bq/ml as stored (pixel * slope), float64 ``[instance, row, column]``
    activity: np.ndarray
    suv: np.ndarray
    study_uid: str
    series_uid: str
    frame_uid: str
    files: list[Path] = field(default_factory=list)  # in InstanceNumber order
    slopes: list[float] = field(default_factory=list)

    def monai_order(self, volume: np.ndarray) -> np.ndarray:
        """``[instance, row, column]`` -> ``[1, column, row, instance]``, the array MONAI's PydicomReader gives."""
        return np.transpose(volume, (2, 1, 0))[None]


def pet_dataset(instance: int = 1, n_slices: int = N_SLICES, uids: dict | None = None, radiopharm: dict | None = None,
                **overrides) -> Dataset:  # fmt: skip
    """Header of slice ``instance`` (1-based) without pixel data; keyword overrides (``None`` deletes)."""
    uids = uids or {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid()}
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = PET_SOP_CLASS
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = SERIES_DATE
    ds.StudyTime = "092000"
    ds.SeriesTime = ds.AcquisitionTime = SERIES_TIME
    ds.ContentTime = "104500"
    ds.Modality = "PT"
    ds.Manufacturer = "SYNTHETIC"
    ds.StudyDescription = "PET-CT whole body"
    ds.SeriesDescription = "PET WB AC"
    ds.PatientName = "Test^Phantom"
    ds.PatientID = "TGD0001"
    ds.PatientSex = "O"
    ds.PatientWeight = "75"
    ds.PatientSize = "1.75"
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.StudyID = "1"
    ds.SeriesNumber = 3
    ds.InstanceNumber = instance
    ds.ImageIndex = instance
    ds.NumberOfSlices = n_slices
    ds.ImagePositionPatient = [ORIGIN_XY[0], ORIGIN_XY[1], TOP_Z - SLICE_MM * (instance - 1)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = TOP_Z - SLICE_MM * (instance - 1)
    ds.SliceThickness = "8"
    ds.PixelSpacing = [PIXEL_MM, PIXEL_MM]
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.SeriesType = ["WHOLE BODY", "IMAGE"]
    ds.Units = "BQML"
    ds.CountsSource = "EMISSION"
    ds.DecayCorrection = "START"
    ds.CorrectedImage = ["DECY", "ATTN", "SCAT", "DTIM", "RAN", "NORM"]
    ds.DecayFactor = "1.0"
    ds.FrameReferenceTime = "0"
    ds.ActualFrameDuration = 120000
    ds.RadiopharmaceuticalInformationSequence = Sequence([radiopharmaceutical_item(**(radiopharm or {}))])
    ds.WindowCenter, ds.WindowWidth = "15000", "30000"
    block = ds.private_block(0x0071, "MONAI_TGD TEST", create=True)
    block.add_new(0x01, "DS", "0.123")  # a vendor-like private scale factor the writer must not carry over
    _apply(ds, overrides)
    return ds


def make_pet_series(folder: str | Path, suv: np.ndarray | None = None, *, implicit_vr: bool = False,
                    radiopharm: dict | None = None, **overrides) -> SeriesInfo:  # fmt: skip
    """Write the series into ``folder`` (created); ``suv`` ``[instance, row, column]`` (default :func:`suv_phantom`).

    Bq/ml = suv / :data:`HAND_FACTOR`, stored as uint16 with slope = slice max / 30000 (a different slope per
    slice). Keyword ``overrides`` / ``radiopharm`` change header attributes of every slice (``None`` deletes)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    suv = suv_phantom() if suv is None else np.asarray(suv, dtype=float)
    n = suv.shape[0]
    bqml = suv / HAND_FACTOR
    uids = {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid()}
    names = [f"PT{(7 * k + 3) % 101:03d}_{k}.dcm" for k in range(n)]  # not in instance order
    order = np.random.default_rng(1).permutation(n)
    info = SeriesInfo(folder, np.zeros_like(bqml), suv, uids["study"], uids["series"], uids["frame"])
    for k in range(n):
        ds = pet_dataset(k + 1, n, uids, radiopharm, **overrides)
        slope = float(bqml[k].max()) / 30000.0
        pixels = np.rint(bqml[k] / slope).astype(np.uint16)
        ds.RescaleSlope = pydicom.valuerep.format_number_as_ds(slope)
        info.activity[k] = pixels * float(ds.RescaleSlope)
        ds.PixelData = pixels.tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit_vr else ExplicitVRLittleEndian
        path = folder / names[order[k]]
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        info.files.append(path)
        info.slopes.append(float(ds.RescaleSlope))
    return info
