"""Report files of the evaluation workflows: CSV, strict JSON and markdown text, and the markdown cell format.

Every file is written through :func:`monai_tgd.io.atomic_path` (UTF-8); :func:`write_texts` writes the files of one
run together, all or none. NaN/inf are written as an empty CSV cell, JSON ``null`` and markdown ``n/a``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from monai_tgd.io import atomic_path

__all__ = [
    "json_safe", "csv_text", "json_text", "write_csv", "write_text", "write_texts", "write_json", "fmt", "bold_best"
]


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


def csv_text(rows: Sequence[Mapping], columns: Sequence[str]) -> str:
    """CSV with one line per row, the fields ``columns`` (others ignored; missing or non-finite: empty)."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: ("" if json_safe(row.get(c)) is None else row.get(c)) for c in columns})
    return buffer.getvalue()


def json_text(content: Any) -> str:
    """Strict JSON (:func:`json_safe`), indented, with a final newline."""
    return json.dumps(json_safe(content), indent=2, allow_nan=False) + "\n"


def write_texts(files: Mapping[Path, str]) -> None:
    """Write the report files ``{path: text}`` of one run together, all or none.

    Each text goes to a temporary file beside its path (:func:`monai_tgd.io.atomic_path`); only when all are
    written are they moved onto their final names, one ``os.replace`` each. An error or interruption while writing
    leaves every final file as it was (no temporary file is left behind).
    """
    with ExitStack() as stack:
        temps = {Path(path): stack.enter_context(atomic_path(path)) for path in files}
        for path, text in files.items():
            with open(temps[Path(path)], "w", newline="", encoding="utf-8") as f:
                f.write(text)


def write_csv(path: Path, rows: Sequence[Mapping], columns: Sequence[str]) -> None:
    """:func:`csv_text` to ``path`` (atomically)."""
    write_texts({path: csv_text(rows, columns)})


def write_text(path: Path, text: str) -> None:
    write_texts({path: text})


def write_json(path: Path, content: Any) -> None:
    """:func:`json_text` to ``path`` (atomically)."""
    write_texts({path: json_text(content)})


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
