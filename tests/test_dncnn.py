import pytest
import torch

from monai_tgd.networks import DnCNN


def test_paper_architecture():
    net = DnCNN()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == 8 and len(norms) == 6
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert [c.in_channels for c in convs] == [3] + [64] * 7 and convs[-1].out_channels == 1
    assert not any(isinstance(m, torch.nn.ReLU) for m in net.blocks[-1])  # plain last conv
    assert [type(m).__name__ for m in net.blocks[0]] == ["Conv2d", "ReLU"]


def test_residual_output_is_centre_slice_minus_predicted_noise():
    torch.manual_seed(0)
    net = DnCNN(features=8, num_layers=4).eval()
    x = torch.rand(2, 3, 20, 24)
    out = net(x)
    assert out.shape == (2, 1, 20, 24)
    torch.testing.assert_close(out, x[:, 1:2] - net.blocks(x))
    with torch.no_grad():  # zero noise prediction -> identity on the centre slice
        for p in net.blocks[-1].parameters():
            p.zero_()
    torch.testing.assert_close(net(x), x[:, 1:2])


def test_3d():
    net = DnCNN(spatial_dims=3, in_channels=1, out_channels=1, features=4, num_layers=3)
    assert net(torch.rand(1, 1, 8, 8, 8)).shape == (1, 1, 8, 8, 8)
    assert isinstance(net.blocks[1].norm, torch.nn.BatchNorm3d)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"spatial_dims": 1}, "spatial_dims must be 2 or 3"),
        ({"num_layers": 1}, "num_layers must be >= 2"),
        ({"in_channels": 3, "out_channels": 2}, "even difference"),
        ({"in_channels": 1, "out_channels": 3}, "out_channels <= in_channels"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DnCNN(**kwargs)
