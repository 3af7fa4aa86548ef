"""Tests for 2.5D slab extraction and sampling (monai_tgd.transforms.slab)."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_tgd.transforms import RandSlab25Dd, Slab25D, Slab25Dd, extract_slabs


def volume(shape=(1, 4, 5, 6)):
    return torch.arange(float(np.prod(shape))).reshape(shape)


def affine():
    a = torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0], dtype=torch.float64))
    a[:3, 3] = torch.tensor([10.0, 20.0, 30.0])
    return a


def test_extract_slabs_contents_and_borders():
    v = volume((2, 3, 4, 5))
    s = extract_slabs(v, [0, 2, 4], slab=3, axis=-1)
    assert s.shape == (3, 6, 3, 4)
    for n, z in enumerate([0, 2, 4]):
        expected = [min(max(z + o, 0), 4) for o in (-1, 0, 1)]  # replicated border
        for c in range(2):
            for j, zz in enumerate(expected):
                assert torch.equal(s[n, c * 3 + j], v[c, :, :, zz])
    # slab 0 is slices 0, 0, 1; last is 3, 4, 4
    assert torch.equal(s[0, :3], v[0, :, :, [0, 0, 1]].permute(2, 0, 1))
    assert torch.equal(s[2, :3], v[0, :, :, [3, 4, 4]].permute(2, 0, 1))


@pytest.mark.parametrize("axis, plane", [(0, (5, 6)), (1, (4, 6)), (2, (4, 5)), (-3, (5, 6)), (-2, (4, 6))])
def test_extract_slabs_any_axis(axis, plane):
    v = volume()
    s = extract_slabs(v, [1], slab=5, axis=axis)
    assert s.shape == (1, 5, *plane)
    assert torch.equal(s[0, 2], v[0].select(axis % 3, 1))  # centre
    assert torch.equal(s[0, 0], v[0].select(axis % 3, 0))  # 1 - 2 clamped to 0


def test_extract_slabs_errors():
    v = volume()
    with pytest.raises(ValueError, match=r"slab must be a positive odd integer \(1, 3, 5, ...\), got 2"):
        extract_slabs(v, [0], slab=2)
    with pytest.raises(ValueError, match=r"axis must be a spatial axis in \[-3, 2\] for 3 spatial dimensions, got 3"):
        extract_slabs(v, [0], axis=3)
    with pytest.raises(ValueError, match=r"slab centres must lie in \[0, 6\) along axis 2, got \[6\]"):
        extract_slabs(v, [6])


def test_slab25d_numpy_torch_and_meta():
    v = volume()
    out = Slab25D()(v.numpy())
    assert len(out) == 6 and all(isinstance(o, np.ndarray) and o.shape == (3, 4, 5) for o in out)
    np.testing.assert_array_equal(out[5], v.numpy()[0][..., [4, 5, 5]].transpose(2, 0, 1))
    assert all(type(o) is torch.Tensor for o in Slab25D(slab=1)(v))

    m = MetaTensor(v, affine=affine(), meta={"filename_or_obj": "vol.nii.gz"})
    out = Slab25D()(m)
    assert isinstance(out[3], MetaTensor) and out[3].shape == (3, 4, 5)
    assert out[3].meta["slice_index"] == 3 and out[3].meta["slice_axis"] == 2
    assert out[3].meta["filename_or_obj"] == "vol.nii.gz"
    # 2D affine: axis row/column dropped (MONAI SqueezeDim convention); in-plane part unchanged
    torch.testing.assert_close(out[3].affine, torch.tensor([[2.0, 0, 10], [0, 3, 20], [0, 0, 1]], dtype=torch.float64))
    # along axis 0, the H row/column are dropped instead
    out0 = Slab25D(axis=0)(m)
    assert len(out0) == 4 and out0[2].shape == (3, 5, 6)
    torch.testing.assert_close(out0[2].affine, torch.tensor([[3.0, 0, 20], [0, 4, 30], [0, 0, 1]], dtype=torch.float64))
    assert m.affine.shape == (4, 4)  # input untouched


def test_slice_affine_oblique_translation():
    a = affine()
    a[0, 2] = 0.5  # the slice index moves world x
    m = MetaTensor(volume(), affine=a)
    out = Slab25D()(m)
    assert out[4].affine[0, 2].item() == pytest.approx(10 + 0.5 * 4)


def test_slab25dd_list_of_dicts():
    v = volume()
    data = {"image": MetaTensor(v, affine=affine()), "target": v * 2, "id": "s1"}
    out = Slab25Dd(["image", "target"], slab=(3, 1))(data)
    assert len(out) == 6
    assert out[0]["image"].shape == (3, 4, 5) and out[0]["target"].shape == (1, 4, 5)
    assert torch.equal(out[2]["target"][0], 2 * v[0, :, :, 2]) and out[2]["id"] == "s1"
    with pytest.raises(ValueError, match=r"all keys must share one spatial shape .*'image': \(4, 5, 6\).*'target': \(4, 5, 7\)"):
        Slab25Dd(["image", "target"])({"image": v, "target": torch.zeros(1, 4, 5, 7)})
    with pytest.raises(KeyError):
        Slab25Dd(["image", "nope"])(data)
    assert len(Slab25Dd(["image", "nope"], allow_missing_keys=True)(data)) == 6


def test_rand_slab_same_location_in_all_keys():
    v = volume((1, 8, 9, 10))
    data = {"image": MetaTensor(v, affine=affine()), "target": MetaTensor(v + 1000, affine=affine()), "info": [1]}
    t = RandSlab25Dd(["image", "target"], slab=(3, 1), num_samples=5, spatial_size=(4, -1)).set_random_state(0)
    out = t(data)
    assert len(out) == 5
    for i, d in enumerate(out):
        img, tgt = d["image"], d["target"]
        assert img.shape == (3, 4, 9) and tgt.shape == (1, 4, 9)
        assert torch.equal(img[1], tgt[0] - 1000)  # centre slice of the slab == target slice
        z = img.meta["slice_index"]
        x0 = int(round((img.affine[0, 2].item() - 10) / 2))  # crop start recovered from the 2D affine
        assert torch.equal(img[1], v[0, x0:x0 + 4, :, z])
        assert torch.equal(img[0], v[0, x0:x0 + 4, :, max(z - 1, 0)])
        assert img.meta["patch_index"] == i and tgt.meta["slice_index"] == z
        assert d["info"] == [1] and d["info"] is not data["info"]
    again = RandSlab25Dd(["image", "target"], slab=(3, 1), num_samples=5, spatial_size=(4, -1)).set_random_state(0)(data)
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(out, again))


def test_rand_slab_weighting_towards_body():
    v = torch.zeros(1, 16, 16, 20)
    label = torch.zeros(1, 16, 16, 20)
    label[0, 10:14, 2:5, 12:15] = 1  # the "body" occupies slices 12..14, in-plane rows 10..13, columns 2..4
    v[label > 0] = 1
    t = RandSlab25Dd(["image", "label"], slab=(3, 1), num_samples=30, spatial_size=(3, 3), weight_key="label")
    for d in t.set_random_state(1)({"image": v, "label": label}):
        assert d["label"].sum() > 0  # every patch contains body
    assert all(d["image"].shape == (3, 3, 3) for d in t({"image": v, "label": label}))


def test_rand_slab_uniform_when_no_foreground_and_numpy():
    v = np.zeros((1, 4, 4, 5), dtype=np.float32)
    out = RandSlab25Dd("image", num_samples=3, weight_key="image").set_random_state(0)({"image": v})
    assert [type(d["image"]) for d in out] == [np.ndarray] * 3 and out[0]["image"].shape == (3, 4, 4)


def test_rand_slab_errors():
    v = volume()
    with pytest.raises(ValueError, match=r"spatial_size \(5, 5\) exceeds the in-plane shape \(4, 5\)"):
        RandSlab25Dd("image", spatial_size=5)({"image": v})
    with pytest.raises(ValueError, match=r"num_samples must be a positive integer, got 0"):
        RandSlab25Dd("image", num_samples=0)
    with pytest.raises(ValueError, match=r"slab must be a positive odd integer"):
        RandSlab25Dd(["image", "target"], slab=(3, 4))
    with pytest.raises(ValueError, match=r"all keys must share one spatial shape"):
        RandSlab25Dd("image", weight_key="label")({"image": v, "label": torch.zeros(1, 4, 5, 5)})
    assert len(RandSlab25Dd("nope", num_samples=2, allow_missing_keys=True)({"image": v})) == 2


def test_after_load_imaged(tmp_path):
    nib = pytest.importorskip("nibabel")
    from monai.transforms import LoadImaged

    arr = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    nib.save(nib.Nifti1Image(arr, np.diag([2.0, 3.0, 4.0, 1.0])), tmp_path / "vol.nii.gz")
    data = LoadImaged("image", ensure_channel_first=True, image_only=True)({"image": str(tmp_path / "vol.nii.gz")})
    out = Slab25Dd("image")(data)
    assert out[2]["image"].shape == (3, 4, 5) and out[2]["image"].meta["filename_or_obj"].endswith("vol.nii.gz")
    assert out[2]["image"].affine.shape == (3, 3)
    np.testing.assert_array_equal(out[2]["image"][1].numpy(), arr[:, :, 2])


def test_missing_weight_key_is_named():
    import torch

    from monai_tgd.transforms import RandSlab25Dd

    with pytest.raises(KeyError, match=r"weight_key 'label' is not in the data \(keys: \['image'\]\)"):
        RandSlab25Dd(keys="image", weight_key="label")({"image": torch.rand(1, 8, 8, 4)})
