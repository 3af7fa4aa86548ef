"""Noise-adaptive training: pick one of several noise-level images of a study at random, per sample.

In the paper the networks are trained on inputs reconstructed from list-mode data rebinned to several durations
(e.g. 30, 45, 60, 90, 120 and 180 s), all paired with the same full-duration (600 s) target. A record of such a
cohort holds one entry per level, e.g. ``noisy_30s`` ... ``noisy_180s``, plus ``target``; :class:`RandNoiseLeveld`
draws one of them per call and copies it to a single input key (e.g. ``image``) for the rest of the pipeline.

There is no array version: the choice is between entries of a record, which only a dictionary transform sees.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable

__all__ = ["RandNoiseLeveld", "NOISE_LEVEL_KEY"]

NOISE_LEVEL_KEY = "noise_level"
"""Default record key and MetaTensor ``meta`` key holding the picked level."""


class RandNoiseLeveld(Randomizable, MapTransform):
    """Copy one randomly chosen noise-level entry of a record to ``output_key``.

    Args:
        keys: candidate source keys, one per noise level, e.g. ``["noisy_30s", "noisy_60s", "noisy_120s"]``.
        output_key: key receiving the picked entry, e.g. ``"image"``.
        levels: label of each key's noise level, e.g. its duration in seconds ``[30, 60, 120]``; defaults to the
            key names. Must be distinct.
        weights: relative probability of each key (non-negative, finite, not all zero); default uniform.
        level_key: record key receiving the picked level (``None``: don't add one). Set on every call, also when
            the entries are still file paths, so it survives ``LoadImaged``.
        drop_sources: remove all candidate keys from the output (keeps the record small and avoids loading or
            collating the unpicked levels).
        allow_missing_keys: candidates missing from a record are left out of the draw (weights renormalised over
            those present); with False a missing candidate raises ``KeyError``.

    The picked entry is copied as is, so the transform works both on loaded images (any shape; a MetaTensor gets
    ``meta["noise_level"] = level``, sharing the data but not the metadata with the source) and, placed before
    ``LoadImaged``, on file paths: then only the picked file is loaded::

        Compose([
            RandNoiseLeveld([f"noisy_{t}s" for t in (30, 45, 60, 90, 120, 180)], "image",
                            levels=[30, 45, 60, 90, 120, 180], drop_sources=True),
            LoadImaged(["image", "target"], ensure_channel_first=True),
            ...
        ])

    Raises:
        ValueError: no keys (raised by MONAI's ``MapTransform``), ``levels`` or ``weights`` of the wrong length,
            repeated levels, negative, non-finite or all-zero weights.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_key: Hashable = "image",
        levels: Sequence[Any] | None = None,
        weights: Sequence[float] | None = None,
        level_key: Hashable | None = NOISE_LEVEL_KEY,
        drop_sources: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        n = len(self.keys)  # MapTransform has rejected an empty ``keys``
        self.levels = list(self.keys) if levels is None else list(levels)
        if len(self.levels) != n:
            raise ValueError(
                f"levels must give one level per key: {n} keys {list(self.keys)}, got {len(self.levels)} levels."
            )
        if len(set(map(repr, self.levels))) != n:
            raise ValueError(f"levels must be distinct, got {self.levels}.")
        self.weights = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
        if self.weights.shape != (n,):
            raise ValueError(
                f"weights must give one weight per key: {n} keys, got weights of shape {self.weights.shape}."
            )
        if not np.all(np.isfinite(self.weights)) or np.any(self.weights < 0) or not self.weights.sum() > 0:
            raise ValueError(f"weights must be finite, non-negative and not all zero, got {self.weights.tolist()}.")
        self.output_key = output_key
        self.level_key = level_key
        self.drop_sources = drop_sources
        self._index = 0

    def randomize(self, data: Sequence[int]) -> None:  # type: ignore[override]
        """Pick one of the candidate indices ``data`` with probability proportional to its weight."""
        p = self.weights[list(data)]
        if not p.sum() > 0:
            present = [self.keys[i] for i in data]
            raise ValueError(f"none of the noise levels present in the record, {present}, has a positive weight.")
        self._index = data[self.R.choice(len(data), p=p / p.sum())]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        present = [i for i, key in enumerate(self.keys) if key in d]
        if len(present) < len(self.keys) and not self.allow_missing_keys:
            missing = [key for key in self.keys if key not in d]
            raise KeyError(
                f"noise-level keys {missing} are not in the record (keys {list(d)}); set allow_missing_keys=True "
                "to draw among the levels present."
            )
        if not present:
            return d
        self.randomize(present)
        key, level = self.keys[self._index], self.levels[self._index]
        picked = d[key]
        if isinstance(picked, MetaTensor):
            picked = MetaTensor(picked.as_tensor(), meta={**picked.meta, NOISE_LEVEL_KEY: level},
                                applied_operations=list(picked.applied_operations))
        if self.drop_sources:
            for k in self.keys:
                d.pop(k, None)
        d[self.output_key] = picked
        if self.level_key is not None:
            d[self.level_key] = level
        return d
