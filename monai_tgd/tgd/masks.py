"""Which channels TGD retrains (:func:`kse_masks`, the every-reader KSE rule) and which rows it keeps fixed
(:func:`frozen_rows`, :func:`mask_summary`); the checks of TGD's options."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..kse import kse_scores
from .chain import (
    ConvChain,
    ReaderConv,
    _chain_of,
)

MODES = ("activation", "parameter")
BN_STATS = ("update", "freeze")
#: which reader slices ``W_i[:, n]`` of retrained feature maps ``n`` TGD retrains too (see :class:`TGD`)
READERS = ("none", "output", "all")


def _reader_scores(reader: ReaderConv, alpha: float, k: int, where: str) -> torch.Tensor:
    """KSE scores of the input channels of ``reader`` (a transposed conv's weight is ``(in, out, *k)``)."""
    weight = reader.conv.weight
    if reader.conv.transposed:
        weight = weight.transpose(0, 1)
    try:
        return kse_scores(weight, alpha=alpha, k=k)
    except ValueError as e:
        raise ValueError(f"{where}: conv '{reader.name}': {e}") from e


def _unit_scores(chain: ConvChain, alpha: float, k: int, where: str) -> list[list[float]]:
    """Per unit, the KSE score of every (reader conv, input channel) reading it."""
    scores: list[list[float]] = [[] for _ in chain.units]
    for reader in chain.readers:
        values = _reader_scores(reader, alpha, k, where).cpu().tolist()
        for j, u in enumerate(reader.units):
            if u is not None:
                scores[u].append(values[j])
    return scores


def _unit_masks(chain: ConvChain, retrained) -> dict[str, torch.Tensor]:
    """``{hidden conv: bool [out_channels]}`` from a per-unit decision (a sequence of bools)."""
    return {h.name: torch.tensor([bool(retrained[u]) for u in h.units], dtype=torch.bool) for h in chain.hidden}


def kse_masks(
    network: nn.Module, threshold: float, alpha: float = 1.0, k: int = 5, chain: ConvChain | None = None
) -> dict[str, torch.Tensor]:
    """Retrain masks of every hidden conv of ``network`` (paper Fig. 2 and the definition of ``M_n``).

    Output channel ``n`` of a hidden conv is retrained (True) when every input channel of every conv reading it
    scores below ``threshold`` by KSE (for a plain chain: the KSE score of input channel ``n`` of the next conv).
    Coupled channels (added together, multiplied, normalised by one GroupNorm group: one unit of
    :class:`ConvChain`) share one decision: retrained only when every reader of every one of them scores below the
    threshold. A channel no conv reads is not retrained. Output convolutions get no mask.

    Args:
        network: the network (see :func:`conv_chain` for what is supported).
        threshold: KSE threshold ``phi`` in [0, 1] (0.3 in the paper); 0 retrains nothing.
        alpha, k: KSE parameters, see :func:`monai_tgd.kse.kse_scores`.
        chain: ``conv_chain(network)``, if already traced.

    Returns:
        ``{conv module name: bool tensor [out_channels] on the CPU}``, True = retrain.
    """
    if not 0.0 <= threshold <= 1.0:  # also rejects NaN
        raise ValueError(f"kse_masks: threshold must be in [0, 1], got {threshold}.")
    chain = _chain_of(network, chain, "kse_masks")
    scores = _unit_scores(chain, alpha, k, "kse_masks")
    return _unit_masks(chain, [bool(s) and all(v < threshold for v in s) for s in scores])


def _retrained_units(chain: ConvChain, masks: Mapping[str, torch.Tensor]) -> list[bool]:
    """Per unit: retrained (from the checked masks of its hidden convs; False for units without one)."""
    retrained = [False] * len(chain.units)
    for h in chain.hidden:
        for c, u in enumerate(h.units):
            retrained[u] = bool(masks[h.name][c])
    return retrained


def _covered_parameters(chain: ConvChain, outputs: bool) -> list[tuple[str, torch.Tensor]]:
    modules = [(h.name, h.conv) for h in chain.hidden] + [(c.name, c.module) for c in chain.channel_modules]
    modules += list(chain.outputs) if outputs else []
    return [(f"{n}.{a}" if n else a, p) for n, m in modules for a, p in m.named_parameters(recurse=False)]


def mask_summary(
    network: nn.Module, masks: dict[str, torch.Tensor], chain: ConvChain | None = None, readers: str = "none"
) -> dict[str, float]:
    """Fraction of retrained output channels per hidden conv, and ``"overall"``: retrained fraction of the hidden
    convs' and their norms' (every channel-wise module's) parameters. ``chain``: ``conv_chain(network)``, if already
    traced.

    With ``readers="output"`` or ``"all"`` (see :class:`TGD`), ``"overall"`` also counts the retrained reader kernels
    ``W_i[m, n]`` that are not already in a retrained row (those of the output convs for ``"output"``, of every conv
    reading retrained maps for ``"all"``), and its denominator includes the output convs' parameters too (as with
    ``freeze_output=True``; with ``False`` the output convs train fully whatever this says)."""
    _check_readers(readers)
    chain = _chain_of(network, chain, "mask_summary")
    masks = _checked_masks(chain, masks)
    frozen = frozen_rows(network, masks, True, "freeze", chain=chain, readers=readers)
    summary = {h.name: float(masks[h.name].to(torch.float64).mean()) for h in chain.hidden}
    retrained = total = 0
    for key, p in _covered_parameters(chain, readers != "none"):
        total += p.numel()
        if key not in frozen:
            retrained += p.numel()
            continue
        f = frozen[key]
        per = p[(0,) * f.dim()].numel()
        retrained += int((~f).sum()) * per
    summary["overall"] = retrained / total if total else 0.0
    return summary


def frozen_rows(
    network: nn.Module,
    masks: Mapping[str, torch.Tensor],
    freeze_output: bool = True,
    bn_stats: str = "freeze",
    chain: ConvChain | None = None,
    readers: str = "none",
) -> dict[str, torch.Tensor]:
    """The rows (output channels) of the network's parameters and norm buffers that TGD keeps fixed, and with
    ``readers`` the single kernels of conv weights that read retrained feature maps.

    For every hidden conv with mask ``M`` (True = retrain), the frozen output channels ``~M`` of its weight (rows
    ``W[n]``; for a transposed conv, whose weight is ``(in, out, *k)``, columns ``W[:, n]``) and bias; for every
    channel-wise module (BatchNorm, InstanceNorm, GroupNorm, PReLU), the rows of its weight and bias, and with
    ``bn_stats="freeze"`` of its ``running_mean`` and ``running_var`` (if it tracks them), of every channel whose unit
    is frozen (a ``PReLU`` with one parameter for all channels: frozen unless all of them are retrained); with
    ``freeze_output``, every element of the output convolutions' weight and bias. ``readers`` then unfreezes the
    kernels reading retrained maps, ``W_i[:, j]`` of conv ``i`` for every input channel ``j`` of a retrained unit
    (``W_i[j]`` for a transposed conv): of the output convs with ``"output"``, of every reader conv with ``"all"``
    (``"none"``: nothing; biases and norms stay row-wise). This is the rule :class:`TGD` enforces (it installs exactly
    these elements).

    Args:
        network: the network (a ``DistributedDataParallel``/``DataParallel`` wrapper is unwrapped).
        masks: ``{hidden conv name: bool [out_channels]}``, True = retrain, as from :func:`kse_masks`.
        freeze_output, bn_stats: as for :class:`TGD`.
        chain: ``conv_chain(network)``, if already traced.
        readers: ``"none"``, ``"output"`` or ``"all"``, as for :class:`TGD` (the mode restriction of ``"all"`` is
            TGD's, not checked here).

    Returns:
        ``{name in the plain network's state_dict: bool tensor on the CPU}``, True = frozen, in execution order, for
        every parameter and buffer with at least one frozen element (``num_batches_tracked`` is never frozen). The
        tensor has one of two shapes: ``(dim 0,)``, broadcast over the other dims (rows: every tensor of a plain
        conv or norm with ``readers="none"``); or the first two dims of a conv weight (``(out, in)``; ``(in, out)``
        for a transposed conv), broadcast over the kernel's spatial dims, for the weight of a transposed hidden conv
        or of a conv whose reader kernels are retrained.
    """
    _check_settings(freeze_output, bn_stats)
    _check_readers(readers)
    chain = _chain_of(network, chain, "frozen_rows")
    masks = _checked_masks(chain, masks)
    retrained = _retrained_units(chain, masks)
    frozen: dict[str, torch.Tensor] = {}

    def key(module_name: str, attr: str) -> str:
        return f"{module_name}.{attr}" if module_name else attr

    def add(module_name: str, module: nn.Module, rows: torch.Tensor, buffers: tuple[str, ...] = ()) -> None:
        if not rows.any():
            return
        names = [n for n, _ in module.named_parameters(recurse=False)]
        names += [n for n in buffers if getattr(module, n, None) is not None]
        for attr in names:
            frozen[key(module_name, attr)] = rows.clone()  # conv_chain: each module once

    hidden = {h.name: h for h in chain.hidden}
    modules = {c.name: c for c in chain.channel_modules}
    for name in chain.order:
        if name in hidden:
            h = hidden[name]
            rows = ~masks[name]
            if h.conv.transposed and rows.any():  # weight (in, out, *k): output channel n is W[:, n]
                frozen[key(name, "weight")] = rows.view(1, -1).expand(h.conv.weight.shape[:2]).clone()
                if h.conv.bias is not None:
                    frozen[key(name, "bias")] = rows.clone()
            else:
                add(name, h.conv, rows)
        elif name in modules:
            c = modules[name]
            rows = torch.tensor([not retrained[u] for u in c.units], dtype=torch.bool)
            if c.shared:
                rows = rows.any().view(1)
            kept_stats = bn_stats == "freeze" and getattr(c.module, "track_running_stats", False)
            add(name, c.module, rows, ("running_mean", "running_var") if kept_stats else ())
    if freeze_output:
        for name, conv in chain.outputs:
            for attr, p in conv.named_parameters(recurse=False):
                frozen[key(name, attr)] = torch.ones(p.shape[0], dtype=torch.bool)
    if readers != "none":
        for r in chain.readers:
            if readers == "output" and not r.output:
                continue
            wkey = key(r.name, "weight")
            maps = torch.tensor([u is not None and retrained[u] for u in r.units], dtype=torch.bool)
            if wkey not in frozen or not maps.any():
                continue  # the reader trains fully, or no retrained map to read
            weight = r.conv.weight
            rows = frozen[wkey]
            full = rows.view(-1, 1).expand(weight.shape[:2]).clone() if rows.dim() == 1 else rows.clone()
            if r.conv.transposed:
                full[maps, :] = False
            else:
                full[:, maps] = False
            if full.any():
                frozen[wkey] = full
            else:
                del frozen[wkey]
    return frozen


def _check_readers(readers: str, mode: str | None = None, where: str = "TGD") -> None:
    """``readers`` is one of :data:`READERS`; with a ``mode``, ``"all"`` needs ``mode="parameter"``."""
    if not isinstance(readers, str) or readers not in READERS:
        raise ValueError(f"{where}: readers must be one of {READERS}, got {readers!r}.")
    if readers == "all" and mode is not None and mode != "parameter":
        raise ValueError(
            f"{where}: readers='all' needs mode='parameter', got mode={mode!r}: in activation mode the TGD layer zeroes "
            "dL/dY of frozen channels, so the reader kernels in frozen rows would get no gradient. Use "
            "readers='all' with mode='parameter', or readers='output' (either mode)."
        )


def _check_mode(mode: str, where: str = "TGD") -> None:
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"{where}: mode must be one of {MODES}, got {mode!r}.")


