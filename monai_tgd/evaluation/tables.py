"""Report files of the evaluation workflows: CSV, strict JSON and markdown text, and the markdown cell format.

Every file is written through :func:`monai_tgd.io.atomic_path` (UTF-8). NaN/inf are written as an empty CSV cell,
JSON ``null`` and markdown ``n/a``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_tgd.io import atomic_path

__all__ = ["json_safe", "write_csv", "write_text", "write_json", "fmt", "bold_best"]


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf floats as None and numpy scalars as Python numbers, recursively (keys as str)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return json_safe(value.item())
    return value


def write_csv(path: Path, rows: Sequence[Mapping], columns: Sequence[str]) -> None:
    """One line per row, the fields ``columns`` (others ignored; missing or non-finite: empty)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({c: ("" if json_safe(row.get(c)) is None else row.get(c)) for c in columns})


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, content: Any) -> None:
    """Strict JSON (:func:`json_safe`), indented, with a final newline."""
    write_text(path, json.dumps(json_safe(content), indent=2, allow_nan=False) + "\n")


def fmt(value: Any, digits: int = 2) -> str:
    """A markdown cell: floats with ``digits`` decimals, None/NaN/inf as ``n/a``, anything else as ``str``."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def bold_best(values: list[float], skip: int, key: Callable[[float], float]) -> set[int]:
    """Indices (>= skip) of the best finite value by ``key`` (ties all bold); none if fewer than 2 candidates."""
    candidates = [(key(v), i) for i, v in enumerate(values) if i >= skip and v is not None and math.isfinite(v)]
    if len(candidates) < 2:
        return set()
    best = min(c for c, _ in candidates)
    return {i for c, i in candidates if c == best}
