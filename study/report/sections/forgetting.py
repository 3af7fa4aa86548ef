"""Section 4 of the report: forgetting, each network on the old reconstruction and on the high-BMI study."""

from __future__ import annotations

from ..results import HIGH, LOW, Results
from ..stats import compare, fmt, spread, table


def section_forgetting(res: Results) -> list[str]:
    """Every network on the v1 studies and the high-BMI v2 study, as changes from the v1-net."""
    names = ["v1-net", "FT-net", "TGD-net", *res.manifest["ablations"]]
    keys = (("liver_lesion_bias_ref_pct", 2), ("liver_cov_pct", 2), ("rmse_body_ref", 4))
    lines = [
        "## 4. Forgetting: the old reconstruction and high-BMI data",
        "",
        "Each network on the v1 (old OSEM) test studies, the task the v1-net was made for and that fine-tuning never "
        "saw again, and on the high-BMI v2 study (fine-tuning saw only low-BMI studies). In brackets: the change "
        "from the v1-net (for CoV and RMSE, positive = worse). Mean ± SD over seeds.",
    ]
    for study, recon in ((LOW, "v1"), (HIGH, "v1"), (HIGH, "v2")):
        base = {k: res.metric(study, recon, "v1-net", k)["mean"] for k, _ in keys}
        rows = []
        for n in names:
            cells = [n]
            for key, digits in keys:
                values = [r[key] for r in res.eval.get((study, recon, n), [])]
                cell = fmt(spread(values), digits)
                if n != "v1-net":
                    delta = fmt(spread([v - base[key] for v in values]), digits)
                    cell += f" ({delta if delta.startswith('-') else '+' + delta})"
                cells.append(cell)
            rows.append(cells)
        lines += ["", f"**{study} ({recon})**", "",
                  *table(["network", "lesion bias vs 600 s (%)", "liver CoV (%)", "body RMSE vs 600 s (SUV)"], rows)]
    drift = {n: spread([abs(r["rmse_body_ref"] - res.metric(LOW, "v1", "v1-net", "rmse_body_ref")["mean"])
                        for r in res.eval.get((LOW, "v1", n), [])]) for n in ("FT-net", "TGD-net")}  # fmt: skip
    return lines + [
        "",
        f"* TGD keeps the old task (paper: frozen kernels are bit-identical, no old data needed). On the v1 low-BMI "
        f"study the body RMSE moves away from the v1-net's by {fmt(drift['TGD-net'], 4)} for TGD-net and "
        f"{fmt(drift['FT-net'], 4)} for FT-net: TGD-net forgets "
        f"{'less' if drift['TGD-net']['mean'] < drift['FT-net']['mean'] else 'more'} "
        f"({compare(drift['TGD-net'], drift['FT-net'], drift['TGD-net']['mean'] < drift['FT-net']['mean'])}).",
    ]
