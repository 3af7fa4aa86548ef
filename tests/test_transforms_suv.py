"""``ToSUV(d)`` / ``FromSUV(d)``: body-weight SUV from the DICOM PET header (or given values) and back.

Every expected factor is written out here from the tag values of tests/_dicom.py, not computed by the library.
"""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor, decollate_batch
from monai.transforms import Compose, EnsureTyped, Invertd, LoadImage, LoadImaged
from pydicom.sequence import Sequence

from monai_tgd.dicom import suv as suv_factor_module
from monai_tgd.transforms.suv import (
    FACTOR_KEY,
    HEADER_KEY,
    SOURCE_UNITS_KEY,
    UNITS_KEY,
    FromSUV,
    FromSUVd,
    ToSUV,
    ToSUVd,
    suv_factor_explicit,
    suv_factor_from_dataset,
    suv_factor_from_meta,
)

from ._dicom import LIVER, make_pet_series, pet_dataset, radiopharmaceutical_item

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# 75 kg, 350 MBq F-18 (half-life 6586.2 s) injected 09:30:00, series time 10:30:00 (3600 s later):
# dose left at 10:30 = 350e6 * exp(-ln 2 * 3600 / 6586.2) = 2.3962e8 Bq; SUV per Bq/ml = 75000 g / that.
EXPECTED_FACTOR = 75000.0 / (350e6 * math.exp(-math.log(2.0) * 3600.0 / 6586.2))


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    return make_pet_series(tmp_path_factory.mktemp("pet") / "PET_WB")


def load(folder, **kwargs) -> MetaTensor:
    return LoadImage(reader="PydicomReader", image_only=True, ensure_channel_first=True, **kwargs)(str(folder))


# --- the factor -------------------------------------------------------------------------------------------------


def test_factor_matches_hand_computation():
    assert EXPECTED_FACTOR == pytest.approx(3.12994e-4, rel=1e-5)  # the written-out number, for the reader
    info = suv_factor_from_dataset(pet_dataset())
    assert info.factor == pytest.approx(EXPECTED_FACTOR, rel=1e-12)
    assert info.uptake_s == 3600.0 and info.source_units == "BQML" and info.decay_correction == "START"
    assert info.decayed_dose_bq == pytest.approx(350e6 * 0.5 ** (3600.0 / 6586.2), rel=1e-12)
    assert "SeriesDate/SeriesTime" in info.reference


def test_factor_from_start_time_without_date_time():
    ds = pet_dataset(radiopharm={"RadiopharmaceuticalStartDateTime": None})
    assert suv_factor_from_dataset(ds).factor == pytest.approx(EXPECTED_FACTOR, rel=1e-12)


def test_start_date_time_wins_over_start_time():
    # 08:30 by the date-time (7200 s before the series), 09:30 by the time-only attribute: the date-time is used
    ds = pet_dataset(radiopharm={"RadiopharmaceuticalStartDateTime": "20240315083000"})
    assert suv_factor_from_dataset(ds).factor == pytest.approx(75000.0 / (350e6 * 2 ** (-7200 / 6586.2)), rel=1e-12)


def test_injection_on_the_day_before():
    # injection 23:00 the evening before a 00:30 series: 5400 s, only expressible with the date-time
    ds = pet_dataset(SeriesTime="003000", AcquisitionTime="003000",
                     radiopharm={"RadiopharmaceuticalStartDateTime": "20240314230000"})  # fmt: skip
    assert suv_factor_from_dataset(ds).uptake_s == 5400.0


def test_timezone_offset():
    # injection 09:30 at UTC+01:00, series 10:30 local with TimezoneOffsetFromUTC +0100: 3600 s
    ds = pet_dataset(TimezoneOffsetFromUTC="+0100",
                     radiopharm={"RadiopharmaceuticalStartDateTime": "20240315093000+0100"})  # fmt: skip
    assert suv_factor_from_dataset(ds).factor == pytest.approx(EXPECTED_FACTOR, rel=1e-12)
    # the same injection stated in UTC (08:30 UTC = 09:30 local)
    ds = pet_dataset(TimezoneOffsetFromUTC="+0100",
                     radiopharm={"RadiopharmaceuticalStartDateTime": "20240315083000+0000"})  # fmt: skip
    assert suv_factor_from_dataset(ds).factor == pytest.approx(EXPECTED_FACTOR, rel=1e-12)


