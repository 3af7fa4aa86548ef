"""Ignite handler that makes each epoch's random data a function of (seed, epoch), so resumed runs are exact."""

from __future__ import annotations

import ignite.distributed as idist
from ignite.engine import Engine, Events
from monai.transforms import Randomizable
from monai.utils import set_determinism

__all__ = ["EpochSeedHandler"]


class EpochSeedHandler:
    """Reseed the global RNGs and a transform chain at every ``EPOCH_STARTED``.

    Checkpoints restore weights, optimizer and engine state but not random number generators, so without this a run
    resumed at epoch ``k`` would draw other shuffles, noise levels and patch positions than the uninterrupted run.
    Reseeding from ``(seed, epoch)`` makes epoch ``k`` identical either way (the shuffle of a ``RandomSampler`` is
    drawn from torch's global RNG at the epoch's first batch; a ``DistributedSampler`` uses its own ``set_epoch``).
    Transforms of each rank get a different stream, so ranks do not draw the same patches.

    Args:
        seed: base seed of the run.
        transform: the dataset's random transform chain (e.g. a ``Compose``); None reseeds only the global RNGs.
            Applies to ``num_workers=0`` loaders; worker processes are seeded by MONAI's ``DataLoader``.
    """

    def __init__(self, seed: int, transform: Randomizable | None = None) -> None:
        self.seed, self.transform = int(seed), transform

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        epoch_seed = self.seed + 1_000_003 * engine.state.epoch
        set_determinism(seed=epoch_seed % 2**32)
        if self.transform is not None:
            self.transform.set_random_state(seed=(epoch_seed + 7919 * idist.get_rank()) % 2**32)
