"""Section 5 of the report: the training time of TGD fine-tuning against training the v2-net from scratch."""

from __future__ import annotations

import math

from ..paper import PAPER
from ..results import Results
from ..stats import fmt, spread, table, time_to_loss


def section_cost(res: Results) -> list[str]:
    """Training time of TGD-net and FT-net against the v2-net's time to the same validation loss."""
    v2 = res.curves["v2-net"]
    settings = res.manifest["settings"]
    rows, to_loss, total, at_start = [], [], [], 0
    for seed in res.seeds:
        for name in ("TGD-net", "FT-net"):
            curve = res.curves[(name, seed)]
            final, seconds = curve[-1]["metrics"]["val_loss"], curve[-1]["train_seconds"]
            scratch = time_to_loss(v2, final)
            saved = 100 * (1 - seconds / scratch) if math.isfinite(scratch) and scratch > 0 else math.nan
            if name == "TGD-net":
                total.append(100 * (1 - seconds / res.train_seconds("v2-net")))
                if scratch == 0:
                    at_start += 1  # the v2-net's initialisation already had that loss: nothing to save
                elif math.isfinite(saved):
                    to_loss.append(saved)
            reached = ("at initialisation" if scratch == 0 else f"{scratch:.1f}" if math.isfinite(scratch)
                       else f"not reached in {res.train_seconds('v2-net'):.0f}")
            rows.append([f"{name}, seed {seed}", f"{curve[0]['metrics']['val_loss']:.5f}", f"{final:.5f}",
                         f"{seconds:.1f}", reached, fmt(saved, 1)])
    never = len(res.seeds) - len(to_loss) - at_start
    lines = [
        "## 5. Cost: TGD fine-tuning vs training the v2-net from scratch",
        "",
        "Validation loss: MSE of the network on every second slice of the first 60 s realisation of the v2 "
        "validation study against its 600 s image, every few epochs (it stops the fine-tuning runs, section 3; no "
        "test study is involved). Time: "
        "training wall time without the validations (`LossCurveHandler`). The v2-net's time to the same loss is "
        "interpolated between its validations. The v1-net's pretraining is not counted: it exists already, as in the "
        "paper.",
        "",
        *table(["run", "val. loss at start", "val. loss at end", "training time (s)",
                "v2-net from scratch to that loss (s)", "time saved (%)"], rows),
        "",
        f"v2-net from scratch: val. loss {v2[0]['metrics']['val_loss']:.5f} -> {v2[-1]['metrics']['val_loss']:.5f} "
        f"in {res.train_seconds('v2-net'):.0f} s ({v2[-1]['epoch']} epochs); lowest "
        f"{min(r['metrics']['val_loss'] for r in v2):.5f}.",
        "",
        "![validation curves](figures/loss_curves.png)",
        "",
        f"* Whole runs: TGD fine-tuning (until the plateau, at most {settings['finetune_epochs']} epochs on the "
        "fine-tuning studies) took "
        f"{fmt(spread(total), 1)} % less training time than the v2-net ({settings['pretrain_epochs']} epochs on the "
        f"training studies). Paper: {PAPER['time_saved_pct']:g} % saved, with 500 epochs for both on 7 and 20 "
        "studies, so there the saving is mostly the data ratio"
        + ("; here the epochs differ too." if any(res.curves[("TGD-net", s)][-1]["epoch"] != v2[-1]["epoch"]
                                               for s in res.seeds) else "."),
    ]
    if to_loss:
        lines.append(f"* To the same validation loss: TGD saved {fmt(spread(to_loss), 1)} % (the {len(to_loss)} of "
                     f"{len(res.seeds)} seeds whose final loss the v2-net reached during its training).")
    start = spread([res.curves[("TGD-net", seed)][0]["metrics"]["val_loss"] for seed in res.seeds])
    gain = spread([100 * (1 - res.curves[("TGD-net", sd)][-1]["metrics"]["val_loss"] /
                          res.curves[("TGD-net", sd)][0]["metrics"]["val_loss"]) for sd in res.seeds])
    v1_time = time_to_loss(v2, start["mean"])
    lines.append(
        f"* The v1-net itself, before any fine-tuning, has validation loss {start['mean']:.5f}; the v2-net needs "
        + (f"{v1_time:.1f} s to reach it" if math.isfinite(v1_time) else "longer than its whole training to reach it")
        + f". TGD's fine-tuning lowered the loss by {fmt(gain, 1)} % of that, so most of the time saved comes from "
        "starting with a pretrained network rather than from what TGD learned."
        if math.isfinite(gain["mean"]) and gain["mean"] < 5 else
        f"* The v1-net itself, before any fine-tuning, has validation loss {start['mean']:.5f}; TGD's fine-tuning "
        f"lowered it by {fmt(gain, 1)} %."
    )
    if at_start:
        lines.append(f"* For {at_start} seed(s) TGD-net ends at a validation loss no lower than the v2-net's at "
                     "initialisation, before any training: there is no training time to compare.")
    if never:
        lines.append(f"* For {never} seed(s) the v2-net never reached TGD-net's final validation loss: TGD-net ends "
                     "below anything the network trained from scratch reached.")
    return lines
