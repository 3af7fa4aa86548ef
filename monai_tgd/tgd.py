"""Targeted Gradient Descent (Chen, Asma, Chan, MICCAI 2021): retrain only the kernels that make redundant features.

Three pieces, all plain PyTorch (no ignite, no data):

- :func:`kse_masks` finds, for every hidden convolution, which of its output channels feed feature maps that the
  next convolution scores as redundant by KSE (paper Fig. 2): those channels are retrained, the rest frozen.
- :class:`TGD` installs the masks on a network with hooks, like ``torch.nn.utils.prune``: the module tree and its
  ``state_dict`` keys stay those of the plain network, and :meth:`TGD.remove` takes every hook away again.
- :func:`drop_redundant` zeroes the kernels that read redundant feature maps (the threshold study, paper Fig. 4).

Supported topologies: every hidden convolution feeds exactly one next convolution through BatchNorm and
element-wise activations/dropout only (DnCNN, ``nn.Sequential`` chains); convolutions from which no other
convolution is reachable are output convolutions. The network is traced with ``torch.fx`` to find this chain.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.fx
from torch.optim.optimizer import register_optimizer_step_post_hook
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.parallel import DataParallel, DistributedDataParallel

from .kse import kse_scores

__all__ = ["ConvChain", "conv_chain", "kse_masks", "mask_summary", "TGD", "drop_redundant"]

MODES = ("activation", "parameter")
BN_STATS = ("update", "freeze")

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


def _unwrap(network: nn.Module) -> nn.Module:
    return network.module if isinstance(network, (DataParallel, DistributedDataParallel)) else network


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

    Raises:
        ValueError: the network cannot be traced, a conv module is called more than once, or a conv's output reaches
            another conv other than through BN and element-wise layers (the message names that conv).
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
    return ConvChain(tuple(hidden), tuple(outputs))


def kse_masks(network: nn.Module, threshold: float, alpha: float = 1.0, k: int = 5) -> dict[str, torch.Tensor]:
    """Retrain masks of every hidden conv of ``network`` (paper Fig. 2 and the definition of ``M_n``).

    Output channel ``n`` of hidden conv ``i-1`` is retrained (True) when the KSE score of input channel ``n`` of the
    conv ``i`` it feeds is below ``threshold``. Output convolutions get no mask.

    Args:
        network: a network whose hidden convs feed the next conv through BN/activations only (see :func:`conv_chain`).
        threshold: KSE threshold ``phi`` in [0, 1] (0.3 in the paper); 0 retrains nothing.
        alpha, k: KSE parameters, see :func:`monai_tgd.kse.kse_scores`.

    Returns:
        ``{conv module name: bool tensor [out_channels] on the CPU}``, True = retrain.
    """
    if not 0.0 <= threshold <= 1.0:  # also rejects NaN
        raise ValueError(f"kse_masks: threshold must be in [0, 1], got {threshold}.")
    masks = {}
    for h in conv_chain(network).hidden:
        try:
            scores = kse_scores(h.consumer.weight, alpha=alpha, k=k)
        except ValueError as e:
            raise ValueError(f"kse_masks: conv '{h.consumer_name}': {e}") from e
        masks[h.name] = (scores < threshold).cpu()
    return masks


def mask_summary(network: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, float]:
    """Fraction of retrained output channels per hidden conv, and ``"overall"``: retrained fraction of the hidden
    convs' and their BNs' parameters."""
    retrained = total = 0
    summary = {}
    for h in conv_chain(network).hidden:
        m = masks[h.name].to(torch.float64)
        summary[h.name] = float(m.mean())
        for module in (h.conv, h.norm):
            for p in module.parameters(recurse=False) if module is not None else ():
                per_channel = p[0].numel() if p.dim() > 1 else 1
                retrained += float(m.sum()) * per_channel
                total += p.numel()
    summary["overall"] = retrained / total if total else 0.0
    return summary


class _FrozenRows:
    """Rows (dim 0 = channel) of one parameter or BN buffer that must not change, and their values at install."""

    def __init__(self, tensor: torch.Tensor, frozen: torch.Tensor) -> None:
        self.tensor = tensor
        self.frozen_view = frozen.to(tensor.device).view(-1, *([1] * (tensor.dim() - 1)))
        self.index = frozen.nonzero().flatten().to(tensor.device)
        self.values = tensor.detach()[self.index].clone()

    def mask_grad(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.masked_fill(self.frozen_view, 0)

    @torch.no_grad()
    def restore(self) -> None:
        self.tensor.index_copy_(0, self.index, self.values)


class TGD:
    """Targeted Gradient Descent on a network, installed with hooks; ``remove()`` (or leaving a ``with`` block) undoes it.

    Retrained channels train as usual; frozen channels (mask False) and, with ``freeze_output``, the output
    convolutions stay bit-identical, in conv weights and biases and in BN affine parameters, under any
    ``torch.optim`` optimizer (weight decay and momentum included), AMP and DDP:

    - ``mode="activation"`` (the paper's TGD layer, Eq. 4): after every hidden conv and after its BN, identity in the
      forward pass and ``dL/dY * M`` in the backward pass; gradients reach earlier layers only through retrained
      channels.
    - ``mode="parameter"``: the same update of each layer's retrained kernels, but only parameter gradients are
      masked, so gradients also reach earlier retrained kernels through frozen channels (more stable when few
      channels are retrained).

    In both modes the parameter gradients of frozen rows are zeroed, and after every step of any optimizer that holds
    the network's parameters (a global ``torch.optim`` step post-hook) the frozen rows are copied back from their
    values at install: gradient masking alone does not stop weight decay or momentum (e.g. a resumed optimizer
    state) from moving them. So load weights and move the network to its device before installing TGD, and call
    :meth:`remove` when done (hooks, as in ``torch.nn.utils.prune``, stay until removed).

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
            moving the network to its device.
        masks: ``{hidden conv name: bool [out_channels]}``, True = retrain, as from :func:`kse_masks`.
        mode: ``"activation"`` or ``"parameter"``.
        freeze_output: keep the output convolutions unchanged (the paper); ``False`` trains them fully.
        bn_stats: ``"update"`` or ``"freeze"``.
    """

    def __init__(
        self,
        network: nn.Module,
        masks: dict[str, torch.Tensor],
        mode: str = "activation",
        freeze_output: bool = True,
        bn_stats: str = "freeze",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"TGD: mode must be one of {MODES}, got {mode!r}.")
        if bn_stats not in BN_STATS:
            raise ValueError(f"TGD: bn_stats must be one of {BN_STATS}, got {bn_stats!r}.")
        chain = conv_chain(network)
        self.masks = _checked_masks(chain, masks)
        self.mode, self.freeze_output, self.bn_stats = mode, freeze_output, bn_stats
        self._frozen: list[_FrozenRows] = []
        self._handles: list = []
        self._param_ids = {id(p) for p in network.parameters()}
        self._install(chain)

    def _install(self, chain: ConvChain) -> None:
        for h in chain.hidden:
            retrain = self.masks[h.name].to(h.conv.weight.device)
            frozen = ~retrain
            for module in (h.conv, h.norm):
                if module is not None:
                    self._freeze_parameters(module, frozen)
            if self.mode == "activation":
                # The paper puts a TGD layer after the conv and after its BN; BN's backward is per channel, so a zero
                # dL/dY after BN already gives an exactly zero dL/dY after the conv: one layer does both.
                last = h.norm if h.norm is not None else h.conv
                self._handles.append(last.register_forward_hook(_output_grad_mask(frozen)))
            if self.bn_stats == "freeze" and h.norm is not None and h.norm.track_running_stats:
                self._frozen += [_FrozenRows(h.norm.running_mean, frozen), _FrozenRows(h.norm.running_var, frozen)]
        if self.freeze_output:
            for _, conv in chain.outputs:
                self._freeze_parameters(conv, torch.ones(conv.out_channels, dtype=torch.bool, device=conv.weight.device))
        self._handles.append(register_optimizer_step_post_hook(self._after_step))

    def _freeze_parameters(self, module: nn.Module, frozen: torch.Tensor) -> None:
        if not frozen.any():
            return
        for p in module.parameters(recurse=False):
            rows = _FrozenRows(p, frozen)
            self._frozen.append(rows)
            if p.requires_grad:
                self._handles.append(p.register_hook(rows.mask_grad))

    def _after_step(self, optimizer: torch.optim.Optimizer, *_) -> None:
        if any(id(p) in self._param_ids for group in optimizer.param_groups for p in group["params"]):
            self._restore()

    def _restore(self) -> None:
        for rows in self._frozen:
            rows.restore()

    def remove(self) -> None:
        """Restore the frozen rows once more and take every hook away; the network is a plain network again."""
        self._restore()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._frozen.clear()

    def __enter__(self) -> TGD:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _output_grad_mask(frozen: torch.Tensor):
    """Forward hook: the TGD layer, identity forward, ``dL/dY`` of frozen channels zeroed backward (Eq. 4)."""

    def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
        if output.requires_grad:
            view = frozen.view(1, -1, *([1] * (output.dim() - 2)))
            output.register_hook(lambda grad: grad.masked_fill(view, 0))

    return hook


def _checked_masks(chain: ConvChain, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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


def drop_redundant(
    network: nn.Module, threshold: float, alpha: float = 1.0, k: int = 5
) -> tuple[nn.Module, float]:
    """A copy of ``network`` without the kernels that read feature maps KSE scores as redundant (paper Fig. 4).

    For every conv ``i`` fed by a hidden conv, ``W_i[:, c]`` is zeroed for each input channel ``c`` scoring below
    ``threshold``: this removes feature map ``c``'s contribution exactly (zeroing the producing conv instead would
    not, since its BN adds beta back).

    Returns:
        ``(copy, fraction)``: the pruned copy and the fraction of all conv parameters (weights and biases) zeroed.
    """
    pruned = copy.deepcopy(_unwrap(network))
    masks = kse_masks(pruned, threshold, alpha=alpha, k=k)
    chain = conv_chain(pruned)
    dropped = 0
    with torch.no_grad():
        for h in chain.hidden:
            redundant = masks[h.name].to(h.consumer.weight.device)
            h.consumer.weight[:, redundant] = 0
            dropped += h.consumer.weight[:, redundant].numel()
    convs = [h.conv for h in chain.hidden] + [conv for _, conv in chain.outputs]
    total = sum(p.numel() for conv in convs for p in conv.parameters(recurse=False))
    return pruned, dropped / total

