"""Section 6 of the report: the ablations of TGD-net, and where the retrained kernels can act."""

from __future__ import annotations

from ..results import HIGH, LOW, Results
from ..stats import fmt, overlap, table
from ..tgd_effects import retrained_weight_share


def section_ablation(res: Results) -> list[str]:
    """The TGD-net variants side by side, the retrained channels' reach into the next conv, KSE per layer."""
    variants = ["TGD-net", *res.manifest["ablations"]]
    if len(variants) == 1:
        return []
    columns = ((LOW, "v2", "liver_lesion_bias_ref_pct", 2), (LOW, "v2", "liver_cov_pct", 2),
               (HIGH, "v2", "liver_cov_pct", 2), (LOW, "v1", "liver_cov_pct", 2), (LOW, "v1", "rmse_body_ref", 4))
    rows = [[n] + [fmt(res.metric(s, r, n, k), d) for s, r, k, d in columns] for n in variants]
    hist = res.kse["histogram"]
    per_layer = [[layer] + [str(c) for c in counts] for layer, counts in hist["per_layer"].items()]
    edges = hist["bin_edges"]
    bins = [f"[{edges[i]:.1f}, {edges[i + 1]:.1f})" for i in range(len(edges) - 1)]
    cov = {n: res.metric(LOW, "v2", n, "liver_cov_pct") for n in variants}
    lines = [
        "## 6. Ablations of TGD-net, and where the retrained kernels can act",
        "",
        "TGD-net is the paper's reading: gradients masked on the activations after each conv and BN (`mode="
        "\"activation\"`, Eq. 4), output conv frozen, the frozen channels' BN running statistics kept (the paper "
        "masks BN's gamma, beta and sigma^2 with the kernels), at the paper's threshold. Each variant changes one of "
        "these, or the threshold; same data, epochs and seeds. Mean ± SD over seeds.",
        "",
        *table(["variant", "v2 low BMI: lesion bias (%)", "v2 low BMI: liver CoV (%)", "v2 high BMI: liver CoV (%)",
                "v1 low BMI: liver CoV (%)", "v1 low BMI: body RMSE (SUV)"], rows),
        "",
    ]
    for n in variants[1:]:
        spread_note = ("" if min(cov[n]["n"], cov["TGD-net"]["n"]) < 2 else
                       " (seed ranges overlap)" if overlap(cov[n], cov["TGD-net"]) else " (seed ranges apart)")
        lines.append(f"* {n}: v2 low-BMI liver CoV {fmt(cov[n])} vs {fmt(cov['TGD-net'])} % for TGD-net{spread_note}.")
    lines += _chosen_thresholds(res)
    return lines + [
        "",
        "Where the retrained channels can act: TGD retrains the convs that make the flagged feature maps, but the "
        "next conv reads those maps through the very weights KSE found small, and with the output conv frozen the "
        f"last hidden layer's retrained maps reach the output only through it (v1-net, masks at φ = "
        f"{res.tgd_threshold:g}):",
        "",
        *table(["hidden conv", "read by", "channels retrained (%)", "share of the reader's \\|weight\\| on them (%)"],
               retrained_weight_share(res, res.checkpoint("v1-net", res.seeds[0]), res.masks[res.seeds[0]])),
        "",
        "KSE scores of the v1-net's input channels per layer (counts per bin; the convs fed by a hidden conv):",
        "",
        *table(["layer", *bins], per_layer),
    ]


def _chosen_thresholds(res: Results) -> list[str]:
    """The thresholds ``tgd_threshold="auto"`` chose, per seed, from the variant's ``tgd_masks.json``."""
    lines = []
    for name, per_seed in res.ablation_masks.items():
        chosen = {seed: info for seed, info in sorted(per_seed.items()) if info.get("threshold") == "auto"}
        if not chosen:
            continue
        budget = next(iter(chosen.values()))["max_change"]
        picks = ", ".join(f"seed {seed}: φ = {info['chosen_threshold']:.3f} (output change "
                          f"{100 * info['threshold_change']:.2f} %, {100 * info['retrained_fraction']['overall']:.1f} % "
                          "of the hidden parameters retrained)" for seed, info in chosen.items())  # fmt: skip
        lines.append(
            f"* {name}: the threshold chosen on slabs of the fine-tuning studies for a budget of {100 * budget:g} % "
            f"output change (`threshold_for_budget`), instead of the paper's {res.tgd_threshold:g}: {picks}."
        )
    return lines
