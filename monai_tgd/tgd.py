"""Targeted Gradient Descent (Chen, Asma, Chan, MICCAI 2021): retrain only the kernels that make redundant features.

The pieces, all plain PyTorch (no ignite, no data):

- :func:`kse_masks` finds, for every hidden convolution, which of its output channels feed feature maps that the
  next convolution scores as redundant by KSE (paper Fig. 2): those channels are retrained, the rest frozen.
- :func:`frozen_rows` states which rows (dim 0) of which parameters and BN buffers TGD keeps fixed (and, with
  ``readers``, which kernels ``W[m, c]`` of the convs reading retrained maps): the one rule :class:`TGD` enforces.
- :class:`TGD` installs the masks on a network with hooks, like ``torch.nn.utils.prune``: the module tree and its
  ``state_dict`` keys stay those of the plain network, and :meth:`TGD.remove` takes every hook away again. A network
  carries at most one TGD at a time.
- :func:`drop_redundant` zeroes the kernels that read redundant feature maps (the threshold study, paper Fig. 4),
  through :func:`zero_readers`, which zeroes the kernels reading any given feature maps.
- :func:`threshold_for_budget` chooses the KSE threshold from a fidelity budget: the largest ``phi`` whose dropped
  kernels change the output by at most a given relative RMSE on calibration inputs.

Supported topologies: every hidden convolution feeds exactly one next convolution through BatchNorm and
element-wise activations/dropout only (DnCNN, ``nn.Sequential`` chains); convolutions from which no other
convolution is reachable are output convolutions. The network is traced with ``torch.fx`` to find this chain
(:func:`conv_chain`); :func:`kse_masks`, :func:`mask_summary`, :func:`frozen_rows`, :func:`zero_readers` and
:class:`TGD` take ``chain=`` to reuse one trace (it must be the chain of that same network).

:func:`conv_chain` is also the one network-support check: every function here goes through it, and it refuses,
naming the module, whatever the masks cannot cover (a parameter outside the chain's convs and their BNs, e.g. a
``ConvTranspose`` or ``Linear`` layer; a BN or parameter shared by two convs; a ``torch.compile`` wrapper), so an
unsupported network fails before any training step instead of training parts of it unmasked.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.fx
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.conv import _ConvNd
from torch.nn.parallel import DataParallel, DistributedDataParallel

from .kse import kse_scores

__all__ = [
    "ConvChain", "conv_chain", "kse_masks", "mask_summary", "frozen_rows", "TGD", "zero_readers", "drop_redundant",
    "threshold_for_budget",
]  # fmt: skip

MODES = ("activation", "parameter")
BN_STATS = ("update", "freeze")
#: which reader slices ``W_i[:, n]`` of retrained feature maps ``n`` TGD retrains too (see :class:`TGD`)
READERS = ("none", "output", "all")

# Layers a feature map may pass through between two convolutions without mixing its channels.
_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid,
    nn.Hardtanh, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)  # fmt: skip
_ELEMENTWISE_FUNCTIONS = (
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardtanh, F.softplus, F.dropout,
    torch.relu, torch.tanh, torch.sigmoid, F.tanh, F.sigmoid,
)  # fmt: skip
_ELEMENTWISE_METHODS = ("relu", "relu_", "tanh", "sigmoid", "contiguous")


#: what the analysis follows, for error messages
SUPPORTED = (
    "Supported: Conv1d/2d/3d layers (not transposed), each called once, every hidden conv feeding the next conv "
    "through at most one BatchNorm (its own, called once) and element-wise activations/dropout; operations without "
    "parameters or running statistics before the first and after the output convs (DnCNN, nn.Sequential chains)."
)


def _unwrap(network: nn.Module) -> nn.Module:
    """The network inside a DDP/DataParallel wrapper; a ``torch.compile`` wrapper is refused with the way out."""
    net = network.module if isinstance(network, (DataParallel, DistributedDataParallel)) else network
    original = getattr(net, "_orig_mod", None)  # torch._dynamo's OptimizedModule, without importing torch._dynamo
    if isinstance(original, nn.Module):
        raise ValueError(
            f"TGD: the network is a torch.compile wrapper ({type(net).__name__} of a {type(original).__name__}), which "
            "torch.fx cannot trace; pass the uncompiled module, model._orig_mod (it holds the same parameters), to "
            "kse_masks, TGD, TGDHandler(network=...) and the other monai_tgd.tgd functions, and install TGD before the "
            "compiled module first runs (a graph compiled earlier does not see the TGD layers' forward hooks)."
        )
    return net


@dataclass(frozen=True)
class HiddenConv:
    """A convolution whose output channels are the input channels of ``consumer`` (through ``norm``, if any)."""

    name: str
    conv: _ConvNd
    norm_name: str | None
    norm: _BatchNorm | None
    consumer_name: str
    consumer: _ConvNd


@dataclass(frozen=True)
class ConvChain:
    """The convolutions of a network, in execution order: the hidden ones and the output ones."""

    hidden: tuple[HiddenConv, ...]
    outputs: tuple[tuple[str, _ConvNd], ...]


def conv_chain(network: nn.Module) -> ConvChain:
    """Trace ``network`` with ``torch.fx`` and resolve, for each conv, the BN and the conv that consume its output.

    This is also the network-support check of every function of this module: what the chain does not cover would
    train unmasked (or be masked twice), so it is refused here, before any mask or training step.

    Raises:
        ValueError: the network cannot be traced (a ``torch.compile`` wrapper: pass ``model._orig_mod``), a conv
            module is called more than once, a conv's output reaches another conv other than through BN and
            element-wise layers (the message names that conv), or the network holds state the masks cannot cover:
            a module with parameters or BN running statistics that is neither a conv of the chain nor the BN of a
            hidden conv (``ConvTranspose``, ``Linear``, a BN after an output conv, ...), such a module or BN called
            more than once (a BN shared by two convs), a parameter used directly in ``forward()``, or one tensor
            shared by two modules (the message names the module and the operation).
    """
    net = _unwrap(network)
    try:
        graph = torch.fx.symbolic_trace(net).graph
    except Exception as e:  # fx raises many types; all mean the same here
        raise ValueError(
            f"TGD: cannot trace {type(net).__name__} with torch.fx to find which conv feeds which ({e})."
        ) from e
    modules = dict(net.named_modules())

    def module_of(node: torch.fx.Node) -> nn.Module | None:
        return modules[node.target] if node.op == "call_module" else None

    def is_conv(node: torch.fx.Node) -> bool:
        m = module_of(node)
        return isinstance(m, _ConvNd) and not m.transposed

    def is_elementwise(node: torch.fx.Node) -> bool:
        return (
            isinstance(module_of(node), _ELEMENTWISE_MODULES)
            or (node.op == "call_function" and node.target in _ELEMENTWISE_FUNCTIONS)
            or (node.op == "call_method" and node.target in _ELEMENTWISE_METHODS)
        )

    def reaches_conv(node: torch.fx.Node) -> bool:
        stack, seen = list(node.users), set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if is_conv(n):
                return True
            stack.extend(n.users)
        return False

    conv_nodes = [n for n in graph.nodes if is_conv(n)]
    seen_targets: set[str] = set()
    hidden, outputs = [], []
    for node in conv_nodes:
        name = str(node.target)
        if name in seen_targets:
            raise ValueError(f"TGD: conv '{name}' is called more than once in forward(); its masks would be ambiguous.")
        seen_targets.add(name)
        conv = modules[name]
        norm_name, cur, reason = None, node, ""
        while True:
            users = list(cur.users)
            if len(users) != 1:
                reason = f"its output is used by {len(users)} operations"
                break
            nxt = users[0]
            if is_conv(nxt):
                break
            if isinstance(module_of(nxt), _BatchNorm) and norm_name is None:
                norm_name = str(nxt.target)
            elif not is_elementwise(nxt):
                reason = f"its output goes through '{nxt.name}' ({nxt.op} {nxt.target})"
                break
            cur = nxt
        if not reason:
            consumer = modules[str(nxt.target)]
            if consumer.groups != 1 or consumer.in_channels != conv.out_channels:
                raise ValueError(
                    f"TGD: conv '{name}' feeds conv '{nxt.target}', which must have groups=1 and "
                    f"in_channels={conv.out_channels}; got groups={consumer.groups}, in_channels={consumer.in_channels}."
                )
            norm = modules[norm_name] if norm_name else None
            hidden.append(HiddenConv(name, conv, norm_name, norm, str(nxt.target), consumer))
        elif reaches_conv(node):
            raise ValueError(
                f"TGD: cannot resolve the consumer of conv '{name}': {reason}. Supported: each hidden conv feeds the "
                "next conv through BatchNorm and element-wise activations/dropout only (DnCNN, nn.Sequential chains)."
            )
        else:
            outputs.append((name, conv))
    chain = ConvChain(tuple(hidden), tuple(outputs))
    _check_support(net, graph, modules, chain)
    return chain


def _has_state(module: nn.Module) -> bool:
    """Whether training changes ``module`` itself: it owns parameters, or a norm that tracks running statistics."""
    tracks = isinstance(module, _NormBase) and module.track_running_stats
    return tracks or any(True for _ in module.parameters(recurse=False))


def _check_support(net: nn.Module, graph: torch.fx.Graph, modules: dict[str, nn.Module], chain: ConvChain) -> None:
    """Refuse, naming the module and the operation, any state of ``net`` that the masks of ``chain`` do not cover.

    The first problem found is reported, in this order: a parameter read directly in ``forward()``; a module with
    state called more than once; a module with state outside the chain other than a norm (``ConvTranspose``,
    ``Linear``, ...: the cause, when a conv's BN is orphaned by the layer after it); a norm outside the chain; one
    tensor in two modules."""
    covered = {h.name for h in chain.hidden} | {name for name, _ in chain.outputs}
    covered |= {h.norm_name for h in chain.hidden if h.norm_name is not None}
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            name = str(node.target)
            calls[name] = calls.get(name, 0) + 1
        elif node.op == "get_attr" and isinstance(_get_attr(net, str(node.target)), nn.Parameter):
            raise ValueError(
                f"TGD: cannot follow parameter '{node.target}', read directly in forward() (get_attr, e.g. a "
                f"learnable scale or a functional conv): no mask covers it, so it would train fully. {SUPPORTED}"
            )
    stateful = {name: modules[name] for name in calls if _has_state(modules[name])}
    for name, module in stateful.items():
        if calls[name] > 1:
            what = "a BN shared by two convs would merge their masks" if isinstance(module, _NormBase) else (
                "its masks would be ambiguous")
            raise ValueError(
                f"TGD: {type(module).__name__} '{name}' is called {calls[name]} times in forward(); {what}. {SUPPORTED}"
            )
    outside = [(name, m) for name, m in stateful.items() if name not in covered]
    for name, module in sorted(outside, key=lambda item: isinstance(item[1], _NormBase)):  # norms last
        if isinstance(module, _ConvNd) and module.transposed:
            why = "transposed convolutions are not analysed"
        elif isinstance(module, _NormBase):
            why = "it is not the BatchNorm right after a hidden conv (e.g. it follows an output conv)"
        else:
            why = "TGD masks only convolutions and the BatchNorm of each hidden conv"
        raise ValueError(
            f"TGD: cannot follow {type(module).__name__} '{name}' (call_module): {why}, so it would train unmasked "
            "whatever freeze_output says, and a conv feeding it would count as an output conv, frozen whole without a "
            f"KSE mask. {SUPPORTED}"
        )
    owners: dict[int, str] = {}
    for name, module in stateful.items():
        for attr, p in module.named_parameters(recurse=False):
            key = f"{name}.{attr}"
            if id(p) in owners:
                raise ValueError(
                    f"TGD: parameter '{key}' of {type(module).__name__} '{name}' is the same tensor as "
                    f"'{owners[id(p)]}' (shared weights); TGD keeps rows per module and cannot follow a tensor shared "
                    f"by two. {SUPPORTED}"
                )
            owners[id(p)] = key


def _get_attr(net: nn.Module, target: str):
    module_name, _, attr = target.rpartition(".")
    return getattr(net.get_submodule(module_name), attr)


def _chain_of(network: nn.Module, chain: ConvChain | None, where: str) -> ConvChain:
    """``chain`` if given (after checking that its modules are ``network``'s), else ``conv_chain(network)``."""
    if chain is None:
        return conv_chain(network)
    if not isinstance(chain, ConvChain):
        raise TypeError(f"{where}: chain must be a ConvChain from conv_chain(network), got {type(chain).__name__}.")
    own = {id(m) for m in _unwrap(network).modules()}
    modules = [m for h in chain.hidden for m in (h.conv, h.norm, h.consumer) if m is not None]
    if not all(id(m) in own for m in modules + [conv for _, conv in chain.outputs]):
        raise ValueError(
            f"{where}: chain holds modules that are not in the given {type(_unwrap(network)).__name__}; pass "
            "conv_chain(network) of this network (a deep copy has other modules)."
        )
    return chain


def kse_masks(
    network: nn.Module, threshold: float, alpha: float = 1.0, k: int = 5, chain: ConvChain | None = None
) -> dict[str, torch.Tensor]:
    """Retrain masks of every hidden conv of ``network`` (paper Fig. 2 and the definition of ``M_n``).

    Output channel ``n`` of hidden conv ``i-1`` is retrained (True) when the KSE score of input channel ``n`` of the
    conv ``i`` it feeds is below ``threshold``. Output convolutions get no mask.

    Args:
        network: a network whose hidden convs feed the next conv through BN/activations only (see :func:`conv_chain`).
        threshold: KSE threshold ``phi`` in [0, 1] (0.3 in the paper); 0 retrains nothing.
        alpha, k: KSE parameters, see :func:`monai_tgd.kse.kse_scores`.
        chain: ``conv_chain(network)``, if already traced.

    Returns:
        ``{conv module name: bool tensor [out_channels] on the CPU}``, True = retrain.
    """
    if not 0.0 <= threshold <= 1.0:  # also rejects NaN
        raise ValueError(f"kse_masks: threshold must be in [0, 1], got {threshold}.")
    masks = {}
    for h in _chain_of(network, chain, "kse_masks").hidden:
        try:
            scores = kse_scores(h.consumer.weight, alpha=alpha, k=k)
        except ValueError as e:
            raise ValueError(f"kse_masks: conv '{h.consumer_name}': {e}") from e
        masks[h.name] = (scores < threshold).cpu()
    return masks


def mask_summary(
    network: nn.Module, masks: dict[str, torch.Tensor], chain: ConvChain | None = None, readers: str = "none"
) -> dict[str, float]:
    """Fraction of retrained output channels per hidden conv, and ``"overall"``: retrained fraction of the hidden
    convs' and their BNs' parameters. ``chain``: ``conv_chain(network)``, if already traced.

    With ``readers="output"`` or ``"all"`` (see :class:`TGD`), ``"overall"`` also counts the retrained reader kernels
    ``W_i[m, n]`` that are not already in a retrained row (those of the output convs for ``"output"``, of every conv
    fed by a hidden conv for ``"all"``), and its denominator includes the output convs' parameters too (as with
    ``freeze_output=True``; with ``False`` the output convs train fully whatever this says)."""
    _check_readers(readers)
    chain = _chain_of(network, chain, "mask_summary")
    retrained = total = 0
    summary = {}
    for h in chain.hidden:
        m = masks[h.name].to(torch.float64)
        summary[h.name] = float(m.mean())
        for module in (h.conv, h.norm):
            for p in module.parameters(recurse=False) if module is not None else ():
                per_channel = p[0].numel() if p.dim() > 1 else 1
                retrained += float(m.sum()) * per_channel
                total += p.numel()
    if readers != "none":
        outputs = {name for name, _ in chain.outputs}
        total += sum(p.numel() for _, conv in chain.outputs for p in conv.parameters(recurse=False))
        for h in chain.hidden:
            to_output = h.consumer_name in outputs
            if readers == "output" and not to_output:
                continue
            # rows of the consumer not retrained already: all of an output conv's, the frozen ones of a hidden conv's
            rows = h.consumer.out_channels if to_output else int((~masks[h.consumer_name]).sum())
            retrained += rows * int(masks[h.name].sum()) * h.consumer.weight[0, 0].numel()
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
    """The rows (dim 0 = output channel) of the network's parameters and BN buffers that TGD keeps fixed, and with
    ``readers`` the single kernels ``W[m, c]`` of conv weights that read retrained feature maps.

    For every hidden conv with mask ``M`` (True = retrain), rows ``~M`` of its weight and bias and of its BN's weight
    and bias, and with ``bn_stats="freeze"`` of the BN's ``running_mean`` and ``running_var`` (if it tracks them);
    with ``freeze_output``, every row of the output convolutions' weight and bias. ``readers`` then unfreezes the
    reader columns ``W_i[:, n]`` of conv ``i`` for every retrained map ``n`` of the hidden conv feeding it: of the
    output convs with ``"output"``, of every such conv with ``"all"`` (``"none"``: nothing; biases and BNs stay
    row-wise). This is the rule :class:`TGD` enforces (it installs exactly these elements).

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
        tensor has one of two shapes: ``(dim 0,)`` for row-wise freezing (every tensor with ``readers="none"``),
        broadcast over the other dims; or ``(out_channels, in_channels)`` (``frozen[m, c]``) for the weight of a conv
        whose reader columns are retrained, broadcast over the kernel's spatial dims.
    """
    _check_settings(freeze_output, bn_stats)
    _check_readers(readers)
    chain = _chain_of(network, chain, "frozen_rows")
    masks = _checked_masks(chain, masks)
    frozen: dict[str, torch.Tensor] = {}

    def add(module_name: str, module: nn.Module, rows: torch.Tensor, buffers: tuple[str, ...] = ()) -> None:
        if not rows.any():
            return
        names = [n for n, _ in module.named_parameters(recurse=False)]
        names += [n for n in buffers if getattr(module, n, None) is not None]
        for attr in names:
            frozen[f"{module_name}.{attr}" if module_name else attr] = rows.clone()  # conv_chain: each module once

    for h in chain.hidden:
        rows = ~masks[h.name]
        add(h.name, h.conv, rows)
        if h.norm is not None:
            kept_stats = bn_stats == "freeze" and h.norm.track_running_stats
            add(h.norm_name, h.norm, rows, ("running_mean", "running_var") if kept_stats else ())
    if freeze_output:
        for name, conv in chain.outputs:
            add(name, conv, torch.ones(conv.out_channels, dtype=torch.bool))
    if readers != "none":
        outputs = {name for name, _ in chain.outputs}
        for h in chain.hidden:
            if readers == "output" and h.consumer_name not in outputs:
                continue
            key = f"{h.consumer_name}.weight" if h.consumer_name else "weight"
            maps = masks[h.name]  # True = retrained map: its reader column W[:, n] trains
            if key not in frozen or not maps.any():
                continue  # the consumer trains fully, or no map to read
            rows = frozen[key]
            if rows.dim() != 1:  # only a hand-made chain can name one conv as the consumer of two hidden convs
                raise ValueError(
                    f"frozen_rows: conv '{h.consumer_name}' is the consumer of more than one hidden conv in chain; a conv "
                    "reads one set of feature maps. Pass chain=conv_chain(network)."
                )
            kernels = rows.view(-1, 1) & ~maps.view(1, -1)
            if kernels.any():
                frozen[key] = kernels
            else:
                del frozen[key]
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


class _FrozenRows:
    """Elements of one parameter or BN buffer that must not change, and their values at install.

    ``frozen`` is a bool mask over the leading dims of the tensor (True = frozen), broadcast over the rest: ``(dim 0,)``
    for whole rows, or ``(out_channels, in_channels)`` for single kernels of a conv weight (see :func:`frozen_rows`).
    """

    def __init__(self, key: str, module: nn.Module, attr: str, frozen: torch.Tensor) -> None:
        tensor = getattr(module, attr)
        if frozen.dim() not in (1, 2) or tuple(frozen.shape) != tuple(tensor.shape[: frozen.dim()]):
            raise ValueError(f"TGD: frozen mask of shape {tuple(frozen.shape)} does not fit a tensor {tuple(tensor.shape)}.")
        self.key, self.module, self.attr = key, weakref.ref(module), attr  # weak: see _INSTALLED
        self.tensor = tensor
        self.frozen_view = frozen.to(tensor.device).view(*frozen.shape, *([1] * (tensor.dim() - frozen.dim())))
        if frozen.dim() == 1:  # whole rows: only those rows are kept
            self.index = frozen.nonzero().flatten().to(tensor.device)
            self.values = tensor.detach()[self.index].clone()
        else:  # single kernels: the whole tensor is kept, and only its frozen elements are written back
            self.index = None
            self.values = tensor.detach().clone()

    def mask_grad(self, grad: torch.Tensor) -> torch.Tensor:
        if grad.device != self.frozen_view.device:
            raise RuntimeError(_moved_message(f"the gradient of '{self.key}'", _where(self.values), _where(grad)))
        return grad.masked_fill(self.frozen_view, 0)

    def current(self):
        """The tensor the network holds now in this one's place (None if the network is gone)."""
        module = self.module()
        return getattr(module, self.attr, None) if module is not None else None

    def check(self) -> None:
        """Raise (naming TGD and the tensor) if the network no longer holds this tensor as installed: moved to another
        device, cast to another dtype, or replaced (e.g. ``load_state_dict(..., assign=True)``)."""
        if self.module() is None:  # the network is gone; nothing to keep
            return
        current = self.current()
        if not isinstance(current, torch.Tensor) or (current.dtype, current.device) != (self.values.dtype,
                                                                                       self.values.device):
            raise RuntimeError(_moved_message(f"'{self.key}'", _where(self.values), _where(current)))
        if current is not self.tensor:
            raise RuntimeError(
                f"TGD: '{self.key}' is no longer the tensor TGD was installed on (replaced, e.g. by "
                "load_state_dict(..., assign=True)), so TGD would keep the old one. Load weights, move and cast the "
                "network before installing TGD: call remove() on this TGD, then install a new one (the masks can be "
                "reused)."
            )

    @torch.no_grad()
    def restore(self) -> None:
        if self.index is not None:
            self.tensor.index_copy_(0, self.index, self.values)
        else:
            self.tensor.copy_(torch.where(self.frozen_view, self.values, self.tensor))

    @torch.no_grad()
    def restore_if_held(self) -> None:
        """:meth:`restore` into the network's current tensor, cast to its dtype and device, if it is still there."""
        current = self.current() if self.module() is not None else self.tensor
        if current is not self.tensor:  # replaced: the network no longer holds what TGD froze
            return
        if (current.dtype, current.device) != (self.values.dtype, self.values.device):
            self.values = self.values.to(current.device, current.dtype)
            self.frozen_view = self.frozen_view.to(current.device)
            self.index = self.index.to(current.device) if self.index is not None else None
        self.restore()


def _moved_message(what: str, installed: str, now: str) -> str:
    return (
        f"TGD: {what} is now {now}, but TGD was installed when it was {installed}. Install TGD after moving or "
        "casting the network (net.to(device), net.double(), ...): call remove() on this TGD, move or cast the network, "
        "then install a new TGD (the masks can be reused)."
    )


def _where(tensor) -> str:
    return f"{tensor.dtype} on {tensor.device}" if isinstance(tensor, torch.Tensor) else type(tensor).__name__


#: every conv and BN of each installed TGD's chain -> that TGD, so a second TGD through any network holding one of
#: them (the same network, a wrapper around it, one of its submodules) is refused; weak keys, so this registry keeps
#: no module alive (an installed TGD does, through its optimizer hooks, until remove())
_INSTALLED: weakref.WeakKeyDictionary[nn.Module, TGD] = weakref.WeakKeyDictionary()


class TGD:
    """Targeted Gradient Descent on a network, installed with hooks; ``remove()`` (or leaving a ``with`` block) undoes it.

    Retrained channels train as usual (and, with ``readers``, the kernels reading them); frozen channels (mask False)
    and, with ``freeze_output``, the output convolutions stay bit-identical, in conv weights and biases and in BN
    affine parameters, under any ``torch.optim`` optimizer (weight decay and momentum included), AMP and DDP
    (:func:`frozen_rows` lists them):

    - ``mode="activation"`` (the paper's TGD layer, Eq. 4): after every hidden conv and after its BN, identity in the
      forward pass and ``dL/dY * M`` in the backward pass; gradients reach earlier layers only through retrained
      channels.
    - ``mode="parameter"``: the same update of each layer's retrained kernels, but only parameter gradients are
      masked, so gradients also reach earlier retrained kernels through frozen channels (more stable when few
      channels are retrained).

    In both modes the parameter gradients of frozen rows are zeroed, and after every step of any optimizer that holds
    the network's parameters (a global ``torch.optim`` step post-hook) the frozen rows are copied back from their
    values at install: gradient masking alone does not stop weight decay or momentum (e.g. a resumed optimizer
    state) from moving them. So load weights and move or cast the network before installing TGD (a global step
    pre-hook checks, before every step, that the network still holds the tensors TGD froze, in their dtype and device,
    and raises otherwise), and call :meth:`remove` when done (hooks, as in ``torch.nn.utils.prune``, stay until
    removed). Like a second prune of the same kind, a second TGD on a network that still carries one raises, also
    through a wrapper or a submodule of it; a deep copy of a network carrying TGD is a plain network (its copied TGD
    layers act only on the original modules).

    The activation mode's gradient is not the gradient of the loss with respect to the retrained parameters: it
    ignores how a retrained channel changes the frozen channels downstream (they read it through small but
    non-zero kernels). With Adam, retrained kernels of near-dead channels can then grow until those ignored paths
    raise the loss; ``mode="parameter"`` follows the true gradient restricted to the retrained parameters.

    BN running statistics update in training mode whatever the gradients. ``bn_stats="freeze"`` (default; the paper
    masks BN's gamma, beta and sigma^2 with the kernels) restores the frozen channels' running mean/var after every
    optimizer step too (done there because autograd saves them during forward/backward), so the frozen channels'
    eval-mode behaviour is exactly that of the original network for the same input; ``bn_stats="update"`` lets all
    channels' running mean/var follow the new data (a frozen channel's input distribution shifts once upstream
    channels are retrained).

    Args:
        network: the network (a ``DistributedDataParallel``/``DataParallel`` wrapper is unwrapped). Install TGD after
            loading its weights and moving or casting it (checked at every step).
        masks: ``{hidden conv name: bool [out_channels]}``, True = retrain, as from :func:`kse_masks`.
        mode: ``"activation"`` or ``"parameter"``.
        freeze_output: keep the output convolutions unchanged (the paper); ``False`` trains them fully.
        bn_stats: ``"update"`` or ``"freeze"``.
        chain: ``conv_chain(network)``, if already traced (e.g. for :func:`kse_masks`); kept as :attr:`chain`.
        readers: which reader kernels of the retrained maps train too. ``"none"`` (the paper): none. ``"output"``:
            the columns ``W_out[:, n]`` of the output convs for every retrained map ``n`` of the hidden conv feeding
            them (their bias and other columns stay frozen with ``freeze_output``), so retrained maps that the
            output conv reads through near-zero kernels can reach the output; every hidden layer's frozen kernels
            stay bit-identical. ``"all"``: the columns ``W_i[:, n]`` of every conv ``i`` fed by a hidden conv, frozen
            rows included, so retrained maps feed frozen maps too (more forgetting expected); needs
            ``mode="parameter"`` (the activation mode's TGD layer gives those kernels no gradient).

    Raises:
        ValueError: TGD is already installed on the network (or on a network holding one of its convs: a wrapper, a
            submodule), a bad mode, bn_stats, readers (or ``readers="all"`` without ``mode="parameter"``) or mask, or
            a network the analysis cannot follow (see :func:`conv_chain`; a ``torch.compile`` wrapper: pass
            ``model._orig_mod``).
        RuntimeError: later, before an optimizer step (or in the TGD layer's forward pass, for a device move), if the
            network was moved, cast or had its tensors replaced after install; nothing is changed by that step.
    """

    def __init__(
        self,
        network: nn.Module,
        masks: dict[str, torch.Tensor],
        mode: str = "activation",
        freeze_output: bool = True,
        bn_stats: str = "freeze",
        chain: ConvChain | None = None,
        readers: str = "none",
    ) -> None:
        if not isinstance(network, nn.Module):
            raise TypeError(f"TGD: network must be an nn.Module, got {type(network).__name__}.")
        _check_options(mode, freeze_output, bn_stats, readers)
        net = _unwrap(network)
        self.chain = _chain_of(net, chain, "TGD")
        _check_not_installed(net, self.chain)
        rows = frozen_rows(net, masks, freeze_output, bn_stats, self.chain, readers)  # checks masks and settings
        self.masks = _checked_masks(self.chain, masks)
        self.mode, self.freeze_output, self.bn_stats, self.readers = mode, freeze_output, bn_stats, readers
        self._frozen: list[_FrozenRows] = []
        self._handles: list = []
        self._param_ids = {id(p) for p in network.parameters()}
        self._network = weakref.ref(net)
        try:
            self._install(net, rows)
        except BaseException:
            self.remove()
            raise
        for module in _chain_modules(self.chain):
            _INSTALLED[module] = self

    def _install(self, net: nn.Module, rows: dict[str, torch.Tensor]) -> None:
        for name, frozen in rows.items():
            module_name, _, attr = name.rpartition(".")
            self._frozen.append(_FrozenRows(name, net.get_submodule(module_name), attr, frozen))
            tensor = self._frozen[-1].tensor
            if isinstance(tensor, nn.Parameter) and tensor.requires_grad:
                self._handles.append(tensor.register_hook(self._frozen[-1].mask_grad))
        if self.mode == "activation":
            for h in self.chain.hidden:
                # The paper puts a TGD layer after the conv and after its BN; BN's backward is per channel, so a zero
                # dL/dY after BN already gives an exactly zero dL/dY after the conv: one layer does both.
                last = h.norm if h.norm is not None else h.conv
                frozen = ~self.masks[h.name].to(h.conv.weight.device)
                name = h.norm_name if h.norm is not None else h.name
                self._handles.append(last.register_forward_hook(_TGDLayer(last, name, frozen)))
        self._handles.append(register_optimizer_step_pre_hook(self._before_step))
        self._handles.append(register_optimizer_step_post_hook(self._after_step))

    def _holds(self, optimizer: torch.optim.Optimizer, ids: set[int] | frozenset[int] = frozenset()) -> bool:
        ids = self._param_ids | ids if ids else self._param_ids
        return any(id(p) in ids for group in optimizer.param_groups for p in group["params"])

    def _before_step(self, optimizer: torch.optim.Optimizer, *_) -> None:
        """Before the step changes anything: the network still holds the tensors TGD froze, as installed (also for
        an optimizer of tensors that replaced them, e.g. built after a move that swapped the parameters)."""
        if self._holds(optimizer, {id(rows.current()) for rows in self._frozen}):
            for rows in self._frozen:
                rows.check()

    def _after_step(self, optimizer: torch.optim.Optimizer, *_) -> None:
        if self._holds(optimizer):
            self._restore()

    def _restore(self) -> None:
        for rows in self._frozen:
            rows.restore()

    def remove(self) -> None:
        """Restore the frozen rows once more and take every hook away; the network is a plain network again.

        Works after the network was moved or cast too (the rows are restored in its new dtype and device), so a
        ``with`` block left on the error of such a move shows that error."""
        for rows in self._frozen:
            rows.restore_if_held()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._frozen.clear()
        for module in _chain_modules(self.chain):
            if _INSTALLED.get(module) is self:
                del _INSTALLED[module]

    def __enter__(self) -> TGD:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _chain_modules(chain: ConvChain) -> list[nn.Module]:
    modules = [m for h in chain.hidden for m in (h.conv, h.norm) if m is not None]
    return modules + [conv for _, conv in chain.outputs]


def _check_not_installed(net: nn.Module, chain: ConvChain) -> None:
    """Refuse a second TGD on modules that carry one, whichever network holds them (``net`` itself, a wrapper around
    the network of the first TGD, or one of its submodules)."""
    names = {id(m): n for n, m in net.named_modules()}
    for module in _chain_modules(chain):
        other = _INSTALLED.get(module)
        if other is None:
            continue
        first = other._network()
        if first is net:
            where = ""
        else:
            where = f" through its module '{names.get(id(module), '?')}' (a TGD installed on a {type(first).__name__})"
        raise ValueError(
            f"TGD: the {type(net).__name__} already carries a TGD{where}; call remove() on that TGD (or leave its "
            "with block) before installing another."
        )


class _TGDLayer:
    """Forward hook: the TGD layer, identity forward, ``dL/dY`` of frozen channels zeroed backward (Eq. 4).

    It acts only on the module it was registered on: ``copy.deepcopy`` copies forward hooks but keeps this weak
    reference, so in a deep copy of a network carrying TGD the copied hook does nothing (the copy is a plain network,
    as its parameters carry no TGD hooks and no optimizer hook restores them)."""

    def __init__(self, module: nn.Module, name: str, frozen: torch.Tensor) -> None:
        self.module, self.name, self.frozen = weakref.ref(module), name, frozen

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        if output.requires_grad and self.module() is module:
            if output.device != self.frozen.device:
                where = f"on {self.frozen.device}"
                raise RuntimeError(_moved_message(f"the output of '{self.name}'", where, f"on {output.device}"))
            view = self.frozen.view(1, -1, *([1] * (output.dim() - 2)))
            output.register_hook(lambda grad: grad.masked_fill(view, 0))


def _checked_masks(chain: ConvChain, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``masks`` as bool CPU tensors, one per hidden conv of ``chain`` (no other names, shape ``(out_channels,)``)."""
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
    return checked


def zero_readers(
    network: nn.Module, feature_maps: Mapping[str, torch.Tensor], chain: ConvChain | None = None
) -> float:
    """Zero, in place, the kernels that read the given feature maps: ``W_i[:, c] = 0`` in the conv ``i`` fed by
    hidden conv ``h`` for every output channel ``c`` of ``h`` with ``feature_maps[h][c]`` True.

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
    dropped = 0
    with torch.no_grad():
        for h in chain.hidden:
            if h.name in feature_maps:
                readers = feature_maps[h.name].to(h.consumer.weight.device)
                h.consumer.weight[:, readers] = 0
                dropped += h.consumer.weight[:, readers].numel()
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
    scores = {}
    for h in chain.hidden:
        try:
            scores[h.name] = kse_scores(h.consumer.weight, alpha=alpha, k=k).cpu()
        except ValueError as e:
            raise ValueError(f"threshold_for_budget: conv '{h.consumer_name}': {e}") from e
    samples = _calibration_samples(inputs)
    levels = sorted({s for layer in scores.values() for s in layer.tolist() if s < 1.0})
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
            zero_readers(pruned, {h.name: scores[h.name] == level for h in pruned_chain.hidden}, chain=pruned_chain)
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
