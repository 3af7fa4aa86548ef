"""The report's first section: the premises of the experiment, met or not, before any TGD number (issue 11)."""

from __future__ import annotations

from ..checks import (
    ARTEFACT_RATIO,
    INPUT_COV_MATCH_PCT,
    RESOLVABLE_BIAS_PCT,
    Check,
    premises,
)
from ..results import Results
from ..stats import fmt, table


def digits(check: Check) -> int:
    """Decimals the report prints a check's value and threshold with: 5 for body RMSE (SUV), 3 for the shift's
    liver CoV and lesion bias (networks close to each other), else 2."""
    return 5 if check.name.startswith(("gap", "forgetting", "ft_forgets")) else 3 if check.name.startswith("shift") else 2


def check_rows(checks: list[Check]) -> list[list[str]]:
    """One table row per check: name, what it measures, value, rule, threshold, verdict."""
    return [[f"`{c.name}`", c.description.replace("|", "\\|"), fmt(c.value, digits(c)), c.rule,
             fmt(c.threshold, digits(c)), "met" if c.met else "**not met**"] for c in checks]  # fmt: skip


def section_premises(res: Results) -> list[str]:
    """Every premise with its figure; measured on the test and OOD studies, never on the validation study."""
    checks = premises(res)
    failed = [c for c in checks if not c.met]
    return [
        "## Premises",
        "",
        "What the experiment needs before a fine-tuning result can mean anything, measured on the test studies "
        "(shared networks: `eval_shared`) and on the out-of-distribution studies, none of which any network trained "
        "or was tuned on; the validation study plays no part here. Values in the unit of the rule: a premise is met "
        "when `value rule threshold` holds.",
        "",
        "* **Shift in the paper's direction**, on each v2 test study: v1-net has a lower liver CoV and a more "
        "negative lesion bias (vs the 600 s image) than v2-net (`shift_*`; the lesion bias where the study has "
        "lesions); the v1 and v2 60 s inputs have liver CoVs within "
        f"{INPUT_COV_MATCH_PCT:g} % of each other, 100 x |CoV(v1) - CoV(v2)| / CoV(v2) <= {INPUT_COV_MATCH_PCT:g} "
        "(`input_cov_match`: a change of texture and resolution, not of noise level); v2-net's body RMSE against "
        "the 600 s image is below v1-net's (`gap`: the gap TGD is to close).",
        "* **Something to forget**: FT-net, fine-tuned on v2 only, does worse than v1-net on the v1 reconstruction of "
        "the test studies (body RMSE against the 600 s image rises: `ft_forgets`); otherwise no forgetting target can "
        "tell TGD-net from FT-net.",
        f"* **Resolvable lesions**: v2-net's ensemble lesion bias against the 600 s image is at least "
        f"{RESOLVABLE_BIAS_PCT:g} % on the low-BMI v2 test study.",
        f"* **Real artefacts**: on each OOD study the base network's error inside the structure (OOD RMSE vs 600 s) "
        f"is at least {ARTEFACT_RATIO:g} x the un-denoised input's: v2-net (base of TGD_N2N) and TGD-net of each "
        "seed (base of TGD2_N2N).",
        "",
        *table(["premise", "what", "value", "rule", "threshold", "verdict"], check_rows(checks)),
        "",
        f"{len(checks) - len(failed)} of {len(checks)} premises met"
        + (": every result below stands on them." if not failed else
           "; not met: " + ", ".join(f"`{c.name}`" for c in failed) + ". A target resting on a premise that is not "
           "met cannot be read as a test of TGD (section Targets names which)."),
    ]
