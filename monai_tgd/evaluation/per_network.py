"""The loop shared by the evaluation workflows: on one study, the un-denoised input and then each network's output,
each timed, measured, turned into one row and logged."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from .loading import denoise

__all__ = ["check_input_name", "rows_per_network"]


def check_input_name(input_name: str | None, models: Mapping[str, nn.Module], where: str) -> None:
    """The input row's network name must not be one of the networks' (None: no input row)."""
    if input_name is not None and input_name in models:
        raise ValueError(f"{where}: '{input_name}' is reserved for the un-denoised input; rename that network.")


def rows_per_network(
    network_input: np.ndarray,
    models: Mapping[str, nn.Module],
    sources: Mapping[str, str],
    inferer: Callable,
    device: torch.device | str | None,
    measure: Callable[[np.ndarray, str], tuple[dict, dict]],
    fields: Mapping[str, Any],
    input_name: str | None,
    describe: Callable[[Mapping], str],
    say: Callable[[str], Any],
    region: tuple = (Ellipsis,),
) -> list[dict]:
    """One row per output on one study: ``network_input`` itself first (network ``input_name``; None: no such row),
    then :func:`monai_tgd.evaluation.denoise` of it by each network of ``models``, in order.

    Args:
        network_input: what the networks denoise, ``[*spatial]`` or a stack ``[R, *spatial]`` (image units).
        models: ``{name: network}`` ready for inference; ``sources``: ``{name: checkpoint column}``.
        inferer, device: as for :func:`monai_tgd.evaluation.denoise`.
        measure: ``(output[region], network name) -> (metrics, details)``.
        fields: the study's fields, first in every row.
        describe: the log line of a row, passed to ``say``.
        region: the evaluated part of every output (index into it; default all).

    Returns:
        Rows ``{**fields, "network", "baseline" (True for the input), "checkpoint" ("" for the input), **metrics,
        "seconds", **details}``; ``seconds`` is the wall-clock time of the output and its metrics, in seconds
        rounded to the millisecond.
    """
    outputs: list[tuple[str, str, nn.Module | None]] = [(input_name, "", None)] if input_name is not None else []
    outputs += [(name, sources[name], net) for name, net in models.items()]
    rows = []
    for name, source, net in outputs:
        start = time.perf_counter()
        output = network_input if net is None else denoise(net, network_input, inferer, device).numpy()
        metrics, details = measure(output[region], name)
        seconds = round(time.perf_counter() - start, 3)
        row = {**fields, "network": name, "baseline": net is None, "checkpoint": source, **metrics,
               "seconds": seconds, **details}  # fmt: skip
        rows.append(row)
        say(describe(row))
    return rows
