"""Networks for evaluation: loading a module or checkpoint ready for inference, and denoising a volume or a stack.

Every check of a network (the checkpoint exists, loads and fits ``network_def``) runs in :func:`load_network`, so a
workflow that loads all its networks first fails before any inference.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["load_network", "load_networks", "network_sources", "network_source", "volume_tensor", "denoise"]


def _template(network_def: nn.Module | Callable[[], nn.Module] | None) -> nn.Module:
    if network_def is None:
        raise ValueError(
            "a checkpoint path needs network_def (the network to load it into, e.g. the bundle's @network_def)."
        )
    if isinstance(network_def, nn.Module):
        return copy.deepcopy(network_def)
    net = network_def()
    if not isinstance(net, nn.Module):
        raise ValueError(f"network_def must be an nn.Module or return one, got {type(net).__name__}.")
    return net


def _state_dict(checkpoint: Any, path: Path) -> dict:
    """The network's state_dict from a checkpoint: flat, or ``{"network": state_dict}`` as CheckpointSaver writes it."""
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("network"), Mapping):
        checkpoint = checkpoint["network"]
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        keys = list(checkpoint)[:5] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(
            f"checkpoint {path} holds no network state_dict (expected a state_dict or {{'network': state_dict}}; "
            f"found {keys})."
        )
    state = dict(checkpoint)
    if state and all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_network(
    spec: nn.Module | str | os.PathLike,
    network_def: nn.Module | Callable[[], nn.Module] | None = None,
    device: torch.device | str | None = None,
    name: str | None = None,
) -> nn.Module:
    """A network ready for inference (a copy, on ``device``, in eval mode) from a module or a checkpoint path.

    Args:
        spec: an ``nn.Module`` (copied), or the path of a checkpoint holding a state_dict, flat or as
            ``{"network": state_dict}`` (both are what MONAI's ``CheckpointSaver``/``CheckpointLoader`` handle).
        network_def: the network to load a checkpoint into (copied; an ``nn.Module`` or a factory).
        device: device of the returned network; default CPU.
        name: the network's name in error messages.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        ValueError: the file is not a readable checkpoint, holds no state_dict, or does not fit ``network_def``
            (missing/unexpected keys or other sizes).
    """
    label = f"network '{name}'" if name else "network"
    device = torch.device("cpu") if device is None else torch.device(device)
    if isinstance(spec, nn.Module):
        net = copy.deepcopy(spec)
    elif isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"{label}: checkpoint {path} not found.")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle, zip and torch errors all mean "not a readable checkpoint"
            raise ValueError(f"{label}: cannot read checkpoint {path} ({type(e).__name__}: {e}).") from e
        net = _template(network_def)
        try:
            net.load_state_dict(_state_dict(checkpoint, path), strict=True)
        except RuntimeError as e:
            raise ValueError(
                f"{label}: checkpoint {path} does not fit the network {type(net).__name__} built from network_def "
                f"(was it trained with other sizes, e.g. --features/--num_layers?): {e}"
            ) from e
    else:
        raise TypeError(f"{label}: expected an nn.Module or a checkpoint path, got {type(spec).__name__}.")
    return net.to(device).eval()


def network_source(spec: Any) -> str:
    """How a network was given, for the reports: its checkpoint path or ``<ClassName>``."""
    return str(spec) if isinstance(spec, (str, os.PathLike)) else f"<{type(spec).__name__}>"


def network_sources(networks: Mapping[str, Any]) -> dict[str, str]:
    """:func:`network_source` of each ``{name: module or checkpoint path}`` (the ``checkpoint`` column)."""
    return {str(name): network_source(spec) for name, spec in networks.items()}


def load_networks(
    networks: Mapping[str, nn.Module | str | os.PathLike],
    network_def: nn.Module | Callable[[], nn.Module] | None = None,
    device: torch.device | str | None = None,
) -> dict[str, nn.Module]:
    """:func:`load_network` for each ``{name: module or checkpoint path}``; checks every entry before returning."""
    if not isinstance(networks, Mapping) or not networks:
        raise ValueError(f"networks must be a non-empty {{name: checkpoint path or module}}, got {networks!r}.")
    return {str(name): load_network(spec, network_def, device, name=str(name)) for name, spec in networks.items()}


def volume_tensor(volume: Any) -> torch.Tensor:
    """``volume`` (array, tensor or MetaTensor) as a plain float32 tensor, detached."""
    if isinstance(volume, torch.Tensor):
        return volume.detach().as_subclass(torch.Tensor).to(torch.float32)
    return torch.as_tensor(np.asarray(volume), dtype=torch.float32)


def denoise(
    network: nn.Module, volume: Any, inferer: Callable, device: torch.device | str | None = None
) -> torch.Tensor:
    """Denoise one volume ``[*spatial]`` or a stack ``[N, *spatial]`` (e.g. the ``R`` realisations) in one call.

    The stack is passed to ``inferer`` as the batch ``[N, 1, *spatial]`` (e.g.
    :class:`monai_tgd.inferers.Slab25DInferer`, which batches the slabs), under ``torch.no_grad()`` with the network
    in eval mode, on ``device`` (default: the network's). Returns float32 on the CPU, the shape of ``volume``.
    """
    x = volume_tensor(volume)
    if x.ndim not in (3, 4):
        raise ValueError(f"denoise: volume must be [*spatial] (3D) or [N, *spatial], got shape {tuple(x.shape)}.")
    if device is None:
        param = next(network.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    batch = (x[None] if x.ndim == 3 else x)[:, None].to(device)
    network.eval()
    with torch.no_grad():
        out = inferer(batch, network)
    out = out.as_subclass(torch.Tensor) if isinstance(out, torch.Tensor) else torch.as_tensor(out)
    if out.shape != batch.shape:
        raise ValueError(f"denoise: the inferer returned shape {tuple(out.shape)} for input {tuple(batch.shape)}.")
    out = out[:, 0].detach().to("cpu", torch.float32)
    return out[0] if x.ndim == 3 else out
