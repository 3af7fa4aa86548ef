"""A DICOM PET series in (MONAI ``PydicomReader``), to SUV and back, and out again as a derived series
(``write_pet_series`` / ``SaveDicomSeriesd``): same study, frame of reference and geometry, new UIDs, values kept,
written atomically, never into a folder it did not write."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureTyped, Invertd, LoadImage, LoadImaged

from monai_tgd.dicom import writer as dicom_module  # where the series is written slice by slice
from monai_tgd.dicom import (
    SaveDicomSeriesd,
    check_dicom_output,
    dicom_output_dir,
    is_own_series,
    read_series_headers,
    write_pet_series,
)
from monai_tgd.transforms.suv import UNITS_KEY, FromSUVd, ToSUVd

from ._dicom import COLUMNS, LIVER, N_SLICES, ROWS, make_pet_series

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

#: |written - given| <= TOL x slice max: 16-bit with RescaleSlope = max / 65535 keeps 1 / 131070 (~7.6e-6)
TOL = 1e-3


def load(folder) -> MetaTensor:
    return LoadImage(reader="PydicomReader", image_only=True, ensure_channel_first=True)(str(folder))


def by_instance(folder) -> dict[int, pydicom.Dataset]:
    """Every file of ``folder`` read with pydicom, by InstanceNumber (file names are not relied on)."""
    out = {}
    for path in Path(folder).iterdir():
        ds = pydicom.dcmread(path)
        assert int(ds.InstanceNumber) not in out
        out[int(ds.InstanceNumber)] = ds
    return out


def assert_slice_values(written: dict, expected: np.ndarray) -> None:
    """``expected`` ``[instance, row, column]`` against the written pixel data, slice by slice."""
    assert sorted(written) == list(range(1, expected.shape[0] + 1))
    for k, ds in written.items():
        values = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        want = expected[k - 1]
        assert values.shape == want.shape == (ROWS, COLUMNS)
        assert np.abs(values - want).max() <= TOL * np.abs(want).max(), f"instance {k}"


@pytest.fixture
def series(tmp_path):
    return make_pet_series(tmp_path / "in" / "PET_WB")


def pipeline(output_dir, postfix="denoised", invert=False):
    """The bundle's path: load the folder, to SUV, an identity "network", back to Bq/ml, write DICOM."""
    pre = Compose([
        LoadImaged("image", reader="PydicomReader", ensure_channel_first=True, image_only=True),
        ToSUVd("image"),
        EnsureTyped("image", dtype=torch.float32),
    ])  # fmt: skip
    back = (
        Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False)
        if invert
        else FromSUVd("pred", factor_key="image")
    )
    post = Compose([back, SaveDicomSeriesd("pred", output_dir=output_dir, reference_key="image", postfix=postfix)])

    def run(folder):
        data = pre({"image": str(folder)})
        data["pred"] = data["image"].clone()
        return data, post(data)

    return run


@pytest.mark.parametrize("invert", [False, True], ids=["FromSUVd", "Invertd"])
def test_series_round_trip(series, tmp_path, invert):
    data, out = pipeline(tmp_path / "out", invert=invert)(series.folder)
    mask = np.zeros(series.suv.shape, bool)
    mask[LIVER] = True
    assert float(data["image"].numpy()[series.monai_order(mask)].mean()) == pytest.approx(2.0, abs=2e-3)
    assert out["pred"].meta[UNITS_KEY] == "BQML"

    folder = tmp_path / "out" / "PET_WB_denoised"
    assert out["pred"].meta["saved_to"] == str(folder) and sorted(os.listdir(tmp_path / "out")) == ["PET_WB_denoised"]
    written, original = by_instance(folder), by_instance(series.folder)
    assert len(written) == N_SLICES
    series_uids = {ds.SeriesInstanceUID for ds in written.values()}
    assert len(series_uids) == 1 and series.series_uid not in series_uids
    sop_uids = {ds.SOPInstanceUID for ds in written.values()}
    assert len(sop_uids) == N_SLICES and not sop_uids & {ds.SOPInstanceUID for ds in original.values()}
    for k, ds in written.items():
        ref = original[k]
        assert ds.StudyInstanceUID == series.study_uid and ds.FrameOfReferenceUID == series.frame_uid
        assert ds.PatientID == ref.PatientID and ds.SOPClassUID == ref.SOPClassUID and ds.Modality == "PT"
        assert list(ds.ImageType)[:2] == ["DERIVED", "PRIMARY"]
        assert "denoised" in ds.SeriesDescription and ds.SeriesDescription.startswith("PET WB AC")
        assert ds.Units == "BQML" and ds.DecayCorrection == "START"
        assert (ds.SeriesDate, ds.SeriesTime) == (ref.SeriesDate, ref.SeriesTime)  # SUV reference kept
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            assert [float(v) for v in ds[keyword].value] == [float(v) for v in ref[keyword].value], (k, keyword)
        assert float(ds.SliceThickness) == float(ref.SliceThickness) == 8.0
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == ref.SOPInstanceUID
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 16, 15, 0)
        assert float(ds.RescaleIntercept) == 0.0
        assert not any(elem.tag.is_private for elem in ds)  # the vendor private scale factor is gone
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    # a slope per slice: each slice uses the full 16-bit range
    assert len({float(ds.RescaleSlope) for ds in written.values()}) > 1
    assert all(int(ds.pixel_array.max()) == 65535 for ds in written.values())
    assert_slice_values(written, series.activity)

    # MONAI reads the written series back: same array order, affine and values
    again, before = load(folder), load(series.folder)
    assert again.shape == before.shape == (1, COLUMNS, ROWS, N_SLICES)
    assert torch.allclose(again.affine, before.affine)
    np.testing.assert_allclose(again.numpy(), before.numpy(), rtol=0, atol=TOL * float(before.max()))


