"""Section 1 of the report: the KSE threshold study (paper Fig. 4) and the weight-decay control."""

from __future__ import annotations

import math
from collections.abc import Mapping

from ..paper import PAPER
from ..results import Results
from ..stats import table


def _sweep_rows(sweep: Mapping) -> list[list[str]]:
    return [[
        f"{r['threshold']:g}", f"{r['flagged_channels']} / {r['total_channels']}", f"{r['dropped_params_pct']:.1f}",
        f"{PAPER['flagged_pct'].get(r['threshold'], math.nan):.1f}", f"{r['kse_output_change_pct']:.2f}",
        f"{r['random_output_change_pct']:.2f} [{r['random_output_change_pct_min']:.2f}, "
        f"{r['random_output_change_pct_max']:.2f}]",
    ] for r in sweep["rows"]]  # fmt: skip


def _below_random(sweep: Mapping) -> list[float]:
    """Thresholds at which dropping the flagged kernels changed the output less than every random draw."""
    return [r["threshold"] for r in sweep["rows"] if r["kse_output_change_pct"] < r["random_output_change_pct_min"]]


def _paper_threshold_row(sweep: Mapping) -> Mapping:
    """The sweep's row at the paper's threshold 0.3, or its first row if 0.3 was not swept."""
    return next((r for r in sweep["rows"] if math.isclose(r["threshold"], 0.3)), sweep["rows"][0])


def _regulariser_effect(difference_pct: float, phi: str) -> str:
    """What the weight-decay control shows, from the difference of flagged parameters (points; one seed each)."""
    if difference_pct > 10:
        return (f"With weight decay {difference_pct:.0f} points more are flagged at φ = {phi}: consistent with the "
                "regulariser pulling to zero the kernels that read feature maps no longer contributing (they get no "
                "loss gradient), over long training (one pretraining seed each).")
    if difference_pct < -10:
        return (f"Without weight decay {-difference_pct:.0f} points more are flagged at φ = {phi}: the regulariser "
                "does not explain the redundancy here.")
    return f"The regulariser changed the flagged fraction at φ = {phi} by less than 10 points."


def section_threshold(res: Results) -> list[str]:
    """The KSE sweep of the v1-net and, when the run has it (``--controls``), of its no-weight-decay control."""
    header = ["φ", "input channels flagged", "parameters dropped (%)", "paper (%)",
              "output change, flagged dropped (%)", "output change, random dropped (%)"]
    first = _paper_threshold_row(res.kse)
    phi = f"{first['threshold']:g}"
    hist = res.kse["histogram"]
    total = sum(hist["counts"])
    lowest_bin = f"[{hist['bin_edges'][0]:g}, {hist['bin_edges'][1]:g})"
    v1 = res.curves["v1-net"]
    probe = [r["probes"]["kse_flagged_channels_pct"] for r in v1]
    below = _below_random(res.kse)
    listed = lambda ts: " (φ = " + ", ".join(f"{t:g}" for t in ts) + ")" if ts else ""  # noqa: E731
    control = res.kse_no_wd is not None
    lines = [
        "## 1. Threshold study (paper Fig. 4)",
        "",
        "KSE of the v1-net's kernels; for each threshold φ the kernels that read a feature map scoring below φ are "
        f"dropped (zeroed) and the v1-net's output on one 60 s realisation of {res.kse['study']} "
        f"({res.kse['recon']}) is compared with the original output (relative RMSE over the body). The control zeroes "
        f"as many randomly chosen input-channel kernels in the same layers ({first['random_draws']} draws: mean "
        f"[min, max]). The v1-net was pretrained with the bundle's recipe: Adam with L2 weight decay "
        f"{res.weight_decay:g} (the regulariser R of the paper's Eq. 4), {v1[-1]['epoch']} epochs "
        f"({v1[-1]['iteration']} steps).",
        "",
        *table(header, _sweep_rows(res.kse)),
        "",
        "![threshold study](figures/fig4_kse_threshold.png)",
        "",
    ]
    if control:
        lines += ["The same pretraining without weight decay (the control, `v1_no_wd`, same data, epochs and seed):",
                  "", *table(header, _sweep_rows(res.kse_no_wd)), ""]
    else:
        lines += ["(The no-weight-decay pretraining control runs only with `--controls`; this run did not.)", ""]
    lines += ["![KSE distribution](figures/kse_distribution.png)", ""]
    if control:
        no_wd_row = _paper_threshold_row(res.kse_no_wd)
        probe_no_wd = [r["probes"]["kse_flagged_channels_pct"] for r in res.curves["no weight decay"]]
        below_no_wd = _below_random(res.kse_no_wd)
    lines += [
        f"* At φ = {phi}, {first['dropped_params_pct']:.1f} % of the v1-net's conv parameters are flagged (paper: "
        f"{PAPER['flagged_pct'].get(first['threshold'], math.nan):.1f} %)"
        + (f"; without weight decay {no_wd_row['dropped_params_pct']:.1f} %" if control else "")
        + f". {hist['counts'][0]} of {total} of the v1-net's input channels "
        f"({100 * hist['counts'][0] / total:.1f} %) score in {lowest_bin}"
        + (f", against {res.kse_no_wd['histogram']['counts'][0]} without weight decay" if control else "")
        + ". KSE is min-max normalised per layer, so each layer's weakest channel scores 0 whatever the network; the "
        f"paper's {PAPER['flagged_pct'][0.3]:.1f} % at φ = 0.3 and {PAPER['flagged_pct'][0.4]:.1f} % at 0.4 "
        "mean that about half of its kernels sit in a cluster far below the rest.",
        f"* As the v1-net pretrains, the channels flagged at 0.3 go from {probe[0]:.1f} % at initialisation to "
        f"{probe[-1]:.1f} % (right panel)"
        + (f"; without weight decay they end at {probe_no_wd[-1]:.1f} % (range "
           f"{min(probe_no_wd):.1f}-{max(probe_no_wd):.1f} %). "
           + _regulariser_effect(first["dropped_params_pct"] - no_wd_row["dropped_params_pct"], phi)
           if control else "."),
        f"* Dropping the flagged kernels changed the output less than every random draw at {len(below)} of "
        f"{len(res.kse['rows'])} thresholds{listed(below)} for the v1-net"
        + (f", and at {len(below_no_wd)} of {len(res.kse_no_wd['rows'])}{listed(below_no_wd)} for the control"
           if control else "")
        + ". In the paper the output at φ = 0.3 is almost identical to the original and artefacts appear above 0.4.",
    ]
    return lines