def test_admin_decay_correction_uses_the_injected_dose():
    ds = pet_dataset(DecayCorrection="ADMIN")
    assert suv_factor_from_dataset(ds).factor == pytest.approx(75000.0 / 350e6, rel=1e-12)


def test_acquisition_reference_time():
    # series 10:30 but acquisition 10:40: with reference_time="acquisition" the uptake is 4200 s
    ds = pet_dataset(AcquisitionTime="104000")
    assert suv_factor_from_dataset(ds).factor == pytest.approx(EXPECTED_FACTOR, rel=1e-12)
    info = suv_factor_from_dataset(ds, reference_time="acquisition")
    assert info.factor == pytest.approx(75000.0 / (350e6 * 2 ** (-4200 / 6586.2)), rel=1e-12)


def test_units_gml_is_identity():
    ds = pet_dataset(Units="GML", PatientWeight=None, RadiopharmaceuticalInformationSequence=None)
    info = suv_factor_from_dataset(ds)
    assert info.factor == 1.0 and info.source_units == "GML"


def _two_items():
    return Sequence([radiopharmaceutical_item(), radiopharmaceutical_item()])


@pytest.mark.parametrize(
    "overrides, radiopharm, pattern",
    [
        ({"Units": "CNTS"}, {}, r"Units \(0054,1001\) is 'CNTS'.*expected 'BQML'"),
        ({"Units": "PROPCNTS"}, {}, r"Units \(0054,1001\) is 'PROPCNTS'"),
        ({"Units": None}, {}, r"Units \(0054,1001\) is missing.*expected 'BQML'"),
        ({"Modality": "CT"}, {}, r"Modality \(0008,0060\) is 'CT'.*expected 'PT'"),
        ({"Units": "GML", "SUVType": "LBM"}, {}, r"SUVType \(0054,1006\) is 'LBM'.*expected 'BW'"),
        ({"PatientWeight": "0"}, {}, r"PatientWeight \(0010,1030\) is '0'.*expected the patient's weight in kg"),
        ({"PatientWeight": "-75"}, {}, r"PatientWeight \(0010,1030\) is '-75'.*expected"),
        ({"PatientWeight": None}, {}, r"PatientWeight \(0010,1030\) is missing.*expected"),
        ({"PatientWeight": "75000"}, {}, r"PatientWeight \(0010,1030\) is 75000.*expected the weight in kg"),
        ({}, {"RadionuclideHalfLife": "0"}, r"RadionuclideHalfLife \(0018,1075\) is '0'.*expected .*half-life"),
        ({}, {"RadionuclideHalfLife": "-6586.2"}, r"RadionuclideHalfLife \(0018,1075\) is '-6586.2'.*expected"),
        ({}, {"RadionuclideHalfLife": None}, r"RadionuclideHalfLife \(0018,1075\) is missing.*expected"),
        ({}, {"RadionuclideTotalDose": "0"}, r"RadionuclideTotalDose \(0018,1074\) is '0'.*expected .*Bq"),
        ({}, {"RadionuclideTotalDose": None}, r"RadionuclideTotalDose \(0018,1074\) is missing.*expected"),
        (
            {},
            {"RadiopharmaceuticalStartDateTime": "20240315110000", "RadiopharmaceuticalStartTime": "110000"},
            r"RadiopharmaceuticalStartDateTime \(0018,1078\) 2024-03-15T11:00:00 is after the acquisition.*Expected",
        ),
        (
            {},
            {"RadiopharmaceuticalStartDateTime": None, "RadiopharmaceuticalStartTime": "110000"},
            r"RadiopharmaceuticalStartTime \(0018,1072\) .* is after the acquisition.*Expected",
        ),
        (
            {},
            {"RadiopharmaceuticalStartDateTime": None, "RadiopharmaceuticalStartTime": None},
            r"RadiopharmaceuticalStartDateTime \(0018,1078\) and RadiopharmaceuticalStartTime \(0018,1072\).*expected",
        ),
        ({}, {"RadiopharmaceuticalStartDateTime": "20240315"}, r"\(0018,1078\) is '20240315'.*expected a date-time"),
        (
            {},
            {"RadiopharmaceuticalStartDateTime": None, "RadiopharmaceuticalStartTime": "9:30"},
            r"RadiopharmaceuticalStartTime \(0018,1072\) is '9:30'.*expected a time",
        ),
        ({"RadiopharmaceuticalInformationSequence": None}, {}, r"RadiopharmaceuticalInformationSequence \(0054,0016\)"
                                                               r" is missing.*expected one item"),  # fmt: skip
        ({"RadiopharmaceuticalInformationSequence": _two_items()}, {}, r"\(0054,0016\) has 2 items.*expected exactly"),
        ({"RadiopharmaceuticalInformationSequence": Sequence()}, {}, r"\(0054,0016\) is missing or empty.*expected"),
        ({"DecayCorrection": "NONE"}, {}, r"DecayCorrection \(0054,1102\) is 'NONE'.*expected 'START' or 'ADMIN'"),
        ({"DecayCorrection": None}, {}, r"DecayCorrection \(0054,1102\) is missing.*expected 'START'"),
        ({"CorrectedImage": ["ATTN", "SCAT"]}, {}, r"CorrectedImage \(0028,0051\) .*without 'DECY'.*expected 'DECY'"),
        ({"CorrectedImage": None}, {}, r"CorrectedImage \(0028,0051\) is missing.*expected .*'DECY'"),
        ({"SeriesTime": None}, {}, r"SeriesTime \(0008,0031\) missing.*expected a date YYYYMMDD and a time"),
        ({"SeriesDate": None}, {}, r"SeriesDate \(0008,0021\) missing.*expected"),
        ({"SeriesTime": "10:30"}, {}, r"SeriesTime \(0008,0031\) is '10:30'.*expected a time HHMMSS"),
        ({"SeriesTime": "110000"}, {}, r"SeriesTime \(0008,0031\) .* is later than AcquisitionTime \(0008,0032\)"),
    ],
)
def test_bad_header_names_the_tag(overrides, radiopharm, pattern):
    ds = pet_dataset(radiopharm=radiopharm, **overrides)
    with pytest.raises(ValueError, match=pattern):
        suv_factor_from_dataset(ds, source="series X")


