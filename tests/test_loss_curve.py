"""LossCurveHandler on plain ignite engines: when it validates, what it records, its training clock (a fake
clock, so every duration is exact), the JSON file, probes, resuming from its state_dict, and argument errors."""

import json

import pytest
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Average

from monai_tgd.handlers import LossCurveHandler
from monai_tgd.handlers import loss_curve as loss_curve_module

DATA = [0, 1, 2]  # 3 iterations per epoch
VALIDATION_COST = 100.0  # fake seconds per validation iteration (2 iterations per validation)
SAVER_COST = 1000.0  # fake seconds of an EPOCH_COMPLETED handler that is not training


class FakeClock:
    """Stands in for ``time.perf_counter``: returns ``now``, which only moves when a test advances it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(loss_curve_module.time, "perf_counter", fake)
    return fake


class Validator(Engine):
    """A validator like MONAI's evaluators: ``run()`` without arguments runs its own 2-item data once."""

    def run(self):
        return super().run([0, 1], max_epochs=1)


def make_engines(clock):
    """A trainer whose iteration ``i`` costs ``i`` fake seconds, and a validator costing ``VALIDATION_COST`` per
    iteration whose ``val_loss`` (a real ignite ``Average``) is ``1 / (1 + trainer epoch)``, so each record can be
    matched with the epoch it was taken at."""

    def train_step(engine, batch):
        clock.now += engine.state.iteration

    trainer = Engine(train_step)

    def val_step(engine, batch):
        clock.now += VALIDATION_COST
        return 1.0 / (1.0 + trainer.state.epoch)

    validator = Validator(val_step)
    Average().attach(validator, "val_loss")
    return trainer, validator


def train_seconds_after(iteration):
    """Fake training time after ``iteration`` iterations: iteration i costs i seconds."""
    return float(sum(range(1, iteration + 1)))


@pytest.mark.parametrize(
    "interval, max_epochs, exec_at_start, epochs",
    [
        (2, 5, True, [0, 2, 4, 5]),  # every 2 epochs, plus the start and the last epoch
        (1, 3, False, [1, 2, 3]),
        (4, 4, False, [4]),  # the last epoch is a multiple: recorded once
        (10, 3, True, [0, 3]),  # interval beyond the run: only the start and the end
    ],
)
def test_records_at_interval_last_epoch_and_start(clock, interval, max_epochs, exec_at_start, epochs):
    trainer, validator = make_engines(clock)
    handler = LossCurveHandler(validator, interval=interval, exec_at_start=exec_at_start)
    handler.attach(trainer)
    trainer.run(DATA, max_epochs=max_epochs)
    assert [r["epoch"] for r in handler.records] == epochs
    assert [r["iteration"] for r in handler.records] == [3 * e for e in epochs]
    # the metrics are those of the validation run at that epoch
    for r in handler.records:
        assert r["metrics"] == {"val_loss": pytest.approx(1.0 / (1.0 + r["epoch"]))}
        assert r["probes"] == {}


def test_train_seconds_exclude_validation_and_epoch_completed_handlers(clock):
    trainer, validator = make_engines(clock)

    # handlers of the trainer that are not training: a "saver" registered before the curve (so it runs first at
    # EPOCH_COMPLETED), a slow one after it, and time spent at STARTED before the first epoch
    trainer.add_event_handler(Events.STARTED, lambda e: setattr(clock, "now", clock.now + 7.0))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: setattr(clock, "now", clock.now + SAVER_COST))
    handler = LossCurveHandler(validator, interval=2, exec_at_start=True)
    handler.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: setattr(clock, "now", clock.now + SAVER_COST))
    trainer.run(DATA, max_epochs=5)

    assert [r["epoch"] for r in handler.records] == [0, 2, 4, 5]
    assert [r["train_seconds"] for r in handler.records] == [train_seconds_after(3 * e) for e in (0, 2, 4, 5)]
    assert handler.train_seconds == train_seconds_after(15) == 120.0
    # the fake clock did see everything else: 4 validations of 2 iterations, 2 x 5 saver calls, and the start
    assert clock.now == 120.0 + 4 * 2 * VALIDATION_COST + 10 * SAVER_COST + 7.0


