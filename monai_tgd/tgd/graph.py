"""Channel dependency analysis for TGD: for every conv output channel, which input channels of which convs read it.

:func:`trace_channels` runs the network once on a small input (no gradient, its buffers and the RNG restored
afterwards) with a :class:`torch.overrides.TorchFunctionMode` and forward hooks on every module, and follows each
channel of each tensor from the conv output channels it is made of ("sources") to the input channels of the convs
that read it. It is a dynamic trace of what ``forward()`` really executes: ``torch.fx``'s symbolic trace of MONAI's
``BasicUNet`` succeeds but silently drops its skip concatenations (``torch.jit.isinstance`` on a proxy is False), and
a data-dependent branch is refused here instead of being traced one way.

What it follows channel by channel: convolutions (``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d``), channel-wise norms
(``BatchNorm``, ``InstanceNorm``; ``GroupNorm``, whose channels of one group are coupled), ``PReLU``, element-wise
activations/dropout, pooling, upsampling/interpolation, spatial padding and cropping, concatenation (channel offsets),
channel slicing and splitting, element-wise arithmetic between tensors (residual additions, gates: the channels of all
operands at one position are coupled), reshapes that keep ``[B, C]``. Anything else makes a tensor's channels
unknown; that is an error only where TGD needs them (a conv or a norm reading it), and the error names the operation
and the module it ran in. Parameters read outside the convolutions, norms and PReLUs (a ``Linear``, a learnable scale,
a functional conv) are refused, as is data-dependent control flow (``bool(tensor)``, ``.item()``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.conv import _ConvNd
from torch.overrides import TorchFunctionMode

__all__ = ["ChannelTrace", "Refusal", "trace_channels"]

#: what the analysis follows, for error messages
SUPPORTED = (
    "Supported: Conv1d/2d/3d and ConvTranspose1d/2d/3d layers (groups=1 where they read other convs' maps), each "
    "called once, joined by channel-wise norms (BatchNorm, InstanceNorm, GroupNorm), PReLU, element-wise "
    "activations/dropout, pooling, upsampling/interpolation, padding, cropping, concatenation, channel slicing and "
    "element-wise arithmetic (residual additions); operations without parameters anywhere else (DnCNN, MONAI's "
    "BasicUNet, UNet, SegResNet, DynUNet)."
)


class Refusal(ValueError):
    """A network (or a part of it) the analysis cannot follow; the message names the module and the operation."""


# modules that keep every channel where it is and hold no state the masks must cover
_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid,
    nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.LogSigmoid, nn.Tanhshrink, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.LPPool1d, nn.LPPool2d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
    nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d,
    nn.ReplicationPad3d,
)  # fmt: skip
_LEAF_MODULES = (_ConvNd, _NormBase, nn.GroupNorm, nn.LayerNorm, nn.PReLU, *_PASS_MODULES)

# functions and methods (names without leading/trailing underscores) that act element by element: the channels of
# all their tensor operands at one position are combined (broadcasting a 1-channel operand over all channels)
_POINTWISE = {
    "add", "radd", "iadd", "sub", "rsub", "isub", "mul", "rmul", "imul", "div", "truediv", "rtruediv", "itruediv",
    "idiv", "floordiv", "maximum", "minimum", "fmax", "fmin", "pow", "rpow", "ipow", "neg", "abs", "exp", "log",
    "log1p", "sqrt", "rsqrt", "square", "reciprocal", "sign", "clamp", "clip", "clamp_min", "clamp_max", "threshold",
    "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "hardtanh", "hardswish",
    "hardsigmoid", "softplus", "softsign", "logsigmoid", "tanhshrink", "hardshrink", "softshrink", "rrelu", "tanh",
    "sigmoid", "sin", "cos", "nan_to_num", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout", "contiguous", "clone", "detach", "to", "float", "double", "half", "bfloat16", "type",
    "type_as", "requires_grad", "lerp", "addcmul", "addcdiv", "where", "copy",
}  # fmt: skip
# functions acting on the spatial dims only (each channel stays where it is)
_SPATIAL = {
    "interpolate", "upsample", "upsample_nearest", "upsample_bilinear", "max_pool1d", "max_pool2d", "max_pool3d",
    "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices", "avg_pool1d", "avg_pool2d",
    "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool3d", "adaptive_max_pool1d_with_indices",
    "adaptive_max_pool2d_with_indices", "adaptive_max_pool3d_with_indices", "lp_pool1d", "lp_pool2d",
}  # fmt: skip
_RESHAPES = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
_REDUCTIONS = {"sum", "mean", "amax", "amin", "std", "var", "nansum", "nanmean", "logsumexp"}
_CATS = {"cat", "concat", "concatenate"}
_SPLITS = {"split", "chunk", "tensor_split", "split_with_sizes"}
_DATA_DEPENDENT = {"bool", "item", "tolist", "int", "float_", "index", "numpy", "nonzero", "len"}
_IGNORED = {"get", "set", "size", "dim", "ndim", "numel", "is_contiguous", "requires_grad_", "data_ptr", "stride",
            "element_size", "is_floating_point", "storage_offset", "ne", "eq", "setstate", "repr", "format"}


def _op_name(func) -> str:
    return getattr(func, "__name__", type(func).__name__)


def _short(name: str) -> str:
    short = name.strip("_")
    return short if short else name


@dataclass(frozen=True)
class Map:
    """The channels of one traced tensor: per channel, the conv output channels (source ids) it is made of.

    ``channels`` is None when the layout is unknown: then ``taint`` says which operation made it so and ``tsources``
    which sources it held (a tensor with no channel layout and no sources is simply ``Map(None)``)."""

    channels: tuple[frozenset[int], ...] | None
    taint: str | None = None
    tsources: frozenset[int] = frozenset()

    def sources(self) -> frozenset[int]:
        if self.channels is None:
            return self.tsources
        return frozenset().union(*self.channels) if self.channels else frozenset()


@dataclass
class ChannelTrace:
    """What one forward pass showed (see :func:`trace_channels`)."""

    #: source id -> (conv name, output channel)
    sources: list[tuple[str, int]] = field(default_factory=list)
    #: conv name -> (module, first source id); in call order
    convs: dict[str, tuple[_ConvNd, int]] = field(default_factory=dict)
    #: conv name -> per input channel, the source ids it reads (only convs reading at least one source)
    reads: dict[str, tuple[frozenset[int], ...]] = field(default_factory=dict)
    #: channel-wise modules with state: name -> (module, per channel the source ids of its input)
    channel_modules: dict[str, tuple[nn.Module, tuple[frozenset[int], ...]]] = field(default_factory=dict)
    #: sets of source ids that must share one decision (channels combined element-wise, GroupNorm groups)
    couplings: set[frozenset[int]] = field(default_factory=set)
    #: stateful module name -> number of calls
    calls: dict[str, int] = field(default_factory=dict)
    #: names of convs and channel-wise modules in call order (first call)
    order: list[str] = field(default_factory=list)


class _Tracer(TorchFunctionMode):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.names = {id(m): n for n, m in net.named_modules()}
        self.param_owner = {}
        for mname, m in net.named_modules():
            for attr, p in m.named_parameters(recurse=False):
                self.param_owner.setdefault(id(p), (mname, attr, m))
        self.maps: dict[int, Map] = {}
        self.alive: list[torch.Tensor] = []  # keeps traced tensors alive so that their ids stay theirs
        self.stack: list[str] = []
        self.leaf_depth = 0
        self.result = ChannelTrace()

    # ------------------------------------------------------------------------------------------------- helpers
    def where(self) -> str:
        return f"forward() of '{self.stack[-1]}'" if self.stack and self.stack[-1] else "the network's forward()"

    def map_of(self, t) -> Map | None:
        """The map of a traced tensor, None for anything else (a constant, a parameter: no sources)."""
        if isinstance(t, torch.Tensor):
            return self.maps.get(id(t))
        return None

    def channels_of(self, t: torch.Tensor) -> tuple[frozenset[int], ...] | None:
        """Per channel sources of tensor ``t`` [B, C, ...]; None if unknown (tainted)."""
        m = self.map_of(t)
        if m is None or (m.channels is None and m.taint is None):
            return (frozenset(),) * t.shape[1] if t.dim() >= 2 else None
        return m.channels

    def set_map(self, t, m: Map) -> None:
        if not isinstance(t, torch.Tensor):
            return
        if m.channels is not None:
            if t.dim() < 2 or len(m.channels) != t.shape[1]:
                m = Map(None, m.taint or "a channel count that does not match", m.sources())
            else:
                for c in m.channels:
                    if len(c) > 1:
                        self.result.couplings.add(c)
        self.maps[id(t)] = m
        self.alive.append(t)

    def taint(self, op: str, inputs: list[Map]) -> Map:
        """A map of unknown layout made by ``op`` from ``inputs`` (keeping the first taint's description)."""
        sources = frozenset().union(*(m.sources() for m in inputs)) if inputs else frozenset()
        if not sources and not any(m.taint for m in inputs):
            return Map(None)
        first = next((m.taint for m in inputs if m.taint), None)
        return Map(None, first or f"'{op}' in {self.where()}", sources)

    def conv_names(self, sources: frozenset[int]) -> list[str]:
        return sorted({self.result.sources[s][0] for s in sources}, key=list(self.result.convs).index)

    def refuse_unknown(self, m: Map, reader: str, what: str) -> None:
        producers = self.conv_names(m.tsources)
        of = f"the consumer of conv '{producers[0]}'" if producers else "its input"
        raise Refusal(
            f"TGD: cannot resolve {of}: its output goes through {m.taint}, which TGD cannot follow channel by channel, "
            f"and then reaches {what} '{reader}'. {SUPPORTED}"
        )

    # ------------------------------------------------------------------------------------------ module hooks
    def pre_hook(self, module: nn.Module, args, kwargs) -> None:
        name = self.names.get(id(module), "?")
        self.stack.append(name)
        if self.leaf_depth:
            self.leaf_depth += 1
            return
        if isinstance(module, _LEAF_MODULES):
            self.leaf_depth = 1
            x = args[0] if args else next(iter(kwargs.values()), None)
            m = self.map_of(x)
            if isinstance(module, nn.LayerNorm) and (_has_state(module) or (m is not None and (m.sources() or m.taint))):
                raise Refusal(
                    f"TGD: cannot follow LayerNorm '{name}' (call_module): it normalises over the last dims "
                    f"{tuple(module.normalized_shape)}, not channel by channel, so retrained and frozen channels would "
                    f"share statistics or affine parameters. Use BatchNorm, InstanceNorm or GroupNorm. {SUPPORTED}"
                )
            if isinstance(module, _ConvNd) or _has_state(module):
                self.result.calls[name] = self.result.calls.get(name, 0) + 1

    def post_hook(self, module: nn.Module, args, kwargs, output) -> None:
        name = self.stack.pop()
        if self.leaf_depth > 1:
            self.leaf_depth -= 1
            return
        if not self.leaf_depth:
            return
        self.leaf_depth = 0
        x = args[0] if args else next(iter(kwargs.values()), None)
        if not isinstance(x, torch.Tensor) or not isinstance(output, torch.Tensor):
            return
        if isinstance(module, _ConvNd):
            self.conv(name, module, x, output)
        else:
            self.channel_module(name, module, x, output)

    def conv(self, name: str, conv: _ConvNd, x: torch.Tensor, out: torch.Tensor) -> None:
        r = self.result
        channels = self.channels_of(x)
        if channels is None:
            self.refuse_unknown(self.maps[id(x)], name, "conv")
        read = frozenset().union(*channels) if channels else frozenset()
        if read:
            if conv.groups != 1:
                producers = self.conv_names(read)
                raise Refusal(
                    f"TGD: conv '{producers[0]}' feeds conv '{name}', which must have groups=1 to be scored by KSE "
                    f"(one kernel per input channel and output channel); got groups={conv.groups}. {SUPPORTED}"
                )
            if name not in r.reads:
                r.reads[name] = channels
        if conv.transposed and conv.groups != 1:
            raise Refusal(f"TGD: cannot follow ConvTranspose '{name}' with groups={conv.groups}: its output channels "
                          f"are not rows of its weight. {SUPPORTED}")
        if name not in r.convs:
            r.convs[name] = (conv, len(r.sources))
            r.sources += [(name, n) for n in range(out.shape[1])]
            r.order.append(name)
        base = r.convs[name][1]
        self.set_map(out, Map(tuple(frozenset({base + n}) for n in range(out.shape[1]))))

    def channel_module(self, name: str, module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> None:
        r = self.result
        channels = self.channels_of(x)
        m = self.maps.get(id(x), Map(None))
        sourced = bool(m.sources()) or m.taint is not None
        kind = type(module).__name__
        if isinstance(module, nn.LayerNorm):
            self.set_map(out, self.taint(f"LayerNorm '{name}'", [m]))
            return
        state = _has_state(module) and not isinstance(module, _PASS_MODULES)
        if channels is None:
            if state or isinstance(module, nn.GroupNorm):
                self.refuse_unknown(m, name, kind)
            self.set_map(out, m)
            return
        if out.dim() < 2 or out.shape[1] != len(channels):
            self.set_map(out, self.taint(f"{kind} '{name}'", [m]))
            return
        if isinstance(module, nn.GroupNorm):
            size = len(channels) // module.num_groups
            for g in range(module.num_groups):
                group = frozenset().union(*channels[g * size : (g + 1) * size])
                if len(group) > 1:
                    r.couplings.add(group)
        if isinstance(module, nn.PReLU) and module.num_parameters not in (1, len(channels)):
            raise Refusal(f"TGD: cannot follow PReLU '{name}' with {module.num_parameters} parameters on "
                          f"{len(channels)} channels. {SUPPORTED}")
        if state and name not in r.channel_modules:
            r.channel_modules[name] = (module, channels)
            r.order.append(name)
        self.set_map(out, Map(channels))

    # ------------------------------------------------------------------------------------- functions / methods
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.leaf_depth:
            return func(*args, **kwargs)
        name = _op_name(func)
        short = _short(name)
        flat = _tensors(args) + _tensors(list(kwargs.values()))
        for t in flat:
            owner = self.param_owner.get(id(t))
            if owner is not None:
                self.refuse_parameter(owner, name)
        traced = [t for t in flat if id(t) in self.maps]
        if traced and (short in _DATA_DEPENDENT or name == "__float__"):
            raise Refusal(
                f"TGD: cannot follow data-dependent control flow: '{name}' of a tensor computed from the input in "
                f"{self.where()} (e.g. `if x.sum() > 0:`), so one trace may not show what forward() does on other "
                f"inputs. {SUPPORTED}"
            )
        out = func(*args, **kwargs)
        if traced and short not in _IGNORED:
            self.record(short, name, args, kwargs, out, traced)
        return out

    def refuse_parameter(self, owner: tuple[str, str, nn.Module], op: str) -> None:
        mname, attr, module = owner
        key = f"{mname}.{attr}" if mname else attr
        if mname and self.stack and self.stack[-1] == mname:
            raise Refusal(
                f"TGD: cannot follow {type(module).__name__} '{mname}' (call_module): TGD masks only convolutions, "
                "channel-wise norms and PReLU, so it would train unmasked whatever freeze_output says, and a conv "
                f"feeding it would count as an output conv, frozen whole without a KSE mask. {SUPPORTED}"
            )
        raise Refusal(
            f"TGD: cannot follow parameter '{key}', read directly in {self.where()} by '{op}' (e.g. a learnable scale "
            f"or a functional conv): no mask covers it, so it would train fully. {SUPPORTED}"
        )

    def record(self, short: str, name: str, args, kwargs, out, traced: list[torch.Tensor]) -> None:
        maps = [self.maps[id(t)] for t in traced]
        outs = [out] if isinstance(out, torch.Tensor) else [o for o in out] if isinstance(out, (tuple, list)) else []
        outs = [o for o in outs if isinstance(o, torch.Tensor)]
        if not outs:
            return
        if not any(m.sources() or m.taint for m in maps):  # nothing from a conv: no layout to follow
            for o in outs:
                self.set_map(o, Map(None) if o.dim() < 2 else Map((frozenset(),) * o.shape[1]))
            return
        result = None
        try:
            if short in _POINTWISE:
                result = self.pointwise(out, args, kwargs)
            elif short in _CATS:
                result = self.cat(out, args, kwargs)
            elif short == "getitem":
                result = self.getitem(args[0], args[1], out)
            elif short == "setitem":
                self.set_map(args[0], self.taint(name, maps))
                return
            elif short in _SPLITS:
                self.split(args, kwargs, outs, name, maps)
                return
            elif short in _SPATIAL or short == "pad":
                result = self.spatial(short, args, kwargs, out)
            elif short in _RESHAPES or short in ("permute", "transpose", "movedim", "flip", "roll", "expand",
                                                 "expand_as", "repeat"):
                result = self.reshape(short, args, kwargs, out)
            elif short in _REDUCTIONS or short in ("max", "min"):
                result = self.reduction(args, kwargs, out)
        except (IndexError, TypeError, ValueError):  # an argument form not foreseen: unknown layout
            result = None
        if result is None:
            result = self.taint(name, maps)
        for o in outs:
            self.set_map(o, result)

    def pointwise(self, out, args, kwargs) -> Map | None:
        if not isinstance(out, torch.Tensor) or out.dim() < 2:
            return None
        channels = [frozenset()] * out.shape[1]
        for t in _tensors(args) + _tensors(list(kwargs.values())):
            if id(t) not in self.maps or t.dim() == 0:
                continue
            m = self.maps[id(t)]
            if not m.sources() and m.taint is None:
                continue
            if t.dim() != out.dim():
                return None
            own = self.channels_of(t)
            if own is None:
                return None
            if len(own) == out.shape[1]:
                channels = [a | b for a, b in zip(channels, own)]
            elif len(own) == 1:
                channels = [a | own[0] for a in channels]
            else:
                return None
        return Map(tuple(channels))

    def cat(self, out, args, kwargs) -> Map | None:
        tensors = args[0] if args else kwargs.get("tensors")
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        if not isinstance(out, torch.Tensor) or out.dim() < 2:
            return None
        dim = dim % out.dim()
        parts = []
        for t in tensors:
            own = self.channels_of(t)
            if own is None or t.dim() != out.dim():
                return None
            parts.append(own)
        if dim == 1:
            return Map(tuple(c for part in parts for c in part))
        if dim == 0 or any(len(p) != out.shape[1] for p in parts):
            return None if dim != 0 else Map(tuple(frozenset().union(*cs) for cs in zip(*parts)))
        return Map(tuple(frozenset().union(*cs) for cs in zip(*parts)))

    def getitem(self, x: torch.Tensor, index, out) -> Map | None:
        channels = self.channels_of(x)
        if channels is None or not isinstance(out, torch.Tensor):
            return None
        index = index if isinstance(index, tuple) else (index,)
        if any(i is None or isinstance(i, (torch.Tensor, list, bool)) for i in index):
            return None
        if Ellipsis in index:
            at = index.index(Ellipsis)
            fill = x.dim() - (len(index) - 1)
            index = index[:at] + (slice(None),) * fill + index[at + 1 :]
        if len(index) >= 1 and not isinstance(index[0], slice):
            return None
        if len(index) >= 2:
            if not isinstance(index[1], slice):
                return None
            channels = tuple(channels[index[1]])
        return Map(channels) if out.dim() >= 2 and out.shape[1] == len(channels) else None

    def split(self, args, kwargs, outs, op, maps) -> None:
        x = args[0]
        dim = kwargs.get("dim", args[2] if len(args) > 2 else 0)
        channels = self.channels_of(x)
        if channels is None:
            for o in outs:
                self.set_map(o, self.taint(op, maps))
            return
        dim = dim % x.dim()
        if dim == 1:
            start = 0
            for o in outs:
                self.set_map(o, Map(tuple(channels[start : start + o.shape[1]])))
                start += o.shape[1]
        elif dim == 0 or dim >= 2:
            for o in outs:
                self.set_map(o, Map(channels))

    def spatial(self, short, args, kwargs, out) -> Map | None:
        x = args[0]
        channels = self.channels_of(x)
        if channels is None or not isinstance(out, torch.Tensor):
            return None
        if short == "pad":
            pad = args[1] if len(args) > 1 else kwargs.get("pad")
            if len(pad) > 2 * (x.dim() - 2):
                return None
        return Map(channels) if out.dim() == x.dim() and out.shape[:2] == x.shape[:2] else None

    def reshape(self, short, args, kwargs, out) -> Map | None:
        x = args[0]
        channels = self.channels_of(x)
        if channels is None or not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[:2] != x.shape[:2]:
            return None
        rest = list(args[1:]) + list(kwargs.values())
        if short == "permute":
            dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
            if [d % x.dim() for d in dims[:2]] != [0, 1]:
                return None
        elif short in ("transpose", "movedim"):
            if any(isinstance(d, int) and d % x.dim() in (0, 1) for d in rest[:2]):
                return None
        elif short in ("flip", "roll"):
            dims = rest[-1] if rest else None
            dims = [dims] if isinstance(dims, int) else list(dims or [])
            if not dims or any(d % x.dim() in (0, 1) for d in dims):
                return None
        elif short in ("squeeze", "unsqueeze"):
            if not rest or not isinstance(rest[0], int) or rest[0] % (out.dim() if short == "unsqueeze" else x.dim()) < 2:
                return None
        elif short in ("expand", "expand_as", "repeat"):
            if out.shape != x.shape:
                return None
        return Map(channels)

    def reduction(self, args, kwargs, out) -> Map | None:
        x = args[0]
        channels = self.channels_of(x)
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if channels is None or dim is None or not isinstance(out, torch.Tensor) or out.dim() < 2:
            return None
        dims = [dim] if isinstance(dim, int) else list(dim)
        if any(not isinstance(d, int) or d % x.dim() in (0, 1) for d in dims) or out.shape[:2] != x.shape[:2]:
            return None
        return Map(channels)


def _tensors(items) -> list[torch.Tensor]:
    found = []
    for item in items:
        if isinstance(item, torch.Tensor):
            found.append(item)
        elif isinstance(item, (tuple, list)):
            found += _tensors(item)
    return found


def _has_state(module: nn.Module) -> bool:
    """Whether training changes ``module`` itself: it owns parameters, or a norm that tracks running statistics."""
    tracks = isinstance(module, _NormBase) and module.track_running_stats
    return tracks or any(True for _ in module.parameters(recurse=False))


def example_input(net: nn.Module, size: int) -> torch.Tensor:
    """Zeros ``[2, C_in, size, ...]`` for the first conv of ``net`` (in module order), on its device and dtype."""
    first = next((m for m in net.modules() if isinstance(m, _ConvNd)), None)
    if first is None:
        raise Refusal(f"TGD: {type(net).__name__} has no convolution; TGD masks conv channels. {SUPPORTED}")
    weight = first.weight
    return torch.zeros(2, first.in_channels, *([size] * len(first.kernel_size)), dtype=weight.dtype,
                       device=weight.device)


SIZES = (32, 64, 16, 96)


def trace_channels(net: nn.Module, example: torch.Tensor | None = None) -> ChannelTrace:
    """Run ``net`` once in training mode on ``example`` (default: zeros ``[2, C_in, 32, ...]`` for the first conv's
    ``in_channels`` and kernel dims, then 64, 16 and 96 voxels per side if the forward pass fails), without gradient,
    and return which channels of which convs each conv and channel-wise module reads.

    The network is left as it was: its train/eval flags, its buffers (BN running statistics) and the RNG state are
    restored. Raises :class:`Refusal` (a ``ValueError``) naming the module and the operation for what cannot be
    followed, or when no input size runs."""
    examples = [example] if example is not None else None
    errors = []
    for size in SIZES if examples is None else (None,):
        x = examples[0] if examples is not None else example_input(net, size)
        try:
            return _trace(net, x)
        except Refusal:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of the forward pass: try another size, report them
            errors.append(f"{tuple(x.shape)}: {type(e).__name__}: {e}")
    raise Refusal(
        f"TGD: cannot run {type(net).__name__} on a zeros input to trace which conv feeds which ("
        + "; ".join(errors)
        + "). Pass an input it accepts: chain = conv_chain(network, example_input=x), then chain=chain to kse_masks, "
        "TGD and the other monai_tgd.tgd functions."
    )


def _trace(net: nn.Module, x: torch.Tensor) -> ChannelTrace:
    tracer = _Tracer(net)
    modes = {m: m.training for m in net.modules()}
    buffers = [(b, b.detach().clone()) for b in net.buffers()]
    devices = sorted({b.device.index or 0 for b in list(net.buffers()) + list(net.parameters()) if b.is_cuda})
    handles = []
    try:
        for m in net.modules():
            handles.append(m.register_forward_pre_hook(tracer.pre_hook, with_kwargs=True))
            handles.append(m.register_forward_hook(tracer.post_hook, with_kwargs=True))
        net.train()
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            tracer.set_map(x, Map((frozenset(),) * x.shape[1]))
            with tracer:
                net(x)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    return tracer.result


def unite(n: int, couplings) -> list[int]:
    """Union-find over ``n`` source ids: the representative (smallest id) of each id's coupled set."""
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for group in couplings:
        ids = sorted(group)
        for other in ids[1:]:
            ra, rb = find(ids[0]), find(other)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return [find(a) for a in range(n)]

