"""The network a TGD acts on: its hidden convs, the convs reading their channels, and the coupled channels
(:func:`conv_chain`, built on the channel trace of :mod:`monai_tgd.tgd.graph`); the one network-support check."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd
from torch.nn.parallel import DataParallel, DistributedDataParallel

from .graph import SUPPORTED, ChannelTrace, trace_channels, unite


def _unwrap(network: nn.Module) -> nn.Module:
    """The network inside a DDP/DataParallel wrapper; a ``torch.compile`` wrapper is refused with the way out."""
    net = network.module if isinstance(network, (DataParallel, DistributedDataParallel)) else network
    original = getattr(net, "_orig_mod", None)  # torch._dynamo's OptimizedModule, without importing torch._dynamo
    if isinstance(original, nn.Module):
        raise ValueError(
            f"TGD: the network is a torch.compile wrapper ({type(net).__name__} of a {type(original).__name__}), which "
            "TGD cannot trace; pass the uncompiled module, model._orig_mod (it holds the same parameters), to "
            "kse_masks, TGD, TGDHandler(network=...) and the other monai_tgd.tgd functions, and install TGD before the "
            "compiled module first runs (a graph compiled earlier does not see the TGD layers' forward hooks)."
        )
    return net


@dataclass(frozen=True)
class HiddenConv:
    """A convolution whose output channels are read by other convs.

    ``units[n]`` is the coupling unit of output channel ``n`` (see :class:`ConvChain`) and ``readers[n]`` the
    ``(conv name, input channel)`` pairs that read channel ``n`` (directly or summed with coupled channels). For a
    plain chain (DnCNN) ``norm`` is the norm right after the conv and ``consumer`` the one conv reading channel ``n``
    as its input channel ``n``; both are None when there is no such single module."""

    name: str
    conv: _ConvNd
    norm_name: str | None
    norm: nn.Module | None
    consumer_name: str | None
    consumer: _ConvNd | None
    units: tuple[int, ...] = ()
    readers: tuple[tuple[tuple[str, int], ...], ...] = ()


@dataclass(frozen=True)
class ReaderConv:
    """A convolution that reads output channels of hidden convs: ``units[j]`` is the unit its input channel ``j``
    reads (None: only the network input), ``sources[j]`` the ``(conv name, channel)`` pairs summed into it."""

    name: str
    conv: _ConvNd
    units: tuple[int | None, ...]
    sources: tuple[frozenset[tuple[str, int]], ...]
    output: bool


@dataclass(frozen=True)
class ChannelModule:
    """A module with per-channel state (BatchNorm, InstanceNorm with affine or running statistics, GroupNorm with
    affine, PReLU): ``units[c]`` is the unit of its channel ``c``. ``shared``: one parameter for all channels
    (``PReLU(num_parameters=1)``), which trains only when every one of its channels does."""

    name: str
    module: nn.Module
    units: tuple[int, ...]
    shared: bool = False


@dataclass(frozen=True)
class ConvChain:
    """The channel dependency graph of a network (:func:`conv_chain`).

    - ``hidden``: convs some of whose output channels other convs read, in execution order;
    - ``outputs``: the other convs (``(name, conv)``), whose channels no conv reads;
    - ``readers``: every conv reading hidden convs' channels, with the unit of each input channel;
    - ``channel_modules``: norms and PReLUs with per-channel state, with the unit of each channel;
    - ``units``: the coupling units, ``units[u]`` = the ``(conv name, output channel)`` pairs that must share one
      decision (added together, multiplied, normalised by one GroupNorm group); a plain chain has one unit per channel.
    - ``order``: names of the convs and channel modules in call order.
    """

    hidden: tuple[HiddenConv, ...]
    outputs: tuple[tuple[str, _ConvNd], ...]
    readers: tuple[ReaderConv, ...] = ()
    channel_modules: tuple[ChannelModule, ...] = ()
    units: tuple[tuple[tuple[str, int], ...], ...] = ()
    order: tuple[str, ...] = ()

    def readers_of(self, conv: str) -> list[set[tuple[str, int]]]:
        """Per output channel of hidden conv ``conv``: the ``(reader conv, input channel)`` pairs that read it."""
        hidden = {h.name: h for h in self.hidden}
        if conv not in hidden:
            raise ValueError(f"readers_of: '{conv}' is not a hidden conv; hidden convs: {list(hidden)}.")
        return [set(r) for r in hidden[conv].readers]

    def coupled(self, conv: str, channel: int) -> set[tuple[str, int]]:
        """The ``(conv, channel)`` pairs sharing one decision with output channel ``channel`` of conv ``conv``."""
        for members in self.units:
            if (conv, channel) in members:
                return set(members)
        raise ValueError(f"coupled: ({conv!r}, {channel}) is not an output channel of a conv of the network.")


def conv_chain(network: nn.Module, example_input: torch.Tensor | None = None) -> ConvChain:
    """The channel dependency graph of ``network``: for every conv output channel, the input channels of the later
    convs that read it, and the channels that must share one decision.

    The network runs once, in training mode without gradient, on ``example_input`` (default: zeros
    ``[2, C_in, 32, ...]``, ``C_in`` and the number of spatial dims from its first conv; 64, 16 and 96 voxels per side
    are tried next if the forward pass fails), traced by :func:`monai_tgd.tgd.graph.trace_channels`; its train/eval
    flags, buffers and the RNG state are restored, so nothing about it changes.

    This is also the network-support check of every function of this module: what the graph does not cover would
    train unmasked (or be masked twice), so it is refused here, before any mask or training step.

    Raises:
        ValueError: naming the module and the operation, for a ``torch.compile`` wrapper (pass ``model._orig_mod``),
            a conv or a module with state called more than once, an operation that mixes channels (or that the
            analysis does not know) between two convs or before a norm, a grouped conv reading other convs' maps, a
            module with parameters other than convs, norms and PReLU (``Linear``, ``LayerNorm``), a parameter read
            directly in ``forward()``, a norm of channels no hidden conv makes (the network input, an output conv),
            one tensor shared by two modules, data-dependent control flow, or a network that does not run on the
            default inputs (then pass ``example_input``).
    """
    net = _unwrap(network)
    trace = trace_channels(net, example_input)
    return _build_chain(net, trace)


def _build_chain(net: nn.Module, trace: ChannelTrace) -> ConvChain:
    for name, count in trace.calls.items():
        module = net.get_submodule(name)
        if count > 1:
            if isinstance(module, _ConvNd):
                raise ValueError(f"TGD: conv '{name}' is called more than once in forward(); its masks would be "
                                 "ambiguous.")
            what = "a BN shared by two convs would merge their masks" if isinstance(module, _NormBase) else (
                "its masks would be ambiguous")
            raise ValueError(f"TGD: {type(module).__name__} '{name}' is called {count} times in forward(); {what}. "
                             f"{SUPPORTED}")
    sources = trace.sources
    roots = unite(len(sources), trace.couplings)
    unit_of_root: dict[int, int] = {}
    for s in range(len(sources)):
        unit_of_root.setdefault(roots[s], len(unit_of_root))
    unit = [unit_of_root[roots[s]] for s in range(len(sources))]
    members: list[list[tuple[str, int]]] = [[] for _ in unit_of_root]
    for s, u in enumerate(unit):
        members[u].append(sources[s])
    read_by: dict[int, list[tuple[str, int]]] = {}  # source id -> (reader, input channel)
    for reader, channels in trace.reads.items():
        for j, ids in enumerate(channels):
            for s in ids:
                read_by.setdefault(s, []).append((reader, j))
    hidden_names = [n for n, (_, base) in trace.convs.items()
                    if any(base + c in read_by for c in range(trace.convs[n][0].out_channels))]  # fmt: skip
    hidden_set = set(hidden_names)
    unit_hidden = [any(conv in hidden_set for conv, _ in m) for m in members]
    channel_modules = []
    direct_norm: dict[str, tuple[str, nn.Module]] = {}
    for name, (module, channels) in trace.channel_modules.items():
        units = []
        for c, ids in enumerate(channels):
            if not ids:
                raise ValueError(
                    f"TGD: cannot follow {type(module).__name__} '{name}' (call_module): its channel {c} is not made by "
                    "a hidden conv (it normalises the network input), so no mask covers its state and it would train "
                    f"unmasked. {SUPPORTED}"
                )
            u = unit[next(iter(ids))]
            if not unit_hidden[u]:
                conv = sources[next(iter(ids))][0]
                raise ValueError(
                    f"TGD: cannot follow {type(module).__name__} '{name}' (call_module): it follows output conv "
                    f"'{conv}' (no conv reads its channel {c}), so it would train unmasked whatever freeze_output says. "
                    f"{SUPPORTED}"
                )
            units.append(u)
        shared = isinstance(module, nn.PReLU) and module.num_parameters == 1 and len(channels) > 1
        channel_modules.append(ChannelModule(name, module, tuple(units), shared))
        is_norm = isinstance(module, (_NormBase, nn.GroupNorm))
        first = sources[next(iter(channels[0]))][0] if is_norm and channels and len(channels[0]) == 1 else None
        if (first is not None and first not in direct_norm
                and all(ids == frozenset({trace.convs[first][1] + c}) for c, ids in enumerate(channels))
                and len(channels) == trace.convs[first][0].out_channels):  # fmt: skip
            direct_norm[first] = (name, module)
    hidden = []
    for name in hidden_names:
        conv, base = trace.convs[name]
        readers = tuple(tuple(read_by.get(base + c, ())) for c in range(conv.out_channels))
        consumers = {r for rs in readers for r, _ in rs}
        consumer_name = None
        if len(consumers) == 1 and all(rs == ((next(iter(consumers)), c),) for c, rs in enumerate(readers)):
            only = next(iter(consumers))
            if all(trace.reads[only][c] == frozenset({base + c}) for c in range(conv.out_channels)) and len(
                    trace.reads[only]) == conv.out_channels:  # fmt: skip
                consumer_name = only
        norm_name, norm = direct_norm.get(name, (None, None))
        hidden.append(HiddenConv(
            name, conv, norm_name, norm, consumer_name,
            trace.convs[consumer_name][0] if consumer_name else None,
            tuple(unit[base + c] for c in range(conv.out_channels)), readers,
        ))  # fmt: skip
    outputs = tuple((n, m) for n, (m, _) in trace.convs.items() if n not in hidden_set)
    reader_convs = tuple(
        ReaderConv(
            name, trace.convs[name][0],
            tuple(unit[next(iter(ids))] if ids else None for ids in channels),
            tuple(frozenset(sources[s] for s in ids) for ids in channels),
            name not in hidden_set,
        )
        for name, channels in trace.reads.items()
    )  # fmt: skip
    chain = ConvChain(tuple(hidden), outputs, reader_convs, tuple(channel_modules),
                      tuple(tuple(m) for m in members), tuple(trace.order))  # fmt: skip
    _check_tied(chain)
    return chain


def _check_tied(chain: ConvChain) -> None:
    """Refuse one parameter tensor in two modules of the graph (tied weights): TGD keeps rows per module."""
    owners: dict[int, str] = {}
    modules = [(h.name, h.conv) for h in chain.hidden] + list(chain.outputs)
    modules += [(c.name, c.module) for c in chain.channel_modules]
    for name, module in sorted(modules, key=lambda item: chain.order.index(item[0])):
        for attr, p in module.named_parameters(recurse=False):
            key = f"{name}.{attr}"
            if id(p) in owners:
                raise ValueError(
                    f"TGD: parameter '{key}' of {type(module).__name__} '{name}' is the same tensor as "
                    f"'{owners[id(p)]}' (shared weights); TGD keeps rows per module and cannot follow a tensor shared "
                    f"by two. {SUPPORTED}"
                )
            owners[id(p)] = key


def _chain_modules(chain: ConvChain) -> list[nn.Module]:
    """Every module whose state TGD masks: hidden and output convs and channel-wise modules."""
    return [h.conv for h in chain.hidden] + [c.module for c in chain.channel_modules] + [m for _, m in chain.outputs]


def _chain_of(network: nn.Module, chain: ConvChain | None, where: str) -> ConvChain:
    """``chain`` if given (after checking that its modules are ``network``'s), else ``conv_chain(network)``."""
    if chain is None:
        return conv_chain(network)
    if not isinstance(chain, ConvChain):
        raise TypeError(f"{where}: chain must be a ConvChain from conv_chain(network), got {type(chain).__name__}.")
    own = {id(m) for m in _unwrap(network).modules()}
    modules = _chain_modules(chain) + [r.conv for r in chain.readers]
    modules += [m for h in chain.hidden for m in (h.norm, h.consumer) if m is not None]
    if not all(id(m) in own for m in modules):
        raise ValueError(
            f"{where}: chain holds modules that are not in the given {type(_unwrap(network)).__name__}; pass "
            "conv_chain(network) of this network (a deep copy has other modules)."
        )
    return chain
