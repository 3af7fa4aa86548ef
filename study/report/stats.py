"""Summaries of the run's numbers and how the report words them: spread over seeds, time to a loss, verdicts, tables."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


def spread(values: Sequence[float]) -> dict:
    """Mean, sample SD (ddof 1; 0 for one value), min, max and count of the finite values."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": math.nan, "sd": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0, "min": float(v.min()),
            "max": float(v.max()), "n": int(v.size)}  # fmt: skip


def fmt(s: Mapping | float | None, digits: int = 2) -> str:
    """``mean ± sd (n)`` of a :func:`spread` (just the value for one run), or a plain number; ``n/a`` if none."""
    if isinstance(s, Mapping):
        if s["n"] == 0:
            return "n/a"
        return f"{s['mean']:.{digits}f}" if s["n"] == 1 else f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"
    return "n/a" if s is None or not math.isfinite(s) else f"{s:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table, one line per entry."""
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"] + ["| " + " | ".join(r) + " |" for r in rows]


def overlap(a: Mapping, b: Mapping) -> bool:
    """True when the seed ranges of two spreads overlap (their difference is within seed-to-seed variation)."""
    return a["n"] > 0 and b["n"] > 0 and a["min"] <= b["max"] and b["min"] <= a["max"]


def compare(a: Mapping, b: Mapping, better: bool) -> str:
    """'agrees'/'**disagrees**' with a claim that holds when ``better``, qualified by the seed spread."""
    if a["n"] == 0 or b["n"] == 0:
        return "not measurable here"
    verdict = "agrees" if better else "**disagrees**"
    if a["n"] + b["n"] > 2 and overlap(a, b):
        verdict += " (the seed ranges overlap: the difference is within seed-to-seed variation)"
    return verdict


def time_to_loss(curve: Sequence[Mapping], loss: float) -> float:
    """Training seconds at which ``curve`` first reaches ``loss`` (linear between validations); NaN if never."""
    previous = None
    for record in curve:
        value, t = record["metrics"]["val_loss"], record["train_seconds"]
        if value <= loss:
            if previous is None or previous[1] == value:
                return float(t)
            t0, v0 = previous
            return float(t0 + (t - t0) * (v0 - loss) / (v0 - value))
        previous = (t, value)
    return math.nan
