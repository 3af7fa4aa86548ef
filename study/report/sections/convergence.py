"""Section 3 of the report: how each fine-tuning run converged (early stopping on the validation study)."""

from __future__ import annotations

from ..checks import convergence
from ..results import Results
from ..stats import table


def section_convergence(res: Results) -> list[str]:
    """Steps, epochs, wall time and validation loss of every fine-tuning run, and what ended it."""
    settings = res.manifest["settings"]
    runs = convergence(res)
    rows = [[f"{name}, seed {seed}", str(r["steps"]), str(r["epochs"]), f"{r['train_seconds']:.1f}",
             f"{r['val_loss_start']:.5f}", f"{r['val_loss_best']:.5f}", f"{r['val_loss_stop']:.5f}", r["stopped_by"]]
            for name, per_seed in runs.items() for seed, r in per_seed.items()]  # fmt: skip
    capped = sum(1 for per_seed in runs.values() for r in per_seed.values() if r["stopped_by"] == "epoch cap")
    return [
        "## 3. Convergence of the fine-tuning runs",
        "",
        "Every fine-tuning (FT-net, TGD-net, the variants) follows the same rule: train until the validation loss "
        f"(MSE on the validation study's v2 60 s image against its 600 s image, every "
        f"{settings['finetune_curve_interval']} epoch(s)) has not improved for {settings['finetune_patience']} "
        f"validations (`PlateauStopHandler`), or until the epoch cap of {settings['finetune_epochs']} epochs. "
        + ("The network kept is the one of the best validation (`RestoreBestHandler`, configs/restore_best.json; "
           "the validation study decides, never a test study). " if settings.get("finetune_restore_best") else
           "The network kept is the one at the stop. ")
        + "Steps and epochs at the stop; training wall time without the validations (the last record of "
        "`loss_curve.json`).",
        "",
        *table(["run", "steps", "epochs", "training time (s)", "val. loss at start", "val. loss best",
                "val. loss at stop", "stopped by"], rows),
        "",
        f"{len(rows) - capped} of {len(rows)} runs stopped by the plateau rule"
        + (f"; {capped} hit the epoch cap, so their loss may still have been falling." if capped else "."),
    ]
