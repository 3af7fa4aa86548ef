"""A PET user's own scans through the bundle's ``inference`` workflow: any array order, DICOM in Bq/ml in and out,
another voxel size. The library pieces have their own tests (test_transforms_geometry.py, test_transforms_suv.py,
test_dicom_io.py); these run the bundle end to end, as a user would."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from monai_tgd.networks import DnCNN

from . import _dicom
from .conftest import TINY_OVERRIDES, first_realisations


@pytest.fixture
def random_model(tmp_path):
    """A tiny DnCNN checkpoint as ``model.pt``, inference's default (the pipeline, not the training, is tested)."""
    torch.manual_seed(0)
    path = tmp_path / "models" / "model.pt"
    path.parent.mkdir()
    torch.save(DnCNN(features=TINY_OVERRIDES["features"], num_layers=TINY_OVERRIDES["num_layers"]).state_dict(), path)
    return path


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    img = nib.Nifti1Image(np.asarray(array, dtype=np.float32), affine)
    img.set_qform(affine, 1)
    img.set_sform(affine, 1)
    nib.save(img, str(path))
    return path


#: array orders of one volume: (permutation of the canonical axes, flip of the stored first axis)
ORDERS = {"xyz": ((0, 1, 2), False), "zxy": ((2, 0, 1), False), "yzx": ((1, 2, 0), False), "xyz_flipped": ((0, 1, 2), True)}


def _stored(volume: np.ndarray, affine: np.ndarray, perm, flip) -> tuple[np.ndarray, np.ndarray]:
    """``volume`` (canonical [x, y, z]) stored with its axes in order ``perm`` (and the first stored axis flipped),
    with the affine that keeps every voxel at the same world position."""
    array = np.transpose(volume, perm)
    new = affine.copy()
    new[:3, :3] = affine[:3, :3][:, list(perm)]
    if flip:
        n = array.shape[0]
        array = array[::-1]
        new[:3, 3] = new[:3, 3] + new[:3, 0] * (n - 1)
        new[:3, 0] = -new[:3, 0]
    return np.ascontiguousarray(array), new


def _canonical(array: np.ndarray, perm, flip) -> np.ndarray:
    if flip:
        array = array[::-1]
    return np.transpose(array, np.argsort(perm))


def test_the_same_volume_in_every_array_order_gives_the_same_denoised_image(run_bundle, tiny_cohort, tmp_path,
                                                                             random_model):  # fmt: skip
    """Issue 13: a NIfTI with the axial axis first was denoised along the wrong axis. Every order now gives the same
    image, and each output keeps its own input's header geometry bit for bit."""
    src = nib.load(first_realisations(tiny_cohort, "v2")[0])
    volume, affine = np.asarray(src.dataobj, dtype=np.float32), src.affine
    (tmp_path / "in").mkdir()
    inputs = {
        name: _save(*_stored(volume, affine, perm, flip), tmp_path / "in" / f"{name}.nii.gz")
        for name, (perm, flip) in ORDERS.items()
    }
    run_bundle("inference", input_files=[str(p) for p in inputs.values()], inference_output_dir=str(tmp_path / "out"))

    results = {}
    for name, (perm, flip) in ORDERS.items():
        a, b = nib.load(inputs[name]), nib.load(tmp_path / "out" / f"{name}_denoised.nii.gz")
        assert b.shape == a.shape, name
        assert np.array_equal(b.affine, a.affine) and np.array_equal(b.get_qform(), a.get_qform()), name
        assert np.array_equal(b.get_sform(), a.get_sform()), name
        assert np.array_equal(b.header["pixdim"][1:4], a.header["pixdim"][1:4]), name
        results[name] = _canonical(np.asarray(b.dataobj), perm, flip)
    assert not np.allclose(results["xyz"], volume, rtol=1e-3)  # the network does change the image
    scale = np.abs(results["xyz"]).max()
    for name, result in results.items():
        np.testing.assert_allclose(result, results["xyz"], rtol=0, atol=1e-5 * scale, err_msg=name)


def _loaded(path) -> tuple[np.ndarray, np.ndarray]:
    from monai.transforms import LoadImage

    img = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    return img[0].numpy().astype(np.float64), np.asarray(img.affine, dtype=np.float64)


