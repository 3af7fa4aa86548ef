"""Write the report: ``results.md`` (the introduction, then every section), ``results.json`` and the figures, all
atomically."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from .figures import FIGURES
from .results import Results
from .sections import SECTIONS
from .summary import summary


def introduction(manifest: Mapping) -> list[str]:
    """The title and what the run was: profile, seeds, sizes and epochs."""
    settings = manifest["settings"]
    bundle = settings["bundle"]
    return [
        "# Results: the paper's experiments on the simulated cohort",
        "",
        f"Written by `python study/run_study.py --profile {manifest['profile']}` (seeds {manifest['seeds']}); every "
        "number and figure below comes from that run's files and is rewritten when it reruns. The study runs the "
        "bundle's workflows (`bundles/pet_tgd_denoising`); each stage's command is in its log.",
        "",
        f"Sizes: the `{manifest['profile']}` simulated cohort; the bundle's "
        + ("`paper.json`" if settings["bundle_files"] else "`train.json`")
        + (f" with {json.dumps(bundle)}" if bundle else "")
        + f"; v1-net and v2-net {settings['pretrain_epochs']} epochs; every fine-tuning until its validation loss "
        f"flattens (patience {settings['finetune_patience']} validations, at most {settings['finetune_epochs']} "
        f"epochs); online N2N {settings['n2n_epochs']} epochs of {settings['n2n_samples']} slabs per half. Every "
        "choice (stopping, variant) is made on the validation study, never on a test study. The same numbers as "
        "plain JSON: `results.json` (SD 0 for networks with one value).",
        "",
    ]


def write_report(work: Path, docs: Path, manifest: Mapping) -> Path:
    """Write ``docs/results.md``, ``docs/results.json`` and ``docs/figures/*.png`` from the study run in ``work``;
    returns the .md path."""
    import matplotlib

    from monai_tgd.io import atomic_path

    matplotlib.use("Agg")
    work, docs = Path(work), Path(docs)
    res = Results(work, manifest)
    for name, figure in FIGURES.items():
        figure(res, docs / "figures" / name)
    lines = introduction(manifest)
    for section in SECTIONS:
        lines += section(res) + [""]
    with atomic_path(docs / "results.json") as tmp:
        tmp.write_text(json.dumps(summary(res), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    path = docs / "results.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
    return path
