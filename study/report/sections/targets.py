"""The targets of issue 11, means over the seeds: met or not, and where not, what stops them."""

from __future__ import annotations

from ..checks import Check, convergence, premises, targets
from ..results import Results
from ..stats import fmt, spread, table
from ..tgd_effects import frozen_rows_moved
from .premises import check_rows, digits


def _val_loss_drop(res: Results, name: str) -> dict:
    """Percent drop of a network's validation loss from its start to its best, over the seeds."""
    runs = convergence(res).get(name, {})
    return spread([100 * (1 - r["val_loss_best"] / r["val_loss_start"]) for r in runs.values()])


def _blocker(res: Results, check: Check, by_name: dict[str, Check]) -> str:
    """What stops a target that is not met: its failed premises with their figures, else the measurement at hand."""
    failed = [by_name[n] for n in check.rests_on if not by_name[n].met]
    if failed:
        return "premise not met: " + "; ".join(
            f"`{p.name}` {fmt(p.value, digits(p))} (needs {p.rule} {fmt(p.threshold, digits(p))})" for p in failed)
    held = ("the premises it rests on (" + ", ".join(f"`{n}`" for n in check.rests_on) + ") are met; "
            if check.rests_on else "no premise covers it; ")
    if check.name.startswith("online"):
        return held + "the online fine-tuning itself falls short (value above)."
    if check.name == "forgetting":
        moved = [seed for seed in res.seeds if frozen_rows_moved(res, seed)]
        return (held + "the kernels TGD freezes are "
                + (f"**not** bit-identical to the v1-net's in seed(s) {moved} (section 2), so frozen weights moved."
                   if moved else "bit-identical to the v1-net's in every seed (section 2), so the change on v1 comes "
                   "through the retrained channels (and the reader columns the bundle's default trains) alone."))
    drops = {n: _val_loss_drop(res, n) for n in ("TGD-net", "FT-net")}
    return (held + f"measured mechanism: fine-tuning lowered the validation loss from its start to its best by "
            f"{fmt(drops['TGD-net'], 1)} % for TGD-net and {fmt(drops['FT-net'], 1)} % for FT-net (section 3): "
            + ("TGD-net adapted less than FT-net." if drops["TGD-net"]["mean"] < drops["FT-net"]["mean"] else
               "TGD-net adapted at least as much as FT-net, so the shortfall is in what the adaptation changes."))


def section_targets(res: Results) -> list[str]:
    """Every target with its value, threshold and verdict; for each one not met, what stops it."""
    checks = targets(res)
    by_name = {p.name: p for p in premises(res)}
    lines = [
        "## Targets",
        "",
        f"Means over the seeds {res.seeds} (v1-net and v2-net are shared: one value). Lesion bias: the absolute value "
        "of the mean over seeds. Forgetting: the rise of the body RMSE from v1-net's on the v1 test studies, averaged "
        "over the studies and the seeds (a fall counts as no forgetting, 0: being better than v1-net on the old task "
        "is not forgetting it). Online: the change of each seed's "
        "online network against its own base (v2-net, or the TGD-net of the same seed), averaged over the seeds.",
        "",
        *table(["target", "what", "value", "rule", "threshold", "verdict"], check_rows(checks)),
        "",
    ]
    missed = [c for c in checks if not c.met]
    lines.append(f"{len(checks) - len(missed)} of {len(checks)} targets met." + (" Not met:" if missed else ""))
    if missed:
        lines.append("")
    lines += [f"* `{c.name}`: {_blocker(res, c, by_name)}" for c in missed]
    hollow = [c for c in checks if c.met and any(not by_name[n].met for n in c.rests_on)]
    if hollow:
        lines += ["", "Met, but on a premise that is not met, so not evidence for TGD:", ""]
        lines += [f"* `{c.name}`: " + "; ".join(
            f"`{p.name}` {fmt(p.value, digits(p))} (needs {p.rule} {fmt(p.threshold, digits(p))})"
            for p in (by_name[n] for n in c.rests_on) if not p.met) for c in hollow]
    return lines
