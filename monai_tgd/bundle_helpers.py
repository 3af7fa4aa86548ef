"""Named helpers for the ``pet_tgd_denoising`` bundle configs, so the JSON holds references and simple expressions only.

Each helper replaces a piece of Python that used to be written inline in a config (a lambda, a comprehension over
parameter names, a list-position override); the configs call them as ``$monai_tgd.bundle_helpers.<name>(...)`` or
pass them as callables (``"prepare_batch": "$monai_tgd.bundle_helpers.prepare_image_target"``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "workflow_configs",
    "last_blocks_parameters",
    "enabled_handlers",
    "attach_handlers",
    "progress_bar_loss",
    "prepare_image_target",
    "lower_is_better",
    "fixed_output_name",
    "checkpoint_run_name",
    "record_by_study",
    "require_checkpoints",
    "ddp_device",
]


#: The bundle's config files every training or evaluation workflow starts from: ``inference.json`` (standalone: the
#: network, inferer, device, data paths and the denoising pipeline; the model zoo's inference config) and
#: ``train.json`` (training layered on it; alone on top of ``inference.json`` it is the main training workflow,
#: pretraining v1-net).
BASE_CONFIGS = ("inference.json", "train.json")


def workflow_configs(workflow: str | Sequence[str], configs_dir: str | os.PathLike | None = None) -> list[str]:
    """The config files of a bundle workflow, in the order ``monai.bundle run --config_file`` takes them.

    ``"inference"`` is ``inference.json`` alone, and a list starting with it adds override files after it
    (``["inference", "basic_unet"]``); ``"pretrain"`` (or ``"train"``) is :data:`BASE_CONFIGS`; any other workflow
    name (``finetune_tgd``, ``evaluate``, ...) or override file (``loss_curve``, ``restore_best``, ``paper``,
    ``basic_unet``, with or without ``.json``) is appended after them. A list combines several: ``["finetune_tgd",
    "loss_curve"]``. With ``configs_dir`` the names are joined to it.

    Raises:
        ValueError: an empty workflow list, or a name that is not a plain file name.
    """
    names = [workflow] if isinstance(workflow, str) else list(workflow)
    if not names or not all(isinstance(n, str) and n and os.path.basename(n) == n for n in names):
        raise ValueError(f"workflow_configs: expected workflow or config names such as 'finetune_tgd', got {workflow!r}.")
    names = [n if n.endswith(".json") else f"{n}.json" for n in names]
    if names[0] == "inference.json":
        files = names
    else:
        files = list(BASE_CONFIGS) + [n for n in names if n not in ("pretrain.json", *BASE_CONFIGS)]
    return files if configs_dir is None else [os.path.join(os.fspath(configs_dir), f) for f in files]


def last_blocks_parameters(network: nn.Module, count: int) -> list[nn.Parameter]:
    """Parameters of the last ``count`` entries of ``network.blocks``, in module order (``finetune``'s trainable set).

    For :class:`monai_tgd.networks.DnCNN` the blocks are ``blocks.0 .. blocks.{num_layers-1}``, so ``count=3`` is "the
    last three conv blocks" (conv, BN and bias parameters of each). A ``DistributedDataParallel``/``DataParallel``
    wrapper is looked through.

    Raises:
        ValueError: ``network`` has no ``blocks``, or ``count`` is not an integer in ``1 .. len(network.blocks)``.
    """
    module = network.module if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else network
    blocks = getattr(module, "blocks", None)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)):
        raise ValueError(f"last_blocks_parameters: {type(module).__name__} has no 'blocks' (nn.Sequential/ModuleList).")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= len(blocks):
        raise ValueError(f"last_blocks_parameters: count must be an integer in [1, {len(blocks)}], got {count!r}.")
    return [p for block in list(blocks)[len(blocks) - count :] for p in block.parameters()]


def enabled_handlers(*groups: Iterable[Any] | None) -> list[Any]:
    """The handlers of ``groups`` concatenated in order, without the disabled ones.

    A component switched off with ``"_disabled_"`` and referenced by id (``"handlers": ["@train#stats_handler"]``)
    resolves to None; it is dropped here, so handlers are enabled or disabled by name
    (``"train#stats_handler#_disabled_": true``) rather than by their position in a list. A None group is empty.
    """
    return [h for group in groups if group is not None for h in group if h is not None]


def progress_bar_loss(output: Any) -> dict[str, float]:
    """``output_transform`` of the training progress bar: ``{"loss": loss}`` from a MONAI engine's output."""
    from monai.handlers import from_engine

    return {"loss": from_engine(["loss"], first=True)(output)}


def attach_handlers(engine: Any, handlers: Sequence[Any], progress_bar: Any = None) -> list[Any]:
    """Attach ``handlers`` to ``engine`` in order, then ``progress_bar`` (an ignite ``ProgressBar``, showing the loss
    with :func:`progress_bar_loss`; None: no bar). Returns the attached handlers."""
    for handler in handlers:
        handler.attach(engine)
    if progress_bar is not None:
        progress_bar.attach(engine, output_transform=progress_bar_loss)
    return list(handlers)


def prepare_image_target(
    batch: Mapping[str, torch.Tensor], device: torch.device | str | None = None, non_blocking: bool = False, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """``prepare_batch`` of the bundle's engines: ``(batch["image"], batch["target"])`` on ``device``."""
    return batch["image"].to(device, non_blocking=non_blocking), batch["target"].to(device, non_blocking=non_blocking)


def lower_is_better(current: float, prev: float) -> bool:
    """``metric_cmp_fn`` for a loss: the current value is better when it is lower."""
    return current < prev


def fixed_output_name(subject: str) -> Callable[[Mapping, Any], dict[str, str]]:
    """``output_name_formatter`` for ``SaveImaged`` that names the output after ``subject`` whatever the input file
    (e.g. ``<subject>_denoised.nii.gz``)."""

    def formatter(metadict: Mapping, saver: Any) -> dict[str, str]:
        return {"subject": subject}

    return formatter


def checkpoint_run_name(path: str | os.PathLike) -> str:
    """The run a checkpoint came from, for naming derived runs: the file name up to its first dot, without the first
    ``model_`` (``models/model_v2.pt`` -> ``v2``, ``model_tgd.pt`` -> ``tgd``). The name is checked where it becomes a
    file name (``online_n2n``'s ``output_names``, :func:`monai_tgd.io.check_names`).

    Raises:
        ValueError: ``path`` is not a path (e.g. None: no checkpoint given).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"checkpoint_run_name: expected a checkpoint path, got {path!r}.")
    return os.path.basename(os.fspath(path)).split(".")[0].replace("model_", "", 1)


def record_by_study(records: Sequence[Mapping], study: str, field: str = "study") -> Mapping:
    """The record of ``records`` whose ``study`` is ``study`` (e.g. ``online_n2n``'s ``n2n_study``).

    Raises:
        ValueError: no record, or several, has that study; the message names ``field`` and the studies found.
    """
    found = [r for r in records if r.get("study") == study]
    if len(found) != 1:
        studies = [r.get("study") for r in records]
        what = "no record" if not found else f"{len(found)} records"
        raise ValueError(f"{field} {study!r}: {what} with that study among {studies}.")
    return found[0]


def require_checkpoints(networks: Mapping[str, Any]) -> int:
    """Fail fast, before any data is resolved, if a checkpoint of ``{name: checkpoint path or module}`` is missing.

    Only existence is checked (modules pass): the evaluation functions load each network once and check that it fits
    ``network_def`` before any inference. Returns the number of networks.

    Raises:
        ValueError: ``networks`` is not a non-empty mapping.
        FileNotFoundError: naming every network whose checkpoint file does not exist, and its path.
    """
    if not isinstance(networks, Mapping) or not networks:
        raise ValueError(f"networks must be a non-empty {{name: checkpoint path or module}}, got {networks!r}.")
    missing = [
        f"network '{name}': checkpoint {Path(spec)} not found."
        for name, spec in networks.items()
        if isinstance(spec, (str, os.PathLike)) and not Path(spec).is_file()
    ]
    if missing:
        raise FileNotFoundError(" ".join(missing))
    return len(networks)


def ddp_device(backend: str, env: Mapping[str, str] | None = None) -> torch.device:
    """The device of this process in a ``torchrun`` job: ``cuda:<LOCAL_RANK % device_count>``, or the CPU without CUDA.

    Several processes share a GPU when the node has fewer GPUs than processes, which the ``gloo`` backend allows;
    ``nccl`` does not (one GPU per process), so that case fails here with a message saying what to change.

    Args:
        backend: the process group's backend (``"nccl"`` or ``"gloo"``).
        env: the environment (default ``os.environ``): ``LOCAL_RANK`` and, if set, ``LOCAL_WORLD_SIZE``.

    Raises:
        RuntimeError: CUDA is available but ``LOCAL_RANK`` is not set (not started by ``torchrun``), or ``nccl`` with
            more processes on the node than GPUs.
    """
    if not torch.cuda.is_available():
        return torch.device("cpu")
    env = os.environ if env is None else env
    if "LOCAL_RANK" not in env:
        raise RuntimeError(
            "ddp_device: LOCAL_RANK is not set; start multi-GPU training with torchrun "
            "(python -m torch.distributed.run --nproc_per_node=<GPUs> -m monai.bundle run ...)."
        )
    rank, count = int(env["LOCAL_RANK"]), torch.cuda.device_count()
    processes = int(env.get("LOCAL_WORLD_SIZE") or 0)
    if backend == "nccl" and processes > count:
        raise RuntimeError(
            f"ddp_device: {processes} processes on this node but {count} GPU(s); NCCL needs a GPU per process. "
            f"Start torchrun with --nproc_per_node={count}, or share the GPUs with --ddp_backend gloo."
        )
    return torch.device(f"cuda:{rank % count}")