def test_message_names_the_source(series):
    with pytest.raises(ValueError, match=r"PatientWeight \(0010,1030\) is '0' in /some/series"):
        suv_factor_from_dataset(pet_dataset(PatientWeight="0"), source="/some/series")


def test_explicit_factor_and_its_errors():
    info = suv_factor_explicit(75.0, 350e6, decay_factor=2 ** (-3600 / 6586.2))
    assert info.factor == pytest.approx(EXPECTED_FACTOR, rel=1e-12)
    assert suv_factor_explicit(75.0, 350e6).factor == pytest.approx(75000.0 / 350e6, rel=1e-12)
    with pytest.raises(ValueError, match=r"patient_weight_kg is None; expected the weight in kg"):
        suv_factor_explicit(None, 350e6)
    with pytest.raises(ValueError, match=r"injected_dose_bq is None; expected the injected activity in Bq"):
        ToSUV(units="Bq/ml", patient_weight_kg=75)
    with pytest.raises(ValueError, match=r"patient_weight_kg is -1.*injected_dose_bq is 0"):
        ToSUVd("image", units="Bq/ml", patient_weight_kg=-1, injected_dose_bq=0)
    with pytest.raises(ValueError, match=r"decay_factor is 1.5; expected the fraction"):
        suv_factor_explicit(75, 350e6, decay_factor=1.5)
    with pytest.raises(ValueError, match=r"units 'kBq/cc': expected 'auto'.*'dicom'.*'SUV'.*'Bq/ml'"):
        ToSUV(units="kBq/cc")


# --- the transforms on a loaded series ---------------------------------------------------------------------------