def _check_settings(freeze_output: bool, bn_stats: str, where: str = "TGD") -> None:
    if not isinstance(freeze_output, bool):
        raise TypeError(f"{where}: freeze_output must be a bool, got {freeze_output!r}.")
    if not isinstance(bn_stats, str) or bn_stats not in BN_STATS:
        raise ValueError(f"{where}: bn_stats must be one of {BN_STATS}, got {bn_stats!r}.")


def _check_options(mode: str, freeze_output: bool, bn_stats: str, readers: str, where: str = "TGD") -> None:
    """Check :class:`TGD`'s options (the one source of these rules; :class:`~monai_tgd.handlers.TGDHandler` uses it).

    Raises:
        ValueError / TypeError: prefixed with ``where``, naming the option and its allowed values.
    """
    _check_mode(mode, where)
    _check_settings(freeze_output, bn_stats, where)
    _check_readers(readers, mode, where)


def _checked_masks(chain: ConvChain, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``masks`` as bool CPU tensors, one per hidden conv of ``chain`` (no other names, shape ``(out_channels,)``),
    the same for all coupled channels (one unit of the chain)."""
    if not isinstance(masks, Mapping):
        raise TypeError(f"TGD: masks must be a dict {{hidden conv name: bool tensor}}, got {type(masks).__name__}.")
    hidden = {h.name: h.conv.out_channels for h in chain.hidden}
    for name in masks:
        if name not in hidden:
            raise ValueError(
                f"TGD: mask given for '{name}', which is not a hidden conv of the network; hidden convs: {list(hidden)}."
            )
    checked = {}
    for name, channels in hidden.items():
        if name not in masks:
            raise ValueError(f"TGD: no mask for hidden conv '{name}'; give one for each of {list(hidden)}.")
        mask = torch.as_tensor(masks[name])
        if mask.dtype != torch.bool or mask.shape != (channels,):
            raise ValueError(
                f"TGD: mask of '{name}' must be a bool tensor of shape ({channels},), got {mask.dtype} {tuple(mask.shape)}."
            )
        checked[name] = mask.cpu()
    decided: dict[int, tuple[str, int, bool]] = {}
    for h in chain.hidden:
        for c, u in enumerate(h.units):
            value = bool(checked[h.name][c])
            first = decided.setdefault(u, (h.name, c, value))
            if first[2] != value:
                raise ValueError(
                    f"TGD: the masks of coupled channels differ: channel {first[1]} of '{first[0]}' is "
                    f"{'retrained' if first[2] else 'frozen'}, channel {c} of '{h.name}' is "
                    f"{'retrained' if value else 'frozen'}; they are combined element-wise (e.g. a residual addition) "
                    "or normalised by one GroupNorm group, so they must share one decision (kse_masks gives that; "
                    "conv_chain(network).coupled(name, channel) lists a unit)."
                )
    return checked
