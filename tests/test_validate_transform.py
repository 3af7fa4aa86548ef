"""``ValidatePET(d)`` and ``check_pet_files``: every bad input gives a clear error naming the file."""

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImaged

from monai_tgd.transforms import ValidatePET, ValidatePETd, check_pet_files

AFFINE = np.diag([2.0, 2.5, 3.0, 1.0])


def save(path, data, affine=AFFINE, pixdim=None):
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    if pixdim is not None:
        img.header["pixdim"][1:4] = pixdim
    nib.save(img, path)
    return str(path)


def pet(shape=(8, 9, 6)):
    return np.random.default_rng(0).gamma(2.0, 0.5, size=shape)


def test_valid_nifti_passes_unchanged(tmp_path):
    path = save(tmp_path / "ok.nii.gz", pet())
    assert check_pet_files([path]) == [path]
    data = LoadImaged("image", ensure_channel_first=True, image_only=True)({"image": path})
    meta, affine = dict(data["image"].meta), data["image"].affine.clone()
    out = ValidatePETd("image")(data)
    assert out is data and out["image"] is data["image"]
    assert torch.equal(out["image"].affine, affine) and out["image"].meta.keys() == meta.keys()
    for key, value in meta.items():
        value, now = np.asarray(value), np.asarray(out["image"].meta[key])
        assert np.array_equal(now, value, equal_nan=value.dtype.kind == "f"), key


def test_singleton_4th_axis_passes(tmp_path):
    assert check_pet_files(save(tmp_path / "t1.nii.gz", pet()[..., None]))  # [H, W, D, 1]


@pytest.mark.parametrize(
    "name, data, expected",
    [
        ("flat.nii.gz", pet((8, 9)), r"3D single-channel.*got shape \[1, 8, 9\] \(2 spatial"),
        ("frames.nii.gz", pet((8, 9, 6, 3)), r"3D single-channel.*got shape \[3, 8, 9, 6\] \(3 channels or frames"),
        ("five.nii.gz", pet((8, 9, 6, 1, 2)), r"3D single-channel"),
    ],
)
def test_wrong_dimensionality(tmp_path, name, data, expected):
    path = save(tmp_path / name, data)
    with pytest.raises(ValueError, match=expected) as e:
        check_pet_files([path])
    assert name in str(e.value)


@pytest.mark.parametrize(
    "bad, expected", [(np.nan, "3 NaN and 0 inf"), (np.inf, "0 NaN and 3 inf"), (-np.inf, "0 NaN and 3 inf")]
)
def test_non_finite_values(tmp_path, bad, expected):
    data = pet()
    data[1, 2, :3] = bad
    path = save(tmp_path / "nonfinite.nii.gz", data)
    with pytest.raises(ValueError, match=f"nonfinite.nii.gz: expected finite voxel values; found {expected}"):
        check_pet_files([path])


def meta_pet(affine, pixdim=None, name="scan.nii.gz"):
    img = MetaTensor(torch.ones(1, 4, 4, 3), affine=torch.as_tensor(affine, dtype=torch.float64))
    img.meta["filename_or_obj"] = name
    if pixdim is not None:
        img.meta["pixdim"] = np.array([1.0, *pixdim, 1, 1, 1, 1], dtype=np.float32)
    return img


# nibabel repairs zero/negative header voxel sizes when it reads a NIfTI (zero -> 1, negative -> abs, with a
# warning), so these checks act on the loaded MetaTensor: the affine from any reader and the NIfTI pixdim.
@pytest.mark.parametrize(
    "affine, pixdim, expected",
    [
        (np.diag([2.0, 0.0, 3.0, 1.0]), None, r"\[2.0, 0.0, 3.0\] from the affine"),
        (np.diag([2.0, 2.5, 3.0, 1.0]), [2.0, -2.5, 3.0], r"\[2.0, -2.5, 3.0\] from the header pixdim"),
        (np.diag([2.0, 2.5, 3.0, 1.0]), [2.0, 0.0, 3.0], r"\[2.0, 0.0, 3.0\] from the header pixdim"),
        (np.diag([2.0, np.nan, 3.0, 1.0]), None, r"\[2.0, nan, 3.0\] from the affine"),
    ],
)
def test_non_positive_voxel_sizes(affine, pixdim, expected):
    with pytest.raises(ValueError, match=r"scan.nii.gz: expected finite voxel sizes > 0; got " + expected):
        ValidatePET()(meta_pet(affine, pixdim))
    with pytest.raises(ValueError, match=r"scan.nii.gz: expected finite voxel sizes > 0"):
        ValidatePETd("image")({"image": meta_pet(affine, pixdim)})


def test_flipped_axes_are_valid():
    img = meta_pet(np.diag([-2.0, -2.5, 3.0, 1.0]), [2.0, 2.5, 3.0])
    assert ValidatePET()(img) is img


def test_array_level_checks():
    check = ValidatePET()
    assert check(np.ones((1, 4, 4, 3))) is not None  # plain arrays: no affine to check
    with pytest.raises(ValueError, match="input image: expected a 3D single-channel"):
        check(np.ones((4, 4, 3)))
    with pytest.raises(ValueError, match="'target': expected finite"):
        ValidatePETd("target")({"target": torch.full((1, 2, 2, 2), float("nan"))})


def test_missing_and_unreadable_files_all_reported(tmp_path):
    good = save(tmp_path / "good.nii.gz", pet())
    with pytest.raises(FileNotFoundError, match=r"2 input\(s\) not found.*nope1.nii.gz.*nope2") as e:
        check_pet_files([good, str(tmp_path / "nope1.nii.gz"), str(tmp_path / "nope2")])
    assert "good.nii.gz" not in str(e.value)
    (tmp_path / "garbage.nii.gz").write_bytes(b"not an image")
    flat = save(tmp_path / "flat.nii.gz", pet((8, 9)))
    (tmp_path / "empty_series").mkdir()
    with pytest.raises(ValueError, match=r"3 of 4 input\(s\) rejected") as e:
        check_pet_files([good, str(tmp_path / "garbage.nii.gz"), flat, str(tmp_path / "empty_series")])
    message = str(e.value)
    assert "garbage.nii.gz: cannot read it" in message and "flat.nii.gz: expected" in message
    assert "empty_series: empty folder" in message
    with pytest.raises(ValueError, match="no input files"):
        check_pet_files([])
