"""Held-out slices for 2.5D sampling: ``RandSlab25Dd(exclude_slices=...)`` and ``Slab25Dd(slices=...)``."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_tgd.transforms import RandSlab25Dd, Slab25Dd
from monai_tgd.transforms.slab import SLICE_INDEX_KEY, select_slices


def volume(depth=12, size=8):
    """[1, size, size, depth] whose voxels hold their slice index along the last axis."""
    z = torch.arange(depth, dtype=torch.float32).expand(1, size, size, depth).clone()
    return MetaTensor(z, affine=torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0])))


def test_select_slices():
    assert select_slices(slice(2, None, 5), 12).tolist() == [2, 7]
    assert select_slices([5, -1, 5, 0], 12).tolist() == [0, 5, 11]
    assert select_slices(3, 12).tolist() == [3]
    assert select_slices([], 12).tolist() == []
    with pytest.raises(ValueError, match="slice indices"):
        select_slices([12], 12)
    with pytest.raises(ValueError, match="slice, an int or a sequence"):
        select_slices([1.5], 12)


@pytest.mark.parametrize("weighted", [False, True])
def test_rand_slab_never_samples_excluded_slices(weighted):
    held_out = slice(2, None, 5)  # slices 2 and 7 of 12
    t = RandSlab25Dd(["image", "target"], slab=(3, 1), num_samples=300, spatial_size=(4, 4),
                     weight_key="target" if weighted else None, weight_threshold=-1, exclude_slices=held_out)
    t.set_random_state(0)
    img = volume()
    out = t({"image": img, "target": img.clone()})
    centres = [int(o["target"].meta[SLICE_INDEX_KEY]) for o in out]
    assert {int(o["target"].as_tensor().unique()) for o in out} == set(centres)  # target = centre slice
    assert set(centres) == set(range(12)) - {2, 7}  # every other slice drawn, never a held-out one


def test_rand_slab_falls_back_to_uniform_when_only_excluded_slices_have_foreground():
    img = volume()
    mask = torch.zeros_like(img.as_tensor())
    mask[..., 7] = 1  # foreground only on a held-out slice
    t = RandSlab25Dd(["image"], slab=1, num_samples=200, weight_key="mask", exclude_slices=[7])
    t.set_random_state(1)
    centres = {int(o["image"].meta[SLICE_INDEX_KEY]) for o in t({"image": img, "mask": mask})}
    assert centres == set(range(12)) - {7}


def test_rand_slab_rejects_excluding_every_slice():
    t = RandSlab25Dd(["image"], exclude_slices=slice(None))
    with pytest.raises(ValueError, match="excludes all 12 slices"):
        t({"image": volume()})


def test_slab_dict_selected_slices_equal_the_full_pass():
    img = volume()
    data = {"image": img, "target": img.clone(), "name": "x"}
    full = Slab25Dd(["image", "target"], slab=(3, 1))(data)
    some = Slab25Dd(["image", "target"], slab=(3, 1), slices=slice(2, None, 5))(data)
    assert [int(d["target"].meta[SLICE_INDEX_KEY]) for d in some] == [2, 7]
    for d in some:
        z = int(d["image"].meta[SLICE_INDEX_KEY])
        assert torch.equal(d["image"], full[z]["image"]) and torch.equal(d["target"], full[z]["target"])
        assert torch.equal(d["image"].affine, full[z]["image"].affine) and d["name"] == "x"
    assert np.allclose(some[0]["image"][:, 0, 0].tolist(), [1, 2, 3])