def test_written_values_are_the_given_volume(series, tmp_path):
    # a volume unlike the input (so the test sees the given values, not copied pixels), negative values included:
    # signed 16-bit pixel data for the whole series
    rng = np.random.default_rng(3)
    volume = rng.normal(0.0, 1.0, size=(N_SLICES, ROWS, COLUMNS)) * np.arange(1, N_SLICES + 1)[:, None, None] * 100
    out = write_pet_series(series.monai_order(volume), series.folder, tmp_path / "out" / "noise")
    written = by_instance(out)
    assert {ds.PixelRepresentation for ds in written.values()} == {1}
    assert_slice_values(written, volume)
    np.testing.assert_allclose(load(out).numpy(), series.monai_order(volume), atol=TOL * np.abs(volume).max())


def test_implicit_vr_reference(tmp_path):
    series = make_pet_series(tmp_path / "implicit", implicit_vr=True)
    out = write_pet_series(load(series.folder), series.folder, tmp_path / "implicit_out")
    written = by_instance(out)
    assert all(ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian for ds in written.values())
    assert_slice_values(written, series.activity)


def test_reader_order_is_instance_number(series):
    headers = read_series_headers(series.folder)
    assert [int(ds.InstanceNumber) for _, ds in headers] == list(range(1, N_SLICES + 1))
    assert [p for p, _ in headers] == series.files  # not the file-name order
    assert sorted(series.files) != series.files


def test_failure_mid_write_leaves_nothing(series, tmp_path, monkeypatch):
    out_root = tmp_path / "out"
    out_root.mkdir()
    real = dicom_module._write_slice
    calls = []

    def failing(path, ds):
        calls.append(path)
        if len(calls) == 4:
            raise OSError("disk full (simulated)")
        real(path, ds)

    monkeypatch.setattr(dicom_module, "_write_slice", failing)
    with pytest.raises(OSError, match="simulated"):
        write_pet_series(load(series.folder), series.folder, out_root / "PET_WB_denoised")
    assert len(calls) == 4 and calls[0].parent.name.startswith(".PET_WB_denoised.partial-")
    assert os.listdir(out_root) == []  # no final folder, no temporary leftovers


