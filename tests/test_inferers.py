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
    # float64 as in the test above: 3 slabs per call against 1 may round differently (not bitwise), a wrong slab,
    # channel order or extra argument errs by O(1)
    assert got.shape == (1, 3, 6, 5, 4)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-14)
    assert calls == [3, 1]  # memory bounded: never more than sw_batch_size slabs per call


def test_metatensor_metadata_kept():
    aff = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0], dtype=torch.float64))
    x = MetaTensor(torch.rand(1, 1, 5, 5, 3), affine=aff, meta={"filename_or_obj": "pet.nii.gz"})
    with torch.no_grad():
        y = Slab25DInferer()(x, small_net(dtype=torch.float32))
    assert isinstance(y, MetaTensor) and y.meta["filename_or_obj"] == "pet.nii.gz"
    torch.testing.assert_close(y.affine, aff)


def device_recorder(net, seen):
    """``net`` wrapped to record the device of every slab batch it receives."""

    def network(slabs):
        seen.append(slabs.device.type)
        return net(slabs)

    return network


def test_sw_device_and_device_are_used():
    """The CPU-only machine has one real device type, so the second one is 'meta' (shapes, no data): with a CPU input,
    ``sw_device='meta'`` must hand the network meta slabs (a network on 'meta' fails on CPU slabs) and ``device`` must
    allocate the output there (a CPU output cannot take a copy of meta data); ``device='meta'`` alone must leave the
    network on the input's device and still put the output on 'meta'."""
    x = torch.rand(2, 1, 4, 5, 3)
    seen = []
    with torch.no_grad():
        y = Slab25DInferer(sw_device="meta", device="meta", sw_batch_size=2)(
            x, device_recorder(small_net(dtype=torch.float32).to("meta"), seen)
        )
    assert seen == ["meta"] * 4  # 2 volumes x 2 chunks of slabs
    assert y.device.type == "meta" and y.shape == x.shape and y.dtype == torch.float32

    seen = []
    with torch.no_grad():
        y = Slab25DInferer(device=torch.device("meta"))(x, device_recorder(small_net(dtype=torch.float32), seen))
    assert seen == ["cpu", "cpu"] and y.device.type == "meta" and y.shape == x.shape
    # defaults: the input's device for both
    seen = []
    with torch.no_grad():
        y = Slab25DInferer()(x, device_recorder(small_net(dtype=torch.float32), seen))
    assert seen == ["cpu", "cpu"] and type(y) is torch.Tensor and y.device.type == "cpu"


ACCELERATORS = [
    d for d, available in (("cuda", torch.cuda.is_available()), ("mps", torch.backends.mps.is_available())) if available
]


@pytest.mark.skipif(not ACCELERATORS, reason="no CUDA or MPS device: the cross-device values need a second real device")
@pytest.mark.parametrize("accelerator", ACCELERATORS or ["none"])
def test_cross_device_values(accelerator):
    """CPU volume, network on the accelerator, output back on the CPU (and the reverse): the values of the CPU loop."""
    x = torch.rand(1, 1, 6, 5, 4)
    net = small_net(dtype=torch.float32)
    with torch.no_grad():
        expected = naive_loop(x, net, 3, -1)
        on_acc = Slab25DInferer(sw_device=accelerator, device="cpu", sw_batch_size=3)(x, net.to(accelerator))
        back = Slab25DInferer(sw_device="cpu", device=accelerator)(x.to(accelerator), net.to("cpu"))
    assert on_acc.device.type == "cpu" and back.device.type == accelerator
    torch.testing.assert_close(on_acc, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(back.cpu(), expected, rtol=1e-4, atol=1e-5)


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
