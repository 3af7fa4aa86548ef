"""Ignite handler that ends training once a recorded validation curve has flattened (early stopping)."""

from __future__ import annotations

import math
from typing import Any

from ignite.engine import Engine, Events

__all__ = ["PlateauStopHandler", "plateau_reached"]


def plateau_reached(values: list[float], patience: int, min_delta: float) -> bool:
    """True when the last ``patience`` values hold no improvement on the best value before them.

    A value improves on the best so far when it is below ``best * (1 - min_delta)`` (``min_delta``: relative, e.g.
    0.005 = 0.5 %). With fewer than ``patience + 1`` values nothing has flattened yet.
    """
    if len(values) <= patience:
        return False
    best, since = math.inf, 0
    for v in values:
        if v < best * (1.0 - min_delta) or best == math.inf:
            best, since = v, 0
        else:
            since += 1
    return since >= patience


class PlateauStopHandler:
    """Stop the trainer when the validation loss a :class:`~monai_tgd.handlers.LossCurveHandler` records has not
    improved for ``patience`` validations (the same rule for every run it is attached to).

    The decision is computed from the curve's records alone (:func:`plateau_reached`), which are part of the curve
    handler's checkpointed state, so a resumed run stops at exactly the epoch the uninterrupted run would. MONAI's
    ``EarlyStopHandler`` keeps its counter outside any checkpoint, so a resumed run would start counting again.

    Attach it after the curve handler (it reads the record the curve handler appends at the same ``EPOCH_COMPLETED``).
    The network is left as it is at the stopping epoch; the curve shows the loss there and at its best.

    Args:
        curve: the run's :class:`~monai_tgd.handlers.LossCurveHandler`.
        patience: validations without improvement before stopping, an integer >= 1.
        min_delta: relative improvement that counts, in [0, 1).
        metric: the recorded metric (lower is better), default ``"val_loss"``.
    """

    def __init__(self, curve: Any, patience: int, min_delta: float = 0.0, metric: str = "val_loss") -> None:
        if not hasattr(curve, "records"):
            raise TypeError(f"PlateauStopHandler: curve must be a LossCurveHandler, got {type(curve).__name__}.")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"PlateauStopHandler: patience must be an integer >= 1 (validations), got {patience!r}.")
        if not (isinstance(min_delta, (int, float)) and 0.0 <= min_delta < 1.0):
            raise ValueError(f"PlateauStopHandler: min_delta must be a relative improvement in [0, 1), got {min_delta!r}.")
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"PlateauStopHandler: metric must be a metric name, got {metric!r}.")
        self.curve, self.patience, self.min_delta, self.metric = curve, patience, float(min_delta), metric
        self.stopped_epoch: int | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def values(self) -> list[float]:
        """The recorded values of ``metric``, in order."""
        out = []
        for record in self.curve.records:
            if self.metric not in record["metrics"]:
                raise KeyError(
                    f"PlateauStopHandler: the curve records no '{self.metric}'; it records {sorted(record['metrics'])}."
                )
            out.append(float(record["metrics"][self.metric]))
        return out

    def __call__(self, engine: Engine) -> None:
        records = self.curve.records
        if not records or records[-1]["epoch"] != engine.state.epoch:
            return  # no validation at this epoch
        if plateau_reached(self.values(), self.patience, self.min_delta):
            self.stopped_epoch = int(engine.state.epoch)
            engine.logger.info(
                f"PlateauStopHandler: {self.metric} has not improved by {100 * self.min_delta:g} % for "
                f"{self.patience} validations; stopping at epoch {self.stopped_epoch}."
            )
            engine.terminate()