def test_failure_keeps_the_previous_series(series, tmp_path, monkeypatch):
    target = tmp_path / "out" / "PET_WB_denoised"
    write_pet_series(load(series.folder), series.folder, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    monkeypatch.setattr(dicom_module, "_write_slice", lambda path, ds: (_ for _ in ()).throw(OSError("simulated")))
    with pytest.raises(OSError, match="simulated"):
        write_pet_series(load(series.folder) * 2, series.folder, target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert os.listdir(tmp_path / "out") == ["PET_WB_denoised"]


def test_own_series_is_replaced(series, tmp_path):
    target = tmp_path / "out" / "PET_WB_denoised"
    first = write_pet_series(load(series.folder), series.folder, target)
    uid1 = by_instance(first)[1].SeriesInstanceUID
    assert is_own_series(first)
    second = write_pet_series(load(series.folder) * 0.5, series.folder, target)
    written = by_instance(second)
    assert written[1].SeriesInstanceUID != uid1 and len(written) == N_SLICES
    assert_slice_values(written, series.activity * 0.5)
    assert os.listdir(tmp_path / "out") == ["PET_WB_denoised"]


def test_foreign_folder_is_refused(series, tmp_path):
    target = tmp_path / "out" / "PET_WB_denoised"
    target.mkdir(parents=True)
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"exists and holds files monai-tgd did not write; refusing"):
        write_pet_series(load(series.folder), series.folder, target)
    assert os.listdir(target) == ["notes.txt"] and os.listdir(target.parent) == ["PET_WB_denoised"]
    # another series (a DICOM folder monai-tgd did not write) is refused too, through the transform as well
    shutil.rmtree(target)
    shutil.copytree(series.folder, target)
    data = {"image": load(series.folder)}
    data["pred"] = data["image"]
    with pytest.raises(ValueError, match=r"holds files monai-tgd did not write"):
        SaveDicomSeriesd("pred", output_dir=tmp_path / "out")(data)
    assert sorted(os.listdir(target)) == sorted(p.name for p in series.files)
    # an empty folder may be used; a file under the name may not; replace_own=False refuses even our own series
    shutil.rmtree(target)
    target.mkdir()
    write_pet_series(load(series.folder), series.folder, target)
    with pytest.raises(ValueError, match=r"exists and is not empty; refusing"):
        write_pet_series(load(series.folder), series.folder, target, replace_own=False)
    shutil.rmtree(target)
    target.write_text("a file")
    with pytest.raises(ValueError, match=r"exists and is not a folder"):
        write_pet_series(load(series.folder), series.folder, target)


def test_output_inside_the_input_is_refused(series):
    with pytest.raises(ValueError, match=r"is, is inside, or holds the reference series folder"):
        write_pet_series(load(series.folder), series.folder, series.folder / "denoised")
    with pytest.raises(ValueError, match=r"is, is inside, or holds the reference series folder"):
        check_dicom_output(series.folder, series.folder)


def test_wrong_volumes_are_refused(series, tmp_path):
    img = load(series.folder)
    target = tmp_path / "out"
    with pytest.raises(ValueError, match=r"expected \[1, 12, 16, 8\], i\.e\. \[1, Columns, Rows, slices\]"):
        write_pet_series(img.numpy().transpose(0, 2, 1, 3), series.folder, target)  # rows and columns swapped
    with pytest.raises(ValueError, match=r"NaN or inf"):
        write_pet_series(np.full(img.shape, np.nan), series.folder, target)
    flipped = img.clone()
    flipped.affine = img.affine @ torch.diag(torch.tensor([1.0, 1.0, -1.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"(?s)its affine.*differs from the reference series"):
        write_pet_series(flipped, series.folder, target)
    suv = ToSUVd("image")({"image": img})["image"]
    with pytest.raises(ValueError, match=r"is in GML .*Units \(0054,1001\) is BQML: convert it back first"):
        write_pet_series(suv, series.folder, target)
    assert not target.exists()


def test_save_transform_names_and_collisions(tmp_path):
    a = make_pet_series(tmp_path / "a" / "PET")
    b = make_pet_series(tmp_path / "b" / "PET")
    assert dicom_output_dir(a.folder, tmp_path / "out", "denoised") == (tmp_path / "out" / "PET_denoised").absolute()
    save = SaveDicomSeriesd("pred", output_dir=tmp_path / "out", reference_key="image", postfix="tgd")
    img = load(a.folder)
    save({"image": img, "pred": img})
    assert (tmp_path / "out" / "PET_tgd").is_dir()
    save({"image": img, "pred": img})  # the same input again: replaced
    img_b = load(b.folder)
    with pytest.raises(ValueError, match=r"both map to the output folder"):
        save({"image": img_b, "pred": img_b})
    # the folder from the prediction's own metadata (reference_key a meta field), or from a path in the data
    other = SaveDicomSeriesd("pred", output_dir=tmp_path / "out2", reference_key="filename_or_obj")
    other({"pred": img_b})
    assert (tmp_path / "out2" / "PET_denoised").is_dir()
    SaveDicomSeriesd("pred", output_dir=tmp_path / "out3", reference_key="src")({"src": str(a.folder), "pred": img})
    assert (tmp_path / "out3" / "PET_denoised").is_dir()
    with pytest.raises(ValueError, match=r"postfix '\.\./x' cannot be used as a file name"):
        SaveDicomSeriesd("pred", output_dir=tmp_path / "out", postfix="../x")
    with pytest.raises(ValueError, match=r"no input series folder for 'pred'"):
        SaveDicomSeriesd("pred", output_dir=tmp_path / "out", reference_key="missing")({"pred": torch.zeros(1)})
