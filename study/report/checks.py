"""The report's verdicts, computed once from the run's numbers and shared by results.md and results.json.

* :func:`premises`: what the experiment needs before any TGD number means anything (issue 11), on the test and OOD
  studies (never the validation study).
* :func:`convergence`: how each fine-tuning run stopped (its loss curve on the validation study).
* :func:`variants`: TGD-net and its variants on the validation and test studies, and the variant the selection rule
  picks on the validation study.
* :func:`targets`: the targets, means over seeds, each with what stops it when it is not met.

A verdict is a :class:`Check`: ``value`` compared with ``threshold`` by ``rule``, both in the unit the markdown
prints. Every function returns plain data (no formatting); the sections format it, the writer dumps it.
"""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass, field
from functools import cache

from .results import HIGH, LOW, Results, same_checkpoint
from .stats import spread

RULES = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
#: the premises' thresholds (issue 11)
INPUT_COV_MATCH_PCT = 15.0  # |cov_v1 - cov_v2| / cov_v2 of the 60 s inputs, percent
RESOLVABLE_BIAS_PCT = -10.0  # v2-net's ensemble lesion bias vs the 600 s image, at least this
ARTEFACT_RATIO = 1.5  # base network's OOD RMSE / the input's, at least this
#: the targets' thresholds (issue 11)
CLOSURE_PCT = 50.0
FORGETTING_SHARE = 0.5  # TGD-net's forgetting at most this share of FT-net's (also the variant selection rule)
#: forgetting: the rise of a network's body RMSE vs 600 s on the v1 reconstruction from v1-net's (SUV); a fall is
#: no forgetting (0), so "half of FT-net's" means something only when FT-net does forget (premise ``ft_forgets``)
ONLINE_CUT_PCT = -30.0
ONLINE_COV_PCT = 10.0
#: metric keys of the evaluation rows
BIAS, COV, RMSE = "liver_lesion_bias_ref_pct", "liver_cov_pct", "rmse_body_ref"


@dataclass
class Check:
    """``met`` = ``value <rule> threshold`` (False when either is not a number)."""

    name: str
    value: float
    threshold: float
    rule: str
    description: str
    #: names of the premises a target rests on (targets only)
    rests_on: list[str] = field(default_factory=list)

    @property
    def met(self) -> bool:
        return math.isfinite(self.value) and math.isfinite(self.threshold) and RULES[self.rule](self.value,
                                                                                              self.threshold)

    def as_json(self) -> dict:
        d = asdict(self)
        d.pop("name")
        return {"met": self.met, **{k: _plain(v) for k, v in d.items()}}