def test_dicom_series_in_bq_per_ml_is_denoised_in_suv_and_written_back_as_dicom(run_bundle, tmp_path, random_model):
    """A DICOM PET series in Bq/ml: the network sees SUV (the factor from the header), the output series is in
    Bq/ml again, beside the input (same study and frame of reference, new series, DERIVED), and equals the network's
    output on the same image given as SUV, divided by the SUV factor (computed by hand in tests/_dicom.py)."""
    info = _dicom.make_pet_series(tmp_path / "dicom" / "pet_ct")
    spacing = {"trained_spacing": [_dicom.PIXEL_MM, _dicom.PIXEL_MM, _dicom.SLICE_MM]}
    run_bundle("inference", input_files=[str(info.folder)], inference_output_dir=str(tmp_path / "out"),
               output_format="dicom", **spacing)  # fmt: skip
    out_folder = tmp_path / "out" / "pet_ct_denoised"
    written = sorted((pydicom.dcmread(p) for p in out_folder.iterdir()), key=lambda ds: int(ds.InstanceNumber))
    first_in = pydicom.dcmread(info.files[0])
    assert len(written) == _dicom.N_SLICES
    assert {ds.StudyInstanceUID for ds in written} == {info.study_uid}
    assert {ds.FrameOfReferenceUID for ds in written} == {info.frame_uid}
    assert {ds.SeriesInstanceUID for ds in written} != {info.series_uid} and len({ds.SeriesInstanceUID for ds in written}) == 1
    assert all(ds.ImageType[0] == "DERIVED" and ds.Units == "BQML" for ds in written)
    assert [list(map(float, ds.ImagePositionPatient)) for ds in written] == [
        list(map(float, pydicom.dcmread(p).ImagePositionPatient)) for p in info.files
    ] and written[0].PixelSpacing == first_in.PixelSpacing

    # the same image as SUV in a NIfTI with the series' geometry, through the same bundle: the expected output in SUV
    bqml, dicom_affine = _loaded(info.folder)
    nifti = _save(bqml * _dicom.HAND_FACTOR, dicom_affine, tmp_path / "suv.nii.gz")
    run_bundle("inference", input_files=[str(nifti)], inference_output_dir=str(tmp_path / "out_suv"), **spacing)
    expected_suv, _ = _loaded(tmp_path / "out_suv" / "suv_denoised.nii.gz")
    got_bqml, got_affine = _loaded(out_folder)
    np.testing.assert_allclose(got_affine, dicom_affine, atol=1e-4)
    assert not np.allclose(expected_suv, bqml * _dicom.HAND_FACTOR, rtol=1e-3)  # the network changed it
    # 16-bit storage with a per-slice slope of max/65535: within 2e-5 of the largest value
    np.testing.assert_allclose(got_bqml, expected_suv / _dicom.HAND_FACTOR, rtol=0,
                               atol=2e-5 * np.abs(expected_suv / _dicom.HAND_FACTOR).max())  # fmt: skip


def test_dicom_series_in_bq_per_ml_to_nifti_keeps_bq_per_ml(run_bundle, tmp_path, random_model):
    """The default NIfTI output of a DICOM input is in the input's units (Bq/ml), not in SUV."""
    info = _dicom.make_pet_series(tmp_path / "dicom" / "pet_ct")
    spacing = {"trained_spacing": [_dicom.PIXEL_MM, _dicom.PIXEL_MM, _dicom.SLICE_MM]}
    run_bundle("inference", input_files=[str(info.folder)], inference_output_dir=str(tmp_path / "out"), **spacing)
    got, _ = _loaded(tmp_path / "out" / "pet_ct_denoised.nii.gz")
    bqml, _ = _loaded(info.folder)
    body = bqml > 0.5 / _dicom.HAND_FACTOR  # SUV above 0.5
    # a denoised Bq/ml image: of the order of the input's Bq/ml values (thousands), not of SUV (about 1)
    assert 0.2 < np.median(got[body]) / np.median(bqml[body]) < 5


def test_dicom_series_without_units_is_refused_naming_the_tag(run_bundle, tmp_path, random_model):
    info = _dicom.make_pet_series(tmp_path / "dicom" / "pet_ct", Units=None)
    with pytest.raises(Exception) as excinfo:
        run_bundle("inference", input_files=[str(info.folder)], inference_output_dir=str(tmp_path / "out"),
                   trained_spacing=[_dicom.PIXEL_MM, _dicom.PIXEL_MM, _dicom.SLICE_MM])  # fmt: skip
    assert "Units (0054,1001)" in "".join(_messages(excinfo.value))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.nii*"))


def _messages(error: BaseException) -> list[str]:
    out = []
    while error is not None:
        out.append(str(error))
        error = error.__cause__ or error.__context__
    return out


def test_dicom_output_needs_dicom_inputs(run_bundle, tiny_cohort, tmp_path, random_model):
    src = first_realisations(tiny_cohort)[0]
    with pytest.raises(Exception) as excinfo:
        run_bundle("inference", input_files=[src], inference_output_dir=str(tmp_path / "out"), output_format="dicom")
    assert "are not DICOM series folders" in "".join(_messages(excinfo.value))
    assert not (tmp_path / "out").exists()
    with pytest.raises(Exception) as excinfo:
        run_bundle("inference", input_files=[src], inference_output_dir=str(tmp_path / "out"), output_format="png")
    assert "output_format must be one of ['nifti', 'dicom'], got 'png'" in "".join(_messages(excinfo.value))
    assert not (tmp_path / "out").exists()


