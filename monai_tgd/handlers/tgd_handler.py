"""Ignite handler that fine-tunes a MONAI engine's network with Targeted Gradient Descent."""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from torch import nn

from ..io import atomic_path
from ..tgd import TGD, ConvChain, _check_options, conv_chain, kse_masks, mask_summary, threshold_for_budget

__all__ = ["TGDHandler"]

MASKS_FILE = "tgd_masks.pt"
SUMMARY_FILE = "tgd_masks.json"
#: ``threshold=AUTO``: choose the KSE threshold from a fidelity budget (:func:`monai_tgd.tgd.threshold_for_budget`)
AUTO = "auto"


class TGDHandler:
    """Install :class:`monai_tgd.tgd.TGD` on a trainer's network for the duration of a run.

    At the first iteration (so after ``CheckpointLoader`` and every other ``STARTED`` handler), the handler computes
    the KSE masks from the network's weights as loaded, installs TGD, logs the retrained fraction per layer and
    overall, and (on rank 0) writes ``tgd_masks.pt`` (``{conv name: bool [out_channels]}``, True = retrain; load it
    with ``torch.load(..., weights_only=True)``) and ``tgd_masks.json`` (settings and fractions) to ``output_dir``.
    TGD is removed when the run completes or fails.

    Resuming: the masks are part of :meth:`state_dict` (``{"masks": dict or None, "chosen": dict or None}``, None
    before the first iteration), so put the handler in ``CheckpointSaver``'s and ``CheckpointLoader``'s ``save_dict``/``load_dict``
    (e.g. ``{"network": ..., "optimizer": ..., "trainer": ..., "tgd": handler}``); a resumed run then reuses them. A
    run resumed without them falls back to ``output_dir/tgd_masks.pt``, and fails rather than recompute masks from
    half-fine-tuned weights.

    The network's conv graph is traced once per install (:func:`monai_tgd.tgd.conv_chain`) and shared by the masks,
    TGD and the summary.

    Automatic threshold: with ``threshold="auto"``, the threshold is the largest ``phi`` whose flagged kernels can be
    dropped while the network's output on ``calibration`` changes by at most ``max_change`` relative RMSE
    (:func:`monai_tgd.tgd.threshold_for_budget`, run once at the first iteration on the weights as loaded). The
    chosen ``phi`` and its change are logged, kept in :attr:`chosen` and the state dict, and written to
    ``tgd_masks.json`` (``chosen_threshold``, ``threshold_change``, ``max_change``). Calibrate on fine-tuning
    studies, never on test studies.

    Args:
        threshold: KSE threshold ``phi`` in [0, 1] (0.3 in the paper), or ``"auto"``.
        masks: precomputed masks, a dict ``{conv name: 1-D bool tensor}`` or the path of an existing
            ``tgd_masks.pt``; None computes them at the start.
        mode, freeze_output, bn_stats: see :class:`monai_tgd.tgd.TGD` (one of ``MODES``; a bool; one of ``BN_STATS``;
            checked by the same code as TGD's, with the prefix ``TGDHandler:``).
        alpha, k: KSE parameters, see :func:`monai_tgd.kse.kse_scores` (finite ``alpha >= 0``; an int ``k >= 1``).
        output_dir: where the mask files go (a path; None: not written).
        network: the network to fine-tune (an ``nn.Module``); default ``engine.network`` (MONAI engines).
        name: logger name (a str; None: ``"TGDHandler"``).
        max_change: with ``threshold="auto"``: the budget, a relative RMSE in (0, 1) (0.01 = 1 %).
        calibration: with ``threshold="auto"``: network inputs ``[B, C_in, *spatial]``, an iterable of such batches,
            or a callable returning either (called once, at the first iteration: loading waits until it is needed).
        readers: see :class:`monai_tgd.tgd.TGD` (one of ``READERS``; ``"all"`` needs ``mode="parameter"``); written to
            ``tgd_masks.json`` and counted in its ``retrained_fraction["overall"]``.

    Raises:
        TypeError / ValueError / FileNotFoundError: at construction, for any argument out of the forms above.
        ValueError: at the first iteration, before any step, for a network TGD does not support (see
            :func:`monai_tgd.tgd.conv_chain`; the message names the module) or that already carries a TGD.
    """

    def __init__(
        self,
        threshold: float | str = 0.3,
        masks: dict[str, torch.Tensor] | str | os.PathLike | None = None,
        mode: str = "activation",
        freeze_output: bool = True,
        bn_stats: str = "freeze",
        alpha: float = 1.0,
        k: int = 5,
        output_dir: str | os.PathLike | None = None,
        network: nn.Module | None = None,
        name: str | None = None,
        max_change: float = 0.01,
        calibration: torch.Tensor | Iterable[torch.Tensor] | Callable[[], Any] | None = None,
        readers: str = "none",
    ) -> None:
        if threshold == AUTO:
            if not _is_real(max_change) or not 0.0 < max_change < 1.0:
                raise ValueError(f"TGDHandler: max_change must be a relative RMSE in (0, 1), got {max_change!r}.")
            if calibration is None or isinstance(calibration, (str, bytes, os.PathLike)):
                raise ValueError(
                    "TGDHandler: threshold='auto' needs calibration= (a batch [B, C_in, *spatial] of fine-tuning "
                    f"inputs, an iterable of batches, or a callable returning them), got {calibration!r}."
                )
        elif not _is_real(threshold) or not 0.0 <= threshold <= 1.0:  # also rejects NaN
            raise ValueError(f"TGDHandler: threshold must be in [0, 1] or {AUTO!r}, got {threshold!r}.")
        _check_options(mode, freeze_output, bn_stats, readers, where="TGDHandler")  # TGD's own rules, one source
        if not _is_real(alpha) or not math.isfinite(alpha) or alpha < 0:
            raise ValueError(f"TGDHandler: alpha must be a finite number >= 0 (1 in the paper), got {alpha!r}.")
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"TGDHandler: k must be a positive int (5 in the paper), got {k!r}.")
        if output_dir is not None and not isinstance(output_dir, (str, os.PathLike)):
            raise TypeError(f"TGDHandler: output_dir must be a path or None, got {type(output_dir).__name__}.")
        if network is not None and not isinstance(network, nn.Module):
            raise TypeError(f"TGDHandler: network must be an nn.Module or None, got {type(network).__name__}.")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"TGDHandler: name must be a str or None, got {type(name).__name__}.")
        # JSON-able in tgd_masks.json
        self.threshold = threshold if threshold == AUTO else _plain(threshold)
        self.alpha, self.k = _plain(alpha), int(k)
        self.max_change, self.calibration = _plain(max_change), calibration
        #: with threshold="auto": {"threshold": chosen phi, "change": its relative RMSE}, once chosen
        self.chosen: dict[str, float] | None = None
        self.mode, self.freeze_output, self.bn_stats, self.readers = mode, freeze_output, bn_stats, readers
        if isinstance(masks, (str, os.PathLike)):
            self.masks = _load_masks(masks)
        else:
            self.masks = _masks_dict(masks, "masks") if masks is not None else None
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.network = network
        self.logger = logging.getLogger(name or "TGDHandler")
        self.tgd: TGD | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self.install)
        engine.add_event_handler(Events.COMPLETED, self.remove)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.exception_raised)

    def install(self, engine: Engine) -> None:
        """Compute or reuse the masks and install TGD (once per run)."""
        if self.tgd is not None:
            return
        network = self.network if self.network is not None else engine.network
        chain = conv_chain(network)  # the one trace of this install
        if self.masks is None:
            self.masks = self._masks_for(engine, network, chain)
        self.tgd = TGD(
            network, self.masks, self.mode, self.freeze_output, self.bn_stats, chain=chain, readers=self.readers
        )
        summary = mask_summary(network, self.masks, chain=chain, readers=self.readers)
        for layer, fraction in summary.items():
            self.logger.info(f"TGD retrains {100 * fraction:.1f}% of {layer}")
        if not any(m.any() for m in self.masks.values()):
            self.logger.warning("TGD retrains no hidden channel: KSE flags none at this threshold, so only what is not "
                                "frozen (e.g. the output conv with freeze_output=False) can change.")
        if self.output_dir is not None and idist.get_rank() == 0:
            self._write(summary)

    def _masks_for(self, engine: Engine, network: nn.Module, chain: ConvChain) -> dict[str, torch.Tensor]:
        done = engine.state.iteration - 1  # ITERATION_STARTED fires after the counter moved on
        if done == 0:
            return kse_masks(network, self._threshold_for(network), alpha=self.alpha, k=self.k, chain=chain)
        saved = self.output_dir / MASKS_FILE if self.output_dir is not None else None
        if saved is not None and saved.is_file():
            self.logger.info(f"resumed run: reusing TGD masks from {saved}")
            return _load_masks(saved)
        raise RuntimeError(
            f"TGDHandler: the run resumes at iteration {done} but no TGD masks were restored; "
            "masks computed now would come from half-fine-tuned weights. Add the handler to the checkpoint's "
            f"save_dict/load_dict, or pass masks= (e.g. the run's {MASKS_FILE})."
        )

    def _threshold_for(self, network: nn.Module) -> float:
        """The fixed threshold, or with ``"auto"`` the one :func:`threshold_for_budget` chooses on the calibration
        inputs (logged and kept in :attr:`chosen`, the state dict and ``tgd_masks.json``)."""
        if self.threshold != AUTO:
            return self.threshold
        inputs = self.calibration() if callable(self.calibration) else self.calibration
        phi, change = threshold_for_budget(network, inputs, self.max_change, alpha=self.alpha, k=self.k)
        self.chosen = {"threshold": phi, "change": change}
        self.logger.info(
            f"TGD threshold chosen for a budget of {100 * self.max_change:g}% output change: phi = {phi:.4f} "
            f"(dropping the flagged kernels changes the calibration output by {100 * change:.3f}%)"
        )
        return phi

    def _write(self, summary: dict[str, float]) -> None:
        with atomic_path(self.output_dir / MASKS_FILE) as tmp:
            torch.save(self.masks, tmp)
        info = {
            "threshold": self.threshold, **self._auto_info(), "alpha": self.alpha, "k": self.k, "mode": self.mode,
            "freeze_output": self.freeze_output, "bn_stats": self.bn_stats, "readers": self.readers,
            "retrained_fraction": summary,
            "retrained_channels": {n: m.nonzero().flatten().tolist() for n, m in self.masks.items()},
        }  # fmt: skip
        with atomic_path(self.output_dir / SUMMARY_FILE) as tmp:
            tmp.write_text(json.dumps(info, indent=2), encoding="utf-8")

    def _auto_info(self) -> dict:
        if self.threshold != AUTO:
            return {}
        chosen = self.chosen or {"threshold": None, "change": None}  # None: resumed from masks saved without it
        return {"max_change": self.max_change, "chosen_threshold": chosen["threshold"],
                "threshold_change": chosen["change"]}

    def remove(self, engine: Engine | None = None) -> None:
        """Take TGD off the network (the masks are kept for a later run of the same engine)."""
        if self.tgd is not None:
            self.tgd.remove()
            self.tgd = None

    def exception_raised(self, engine: Engine, e: Exception) -> None:
        self.remove()
        raise e  # ignite swallows the exception once a handler is registered for EXCEPTION_RAISED

    def state_dict(self) -> dict:
        """``{"masks": {conv name: bool [out_channels]} or None, "chosen": {"threshold", "change"} or None}`` (None:
        not computed yet, e.g. a checkpoint saved before the first iteration; ``chosen`` only with ``"auto"``)."""
        return {"masks": self.masks, "chosen": self.chosen}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore the masks of :meth:`state_dict`; ``{"masks": None}`` keeps this handler's own (given or none)."""
        if not isinstance(state, Mapping) or "masks" not in state:
            found = list(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(
                "TGDHandler.load_state_dict: expected {'masks': dict of conv name -> bool tensor, or None} as written "
                f"by TGDHandler.state_dict(), got {found}. Was the checkpoint's entry saved from another object?"
            )
        if state["masks"] is not None:
            self.masks = _masks_dict(state["masks"], "load_state_dict: 'masks'")
        if state.get("chosen") is not None:
            self.chosen = dict(state["chosen"])


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _plain(value: numbers.Real) -> int | float:
    """A Python number (numpy scalars become float; Python ints and floats stay as given)."""
    return value if isinstance(value, (int, float)) else float(value)


def _masks_dict(masks, what: str) -> dict[str, torch.Tensor]:
    """``masks`` if it is a dict of conv name -> 1-D bool tensor; which convs it must cover is checked by TGD."""
    if not isinstance(masks, Mapping) or not all(
        isinstance(n, str) and isinstance(m, torch.Tensor) and m.dtype == torch.bool and m.dim() == 1
        for n, m in masks.items()
    ):
        got = {n: (m.dtype, tuple(m.shape)) if isinstance(m, torch.Tensor) else type(m).__name__
               for n, m in masks.items()} if isinstance(masks, Mapping) else type(masks).__name__  # fmt: skip
        raise ValueError(f"TGDHandler: {what} must hold a dict of conv name -> bool tensor [out_channels], got {got}.")
    return dict(masks)


def _load_masks(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TGDHandler: masks file {path} not found (expected a tgd_masks.pt written by a run).")
    return _masks_dict(torch.load(path, map_location="cpu", weights_only=True), str(path))
