"""Tests for Slab25DInferer (monai_tgd.inferers)."""

import pytest
import torch
from monai.data import MetaTensor

from monai_tgd.inferers import Slab25DInferer


def small_net(in_ch=3, out_ch=1, dtype=torch.float64):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(in_ch, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(6, out_ch, 3, padding=1)
    ).to(dtype).eval()


def naive_loop(x, net, slab, axis):
    """Independent reference: one network call per slice, slab built with explicit clamped indices."""
    dim = 2 + axis % 3
    length = x.shape[dim]
    out = []
    for b in range(x.shape[0]):
        slices = []
        for z in range(length):
            idx = [min(max(z + o, 0), length - 1) for o in range(-(slab // 2), slab // 2 + 1)]
            chans = [x[b, c].select(dim - 2, i) for c in range(x.shape[1]) for i in idx]
            slices.append(net(torch.stack(chans)[None])[0])
        out.append(torch.stack(slices, dim=dim - 1))
    return torch.stack(out)


@pytest.mark.parametrize("axis", [-1, 0, 1])
@pytest.mark.parametrize("sw_batch_size", [1, 4, 100])
def test_equal_to_per_slice_loop_float64(axis, sw_batch_size):
    # float64: a wrong slab or slice order errs by O(1); the CPU conv kernels chosen for another batch size may only
    # round differently (seen: 1e-17), so the comparison allows float64 rounding and nothing more.
    x = torch.rand(2, 1, 9, 10, 7, dtype=torch.float64)
    net = small_net()
    with torch.no_grad():
        got = Slab25DInferer(axis=axis, sw_batch_size=sw_batch_size)(x, net)
        expected = naive_loop(x, net, 3, axis)
    assert got.shape == x.shape and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-14)


def test_float32_matches_loop_to_rounding():
    # float32 convolution algorithms may change with the batch size: equal up to a few ulps, not bitwise.
    x = torch.rand(1, 1, 12, 12, 9)
    net = small_net(dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(Slab25DInferer(sw_batch_size=4)(x, net), naive_loop(x, net, 3, -1), rtol=1e-5, atol=1e-6)


def test_slab5_multichannel_and_extra_args():
    x = torch.rand(1, 2, 6, 5, 4, dtype=torch.float64)
    net = small_net(in_ch=10, out_ch=3)
    calls = []

    def network(inp, scale, shift=0.0):
        calls.append(inp.shape[0])
        return net(inp) * scale + shift

    with torch.no_grad():
        got = Slab25DInferer(slab=5, sw_batch_size=3)(x, network, 2.0, shift=1.0)
        expected = naive_loop(x, net, 5, -1) * 2.0 + 1.0
    assert got.shape == (1, 3, 6, 5, 4) and torch.equal(got, expected)
    assert calls == [3, 1]  # memory bounded: never more than sw_batch_size slabs per call


def test_metatensor_metadata_kept():
    aff = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0], dtype=torch.float64))
    x = MetaTensor(torch.rand(1, 1, 5, 5, 3), affine=aff, meta={"filename_or_obj": "pet.nii.gz"})
    with torch.no_grad():
        y = Slab25DInferer()(x, small_net(dtype=torch.float32))
    assert isinstance(y, MetaTensor) and y.meta["filename_or_obj"] == "pet.nii.gz"
    torch.testing.assert_close(y.affine, aff)


def test_devices_and_plain_tensor():
    x = torch.rand(1, 1, 4, 4, 3)
    with torch.no_grad():
        y = Slab25DInferer(sw_device="cpu", device="cpu")(x, small_net(dtype=torch.float32))
    assert type(y) is torch.Tensor and y.device.type == "cpu"


def test_errors():
    net = small_net(dtype=torch.float32)
    with pytest.raises(ValueError, match=r"inputs must be a batch of volumes \[B, C, H, W, D\], got shape \(1, 4, 4, 3\)"):
        Slab25DInferer()(torch.rand(1, 4, 4, 3), net)
    with pytest.raises(ValueError, match=r"network must map slabs \(2, 3, 4, 4\) to \[N, C_out, 4, 4\], got \(2, 1, 2, 2\)"):
        Slab25DInferer(sw_batch_size=2)(torch.rand(1, 1, 4, 4, 3), lambda s: s[:, :1, :2, :2])
    with pytest.raises(ValueError, match=r"network must map slabs .* got tuple"):
        Slab25DInferer()(torch.rand(1, 1, 4, 4, 3), lambda s: (s,))
    with pytest.raises(ValueError, match=r"inputs must have at least one volume and one slice, got shape \(1, 1, 4, 4, 0\)"):
        Slab25DInferer()(torch.rand(1, 1, 4, 4, 0), net)
    with pytest.raises(ValueError, match=r"sw_batch_size must be a positive integer, got 0"):
        Slab25DInferer(sw_batch_size=0)
    with pytest.raises(ValueError, match=r"slab must be a positive odd integer"):
        Slab25DInferer(slab=4)
    with pytest.raises(ValueError, match=r"axis must be a spatial axis in \[-3, 2\]"):
        Slab25DInferer(axis=-4)
