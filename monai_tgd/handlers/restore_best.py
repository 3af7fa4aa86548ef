"""Ignite handler that ends a run with the network's weights at its best recorded validation (early stopping's other
half)."""

from __future__ import annotations

import math
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["RestoreBestHandler"]


class RestoreBestHandler:
    """Keep a copy of the network's weights at the lowest value of a validation curve and load it back when the run
    ends, so the final model is the validated best rather than whatever the last epoch left.

    :class:`~monai_tgd.handlers.PlateauStopHandler` stops a run ``patience`` validations after its best one; with a
    noisy validation loss the weights at the stop can be markedly worse than at the best (the quick study measured a
    TGD fine-tuning stopped at a validation loss of 0.00509 whose best had been 0.00425). Which weights are kept is
    decided on the curve alone, i.e. on the validation study, never on test data.

    The copy is taken whenever the curve handler appends a record (at ``STARTED`` with its ``exec_at_start``, at
    ``EPOCH_COMPLETED`` on its interval) whose ``metric`` is strictly below every earlier one, and lives on the CPU.
    It is part of this handler's :meth:`state_dict`, so put the handler in the run's checkpoint objects: a resumed run
    then ends with the same weights as the uninterrupted one. At ``COMPLETED`` the copy is loaded into the network
    (in place, ``load_state_dict``), before any saver attached after this handler writes the final model. Weights a
    :class:`~monai_tgd.handlers.TGDHandler` keeps frozen are the same in every copy, so the TGD guarantee holds for
    the restored weights too.

    Attach it after the curve handler (it reads the record the curve handler appends at the same event) and before
    the final-model saver.

    Args:
        curve: the run's :class:`~monai_tgd.handlers.LossCurveHandler`.
        network: the trained ``torch.nn.Module`` (a ``DistributedDataParallel`` wrapper is unwrapped).
        metric: the recorded metric, lower is better; default ``"val_loss"``.
    """

    def __init__(self, curve: Any, network: torch.nn.Module, metric: str = "val_loss") -> None:
        if not hasattr(curve, "records"):
            raise TypeError(f"RestoreBestHandler: curve must be a LossCurveHandler, got {type(curve).__name__}.")
        if not isinstance(network, torch.nn.Module):
            raise TypeError(f"RestoreBestHandler: network must be a torch.nn.Module, got {type(network).__name__}.")
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"RestoreBestHandler: metric must be a metric name, got {metric!r}.")
        self.curve, self.metric = curve, metric
        self.network = getattr(network, "module", network)
        self.best_epoch: int | None = None
        self.best_value = math.inf
        self.best_state: dict[str, torch.Tensor] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._keep_if_best)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._keep_if_best)
        engine.add_event_handler(Events.COMPLETED, self._restore)

    def _keep_if_best(self, engine: Engine) -> None:
        records = self.curve.records
        if not records or records[-1]["epoch"] != engine.state.epoch:
            return  # no validation at this event
        metrics = records[-1]["metrics"]
        if self.metric not in metrics:
            raise KeyError(f"RestoreBestHandler: the curve records no '{self.metric}'; it records {sorted(metrics)}.")
        value = float(metrics[self.metric])
        if value < self.best_value:  # NaN never is
            self.best_value, self.best_epoch = value, int(engine.state.epoch)
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.network.state_dict().items()}

    def _restore(self, engine: Engine) -> None:
        if self.best_state is None or self.best_epoch == engine.state.epoch:
            return  # nothing validated, or the last epoch is the best: the network already holds it
        self.network.load_state_dict(self.best_state)
        engine.logger.info(
            f"RestoreBestHandler: the network ends with its weights of epoch {self.best_epoch} ({self.metric} "
            f"{self.best_value:.6g}), the lowest of the curve, instead of epoch {engine.state.epoch}'s."
        )

    def state_dict(self) -> dict:
        return {"best_epoch": self.best_epoch, "best_value": self.best_value, "best_state": self.best_state}

    def load_state_dict(self, state: dict) -> None:
        self.best_epoch = None if state["best_epoch"] is None else int(state["best_epoch"])
        self.best_value = float(state["best_value"])
        self.best_state = None if state["best_state"] is None else dict(state["best_state"])
