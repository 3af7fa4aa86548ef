"""Dropping redundant kernels (:func:`zero_readers`, :func:`drop_redundant`, paper Fig. 4) and the KSE threshold
from a fidelity budget (:func:`threshold_for_budget`)."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from .chain import (
    ConvChain,
    _chain_of,
    _unwrap,
    conv_chain,
)
from .masks import (
    _unit_masks,
    _unit_scores,
    kse_masks,
)


def zero_readers(
    network: nn.Module, feature_maps: Mapping[str, torch.Tensor], chain: ConvChain | None = None
) -> float:
    """Zero, in place, the kernels that read the given feature maps: ``W_i[:, j] = 0`` (``W_i[j]`` for a transposed
    conv) for every conv ``i`` and input channel ``j`` that reads an output channel ``c`` of hidden conv ``h`` with
    ``feature_maps[h][c]`` True (for a plain chain: ``j = c`` in the next conv). An input channel that is a sum of
    coupled channels is zeroed when any of them is given (:func:`kse_masks` gives all or none of a unit).

    This removes feature map ``c``'s contribution exactly (zeroing the producing conv instead would not, since its BN
    adds beta back). It is the core of :func:`drop_redundant` and of its random control
    (:func:`monai_tgd.evaluation.zero_random_kernels`).

    Args:
        network: the network, modified in place.
        feature_maps: ``{hidden conv name: bool [out_channels]}``; hidden convs not named keep all their readers.
        chain: ``conv_chain(network)``, if already traced.

    Returns:
        The fraction of all conv parameters (weights and biases of the hidden and output convs) zeroed.
    """
    if not isinstance(feature_maps, Mapping):
        raise TypeError(f"zero_readers: feature_maps must be a dict {{hidden conv name: bool tensor}}, got "
                        f"{type(feature_maps).__name__}.")
    chain = _chain_of(network, chain, "zero_readers")
    hidden = {h.name: h for h in chain.hidden}
    for name, maps in feature_maps.items():
        if name not in hidden:
            raise ValueError(
                f"zero_readers: '{name}' is not a hidden conv of the network; hidden convs: {list(hidden)}."
            )
        channels = hidden[name].conv.out_channels
        if not isinstance(maps, torch.Tensor) or maps.dtype != torch.bool or maps.shape != (channels,):
            got = f"{maps.dtype} {tuple(maps.shape)}" if isinstance(maps, torch.Tensor) else type(maps).__name__
            raise ValueError(f"zero_readers: feature maps of '{name}' must be a bool tensor ({channels},), got {got}.")
    flagged = {(name, int(c)) for name, maps in feature_maps.items() for c in maps.nonzero().flatten().tolist()}
    dropped = 0
    with torch.no_grad():
        for r in chain.readers:
            columns = [j for j, pairs in enumerate(r.sources) if pairs & flagged]
            if not columns:
                continue
            index = torch.tensor(columns, device=r.conv.weight.device)
            if r.conv.transposed:
                r.conv.weight[index] = 0
                dropped += r.conv.weight[index].numel()
            else:
                r.conv.weight[:, index] = 0
                dropped += r.conv.weight[:, index].numel()
    convs = [h.conv for h in chain.hidden] + [conv for _, conv in chain.outputs]
    total = sum(p.numel() for conv in convs for p in conv.parameters(recurse=False))
    return dropped / total


def drop_redundant(
    network: nn.Module, threshold: float, alpha: float = 1.0, k: int = 5
) -> tuple[nn.Module, float]:
    """A copy of ``network`` without the kernels that read feature maps KSE scores as redundant (paper Fig. 4).

    For every conv ``i`` fed by a hidden conv, ``W_i[:, c]`` is zeroed (:func:`zero_readers`) for each input channel
    ``c`` scoring below ``threshold``: the channels :func:`kse_masks` marks for retraining.

    Returns:
        ``(copy, fraction)``: the pruned copy and the fraction of all conv parameters (weights and biases) zeroed.
    """
    pruned = copy.deepcopy(_unwrap(network))
    chain = conv_chain(pruned)
    masks = kse_masks(pruned, threshold, alpha=alpha, k=k, chain=chain)
    return pruned, zero_readers(pruned, masks, chain=chain)


def threshold_for_budget(
    network: nn.Module,
    inputs: torch.Tensor | Iterable[torch.Tensor],
    max_change: float = 0.01,
    alpha: float = 1.0,
    k: int = 5,
) -> tuple[float, float]:
    """The largest KSE threshold whose redundant kernels can be dropped within a fidelity budget.

    Returns the largest ``phi`` such that for every ``phi' <= phi``, dropping the kernels flagged at ``phi'``
    (:func:`drop_redundant`) changes the network's output on ``inputs`` by at most ``max_change`` relative RMSE,
    ``sqrt(sum (y' - y)^2 / sum y^2)`` over every output voxel of every input. The flagged set grows only at the KSE
    scores themselves, so the search is exact, not a grid: the distinct scores below 1 are visited in increasing
    order, each adding the channels that score it to the dropped set, until the change first exceeds the budget;
    ``phi`` is that score (everything scoring below it can be dropped within the budget, flagging the channels that
    score exactly ``phi`` too would break it), or 1.0 when no score breaks the budget. The change is not assumed to
    grow with ``phi``: every smaller flagged set is measured.

    The network is measured in eval mode on copies (``network`` itself is not changed), on the samples in the order
    given, re-batched in fixed chunks of 8, with float64 sums, so the result is the same whether ``inputs`` come as one
    batch or as several. Cost: a forward pass over the inputs per distinct score below the returned ``phi`` (e.g.
    12 slabs of 128 x 128 through the bundle's 32-feature, 8-layer DnCNN: about 0.7 s per score on 2 CPU cores).

    Args:
        network: a network :func:`kse_masks` supports (a ``DistributedDataParallel``/``DataParallel`` wrapper is
            unwrapped).
        inputs: a batch ``[B, C_in, *spatial]`` in the network's input units, or an iterable of such batches (e.g. a
            few 2.5D slabs of the fine-tuning studies; never of test studies), on any device (moved to the network's).
        max_change: the budget, a relative RMSE in (0, 1) (0.01 = 1 %).
        alpha, k: KSE parameters, see :func:`monai_tgd.kse.kse_scores`.

    Returns:
        ``(phi, change)``: the threshold, and the relative RMSE of dropping the kernels :func:`kse_masks` flags at
        ``phi`` (0.0 when it flags none).

    Raises:
        ValueError: ``max_change`` outside (0, 1), no inputs or an input that is not a ``[B, C_in, *spatial]``
            tensor, an all-zero output, or a network TGD does not support (the message names the conv).
    """
    if isinstance(max_change, bool) or not isinstance(max_change, (int, float)) or not 0.0 < max_change < 1.0:
        raise ValueError(f"threshold_for_budget: max_change must be a relative RMSE in (0, 1), got {max_change!r}.")
    net = _unwrap(network)
    chain = conv_chain(net)  # refuses unsupported networks before any inference
    # a unit is flagged at phi' when its largest reader score is below phi': its "score"
    unit_score = [max(v) if v else math.inf for v in _unit_scores(chain, alpha, k, "threshold_for_budget")]
    samples = _calibration_samples(inputs)
    levels = sorted({float(s) for s in unit_score if s < 1.0})
    reference = copy.deepcopy(net).eval()
    pruned = copy.deepcopy(net).eval()
    pruned_chain = conv_chain(pruned)
    device = next(net.parameters()).device
    with torch.no_grad():
        # fixed chunks of the samples in the order given: the same float operations however the inputs were batched
        samples = [torch.cat(samples[i : i + _CHUNK]).to(device) for i in range(0, len(samples), _CHUNK)]
        originals = [reference(x).double() for x in samples]
        norm = math.fsum(float(y.pow(2).sum()) for y in originals)
        if norm == 0:
            raise ValueError("threshold_for_budget: the network's output on inputs is 0 everywhere; a relative change "
                             "is undefined. Give calibration inputs with activity.")
        change = 0.0
        for level in levels:
            flagged = _unit_masks(pruned_chain, [s == level for s in unit_score])
            zero_readers(pruned, flagged, chain=pruned_chain)
            squared = math.fsum(float((pruned(x).double() - y).pow(2).sum()) for x, y in zip(samples, originals))
            new = math.sqrt(squared / norm)
            if new > max_change:
                return level, change
            change = new
    return 1.0, change


_CHUNK = 8  # samples per forward pass of threshold_for_budget


def _calibration_samples(inputs: torch.Tensor | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """``inputs`` (a batch or an iterable of batches ``[B, C, *spatial]``) as a list of ``[1, C, *spatial]``."""
    batches = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    samples = []
    for i, batch in enumerate(batches):
        if not isinstance(batch, torch.Tensor) or batch.dim() < 3:
            got = f"shape {tuple(batch.shape)}" if isinstance(batch, torch.Tensor) else type(batch).__name__
            raise ValueError(
                f"threshold_for_budget: inputs must be a tensor [B, C_in, *spatial] or an iterable of them; batch {i} "
                f"is {got}."
            )
        samples += [batch[j : j + 1] for j in range(batch.shape[0])]
    if not samples:
        raise ValueError("threshold_for_budget: inputs hold no samples; give at least one [B, C_in, *spatial] batch.")
    return samples
