"""2.5D inference: run a 2D network that takes a slab of neighbouring slices as channels over a whole volume."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type

from monai_tgd.transforms.slab import check_slab, extract_slabs, spatial_axis

__all__ = ["Slab25DInferer"]


class Slab25DInferer(Inferer):
    """Apply a 2.5D network slice by slice: slab ``[C * slab, H, W]`` in, centre slice ``[C_out, H, W]`` out.

    MONAI's ``SliceInferer`` feeds a single slice; the TGD denoiser takes the slice with its neighbours as input
    channels. This inferer builds the slabs with :func:`monai_tgd.transforms.extract_slabs` (the same code as the
    training transforms, so the border handling matches: slices beyond the volume replicate the edge), at most
    ``sw_batch_size`` at a time, and writes each network output into the output volume. Besides the input and
    output volumes, memory is bounded by ``sw_batch_size`` slabs and their activations, so a 192x192x600
    whole-body volume never needs all its slabs in memory. The result equals a plain per-slice loop.

    Args:
        slab: odd number of consecutive slices per network input (3 in the paper).
        axis: spatial axis to slice along: ``0, 1, 2`` or ``-3, -2, -1`` (default ``-1``: ``D`` of
            ``[B, C, H, W, D]``).
        sw_batch_size: number of slabs per network call.
        sw_device: device the network runs on (slabs are moved there); default: the input's device.
        device: device of the output volume; default: the input's device.

    Call: ``inferer(inputs, network, *args, **kwargs)`` with ``inputs`` ``[B, C, H, W, D]`` (C = 1 for PET;
    channel ``c * slab + j`` of the network input is channel ``c`` of slice ``z - slab // 2 + j``) and ``network``
    mapping ``[N, C * slab, H, W]`` to ``[N, C_out, H, W]``; extra arguments are passed to ``network``. Returns
    ``[B, C_out, H, W, D]`` in the network's output dtype; a MetaTensor input gives a MetaTensor output with the
    input's metadata (affine, filename). Like MONAI's inferers it does not disable autograd: call it under
    ``torch.no_grad()`` (MONAI evaluators do) or activations of every chunk are kept for backward.
    """

    def __init__(
        self,
        slab: int = 3,
        axis: int = -1,
        sw_batch_size: int = 8,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.slab = check_slab(slab)
        self.axis = spatial_axis(axis, 3)
        if isinstance(sw_batch_size, bool) or not isinstance(sw_batch_size, int) or sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be a positive integer, got {sw_batch_size!r}.")
        self.sw_batch_size = sw_batch_size
        self.sw_device = sw_device
        self.device = device

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        if inputs.ndim != 5:
            raise ValueError(f"inputs must be a batch of volumes [B, C, H, W, D], got shape {tuple(inputs.shape)}.")
        volumes = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        sw_device = volumes.device if self.sw_device is None else torch.device(self.sw_device)
        device = volumes.device if self.device is None else torch.device(self.device)
        dim = 2 + self.axis  # dimension of ``axis`` in [B, C, H, W, D]
        length = volumes.shape[dim]
        output: torch.Tensor | None = None
        for b, volume in enumerate(volumes):
            for start in range(0, length, self.sw_batch_size):
                centres = torch.arange(start, min(start + self.sw_batch_size, length), device=volume.device)
                slabs = extract_slabs(volume, centres, self.slab, self.axis).to(sw_device)
                pred = network(slabs, *args, **kwargs)
                expected = (len(centres), *slabs.shape[2:])
                if not isinstance(pred, torch.Tensor) or pred.ndim != 4 or (pred.shape[0], *pred.shape[2:]) != expected:
                    got = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
                    plane = ", ".join(map(str, slabs.shape[2:]))
                    raise ValueError(f"network must map slabs {tuple(slabs.shape)} to [N, C_out, {plane}], got {got}.")
                if output is None:
                    shape = list(volumes.shape)
                    shape[1] = pred.shape[1]
                    output = torch.empty(shape, dtype=pred.dtype, device=device)
                # [N, C_out, *inplane] -> [C_out, *spatial with N slices at ``axis``]
                output[b].narrow(dim - 1, start, len(centres)).copy_(pred.movedim(0, dim - 1))
        if output is None:  # empty volume along ``axis`` or batch
            raise ValueError(f"inputs must have at least one volume and one slice, got shape {tuple(inputs.shape)}.")
        if isinstance(inputs, MetaTensor):
            output = convert_to_dst_type(output, inputs, dtype=output.dtype, device=output.device)[0]
        return output
