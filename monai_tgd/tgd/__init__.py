"""Targeted Gradient Descent (Chen, Asma, Chan, MICCAI 2021): retrain only the kernels that make redundant features.

The pieces, all plain PyTorch (no ignite, no data):

- :func:`conv_chain` finds, for every conv output channel, which input channels of which later convs read it
  (through norms, activations, pooling, upsampling, concatenation, residual additions, ...; the channel dependency
  analysis of :mod:`monai_tgd.tgd.graph`), and which channels are coupled (added together, normalised by one
  GroupNorm group) and so share one decision.
- :func:`kse_masks` finds, for every hidden convolution, which of its output channels make feature maps that every
  conv reading them scores as redundant by KSE (paper Fig. 2): those channels are retrained, the rest frozen.
- :func:`frozen_rows` states which rows (output channels) of which parameters and norm buffers TGD keeps fixed (and,
  with ``readers``, which kernels of the convs reading retrained maps): the one rule :class:`TGD` enforces.
- :class:`TGD` installs the masks on a network with hooks, like ``torch.nn.utils.prune``: the module tree and its
  ``state_dict`` keys stay those of the plain network, and :meth:`TGD.remove` takes every hook away again. A network
  carries at most one TGD at a time.
- :func:`drop_redundant` zeroes the kernels that read redundant feature maps (the threshold study, paper Fig. 4),
  through :func:`zero_readers`, which zeroes the kernels reading any given feature maps.
- :func:`threshold_for_budget` chooses the KSE threshold from a fidelity budget: the largest ``phi`` whose dropped
  kernels change the output by at most a given relative RMSE on calibration inputs.

:func:`conv_chain` is also the one network-support check: every function here goes through it (or takes its result
as ``chain=``), and it refuses, naming the module and the operation, whatever the masks cannot cover (a ``Linear``
layer, a LayerNorm, a parameter read directly in ``forward()``, a channel-mixing operation between two convs, a norm
or conv called twice, a ``torch.compile`` wrapper), so an unsupported network fails before any training step instead
of training parts of it unmasked.
"""

from __future__ import annotations

from .chain import (
    ChannelModule,
    ConvChain,
    HiddenConv,
    ReaderConv,
    _build_chain,
    _chain_modules,
    _chain_of,
    _check_tied,
    _unwrap,
    conv_chain,
)
from .drop import (
    _CHUNK,
    _calibration_samples,
    drop_redundant,
    threshold_for_budget,
    zero_readers,
)
from .engine import (
    TGD,
    _check_not_installed,
    _FrozenRows,
    _moved_message,
    _TGDLayer,
    _where,
)
from .graph import (
    SUPPORTED,
    ChannelTrace,
    Refusal,
    trace_channels,
    unite,
)
from .masks import (
    BN_STATS,
    MODES,
    READERS,
    _check_mode,
    _check_options,
    _check_readers,
    _check_settings,
    _checked_masks,
    _covered_parameters,
    _reader_scores,
    _retrained_units,
    _unit_masks,
    _unit_scores,
    frozen_rows,
    kse_masks,
    mask_summary,
)

__all__ = [
    "ConvChain", "HiddenConv", "ReaderConv", "ChannelModule", "conv_chain", "kse_masks", "mask_summary",
    "frozen_rows", "TGD", "zero_readers", "drop_redundant", "threshold_for_budget",
]  # fmt: skip