def test_probes_get_the_network_and_are_recorded(clock):
    trainer, validator = make_engines(clock)
    network = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        network.weight.fill_(0.0)
    seen = []

    def weight(net):
        seen.append(net)
        return net.weight.item()

    @trainer.on(Events.ITERATION_COMPLETED)
    def train_weight(engine):  # the "training": the weight counts the iterations
        with torch.no_grad():
            network.weight += 1.0

    handler = LossCurveHandler(validator, interval=2, probes={"weight": weight, "half": lambda n: 0.5}, network=network,
                               exec_at_start=True)  # fmt: skip
    handler.attach(trainer)
    trainer.run(DATA, max_epochs=3)
    assert [r["probes"] for r in handler.records] == [
        {"weight": 0.0, "half": 0.5},
        {"weight": 6.0, "half": 0.5},
        {"weight": 9.0, "half": 0.5},
    ]
    assert len(seen) == 3 and all(net is network for net in seen)


def test_output_file_matches_records_after_each_validation(clock, tmp_path):
    trainer, validator = make_engines(clock)
    out = tmp_path / "curve" / "loss_curve.json"  # the folder does not exist yet
    handler = LossCurveHandler(validator, interval=2, output_file=out, exec_at_start=True)
    handler.attach(trainer)
    snapshots = []

    def snapshot(engine):  # runs after the handler's own STARTED / EPOCH_COMPLETED work
        snapshots.append((engine.state.epoch, json.loads(out.read_text()) if out.exists() else None))

    trainer.add_event_handler(Events.STARTED, snapshot)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, snapshot)
    trainer.run(DATA, max_epochs=3)

    records = handler.records
    assert [e for e, _ in snapshots] == [0, 1, 2, 3]
    # after epoch 1 (no validation) the file still holds only the start point
    assert [s for _, s in snapshots] == [
        {"records": records[:1]},
        {"records": records[:1]},
        {"records": records[:2]},
        {"records": records[:3]},
    ]
    assert [p.name for p in out.parent.iterdir()] == ["loss_curve.json"]  # no temporary file left beside it


def test_resume_continues_the_same_curve(clock, tmp_path):
    out = tmp_path / "loss_curve.json"
    trainer, validator = make_engines(clock)
    first = LossCurveHandler(validator, interval=2, output_file=out, exec_at_start=True)
    first.attach(trainer)
    trainer.run(DATA, max_epochs=3)
    assert [r["epoch"] for r in first.records] == [0, 2, 3]
    assert first.train_seconds == train_seconds_after(9)

    # the checkpoint: the handler's and the trainer's state through torch.save / torch.load(weights_only=True)
    torch.save({"curve": first.state_dict(), "trainer": trainer.state_dict()}, tmp_path / "checkpoint.pt")
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    clock.now += 5000.0  # time between the runs is not training

    trainer2, validator2 = make_engines(clock)
    trainer2.load_state_dict(checkpoint["trainer"])
    second = LossCurveHandler(validator2, interval=2, output_file=out, exec_at_start=True)
    second.load_state_dict(checkpoint["curve"])
    second.attach(trainer2)
    trainer2.run(DATA, max_epochs=5)

    assert [r["epoch"] for r in second.records] == [0, 2, 3, 4, 5]  # no second epoch-0 record
    assert second.records[:3] == first.records
    assert [r["train_seconds"] for r in second.records] == [train_seconds_after(3 * e) for e in (0, 2, 3, 4, 5)]
    assert second.train_seconds == train_seconds_after(15)
    assert second.records[3]["metrics"] == {"val_loss": pytest.approx(1.0 / 5.0)}
    assert json.loads(out.read_text()) == {"records": second.records}


def test_fresh_state_dict_round_trip():
    handler = LossCurveHandler(Validator(lambda e, b: None))
    assert handler.state_dict() == {"records": [], "train_seconds": 0.0}
    other = LossCurveHandler(Validator(lambda e, b: None))
    other.load_state_dict({"records": [{"epoch": 0}], "train_seconds": 2})
    assert other.records == [{"epoch": 0}] and other.train_seconds == 2.0


@pytest.mark.parametrize("interval", [0, -1, True, 1.5, "2"])
def test_invalid_interval(interval):
    with pytest.raises(ValueError, match="interval must be a positive integer"):
        LossCurveHandler(Validator(lambda e, b: None), interval=interval)


def test_probes_need_a_network():
    with pytest.raises(ValueError, match="probes need the network"):
        LossCurveHandler(Validator(lambda e, b: None), probes={"p": lambda net: 0.0})
    LossCurveHandler(Validator(lambda e, b: None), probes={})  # no probe: no network needed
