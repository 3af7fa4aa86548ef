"""Turn the outputs of ``study/run_study.py`` into ``results.md`` and the PNG figures: :func:`write_report`.

Nothing here is typed by hand: every table cell is read from the run's files (``<work>/runs/*``: evaluation tables,
loss curves, the KSE sweep, TGD masks; ``<work>/stages.json``: wall times), every image panel is denoised from the
run's checkpoints, and every sentence comparing with the paper is computed from the same numbers.

Modules: :mod:`.results` (reading the run), :mod:`.stats` (summaries and wording), :mod:`.paper` (the paper's
numbers), :mod:`.networks` (checkpoints as the bundle's networks), :mod:`.tgd_effects` (what TGD did to them),
:mod:`.checks` (premises, convergence, variants and targets: the verdicts, shared by the markdown and the JSON),
:mod:`.summary` (``results.json``), :mod:`.figures`, :mod:`.sections` (one module per section of ``results.md``) and
:mod:`.writer`.
"""

from __future__ import annotations

from .results import HIGH, LOW, MAIN_NETWORKS, Results
from .stats import compare, fmt, overlap, spread, table, time_to_loss
from .writer import write_report

__all__ = ["write_report", "Results", "LOW", "HIGH", "MAIN_NETWORKS", "spread", "fmt", "table", "overlap", "compare",
           "time_to_loss"]  # fmt: skip