def _plain(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _mean(res: Results, study: str, recon: str, network: str, key: str) -> float:
    return res.metric(study, recon, network, key)["mean"]


def _test_studies(res: Results) -> list[str]:
    """The v2 test studies of the run (those of the paper's Table 1 that it evaluated)."""
    return [s for s in (LOW, HIGH) if (s, "v2", "v1-net") in res.eval]


@cache
def premises(res: Results) -> list[Check]:
    """The premises, on the test studies (``eval_shared``) and the OOD studies, in the report's order."""
    out, net = [], res.input_name
    for study in _test_studies(res):
        v1c, v2c = _mean(res, study, "v2", "v1-net", COV), _mean(res, study, "v2", "v2-net", COV)
        out.append(Check(f"shift_liver_cov[{study}]", v1c, v2c, "<",
                         f"{study} (v2): v1-net's liver CoV (%) below v2-net's"))
        v1b, v2b = _mean(res, study, "v2", "v1-net", BIAS), _mean(res, study, "v2", "v2-net", BIAS)
        if math.isfinite(v1b) and math.isfinite(v2b):  # a study without lesions has no lesion bias
            out.append(Check(f"shift_lesion_bias[{study}]", v1b, v2b, "<",
                             f"{study} (v2): v1-net's lesion bias vs 600 s (%) more negative than v2-net's"))
        c1, c2 = _mean(res, study, "v1", net, COV), _mean(res, study, "v2", net, COV)
        out.append(Check(f"input_cov_match[{study}]", 100 * abs(c1 - c2) / c2, INPUT_COV_MATCH_PCT, "<=",
                         f"{study}: 60 s inputs' liver CoVs, 100 x |CoV(v1) - CoV(v2)| / CoV(v2) (%) "
                         f"(v1 {c1:.2f} %, v2 {c2:.2f} %)"))
        out.append(Check(f"gap[{study}]", _mean(res, study, "v2", "v2-net", RMSE),
                         _mean(res, study, "v2", "v1-net", RMSE), "<",
                         f"{study} (v2): v2-net's body RMSE vs 600 s (SUV) below v1-net's"))
    ft_change = v1_change(res, "FT-net", _test_studies(res))
    out.append(Check("ft_forgets", ft_change, 0.0, ">",
                     "v1 test studies: FT-net forgets, its body-RMSE change from v1-net on the v1 reconstruction (SUV; "
                     "mean over the studies and seeds) is above 0, so there is forgetting for TGD-net to avoid"))
    out.append(Check(f"resolvable_lesions[{LOW}]", _mean(res, LOW, "v2", "v2-net", BIAS), RESOLVABLE_BIAS_PCT, ">=",
                     f"{LOW} (v2): v2-net's ensemble lesion bias vs 600 s (%) within {RESOLVABLE_BIAS_PCT:g} %"))
    tgd2_base = next(b for b, o in res.manifest["online_bases"].items() if o.startswith("TGD2"))
    for study in res.manifest["ood_studies"]:
        inp = res.ood_metric(study, res.ood_input_name, "ood_rmse_ref")["mean"]
        bases = [("v2-net", None)] + [(tgd2_base, seed) for seed in res.seeds]
        for base, seed in bases:
            row = res.ood_row(study, base, seed if seed is not None else res.seeds[0]) or {}
            rmse = row.get("ood_rmse_ref")
            value = rmse / inp if rmse is not None and inp else math.nan  # None: no voxel of the structure
            who = base if seed is None else f"{base} s{seed}"
            out.append(Check(f"artefact[{study}, {who}]", value, ARTEFACT_RATIO, ">=",
                             f"{study}: {who}'s OOD RMSE vs 600 s / the input's"))
    return out


def v1_change(res: Results, network: str, studies: list[str]) -> float:
    """A fine-tuned network's body-RMSE change vs 600 s from v1-net on the v1 reconstruction of ``studies`` (SUV),
    mean over the studies and the seeds (signed: negative = better than v1-net on the old task)."""
    return spread([x - _mean(res, s, "v1", "v1-net", RMSE) for s in studies
                   for x in _per_seed(res, s, "v1", network, RMSE)])["mean"]  # fmt: skip


def forgetting(change: float) -> float:
    """Forgetting from a v1 body-RMSE change: the rise, 0 for a fall (nan stays nan)."""
    return max(change, 0.0) if math.isfinite(change) else change


def _stopped(res: Results, curve: list[dict]) -> str:
    return "epoch cap" if curve[-1]["epoch"] >= res.manifest["settings"]["finetune_epochs"] else "plateau rule"


def fine_tuned_runs(res: Results) -> list[tuple[str, int]]:
    """``(network, seed)`` of every fine-tuning run with a loss curve: FT-net, TGD-net per seed, then the variants."""
    names = ["FT-net", "TGD-net", *res.manifest["ablations"]]
    return [(n, s) for n in names for s in res.seeds if (n, s) in res.curves]


@cache
def convergence(res: Results) -> dict:
    """``{network: {seed: {...}}}``: steps and epochs at stop, training seconds, validation loss at start / best /
    stop, and whether the plateau rule or the epoch cap ended the run."""
    out: dict = {}
    for name, seed in fine_tuned_runs(res):
        curve = res.curves[(name, seed)]
        losses = [r["metrics"]["val_loss"] for r in curve]
        out.setdefault(name, {})[seed] = {
            "steps": curve[-1]["iteration"], "epochs": curve[-1]["epoch"],
            "train_seconds": curve[-1]["train_seconds"], "val_loss_start": losses[0], "val_loss_best": min(losses),
            "val_loss_stop": losses[-1], "stopped_by": _stopped(res, curve),
        }  # fmt: skip
    return out


def variant_seeds(res: Results) -> list[int]:
    """The seeds the variants ran for in this run (the profile's ``variant_seeds`` among the run's seeds)."""
    return [s for s in res.manifest["settings"].get("variant_seeds", []) if s in res.seeds]


def _variant_numbers(res: Results, rows: dict, studies: list[str], name: str, seeds: list[int]) -> dict:
    """One network's v2 numbers per study and its v1 forgetting (body-RMSE change from v1-net, mean over studies),
    each the mean over ``seeds``."""

    def value(study, recon, network, key, seed):
        found = rows.get((study, recon, network), [])
        if len(found) > 1:  # per-seed rows: the one of this seed's checkpoint
            found = [r for r in found if same_checkpoint(r, res.checkpoint(network, seed))]
        return found[0][key] if found and found[0][key] is not None else math.nan

    def mean(study, key):
        return spread([value(study, "v2", name, key, seed) for seed in seeds])["mean"]

    out = {study: {"rmse_body_ref": mean(study, RMSE), "lesion_bias_ref": mean(study, BIAS),
                   "liver_cov": mean(study, COV)} for study in studies}  # fmt: skip
    change = [value(s, "v1", name, RMSE, seed) - value(s, "v1", "v1-net", RMSE, seed) for s in studies for seed in seeds]
    out["v1_change"] = spread(change)["mean"]
    out["v1_forgetting"] = forgetting(out["v1_change"])
    return out


@cache
def variants(res: Results) -> dict | None:
    """TGD-net, its variants and FT-net (means over the variant seeds) on the validation and the test studies, and
    the variant chosen on the validation study by :data:`RULE`. None when the run has no variants."""
    seeds = variant_seeds(res)
    names = ["TGD-net", *res.manifest["ablations"]]
    if not seeds or not res.manifest["ablations"] or not res.val_studies:
        return None
    every = ["FT-net", *names]
    val = {n: _variant_numbers(res, res.val, res.val_studies, n, seeds) for n in every}
    test = {n: _variant_numbers(res, res.eval, _test_studies(res), n, seeds) for n in every}
    limit = FORGETTING_SHARE * val["FT-net"]["v1_forgetting"]
    qualified = [n for n in names if val[n]["v1_forgetting"] <= limit]
    mean_rmse = lambda n: spread([val[n][s]["rmse_body_ref"] for s in res.val_studies])["mean"]  # noqa: E731
    if qualified:
        chosen = min(qualified, key=mean_rmse)
    else:
        chosen = min(names, key=lambda n: val[n]["v1_forgetting"])
    return {"seeds": seeds, "validation_studies": res.val_studies, "test_studies": _test_studies(res),
            "validation": val, "test": test, "rule": RULE, "forgetting_limit": limit, "qualified": qualified,
            "chosen": chosen, "bundle_default": "TGD-net", "chosen_is_default": chosen == "TGD-net"}  # fmt: skip


RULE = (f"among the TGD variants (TGD-net included) whose v1 forgetting on the validation study (the rise of the "
        f"body RMSE from v1-net's on the v1 reconstruction, 0 where it falls) is at most {FORGETTING_SHARE:g} x "
        "FT-net's, the one with the lowest v2 body RMSE against the 600 s image on the validation study; if none "
        "qualifies, the one with the lowest forgetting")


def _per_seed(res: Results, study: str, recon: str, network: str, key: str) -> list[float]:
    return [(res.row(study, recon, network, s) or {}).get(key, math.nan) for s in res.seeds]


@cache
def targets(res: Results) -> list[Check]:
    """The targets, means over the seeds, each naming the premises it rests on."""
    prem = [p.name for p in premises(res)]
    on = lambda *prefixes: [p for p in prem if p.startswith(prefixes)]  # noqa: E731
    v1r, v2r = _mean(res, LOW, "v2", "v1-net", RMSE), _mean(res, LOW, "v2", "v2-net", RMSE)
    tgd = _mean(res, LOW, "v2", "TGD-net", RMSE)
    low = lambda name: [p for p in on(name) if LOW in p]  # noqa: E731
    out = [
        Check(f"closure[{LOW}]", 100 * (v1r - tgd) / (v1r - v2r) if v1r != v2r else math.nan, CLOSURE_PCT, ">=",
              f"{LOW} (v2): share of the v1-net to v2-net gap in body RMSE vs 600 s that TGD-net closes, "
              "100 x (RMSE(v1-net) - RMSE(TGD-net)) / (RMSE(v1-net) - RMSE(v2-net)) (%)",
              low("shift_") + low("input_cov_match") + low("gap")),
        Check(f"lesion_bias_vs_ft[{LOW}]", abs(_mean(res, LOW, "v2", "TGD-net", BIAS)),
              abs(_mean(res, LOW, "v2", "FT-net", BIAS)), "<=",
              f"{LOW} (v2): |mean lesion bias vs 600 s| (%) of TGD-net at most FT-net's",
              on("resolvable_lesions") + low("shift_lesion_bias")),
    ]
    studies = _test_studies(res)
    change = {n: v1_change(res, n, studies) for n in ("TGD-net", "FT-net")}
    out.append(Check("forgetting", forgetting(change["TGD-net"]), FORGETTING_SHARE * forgetting(change["FT-net"]), "<=",
                     f"v1 test studies: TGD-net's forgetting, the rise of its body RMSE from v1-net's (SUV; mean "
                     f"over the {len(studies)} v1 test studies and the seeds; 0 for a fall), at most "
                     f"{FORGETTING_SHARE:g} x FT-net's (changes: TGD-net {change['TGD-net']:+.4f}, FT-net "
                     f"{change['FT-net']:+.4f})", ["ft_forgets"]))
    out.append(Check(f"high_bmi_cov[{HIGH}]", _mean(res, HIGH, "v2", "TGD-net", COV),
                     _mean(res, HIGH, "v2", "FT-net", COV), "<=",
                     f"{HIGH} (v2): TGD-net's liver CoV (%) at most FT-net's",
                     [p for p in on("shift_liver_cov", "input_cov_match") if HIGH in p]))
    for study in res.manifest["ood_studies"]:
        for base, online in res.manifest["online_bases"].items():
            cut, cov = [], []
            for seed in res.seeds:
                b, o = res.ood_row(study, base, seed) or {}, res.ood_row(study, online, seed) or {}
                if b and o and None not in (o["ood_rmse_ref"], o["liver_pixel_cov_pct"]) and b["ood_rmse_ref"] \
                        and b["liver_pixel_cov_pct"]:
                    cut.append(100 * (o["ood_rmse_ref"] / b["ood_rmse_ref"] - 1))
                    cov.append(100 * (o["liver_pixel_cov_pct"] / b["liver_pixel_cov_pct"] - 1))
            label = res.label(online)
            rests = [p for p in on("artefact") if study in p and (base in p)]
            out.append(Check(f"online_ood_rmse[{study}, {label}]", spread(cut)["mean"], ONLINE_CUT_PCT, "<=",
                             f"{study}: {label}'s OOD RMSE change against its base {base} of the same seed (%)",
                             rests))
            out.append(Check(f"online_liver_cov[{study}, {label}]", spread(cov)["mean"], ONLINE_COV_PCT, "<=",
                             f"{study}: {label}'s liver pixel CoV change against its base {base} (%)", rests))
    return out
