"""Ignite handler that records a validation curve against training wall time (for "time to the same loss")."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from monai_tgd.io import atomic_path
from monai_tgd.tgd import kse_masks

from .tgd_handler import AUTO

__all__ = ["LossCurveHandler", "KSEFlaggedPercent"]


class LossCurveHandler:
    """Run ``validator`` every ``interval`` epochs and record its metrics against the training time spent so far.

    MONAI's ``ValidationHandler`` runs an evaluator but keeps no history, and the engine's own timers include the
    validation itself. This handler keeps a clock that runs only between ``EPOCH_STARTED`` and the end of the epoch's
    iterations, so ``train_seconds`` is the wall time of training alone (data loading, forward, backward, optimizer
    step, and any handler work inside the epoch such as the TGD install), and appends one record per validation::

        {"epoch": 10, "iteration": 30, "train_seconds": 12.7, "metrics": {"val_loss": 0.0041}, "probes": {...}}

    The records are written to ``output_file`` (JSON, atomically, rank 0) after every validation, and are part of
    the handler's ``state_dict`` so a resumed run continues the same curve (add the handler to the checkpoint).

    Args:
        validator: an ignite ``Engine`` (e.g. MONAI's ``SupervisedEvaluator``) whose ``state.metrics`` are recorded.
        interval: validate every ``interval`` epochs (and always after the last epoch).
        output_file: JSON file of the curve; None keeps it in memory only (``self.records``).
        probes: ``{name: callable(network) -> float}`` evaluated at each validation on ``network``, e.g. the
            fraction of kernels a KSE threshold flags as training goes on.
        network: the network given to the probes.
        exec_at_start: also validate before the first epoch (``epoch`` 0, ``train_seconds`` 0).
    """

    def __init__(
        self,
        validator: Engine,
        interval: int = 1,
        output_file: str | os.PathLike | None = None,
        probes: Mapping[str, Callable[[Any], float]] | None = None,
        network: Any = None,
        exec_at_start: bool = False,
    ) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"LossCurveHandler: interval must be a positive integer, got {interval!r}.")
        if probes and network is None:
            raise ValueError("LossCurveHandler: probes need the network to probe (network=...).")
        self.validator, self.interval, self.exec_at_start = validator, interval, exec_at_start
        self.output_file = None if output_file is None else Path(output_file)
        self.probes, self.network = dict(probes or {}), network
        self.records: list[dict] = []
        self.train_seconds = 0.0
        self._started: float | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._start_clock)
        # the clock stops at the last iteration's end, before any EPOCH_COMPLETED handler (savers, validation) runs
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._stop_clock_at_epoch_end)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._maybe_validate)
        if self.exec_at_start:
            engine.add_event_handler(Events.STARTED, self._validate_at_start)

    def _start_clock(self, engine: Engine) -> None:
        self._started = time.perf_counter()

    def _stop_clock_at_epoch_end(self, engine: Engine) -> None:
        if self._started is not None and engine.state.iteration % engine.state.epoch_length == 0:
            self.train_seconds += time.perf_counter() - self._started
            self._started = None

    def _validate_at_start(self, engine: Engine) -> None:
        if not self.records:  # a resumed run already has its start point
            self._validate(engine)

    def _maybe_validate(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if epoch % self.interval == 0 or epoch == engine.state.max_epochs:
            self._validate(engine)

    def _validate(self, engine: Engine) -> None:
        self.validator.run()
        metrics = {k: float(v) for k, v in self.validator.state.metrics.items() if isinstance(v, (int, float))}
        probes = {name: float(probe(self.network)) for name, probe in self.probes.items()}
        self.records.append(
            {
                "epoch": int(engine.state.epoch),
                "iteration": int(engine.state.iteration),
                "train_seconds": round(self.train_seconds, 4),
                "metrics": metrics,
                "probes": probes,
            }
        )
        if self.output_file is not None and idist.get_rank() == 0:
            with atomic_path(self.output_file) as tmp:
                tmp.write_text(json.dumps({"records": self.records}, indent=1) + "\n", encoding="utf-8")

    def state_dict(self) -> dict:
        return {"records": self.records, "train_seconds": self.train_seconds}

    def load_state_dict(self, state: dict) -> None:
        self.records = list(state["records"])
        self.train_seconds = float(state["train_seconds"])


class KSEFlaggedPercent:
    """Probe for :class:`LossCurveHandler`: percent of all hidden-conv output channels that KSE flags on the current
    weights, i.e. that TGD would retrain (:func:`monai_tgd.tgd.kse_masks` at ``threshold``, ``alpha``, ``k``; each
    channel counts once, whatever its size).

    Args:
        threshold: KSE threshold ``phi`` in [0, 1] (the bundle passes ``tgd_threshold``), or ``"auto"``: the
            threshold ``tgd`` chose (NaN until it has chosen, e.g. at the start of a run).
        alpha, k: KSE parameters, see :func:`monai_tgd.kse.kse_scores` (the bundle passes ``tgd_alpha``, ``tgd_k``).
        tgd: the run's :class:`~monai_tgd.handlers.TGDHandler`; needed with ``threshold="auto"``.
    """

    def __init__(self, threshold: float | str = 0.3, alpha: float = 1.0, k: int = 5, tgd: Any = None) -> None:
        if threshold == AUTO:
            if not hasattr(tgd, "chosen"):
                raise ValueError("KSEFlaggedPercent: threshold='auto' needs tgd= (the run's TGDHandler).")
        elif not 0.0 <= threshold <= 1.0:  # also rejects NaN
            raise ValueError(f"KSEFlaggedPercent: threshold must be in [0, 1] or 'auto', got {threshold}.")
        self.threshold, self.alpha, self.k, self.tgd = threshold, alpha, k, tgd

    def __call__(self, network: Any) -> float:
        threshold = self.threshold
        if threshold == AUTO:
            if self.tgd.chosen is None:
                return math.nan
            threshold = self.tgd.chosen["threshold"]
        masks = kse_masks(network, threshold, alpha=self.alpha, k=self.k)
        return 100.0 * float(torch.cat([m.flatten() for m in masks.values()]).double().mean())
