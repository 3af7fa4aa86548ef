"""The bundle's ``inference`` workflow on the tiny simulated cohort: NIfTI and DICOM in, NIfTI out, all-or-nothing."""

import json
import locale
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_tgd.networks import DnCNN

from .conftest import TINY_OVERRIDES, first_realisations, load_tiny_model


@pytest.fixture
def random_model(tmp_path):
    """A tiny DnCNN checkpoint in the place of ``model.pt``, inference's default checkpoint (the pipeline, not the
    training, is tested here)."""
    torch.manual_seed(0)
    path = tmp_path / "models" / "model.pt"
    path.parent.mkdir()
    torch.save(DnCNN(features=TINY_OVERRIDES["features"], num_layers=TINY_OVERRIDES["num_layers"]).state_dict(), path)
    return path


def outputs(tmp_path):
    return sorted((tmp_path / "runs").rglob("*.nii*")) if (tmp_path / "runs").exists() else []


def slab_by_slab(network, volume: np.ndarray, slab: int = 3) -> np.ndarray:
    """The network applied to each slice of ``volume`` [X, Y, Z] with its neighbours as channels (slices beyond the
    volume replicate the edge), one slice per call: the denoised volume computed without the bundle's inferer."""
    half = slab // 2
    padded = np.pad(volume.astype(np.float32), ((0, 0), (0, 0), (half, half)), mode="edge")
    out = np.empty(volume.shape, dtype=np.float32)
    with torch.no_grad():
        for z in range(volume.shape[-1]):
            x = torch.from_numpy(np.ascontiguousarray(padded[..., z : z + slab].transpose(2, 0, 1)))[None]
            out[..., z] = network(x)[0, 0].numpy()
    return out


def test_pretrain_then_inference_keeps_geometry(run_bundle, tiny_cohort, tmp_path):
    run_bundle("pretrain")
    # default inputs with inference_recon v1: the first v1 realisation of each test study; the v1-net just trained
    run_bundle("inference", inference_recon="v1", inference_checkpoint=str(tmp_path / "models" / "model_v1.pt"))
    inputs = first_realisations(tiny_cohort)
    assert len(inputs) == 2
    network = load_tiny_model(tmp_path / "models" / "model_v1.pt").eval()
    root = Path(tiny_cohort).parent / "studies"
    for src in inputs:
        rel = Path(src).relative_to(root)  # the input's folders below their common root are kept
        out = tmp_path / "runs" / "inference" / rel.parent / rel.name.replace(".nii.gz", "_denoised.nii.gz")
        a, b = nib.load(src), nib.load(out)
        assert b.shape == a.shape and np.array_equal(b.affine, a.affine)
        assert b.header.get_xyzt_units() == a.header.get_xyzt_units() == ("mm", "sec")
        assert b.get_data_dtype() == np.float32
        # the values are v1-net's output, slice by slice, in the input's units: recomputed here one slice per call.
        # Not bit for bit: the bundle batches sw_batch_size slices per call, and kernels may sum in another order
        # for another batch size.
        expected = slab_by_slab(network, np.asarray(a.dataobj))
        y = np.asarray(b.dataobj)
        assert not np.allclose(expected, np.asarray(a.dataobj), rtol=1e-3)  # the network does change the image
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert not list((tmp_path / "runs").rglob(".partial-*"))


def test_bad_input_among_several_writes_nothing(run_bundle, tiny_cohort, tmp_path, random_model):
    good = first_realisations(tiny_cohort)
    bad = tmp_path / "bad.nii.gz"
    data = nib.load(good[0]).get_fdata().astype(np.float32)
    data[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(data, nib.load(good[0]).affine), bad)
    with pytest.raises(Exception) as e:
        run_bundle("inference", input_files=[good[0], str(bad), good[1]])
    chain = []
    err = e.value
    while err is not None:
        chain.append(err)
        err = err.__cause__
    assert any(isinstance(x, ValueError) and "bad.nii.gz: expected finite voxel values" in str(x) for x in chain)
    assert outputs(tmp_path) == []
    with pytest.raises(Exception) as e:
        run_bundle("inference", input_files=[good[0], str(tmp_path / "missing.nii.gz")])
    assert isinstance(e.value.__cause__, FileNotFoundError) and "missing.nii.gz" in str(e.value.__cause__)
    assert outputs(tmp_path) == []


def write_dicom_series(nifti: str, folder: Path) -> float:
    """Write a NIfTI volume as a PET DICOM series (int16 + rescale slope); return the slope.

    SimpleITK's DICOM writer sets the process's C locale to "C" (ASCII) and leaves it so, which would change the
    default text encoding of every later test in this process (torch.compile then fails reading its UTF-8 templates):
    the locale is put back."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        return _write_dicom_series(nifti, folder)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_dicom_series(nifti: str, folder: Path) -> float:
    sitk = pytest.importorskip("SimpleITK")
    img = sitk.ReadImage(nifti, sitk.sitkFloat32)  # SimpleITK converts NIfTI's RAS to DICOM's LPS
    values = sitk.GetArrayViewFromImage(img)
    slope = float(np.abs(values).max()) / 32000
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = img.GetDirection()
    orientation = "\\".join(f"{v:g}" for v in (*direction[0::3], *direction[1::3]))
    for z in range(img.GetDepth()):
        frame = img[:, :, z]
        tags = {
            "0008|0060": "PT", "0020|000d": "1.2.826.0.1.3680043.2.1125.1", "0020|000e": "1.2.826.0.1.3680043.2.1125.2",
            "0020|0037": orientation, "0020|0013": str(z + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in img.TransformIndexToPhysicalPoint((0, 0, z))),
            "0028|1053": f"{slope:.10g}", "0028|1052": "0", "0028|0100": "16", "0028|0101": "16", "0028|0102": "15",
            "0028|0103": "1",
        }  # fmt: skip
        for key, value in tags.items():
            frame.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice_{z:03d}.dcm"))
        writer.Execute(frame)
    return slope


def test_dicom_series_input(run_bundle, tiny_cohort, tmp_path, random_model):
    pytest.importorskip("pydicom")
    from monai.transforms import LoadImage

    src = first_realisations(tiny_cohort)[0]
    slope = write_dicom_series(src, tmp_path / "dicom" / "pet_series")
    loaded = LoadImage(image_only=True, ensure_channel_first=True)(str(tmp_path / "dicom" / "pet_series"))
    reference = nib.load(src)
    # int16 storage with a rescale slope: values round-trip to within half a slope step
    assert np.abs(loaded[0].numpy() - reference.get_fdata()).max() <= slope / 2 * 1.01
    np.testing.assert_allclose(loaded.affine.numpy(), reference.affine, atol=1e-4)

    series = str(tmp_path / "dicom" / "pet_series")
    # the series holds SUV values without the DICOM PET attributes (no Units): say so (input_units)
    run_bundle("inference", input_files=[series, src], inference_output_dir=str(tmp_path / "out"), input_units="SUV")
    # outputs mirror the inputs' folders below their common root
    (from_dicom,) = [nib.load(p) for p in (tmp_path / "out").rglob("dicom/pet_series_denoised.nii.gz")]
    (from_nifti,) = [nib.load(p) for p in (tmp_path / "out").rglob("v1/realization_00_denoised.nii.gz")]
    assert from_dicom.shape == reference.shape
    np.testing.assert_allclose(from_dicom.affine, reference.affine, atol=1e-4)
    np.testing.assert_allclose(from_dicom.get_fdata(), from_nifti.get_fdata(), atol=50 * slope)
