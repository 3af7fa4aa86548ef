"""PlateauStopHandler: early stopping on the recorded validation curve, exact under resume."""

import itertools

import pytest
from ignite.engine import Engine, Events

from monai_tgd.handlers import LossCurveHandler, PlateauStopHandler
from monai_tgd.handlers.plateau_stop import plateau_reached


def _reference(values, patience, min_delta):
    """Written out independently: index of the last improvement, counted from the start."""
    if len(values) <= patience:
        return False
    last_improvement, best = 0, values[0]
    for i, v in enumerate(values[1:], start=1):
        if v < best - min_delta * best:
            best, last_improvement = v, i
    return len(values) - 1 - last_improvement >= patience


@pytest.mark.parametrize("patience,min_delta", [(1, 0.0), (2, 0.0), (2, 0.05), (3, 0.01)])
def test_plateau_rule_matches_a_written_out_rule(patience, min_delta):
    levels = [1.0, 0.99, 0.96, 0.9, 0.5]
    for n in range(1, 6):
        for values in itertools.product(levels, repeat=n):
            assert plateau_reached(list(values), patience, min_delta) == _reference(list(values), patience, min_delta), values


def test_plateau_examples():
    assert not plateau_reached([1.0, 0.9, 0.8], 2, 0.0)
    assert plateau_reached([1.0, 0.9, 0.9, 0.9], 2, 0.0)  # equal is no improvement
    assert not plateau_reached([1.0, 0.9, 0.9, 0.85], 2, 0.0)
    assert plateau_reached([1.0, 0.9, 0.899, 0.898], 2, 0.01)  # 0.1 % steps are below a 1 % min_delta
    assert not plateau_reached([1.0], 1, 0.0)


class _Curve:
    def __init__(self, values):
        self.values, self.records = list(values), []

    def attach(self, engine):
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.record)

    def record(self, engine):
        self.records.append({"epoch": engine.state.epoch, "metrics": {"val_loss": self.values[engine.state.epoch - 1]}})


def _run(values, patience, min_delta=0.0, max_epochs=20, records=None):
    engine = Engine(lambda e, b: None)
    curve = _Curve(values)
    if records is not None:
        curve.records = list(records)
    curve.attach(engine)
    stopper = PlateauStopHandler(curve, patience, min_delta)
    stopper.attach(engine)
    engine.run([0], max_epochs=max_epochs)
    return engine.state.epoch, stopper


def test_handler_stops_the_trainer_when_the_curve_flattens():
    values = [1.0, 0.8, 0.7, 0.7, 0.71, 0.7, 0.6] + [0.6] * 20
    epoch, stopper = _run(values, patience=3)
    assert epoch == 6 and stopper.stopped_epoch == 6  # best 0.7 at epoch 3, then 3 validations without improvement


def test_handler_runs_to_the_cap_while_the_curve_improves():
    epoch, stopper = _run([1.0 - 0.01 * i for i in range(30)], patience=2, max_epochs=12)
    assert epoch == 12 and stopper.stopped_epoch is None


def test_resumed_curve_stops_at_the_same_epoch():
    """The decision comes from the records alone: a run resumed with the records of epochs 1-4 stops where the
    uninterrupted run does."""
    values = [1.0, 0.8, 0.7, 0.7, 0.71, 0.7, 0.6] + [0.6] * 20
    whole, _ = _run(values, patience=3)
    engine = Engine(lambda e, b: None)
    curve = _Curve(values)
    curve.records = [{"epoch": e, "metrics": {"val_loss": values[e - 1]}} for e in range(1, 5)]
    curve.attach(engine)
    PlateauStopHandler(curve, 3).attach(engine)
    engine.state.epoch, engine.state.iteration, engine.state.max_epochs = 4, 4, 20
    engine.state.epoch_length = 1
    engine.run([0], max_epochs=20)  # ignite resumes from state.epoch 4
    assert engine.state.epoch == whole == 6


def test_no_validation_at_this_epoch_is_no_decision():
    engine = Engine(lambda e, b: None)
    curve = _Curve([])
    curve.records = [{"epoch": 1, "metrics": {"val_loss": 1.0}}, {"epoch": 2, "metrics": {"val_loss": 1.0}}]
    PlateauStopHandler(curve, 1).attach(engine)
    engine.run([0], max_epochs=5)  # the records are of epochs 1 and 2 only, stale from epoch 3 on
    assert engine.state.epoch == 2


@pytest.mark.parametrize("kwargs,match", [
    ({"patience": 0}, "patience"), ({"patience": 1.5}, "patience"), ({"patience": True}, "patience"),
    ({"patience": 2, "min_delta": 1.0}, "min_delta"), ({"patience": 2, "min_delta": -0.1}, "min_delta"),
    ({"patience": 2, "metric": ""}, "metric"),
])  # fmt: skip
def test_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PlateauStopHandler(_Curve([]), **kwargs)
    with pytest.raises(TypeError, match="LossCurveHandler"):
        PlateauStopHandler(object(), 2)


def test_missing_metric_is_named():
    curve = LossCurveHandler(Engine(lambda e, b: None))
    curve.records = [{"epoch": 1, "metrics": {"other": 1.0}}]
    with pytest.raises(KeyError, match="val_loss"):
        PlateauStopHandler(curve, 1).values()
