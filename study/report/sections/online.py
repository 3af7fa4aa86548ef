"""Section 6 of the report: online Noise2Noise TGD on the out-of-distribution studies (paper Fig. 6)."""

from __future__ import annotations

from ..paper import ONLINE_MARGIN_PCT
from ..results import Results
from ..stats import compare, fmt, table


def section_online(res: Results) -> list[str]:
    """OOD error and liver noise of the online networks against their bases, per online study."""
    online = list(res.manifest["online_bases"].values())
    names = [res.ood_input_name, "v2-net", "TGD-net", *online]
    keys = (("ood_rmse_ref", 4), ("ood_mae_ref", 4), ("ood_bias_ref_pct", 2), ("liver_pixel_cov_pct", 2))
    lines = [
        "## 6. Online learning on out-of-distribution studies (paper Fig. 6)",
        "",
        "Each study holds a structure no training study had (an irregular bladder, a urinary catheter) and is a "
        "120 s v2 acquisition; its two 60 s halves are each other's Noise2Noise target. TGD_N2N-net: the v2-net "
        f"TGD-fine-tuned online (φ = {res.manifest['n2n_threshold']:g}); TGD2_N2N-net: the TGD-net "
        f"(φ = {res.tgd_threshold:g}) "
        f"TGD-fine-tuned again (φ = {res.manifest['n2n_threshold']:g}); {res.manifest['settings']['n2n_epochs']} "
        "epochs each. Every network denoises the 120 s image. OOD error: inside the structure (its label dilated by "
        "one voxel in-plane) against the 600 s image, the hallucination measure; liver pixel CoV: the noise left in "
        "the liver of the one denoised image, the retained denoising. Mean ± SD over seeds (input and v2-net: one "
        "value).",
    ]
    for study in res.manifest["ood_studies"]:
        rows = [[n] + [fmt(res.ood_metric(study, n, k), d) for k, d in keys] for n in names]
        voxels = res.ood[(study, res.ood_input_name)][0]["ood_voxels"]
        lines += ["", f"**{study}** ({voxels} voxels in the OOD ROI)", "",
                  *table(["network", "OOD RMSE vs 600 s (SUV)", "OOD MAE (SUV)", "OOD bias (%)",
                          "liver pixel CoV (%)"], rows)]
    lines += ["", "![online panels](figures/fig6_online.png)", ""]
    for study in res.manifest["ood_studies"]:
        for base, name in res.manifest["online_bases"].items():
            b, o = res.ood_metric(study, base, "ood_rmse_ref"), res.ood_metric(study, name, "ood_rmse_ref")
            bc, oc = (res.ood_metric(study, n, "liver_pixel_cov_pct") for n in (base, name))
            if not (b["n"] and o["n"]):
                lines.append(f"* {study}: no voxel of the structure at this resolution; nothing to compare.")
                continue
            error_change = 100 * (o["mean"] / b["mean"] - 1)
            cov_change = 100 * (oc["mean"] / bc["mean"] - 1)
            lines.append(
                f"* {study}, {name.split(' (')[0]} vs its base {base}: OOD RMSE {fmt(o, 4)} vs {fmt(b, 4)} "
                f"({error_change:+.1f} %). The paper's online networks remove the base's artefact, read here as an "
                f"error at least {ONLINE_MARGIN_PCT:g} % lower: {compare(o, b, error_change <= -ONLINE_MARGIN_PCT)}. "
                f"Liver pixel CoV {fmt(oc)} vs {fmt(bc)} % ({cov_change:+.1f} %); the paper's online networks keep "
                f"the base's denoising, read as a CoV within {ONLINE_MARGIN_PCT:g} % of the base's: "
                f"{compare(oc, bc, abs(cov_change) <= ONLINE_MARGIN_PCT)}."
            )
    return lines
