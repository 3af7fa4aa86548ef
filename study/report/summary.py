"""``results.json``: the report's headline numbers as plain numbers, from the same computations as results.md.

Layout (network names: ``input``, ``v1-net``, ``v2-net``, ``FT-net``, ``TGD-net``, ``TGD_N2N-net``, ``TGD2_N2N-net``,
and in ``table1`` the variants run at every seed by their names, e.g. ``TGD-net (automatic threshold)``; studies and
recons as in the datalist)::

    {"premises": {name: {"met", "value", "threshold", "rule", "description"}},
     "table1": {study: {recon: {network: {"lesion_bias_ref" | "liver_cov" | "rmse_body_ref" | "rmse_body_ref_image":
                                          {"mean", "sd"}}}}},
     "online": {study: {network: {"ood_rmse" | "liver_cov": {"mean", "sd"}}}},
     "targets": {name: {"met", "value", "threshold", "rule", "description", "rests_on"}},
     "seeds": [...], "variants": {...} | null, "convergence": {network: {seed: {...}}}}

``sd``: the sample SD over seeds; 0 for a network with one value (the input, v1-net, v2-net: shared by all seeds).
A number the run could not measure (e.g. the lesion bias of a study without lesions) is ``null``.
"""

from __future__ import annotations

import math

from .checks import convergence, premises, targets, variants
from .results import HIGH, LOW, MAIN_NETWORKS, Results

#: results.json's metric names for the evaluation rows' keys
TABLE1 = {"lesion_bias_ref": "liver_lesion_bias_ref_pct", "liver_cov": "liver_cov_pct",
          "rmse_body_ref": "rmse_body_ref", "rmse_body_ref_image": "rmse_body_ref_image"}  # fmt: skip
ONLINE = {"ood_rmse": "ood_rmse_ref", "liver_cov": "liver_pixel_cov_pct"}


def plain(value):
    """JSON-ready: non-finite floats become None, containers are converted recursively (dict keys to str)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _ms(s: dict) -> dict:
    return {"mean": s["mean"], "sd": s["sd"]}


def summary(res: Results) -> dict:
    """Everything results.json holds, computed from the run's files like the markdown."""
    table1 = {study: {recon: {res.label(n): {k: _ms(res.metric(study, recon, n, key)) for k, key in TABLE1.items()}
                              for n in [res.input_name, *MAIN_NETWORKS, *res.manifest.get("every_seed", [])]}
                      for recon in ("v2", "v1")}
              for study in (LOW, HIGH)}  # fmt: skip
    online_names = [res.ood_input_name, *res.manifest["online_bases"], *res.manifest["online_bases"].values()]
    online = {study: {res.label(n): {k: _ms(res.ood_metric(study, n, key)) for k, key in ONLINE.items()}
                      for n in online_names}
              for study in res.manifest["ood_studies"]}  # fmt: skip
    return plain({
        "premises": {c.name: c.as_json() for c in premises(res)},
        "table1": table1,
        "online": online,
        "targets": {c.name: c.as_json() for c in targets(res)},
        "seeds": res.seeds,
        "variants": variants(res),
        "convergence": convergence(res),
    })
