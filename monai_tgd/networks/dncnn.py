"""The paper's 2.5D residual DnCNN (Zhang et al. 2017; Chen, Asma, Chan 2021, Fig. 1 without TGD layers)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

__all__ = ["DnCNN"]


class DnCNN(nn.Module):
    """Residual denoising ConvNet: conv+ReLU, ``num_layers - 2`` x conv+BN+ReLU, conv; output = centre input - noise.

    With the defaults it is the paper's 2.5D network: three consecutive slices in as channels
    ``[B, 3, H, W]``, the denoised centre slice out ``[B, 1, H, W]``, in the input's units (e.g. SUV).
    ``spatial_dims=3`` gives the same network with 3x3x3 kernels on ``[B, C, H, W, D]``.

    Layers are ``blocks.<i>.conv`` / ``blocks.<i>.norm`` / ``blocks.<i>.act`` with ``i = 0 .. num_layers - 1``,
    so "the last three conv blocks" are ``blocks.{num_layers-3 .. num_layers-1}``. Convolutions followed by BN
    have no bias (BN's beta replaces it).

    Args:
        spatial_dims: 2 (2.5D, slices as channels) or 3.
        in_channels: input channels; odd-sized slabs centre on channel ``(in_channels - out_channels) // 2``.
        out_channels: output channels, the centre ``out_channels`` input channels minus the predicted noise.
        features: feature maps of every hidden layer (64 in the paper).
        num_layers: number of convolutions, at least 2 (8 in the paper).
    """

    def __init__(
        self, spatial_dims: int = 2, in_channels: int = 3, out_channels: int = 1, features: int = 64, num_layers: int = 8
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"DnCNN: spatial_dims must be 2 or 3, got {spatial_dims}.")
        if num_layers < 2:
            raise ValueError(f"DnCNN: num_layers must be >= 2 (first and last conv), got {num_layers}.")
        if features < 1 or out_channels < 1 or in_channels < out_channels or (in_channels - out_channels) % 2:
            raise ValueError(
                "DnCNN: need features >= 1 and out_channels <= in_channels with an even difference so the output "
                f"is centred in the input slab; got in_channels={in_channels}, out_channels={out_channels}, "
                f"features={features}."
            )
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
        blocks = [nn.Sequential(OrderedDict(conv=conv(in_channels, features, 3, padding=1), act=nn.ReLU()))]
        blocks += [
            nn.Sequential(
                OrderedDict(conv=conv(features, features, 3, padding=1, bias=False), norm=norm(features), act=nn.ReLU())
            )
            for _ in range(num_layers - 2)
        ]
        blocks.append(nn.Sequential(OrderedDict(conv=conv(features, out_channels, 3, padding=1))))
        self.blocks = nn.Sequential(*blocks)
        self.centre = (in_channels - out_channels) // 2
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.centre : self.centre + self.out_channels] - self.blocks(x)