def test_liver_comes_out_at_suv_2(series):
    img = load(series.folder)
    out = ToSUV()(img)
    assert isinstance(out, MetaTensor) and out.shape == img.shape == (1, 12, 16, 8)
    mask = np.zeros(series.suv.shape, bool)
    mask[LIVER] = True
    liver = out.numpy()[series.monai_order(mask)]
    assert liver.mean() == pytest.approx(2.0, abs=2e-3) and liver.std() < 1e-3
    assert float(out.meta[FACTOR_KEY]) == pytest.approx(EXPECTED_FACTOR, rel=1e-9)
    assert out.meta[UNITS_KEY] == "GML" and out.meta[SOURCE_UNITS_KEY] == "BQML"
    # every voxel: activity as stored x the hand factor
    np.testing.assert_allclose(out.numpy(), series.monai_order(series.activity) * EXPECTED_FACTOR, rtol=1e-6)


def test_round_trip_is_exact(series):
    img = load(series.folder)
    to_suv = ToSUV()
    suv = to_suv(img)
    back = to_suv.inverse(suv)
    np.testing.assert_allclose(back.numpy(), img.numpy(), rtol=2e-7, atol=0)
    assert back.meta[UNITS_KEY] == "BQML" and back.applied_operations == []
    again = FromSUV()(to_suv(img))
    np.testing.assert_allclose(again.numpy(), img.numpy(), rtol=2e-7, atol=0)
    assert again.meta[UNITS_KEY] == "BQML"
    assert FACTOR_KEY not in img.meta and img.applied_operations == []  # the input is left alone


def test_array_and_dict_agree(series):
    img = load(series.folder)
    a = ToSUV()(img)
    d = ToSUVd("image")({"image": img})["image"]
    assert torch.equal(a.as_tensor(), d.as_tensor())
    for key in (FACTOR_KEY, UNITS_KEY, SOURCE_UNITS_KEY, HEADER_KEY):
        assert a.meta[key] == d.meta[key], key
    b = FromSUV()(a)
    e = FromSUVd("pred", factor_key="image")({"image": d, "pred": d.clone()})["pred"]
    assert torch.equal(b.as_tensor(), e.as_tensor())


def test_invertd_undoes_it_after_batching(series):
    pre = Compose([
        LoadImaged("image", reader="PydicomReader", ensure_channel_first=True, image_only=True),
        ToSUVd("image"),
        EnsureTyped("image", dtype=torch.float32),
    ])  # fmt: skip
    loader = DataLoader(Dataset([{"image": str(series.folder)}], transform=pre), batch_size=1, num_workers=0)
    batch = next(iter(loader))
    batch["pred"] = batch["image"] * 1.0  # an identity "network"
    item = decollate_batch(batch)[0]
    assert float(item["image"].meta[FACTOR_KEY]) == pytest.approx(EXPECTED_FACTOR, rel=1e-9)
    inverted = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False)(dict(item))["pred"]
    expected = series.monai_order(series.activity)
    np.testing.assert_allclose(inverted.numpy(), expected, rtol=2e-6, atol=1e-6 * expected.max())
    assert inverted.meta[UNITS_KEY] == "BQML"
    direct = FromSUVd("pred", factor_key="image")(dict(item))["pred"]  # the same from the stored factor
    np.testing.assert_allclose(direct.numpy(), inverted.numpy(), rtol=1e-7)
    with pytest.raises(ValueError, match=r"is in BQML .*not SUV: converted back already"):
        FromSUVd("pred", factor_key="image")({"image": item["image"], "pred": inverted})


def test_header_from_json_metadata_without_reading_files(series, monkeypatch):
    img = load(series.folder, prune_metadata=False)  # the whole first-slice header as DICOM JSON
    assert "00540016" in img.meta and "00101030" in img.meta

    def no_read(path):
        raise AssertionError("the file was read although the metadata has the tags")

    monkeypatch.setattr(suv_factor_module, "read_pet_header", no_read)  # where the factor reads headers
    info, _ = suv_factor_from_meta(img.meta)
    assert info.factor == pytest.approx(EXPECTED_FACTOR, rel=1e-12)
    out = ToSUV()(img)
    # the stored header alone gives the factor again
    again, _ = suv_factor_from_meta({HEADER_KEY: out.meta[HEADER_KEY]})
    assert again.factor == pytest.approx(EXPECTED_FACTOR, rel=1e-12)
    assert pydicom.Dataset.from_json(out.meta[HEADER_KEY]).Units == "BQML"


