"""The report's last section: the run's invocations and the wall time of its stages."""

from __future__ import annotations

from ..results import Results
from ..stats import table


def section_runtime(res: Results) -> list[str]:
    """The study's invocations that ran stages, and the stages' wall times summed per kind."""
    groups: dict[str, float] = {}
    for name, t in res.manifest["stages"].items():
        key = name.rsplit("_s", 1)[0] if name.rsplit("_s", 1)[-1].isdigit() else name
        key = "online N2N" if key.startswith("n2n_") else "evaluate OOD" if key.startswith("ood_") else key
        groups[key] = groups.get(key, 0.0) + t["seconds"]
    invocations = res.manifest["invocations"]
    runs = [[i["started"], f"{i['seconds'] / 60:.1f}", str(i["workers"]), str(i["stages_run"]), str(i["stages_reused"])]
            for i in invocations if i["stages_run"]]  # fmt: skip
    report_only = sum(1 for i in invocations if not i["stages_run"])
    return [
        "## Run time",
        "",
        "The invocations of the study on this work folder that ran stages (wall time until the report is written)"
        + (f"; {report_only} more reused every stage and only rewrote the report" if report_only else "") + ":",
        "",
        *table(["started", "minutes", "stages side by side", "stages run", "stages reused"], runs),
        "",
        "Sum of the stages' own wall times, all seeds (per stage: `stages.json`; logs with the exact commands: "
        "`logs/`):",
        "",
        *table(["stage", "seconds"], [[k, f"{v:.0f}"] for k, v in groups.items()]),
    ]
