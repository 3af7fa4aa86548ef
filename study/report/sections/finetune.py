"""Section 2 of the report: fine-tuning the v1-net to the new reconstruction (paper Table 1, Fig. 5), both recons."""

from __future__ import annotations

from ..paper import PAPER
from ..results import HIGH, LOW, MAIN_NETWORKS, Results
from ..stats import compare, fmt, spread, table
from ..tgd_effects import frozen_rows_moved


def section_finetune(res: Results) -> list[str]:
    """Table 1 for both test studies and both recons, the TGD guarantee checked on the checkpoints, the paper's
    claims."""
    every_seed = list(res.manifest.get("every_seed", []))  # variants run at every seed: beside TGD-net
    names = [res.input_name] + MAIN_NETWORKS + every_seed
    metrics = [
        ("lesion bias vs 600 s (%)", "liver_lesion_bias_ref_pct", 2),
        ("lesion bias vs truth (%)", "liver_lesion_bias_truth_pct", 2),
        ("liver CoV (%)", "liver_cov_pct", 2),
        ("body RMSE vs 600 s (SUV)", "rmse_body_ref", 4),
        ("image RMSE vs 600 s (SUV)", "rmse_body_ref_image", 4),
    ]
    settings = res.manifest["settings"]
    lines = [
        "## 2. Fine-tuning to the new reconstruction (paper Table 1, Fig. 5)",
        "",
        f"v1-net: pretrained on the v1 (old OSEM) training studies, {settings['pretrain_epochs']} epochs. v2-net: the "
        "same recipe from scratch on the v2 reconstructions of the same studies. FT-net: v1-net with its last three "
        "conv blocks fine-tuned on the low-BMI v2 fine-tuning studies. TGD-net: v1-net TGD-fine-tuned "
        f"(φ = {res.tgd_threshold:g}, the bundle's default {res.tgd_recipe}: section 7) on "
        f"the same studies; both until the validation loss flattened (at most {settings['finetune_epochs']} epochs; "
        "section 3). Ensemble over the 10 x 60 s realisations of "
        "each test study: liver lesion bias in % of the 600 s reference's lesion mean (or of the phantom truth), "
        "mean over the study's liver lesions; liver CoV in %; body RMSE: of the ensemble mean against the 600 s image "
        "over the body (the systematic error only, so the unbiased input scores lowest; the premises and targets "
        "use it, as issue 11 defines them); image RMSE: of each denoised image (bias and the noise left, what the "
        "networks are trained to lower), the root of the mean over the realisations; all over the slices from the "
        f"first to the last holding liver or lesion voxels. FT-net and TGD-net: mean ± SD over seeds {res.seeds}; "
        "v1-net and v2-net are shared by all seeds (one value; results.json gives them SD 0). The v1 tables: the same test studies "
        "reconstructed with the old protocol."
        + (f" Beside TGD-net, run at every seed like it: {', '.join(every_seed)} (section 7)." if every_seed else ""),
    ]
    for study, recon in ((LOW, "v2"), (HIGH, "v2"), (LOW, "v1"), (HIGH, "v1")):
        rows = []
        for title, key, digits in metrics:
            cells = [fmt(res.metric(study, recon, n, key), digits) for n in names]
            if any(c != "n/a" for c in cells):
                rows.append([title] + cells)
        if (study, recon) == (LOW, "v2"):
            pad = ["—"] * len(every_seed)  # the paper has no such network
            rows.append(["paper: lesion bias (%)", ""] + [f"{PAPER['lesion_bias'][n]:.2f}" for n in MAIN_NETWORKS] + pad)
            rows.append(["paper: liver CoV (%)", ""] + [f"{PAPER['liver_cov'][n]:.2f}" for n in MAIN_NETWORKS] + pad)
        lines += ["", f"**{study} ({recon})**", "", *table(["metric"] + names, rows)]
    retrained = spread([100 * m["retrained_fraction"]["overall"] for m in res.masks.values()])
    moved = {seed: frozen_rows_moved(res, seed) for seed in res.seeds}
    m = {(s, n, k): res.metric(s, "v2", n, k) for s in (LOW, HIGH) for n in MAIN_NETWORKS
         for k in ("liver_lesion_bias_ref_pct", "liver_cov_pct")}  # fmt: skip
    bias = lambda n: m[(LOW, n, "liver_lesion_bias_ref_pct")]  # noqa: E731
    cov = lambda s, n: m[(s, n, "liver_cov_pct")]  # noqa: E731
    return lines + [
        "",
        f"TGD-net retrained {fmt(retrained, 1)} % of the hidden convs' and their BNs' parameters. Frozen rows "
        "(weights, BN affine parameters and running statistics, the output conv; but for the reader columns of "
        f"retrained maps that {res.tgd_recipe} trains, as `monai_tgd.tgd.frozen_rows` lists them) compared with the "
        "v1-net's: "
        + ("bit-identical in every seed." if not any(moved.values()) else
           "**changed** in " + "; ".join(f"seed {k}: {', '.join(v)}" for k, v in moved.items() if v) + "."),
        "",
        "![fine-tuning panels](figures/fig5_finetune.png)",
        "",
        "What the paper claims and what this run shows (low-BMI study unless said otherwise):",
        "",
        f"* TGD-net has the smallest lesion bias of the fine-tuned networks (paper: "
        f"{PAPER['lesion_bias']['TGD-net']:.2f} vs FT-net {PAPER['lesion_bias']['FT-net']:.2f} %). Here "
        f"TGD-net {fmt(bias('TGD-net'))} % vs FT-net {fmt(bias('FT-net'))} %: "
        f"{compare(bias('TGD-net'), bias('FT-net'), abs(bias('TGD-net')['mean']) <= abs(bias('FT-net')['mean']))}.",
        f"* The v1-net, made for the old reconstruction, under-estimates the lesion more than the v2-net (paper: "
        f"{PAPER['lesion_bias']['v1-net']:.2f} vs {PAPER['lesion_bias']['v2-net']:.2f} %). Here v1-net "
        f"{fmt(bias('v1-net'))} % vs v2-net {fmt(bias('v2-net'))} %: "
        f"{compare(bias('v1-net'), bias('v2-net'), bias('v1-net')['mean'] < bias('v2-net')['mean'])}.",
        f"* TGD-net keeps a lower liver CoV than FT-net (paper: "
        f"{PAPER['liver_cov']['TGD-net']:.2f} vs {PAPER['liver_cov']['FT-net']:.2f} %). Here TGD-net "
        f"{fmt(cov(LOW, 'TGD-net'))} % vs FT-net {fmt(cov(LOW, 'FT-net'))} %: "
        f"{compare(cov(LOW, 'TGD-net'), cov(LOW, 'FT-net'), cov(LOW, 'TGD-net')['mean'] <= cov(LOW, 'FT-net')['mean'])}.",
        f"* FT-net leaves noise in the high-BMI study that TGD-net removes (paper, Fig. 5). High-BMI liver CoV here: "
        f"TGD-net {fmt(cov(HIGH, 'TGD-net'))} % vs FT-net {fmt(cov(HIGH, 'FT-net'))} %: "
        f"{compare(cov(HIGH, 'TGD-net'), cov(HIGH, 'FT-net'), cov(HIGH, 'TGD-net')['mean'] <= cov(HIGH, 'FT-net')['mean'])}.",
    ]
