"""The TGD engine: hooks that mask gradients (activation mode) and keep frozen rows bit-identical across optimizer
steps (:class:`TGD`), installed and removed like ``torch.nn.utils.prune``."""

from __future__ import annotations

import weakref

import torch
from torch import nn
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from .chain import (
    ConvChain,
    _chain_modules,
    _chain_of,
    _unwrap,
)
from .masks import (
    _check_options,
    _checked_masks,
    frozen_rows,
)


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
        if self.index is not None:  # whole rows: a fill of contiguous rows, faster than a broadcast masked_fill
            return grad.index_fill(0, self.index, 0)
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
        zeroed = self._zeroed_by_layers() if self.mode == "activation" else {}
        for name, frozen in rows.items():
            module_name, _, attr = name.rpartition(".")
            self._frozen.append(_FrozenRows(name, net.get_submodule(module_name), attr, frozen))
            tensor = self._frozen[-1].tensor
            if isinstance(tensor, nn.Parameter) and tensor.requires_grad and not _covered(frozen, zeroed.get(name)):
                self._handles.append(tensor.register_hook(self._frozen[-1].mask_grad))
        if self.mode == "activation":
            for h in self.chain.hidden:
                # The paper puts a TGD layer after the conv and after its BN. Every module between two convs acts
                # channel by channel on the masks' units (BN, InstanceNorm and PReLU per channel, GroupNorm per group
                # of one unit), so a zero dL/dY of the frozen channels right after the conv is what both layers give,
                # and it also covers the conv's other paths (skip connections, concatenations).
                frozen = ~self.masks[h.name].to(h.conv.weight.device)
                self._handles.append(h.conv.register_forward_hook(_TGDLayer(h.conv, h.name, frozen)))
        self._handles.append(register_optimizer_step_pre_hook(self._before_step))
        self._handles.append(register_optimizer_step_post_hook(self._after_step))

    def _zeroed_by_layers(self) -> dict[str, torch.Tensor]:
        """{parameter name: output channels whose gradient the TGD layers already make exactly zero}: the frozen
        channels of every non-transposed hidden conv's weight (rows) and bias, which get their whole gradient
        through the masked ``dL/dY``; their gradient hooks would only zero zeros again (the frozen rows are still
        restored after every step, for weight decay and momentum)."""
        out = {}
        for h in self.chain.hidden:
            if h.conv.transposed:  # the (in, out, *k) weight: its hook is kept
                continue
            zero = ~self.masks[h.name]
            out[f"{h.name}.weight"] = zero
            if h.conv.bias is not None:
                out[f"{h.name}.bias"] = zero
        return out

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


def _covered(frozen: torch.Tensor, zero: torch.Tensor | None) -> bool:
    """Whether every frozen element of a tensor (mask over its leading dims, rows first) lies in a row in ``zero``."""
    if zero is None:
        return False
    rows = frozen if frozen.dim() == 1 else frozen.reshape(frozen.shape[0], -1).any(1)
    return rows.shape == zero.shape and not bool((rows.cpu() & ~zero.cpu()).any())


class _TGDLayer:
    """Forward hook: the TGD layer, identity forward, ``dL/dY`` of frozen channels zeroed backward (Eq. 4).

    It acts only on the module it was registered on: ``copy.deepcopy`` copies forward hooks but keeps this weak
    reference, so in a deep copy of a network carrying TGD the copied hook does nothing (the copy is a plain network,
    as its parameters carry no TGD hooks and no optimizer hook restores them)."""

    def __init__(self, module: nn.Module, name: str, frozen: torch.Tensor) -> None:
        self.module, self.name, self.frozen = weakref.ref(module), name, frozen
        self._keep: dict[torch.dtype, torch.Tensor] = {}  # 1 for retrained channels, 0 for frozen, per grad dtype

    def keep(self, dtype: torch.dtype) -> torch.Tensor:
        """``(C,)`` multiplier of ``dL/dY``: 1 for retrained channels, 0 for frozen ones, in ``dtype`` (a product by
        a per-channel factor is about 2.5 times faster than ``masked_fill`` with a broadcast bool mask on the CPU)."""
        if dtype not in self._keep:
            self._keep[dtype] = (~self.frozen).to(dtype)
        return self._keep[dtype]

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        if output.requires_grad and self.module() is module:
            if output.device != self.frozen.device:
                where = f"on {self.frozen.device}"
                raise RuntimeError(_moved_message(f"the output of '{self.name}'", where, f"on {output.device}"))
            shape = (1, -1, *([1] * (output.dim() - 2)))
            output.register_hook(lambda grad: grad * self.keep(grad.dtype).view(shape))
