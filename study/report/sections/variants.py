"""Section 7 of the report: TGD-net and its variants side by side, the variant chosen on the validation study, and
where the retrained kernels can act."""

from __future__ import annotations

import json

from ..checks import variants
from ..results import Results
from ..stats import fmt, table
from ..tgd_effects import retrained_weight_share

#: (column title, metric of a study, decimals)
COLUMNS = (("v2 body RMSE (SUV)", "rmse_body_ref", 4), ("v2 lesion bias (%)", "lesion_bias_ref", 2),
           ("v2 liver CoV (%)", "liver_cov", 2))  # fmt: skip


def variant_rows(numbers: dict, studies: list[str]) -> list[list[str]]:
    """One row per network: its v2 numbers per study, then its v1 forgetting."""
    return [[name] + [fmt(n[s][k], d) for s in studies for _, k, d in COLUMNS] + [fmt(n["v1_change"], 4)]
            for name, n in numbers.items()]  # fmt: skip


def variant_header(studies: list[str]) -> list[str]:
    columns = [f"{s}: {t}" for s in studies for t, _, _ in COLUMNS]
    return ["variant", *columns, "v1 body-RMSE change from v1-net (SUV)"]


def section_variants(res: Results) -> list[str]:
    """The variants on the validation study (where the choice is made) and on the test studies."""
    v = variants(res)
    if v is None:
        return []
    lines = [
        "## 7. TGD-net and its variants (chosen on the validation study)",
        "",
        f"TGD-net is the bundle's default: TGD at the paper's threshold with {res.tgd_recipe} (finetune_tgd.json; "
        "readers: which conv columns reading retrained maps train too, docs/tgd.md; every other frozen kernel stays "
        "bit-identical). Each variant changes what its overrides say: "
        + "; ".join(f"{name}: `{json.dumps(overrides)}`" for name, overrides in res.manifest["ablations"].items())
        + f". Means over seeds {v['seeds']} (the variants' seeds; those run at every seed are also in Table 1 of "
        "section 2), same data and stopping rule; "
        "FT-net for reference. Last column: the body-RMSE change from v1-net on the v1 reconstruction of the same "
        "studies (mean over the studies; positive = worse on the old task, which is what forgetting counts).",
        "",
        f"**Validation ({', '.join(v['validation_studies'])})**",
        "",
        *table(variant_header(v["validation_studies"]), variant_rows(v["validation"], v["validation_studies"])),
        "",
        f"**Test ({', '.join(v['test_studies'])})**",
        "",
        *table(variant_header(v["test_studies"]), variant_rows(v["test"], v["test_studies"])),
        "",
        f"* Selection rule, applied on the validation study only: {v['rule']}. FT-net's forgetting there: "
        f"{fmt(v['validation']['FT-net']['v1_forgetting'], 4)}, so the limit is {fmt(v['forgetting_limit'], 4)}; "
        + (f"qualified: {', '.join(v['qualified'])}." if v["qualified"] else "none qualifies.")
        + f" Chosen: **{v['chosen']}**.",
        "* " + ("The choice is the bundle's default (TGD-net)." if v["chosen_is_default"] else
                f"**The choice is not the bundle's default**: the rule picks {v['chosen']}, the bundle ships TGD-net "
                f"({res.tgd_recipe})."),
    ]
    lines += _chosen_thresholds(res)
    hist = res.kse["histogram"]
    per_layer = [[layer] + [str(c) for c in counts] for layer, counts in hist["per_layer"].items()]
    edges = hist["bin_edges"]
    bins = [f"[{edges[i]:.1f}, {edges[i + 1]:.1f})" for i in range(len(edges) - 1)]
    return lines + [
        "",
        "Where the retrained channels can act: TGD retrains the convs that make the flagged feature maps, but the "
        "next conv reads those maps through the very weights KSE found small; with the paper-literal TGD (readers "
        "frozen) the last hidden layer's retrained maps reach the output only through them (v1-net, masks of "
        f"TGD-net at φ = {res.tgd_threshold:g}):",
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