def test_header_read_from_the_series_folder(series):
    img = load(series.folder)  # default pruned metadata: no PET tags, only filename_or_obj
    assert "00541001" not in img.meta and img.meta["filename_or_obj"] == str(series.folder)
    info, header = suv_factor_from_meta(img.meta)
    assert info.factor == pytest.approx(EXPECTED_FACTOR, rel=1e-12) and int(header.InstanceNumber) == 1


def test_bad_series_header_raises_through_the_transform(tmp_path):
    folder = make_pet_series(tmp_path / "cnts", Units="CNTS").folder
    img = load(folder)
    with pytest.raises(ValueError, match=rf"Units \(0054,1001\) is 'CNTS' in {folder}.*expected 'BQML'"):
        ToSUVd("image")({"image": img})


def test_nifti_needs_units(tmp_path):
    path = tmp_path / "pet.nii.gz"
    nib.save(nib.Nifti1Image(np.full((6, 5, 4), 5000.0, np.float32), np.eye(4)), path)
    img = LoadImaged("image", ensure_channel_first=True, image_only=True)({"image": str(path)})
    with pytest.raises(ValueError, match=r"units='SUV'.*units='Bq/ml' with patient_weight_kg and injected_dose_bq"):
        ToSUVd("image")(img)
    same = ToSUVd("image", units="SUV")(img)["image"]
    assert torch.equal(same.as_tensor(), img["image"].as_tensor()) and float(same.meta[FACTOR_KEY]) == 1.0
    xform = ToSUVd("image", units="Bq/ml", patient_weight_kg=75, injected_dose_bq=350e6,
                   decay_factor=math.exp(-math.log(2) * 3600 / 6586.2))  # fmt: skip
    out = xform(img)
    assert float(out["image"].max()) == pytest.approx(5000.0 * EXPECTED_FACTOR, rel=1e-6)
    back = xform.inverse(out)["image"]
    np.testing.assert_allclose(back.numpy(), img["image"].numpy(), rtol=2e-7)


def test_auto_units_read_dicom_from_its_header_and_take_nifti_as_suv(series, tmp_path):
    """``units="auto"`` (the bundle's default): a series read from DICOM gets its header's factor, a NIfTI factor 1."""
    dicom = ToSUV(units="auto")(load(series.folder))
    assert float(dicom.meta[FACTOR_KEY]) == pytest.approx(EXPECTED_FACTOR, rel=1e-9)
    path = tmp_path / "pet.nii.gz"
    nib.save(nib.Nifti1Image(np.full((6, 5, 4), 2.0, np.float32), np.eye(4)), path)
    nifti = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    out = ToSUV(units="auto")(nifti)
    assert float(out.meta[FACTOR_KEY]) == 1.0 and torch.equal(out.as_tensor(), nifti.as_tensor())


def test_auto_units_take_any_image_read_from_a_dicom_folder_for_dicom(series):
    """Whatever reader MONAI picked for a series folder (another one keeps none of PydicomReader's tag keys), "auto"
    reads the factor from the folder's header: a Bq/ml series is never taken for SUV."""
    img = load(series.folder)
    bare = MetaTensor(img.as_tensor(), affine=img.affine, meta={"filename_or_obj": str(series.folder)})
    out = ToSUV(units="auto")(bare)
    assert float(out.meta[FACTOR_KEY]) == pytest.approx(EXPECTED_FACTOR, rel=1e-9)


def test_plain_array_input():
    arr = np.full((1, 4, 4, 3), 6390.0)
    out = ToSUV(units="Bq/ml", patient_weight_kg=75, injected_dose_bq=239621521.85)(arr)
    assert isinstance(out, MetaTensor) and out.dtype == torch.float64
    assert float(out.max()) == pytest.approx(6390.0 * 75000 / 239621521.85, rel=1e-12)
    with pytest.raises(ValueError, match=r"needs a MetaTensor"):
        ToSUV()(arr)


def test_converting_twice_is_refused(series):
    once = ToSUV()(load(series.folder))
    with pytest.raises(ValueError, match=r"already in SUV"):
        ToSUV()(once)