def test_another_voxel_size_is_resampled_and_back_or_refused(run_bundle, tiny_cohort, tmp_path, random_model):
    """The tiny cohort is at 12.5 x 12.5 x 42 mm; told the network was trained at 6.25 x 6.25 x 21 mm, the bundle
    resamples (the default policy) and writes the output on the input's own grid, or refuses with both sizes."""
    src = first_realisations(tiny_cohort)[0]
    finer = {"trained_spacing": [6.25, 6.25, 21.0]}
    run_bundle("inference", input_files=[src], inference_output_dir=str(tmp_path / "out"), **finer)
    a, b = nib.load(src), nib.load(tmp_path / "out" / "realization_00_denoised.nii.gz")
    assert b.shape == a.shape and np.array_equal(b.affine, a.affine)
    same_grid = tmp_path / "same"
    run_bundle("inference", input_files=[src], inference_output_dir=str(same_grid))
    assert not np.allclose(np.asarray(b.dataobj), np.asarray(nib.load(same_grid / "realization_00_denoised.nii.gz").dataobj))

    with pytest.raises(Exception) as excinfo:
        run_bundle("inference", input_files=[src], inference_output_dir=str(tmp_path / "refused"),
                   input_spacing_policy="refuse", **finer)  # fmt: skip
    message = "".join(_messages(excinfo.value))
    assert "input_spacing_policy" in message and "12.5" in message and "6.25" in message, message
    assert not any((tmp_path / "refused").rglob("*.nii*")) if (tmp_path / "refused").exists() else True


def test_nifti_in_bq_per_ml_with_weight_and_dose(run_bundle, tiny_cohort, tmp_path, random_model):
    """A NIfTI converted from a Bq/ml series states its units through the bundle (``input_units`` "Bq/ml" with the
    patient's weight and the decay-corrected dose): the network sees SUV and the output is in Bq/ml again, equal to
    the SUV run's output divided by the factor (weight [g] / dose [Bq], written out here)."""
    src = nib.load(first_realisations(tiny_cohort, "v2")[0])
    weight_kg, dose_bq = 80.0, 300e6
    factor = weight_kg * 1000.0 / dose_bq
    bqml = _save(np.asarray(src.dataobj, dtype=np.float64) / factor, src.affine, tmp_path / "bqml.nii.gz")
    run_bundle("inference", input_files=[str(bqml)], inference_output_dir=str(tmp_path / "out"), input_units="Bq/ml",
               input_patient_weight_kg=weight_kg, input_injected_dose_bq=dose_bq)  # fmt: skip
    run_bundle("inference", input_files=[first_realisations(tiny_cohort, "v2")[0]],
               inference_output_dir=str(tmp_path / "suv"))  # fmt: skip
    got = np.asarray(nib.load(tmp_path / "out" / "bqml_denoised.nii.gz").dataobj, dtype=np.float64)
    expected = np.asarray(nib.load(tmp_path / "suv" / "realization_00_denoised.nii.gz").dataobj, dtype=np.float64)
    np.testing.assert_allclose(got * factor, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    with pytest.raises(Exception) as excinfo:  # a Bq/ml NIfTI without the dose: refused before any output
        run_bundle("inference", input_files=[str(bqml)], inference_output_dir=str(tmp_path / "refused"),
                   input_units="Bq/ml", input_patient_weight_kg=weight_kg)  # fmt: skip
    assert "injected_dose_bq" in "".join(_messages(excinfo.value))
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").rglob("*.nii*"))


def test_evaluation_reads_images_and_labels_in_the_canonical_orientation(tiny_cohort, tmp_path):
    """Evaluation (Table 1, OOD, KSE sweep) reads every image and label through ``records.load_image`` /
    ``load_label``: a study stored axial-first or flipped gives the same canonical arrays, so its ROIs, slices and
    metrics are those of the correctly stored study."""
    from monai_tgd.evaluation.records import load_image, load_label

    record = next(r for r in __import__("json").loads(Path(tiny_cohort).read_text())["test"] if r["recon"] == "v2")
    root = Path(tiny_cohort).parent
    for field, loader in (("reference", load_image), ("label", load_label)):
        src = nib.load(root / record[field])
        canonical = loader(root / record[field])
        for name, (perm, flip) in ORDERS.items():
            array, affine = _stored(np.asarray(src.dataobj), src.affine, perm, flip)
            path = tmp_path / f"{field}_{name}.nii.gz"
            img = nib.Nifti1Image(array if field == "reference" else array.astype(np.int16), affine)
            img.set_qform(affine, 1)
            img.set_sform(affine, 1)
            nib.save(img, str(path))
            assert np.array_equal(loader(path), canonical), (field, name)
