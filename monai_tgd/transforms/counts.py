"""Count-domain noise-level rebinning: binomial thinning and multinomial frame splitting.

These transforms act on data that are *counts* (list-mode histograms, sinograms, count images): non-negative,
integer-valued arrays, whatever their dtype. They are exact, not approximations:

* keeping each count of a Poisson process of duration ``T`` independently with probability ``t / T`` gives a
  Poisson process of duration ``t`` (binomial thinning), so :class:`ThinCounts` turns a 600 s acquisition into a
  statistically exact 60 s one;
* splitting each count uniformly at random into one of ``n`` frames (multinomial split) gives ``n`` independent
  realisations of duration ``T / n`` that sum back to the original counts exactly (:class:`SplitCounts`), e.g.
  600 s into 10 x 60 s, or 120 s into 2 x 60 s for Noise2Noise.

Durations are in seconds. Inputs may be numpy arrays, torch Tensors or MetaTensors of any shape; outputs have the
same type, shape, dtype and device. For MetaTensors the metadata is kept and ``meta["duration"]`` (seconds) is set
to the output duration; it is also where the source duration is read from when it is not given explicitly.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from copy import deepcopy
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, Randomizable, Transform
from monai.utils import convert_to_dst_type

__all__ = ["ThinCounts", "SplitCounts", "ThinCountsd", "SplitCountsd", "DURATION_KEY", "FRAME_INDEX_KEY"]

DURATION_KEY = "duration"
"""MetaTensor ``meta`` key holding the acquisition duration in seconds."""
FRAME_INDEX_KEY = "frame_index"
"""MetaTensor ``meta`` key holding the index of a frame produced by :class:`SplitCounts`."""

Counts = np.ndarray | torch.Tensor


def _positive_duration(value: Any, name: str) -> float:
    """Return ``value`` as a float after checking it is a finite duration > 0 s."""
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite duration > 0 seconds, got {value}.")
    return value


def _counts_to_numpy(img: Counts) -> np.ndarray:
    """Validate that ``img`` holds counts and return them as an int64 numpy array (a copy only if needed).

    Raises:
        ValueError: non-numeric dtype, NaN/inf, non-integer or negative values.
    """
    if isinstance(img, torch.Tensor):
        t = img.as_tensor() if isinstance(img, MetaTensor) else img
        t = t.detach().cpu()
        arr = (t.double() if t.is_floating_point() else t).numpy()
    else:
        arr = np.asarray(img)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"counts must have an integer or floating-point dtype holding whole numbers, got {arr.dtype}.")
    if arr.dtype.kind == "f":
        nonfinite = ~np.isfinite(arr)
        if nonfinite.any():
            raise ValueError(
                f"counts must be finite, found {int(nonfinite.sum())} NaN/inf value(s); "
                "expected non-negative integer counts."
            )
        fractional = arr != np.floor(arr)
        if fractional.any():
            raise ValueError(
                f"counts must be integer-valued, found {int(fractional.sum())} non-integer value(s) "
                f"(e.g. {arr[fractional].flat[0].item()}); expected whole numbers of events, e.g. a histogram or "
                "sinogram, not a reconstructed activity image."
            )
    negative = arr < 0
    if negative.any():
        raise ValueError(
            f"counts must be non-negative, found {int(negative.sum())} negative value(s) (min {arr.min().item()})."
        )
    return arr.astype(np.int64, copy=False)


def _source_duration(img: Counts, source_duration: float | None) -> float | None:
    """The explicit ``source_duration`` if given, else ``img.meta["duration"]`` for a MetaTensor, else None."""
    if source_duration is not None:
        return source_duration
    if isinstance(img, MetaTensor) and img.meta.get(DURATION_KEY) is not None:
        value = np.asarray(img.meta[DURATION_KEY], dtype=float)
        if value.size != 1:
            raise ValueError(f"meta['{DURATION_KEY}'] must be a single duration in seconds, got shape {value.shape}.")
        return _positive_duration(value.item(), f"meta['{DURATION_KEY}']")
    return None


def _like(values: np.ndarray, img: Counts, **meta: Any) -> Counts:
    """Cast ``values`` to the type, dtype and device of ``img``; for MetaTensors keep its metadata and update it."""
    out = convert_to_dst_type(values, img)[0]
    if isinstance(out, MetaTensor):
        if not get_track_meta():
            return out.as_tensor()
        out.meta.update(meta)
    return out


class ThinCounts(Randomizable, Transform):
    """Binomial thinning of counts to a shorter acquisition duration.

    Each count is kept independently with probability ``duration / source_duration``. Thinning a Poisson process of
    duration ``T`` this way gives exactly a Poisson process of duration ``t``: the output has mean and variance
    ``lambda * t`` where the input had ``lambda * T``.

    Args:
        duration: target duration ``t`` in seconds, ``0 < t <= T``.
        source_duration: duration ``T`` of the input in seconds. If None, it is read from the input MetaTensor's
            ``meta["duration"]`` at call time.

    Input: counts of any shape (numpy array, torch Tensor or MetaTensor), non-negative and integer-valued, of any
    integer or floating dtype. Output: thinned counts of the same type, shape, dtype and device; a MetaTensor keeps
    its metadata, with ``meta["duration"] = duration``.

    Raises:
        ValueError: ``duration`` or ``source_duration`` not > 0, ``duration > source_duration``, no source duration
            known, or input values that are not counts (NaN/inf, non-integer, negative).

    Example::

        counts_60s = ThinCounts(60, 600).set_random_state(seed=3)(counts_600s)
    """

    def __init__(self, duration: float, source_duration: float | None = None) -> None:
        self.duration = _positive_duration(duration, "duration")
        self.source_duration = None
        if source_duration is not None:
            self.source_duration = _positive_duration(source_duration, "source_duration")
            self._keep_probability(self.source_duration)

    def _keep_probability(self, source_duration: float | None) -> float:
        if source_duration is None:
            raise ValueError(
                "the source duration is unknown: pass source_duration=<seconds> or give a MetaTensor with "
                f"meta['{DURATION_KEY}'] set."
            )
        if self.duration > source_duration:
            raise ValueError(
                f"duration ({self.duration} s) must not exceed source_duration ({source_duration} s): thinning can "
                "only shorten an acquisition."
            )
        return self.duration / source_duration

    def randomize(self, data: np.ndarray, keep_probability: float = 1.0) -> np.ndarray:  # type: ignore[override]
        """Draw the thinned counts ``Binomial(data, keep_probability)`` elementwise from ``self.R``."""
        return np.asarray(self.R.binomial(data, keep_probability), dtype=np.int64).reshape(data.shape)

    def __call__(self, img: Counts) -> Counts:
        """Thin ``img``; see the class docstring for shapes and types."""
        keep = self._keep_probability(_source_duration(img, self.source_duration))
        counts = _counts_to_numpy(img)
        return _like(self.randomize(counts, keep), img, **{DURATION_KEY: self.duration})


class SplitCounts(Randomizable, Transform):
    """Exact multinomial split of counts into ``num_frames`` disjoint frames of equal duration.

    Each count goes to one of the frames uniformly at random, independently of the others. For Poisson data of
    duration ``T`` the frames are ``num_frames`` independent Poisson realisations of duration ``T / num_frames``
    and they sum back to the input exactly. Implemented with sequential conditional binomials,
    ``frame_k ~ Binomial(remaining, 1 / (num_frames - k))``, vectorised over elements.

    Args:
        num_frames: number of frames ``n >= 2``.
        source_duration: duration of the input in seconds, used only to set the frames' ``meta["duration"]``.
            If None, it is read from the input MetaTensor's ``meta["duration"]`` when present.

    Input: counts of any shape (numpy array, torch Tensor or MetaTensor), non-negative and integer-valued, of any
    integer or floating dtype. Output: a list of ``num_frames`` arrays of the same type, shape, dtype and device
    (MONAI's multi-sample convention). MetaTensor frames keep the input metadata, with ``meta["frame_index"] = k``
    and, when the source duration is known, ``meta["duration"] = source_duration / num_frames``.

    Raises:
        ValueError: ``num_frames < 2`` (or not an integer), ``source_duration`` not > 0, input values that are not
            counts.

    Example::

        frames = SplitCounts(10, 600).set_random_state(seed=0)(counts_600s)  # 10 x 60 s
    """

    def __init__(self, num_frames: int, source_duration: float | None = None) -> None:
        if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 2:
            raise ValueError(f"num_frames must be an integer >= 2, got {num_frames!r}.")
        self.num_frames = int(num_frames)
        self.source_duration = (
            None if source_duration is None else _positive_duration(source_duration, "source_duration")
        )

    def randomize(self, data: np.ndarray) -> list[np.ndarray]:  # type: ignore[override]
        """Draw the ``num_frames`` frames of ``data`` (int64 counts) from ``self.R``; they sum to ``data``."""
        remaining = data.copy()
        frames = []
        for k in range(self.num_frames - 1):
            frame = np.asarray(self.R.binomial(remaining, 1.0 / (self.num_frames - k)), dtype=np.int64)
            frame = frame.reshape(data.shape)
            remaining -= frame
            frames.append(frame)
        frames.append(remaining)
        return frames

    def __call__(self, img: Counts) -> list[Counts]:
        """Split ``img`` into frames; see the class docstring for shapes and types."""
        source = _source_duration(img, self.source_duration)
        frames = self.randomize(_counts_to_numpy(img))
        meta: dict[str, Any] = {} if source is None else {DURATION_KEY: source / self.num_frames}
        return [_like(frame, img, **meta, **{FRAME_INDEX_KEY: k}) for k, frame in enumerate(frames)]


class ThinCountsd(Randomizable, MapTransform):
    """Dictionary version of :class:`ThinCounts`: thins each of ``keys`` independently to ``duration`` seconds.

    Args:
        keys: keys of the count arrays to thin.
        duration: target duration in seconds.
        source_duration: duration of the inputs in seconds; if None, read from each MetaTensor's
            ``meta["duration"]``.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        duration: float,
        source_duration: float | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.thinner = ThinCounts(duration, source_duration)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> ThinCountsd:
        super().set_random_state(seed, state)
        self.thinner.set_random_state(state=self.R)
        return self

    def randomize(self, data: Any = None) -> None:
        """Randomness is drawn per key by the wrapped :class:`ThinCounts`, which shares ``self.R``."""

    def __call__(self, data: Mapping[Hashable, Counts]) -> dict[Hashable, Counts]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.thinner(d[key])
        return d


class SplitCountsd(Randomizable, MapTransform):
    """Dictionary version of :class:`SplitCounts`: returns a list of ``num_frames`` dicts, one per frame.

    Each of ``keys`` is split independently (in key order, from one random stream, so the result is reproducible
    with :meth:`set_random_state`); dict ``k`` holds frame ``k`` of every key and deep copies of the other entries,
    like MONAI's multi-sample dictionary transforms (e.g. ``RandSpatialCropSamplesd``).

    Args:
        keys: keys of the count arrays to split.
        num_frames: number of frames ``n >= 2``.
        source_duration: duration of the inputs in seconds (for the frames' ``meta["duration"]``); if None, read
            from each MetaTensor's ``meta["duration"]`` when present.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_frames: int,
        source_duration: float | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.splitter = SplitCounts(num_frames, source_duration)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> SplitCountsd:
        super().set_random_state(seed, state)
        self.splitter.set_random_state(state=self.R)
        return self

    def randomize(self, data: Any = None) -> None:
        """Randomness is drawn per key by the wrapped :class:`SplitCounts`, which shares ``self.R``."""

    def __call__(self, data: Mapping[Hashable, Counts]) -> list[dict[Hashable, Counts]]:
        split: dict[Hashable, Sequence[Counts]] = {key: self.splitter(data[key]) for key in self.key_iterator(data)}
        outputs = []
        for k in range(self.splitter.num_frames):
            d = {key: value if key in split else deepcopy(value) for key, value in data.items()}
            d.update({key: frames[k] for key, frames in split.items()})
            outputs.append(d)
        return outputs
