"""The outputs of one study run, read from its work folder: :class:`Results`.

Where each file is comes from the manifest's ``layout`` (written by ``run_study.py``): evaluation tables, loss curves,
the KSE sweeps, the TGD masks and the checkpoints. The names below are those the run gives its studies and networks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from .stats import spread

#: the networks of the paper's Table 1, in its order
MAIN_NETWORKS = ["v1-net", "v2-net", "FT-net", "TGD-net"]
#: the cohort's two v2 test studies (Table 1 and Fig. 5)
LOW, HIGH = "test_low_bmi_lesion", "test_high_bmi"
#: results.json's network names for the report's labels (the online networks' labels name their base)
CANONICAL = {"TGD_N2N-net (on v2-net)": "TGD_N2N-net", "TGD2_N2N-net (on TGD-net)": "TGD2_N2N-net"}


def read_json(path: Path) -> dict:
    """One JSON output of the run; a clear error if the run has not produced it."""
    if not path.is_file():
        raise FileNotFoundError(f"report: {path} is missing; run study/run_study.py to produce it.")
    return json.loads(path.read_text(encoding="utf-8"))


def same_checkpoint(row: Mapping, checkpoint: Path) -> bool:
    """Whether an evaluation row is of ``checkpoint``: by file name (``model_<stage>.pt``, one per stage), so a work
    folder that was moved or copied still matches the absolute paths its evaluation files hold."""
    return Path(row["checkpoint"]).name == Path(checkpoint).name


class Results:
    """Every output of one study run, grouped for the report; where each file is comes from the manifest's
    ``layout`` (written by ``run_study.py``)."""

    def __init__(self, work: Path, manifest: Mapping) -> None:
        self.work, self.manifest, self.layout = work, manifest, manifest["layout"]
        self.seeds = list(manifest["seeds"])
        self.weight_decay = float(manifest["weight_decay"])
        kse = {name: read_json(work / path) for name, path in self.layout["kse"].items()}
        # the no-weight-decay control runs only with --controls: None without it
        self.kse, self.kse_no_wd = kse["v1-net"], kse.get("no weight decay")
        # curves: {"v1-net" | "v2-net" | "no weight decay": records, (fine-tuned network or variant, seed): records}
        self.curves: dict = {}
        for name, where in self.layout["curves"].items():
            if isinstance(where, str):
                self.curves[name] = read_json(work / where)["records"]
            else:
                self.curves |= {(name, int(seed)): read_json(work / path)["records"] for seed, path in where.items()}
        self.masks = {int(seed): read_json(work / path) for seed, path in self.layout["masks"].items()}
        self.tgd_threshold = float(self.masks[self.seeds[0]]["threshold"])
        #: how the bundle's default TGD-net was fine-tuned, from its tgd_masks.json: e.g. 'readers "all", mode "parameter"'
        self.tgd_recipe = ", ".join(f'{k} "{self.masks[self.seeds[0]].get(k, "none")}"' for k in ("readers", "mode"))
        self.ablation_masks = {name: {int(seed): read_json(work / path) for seed, path in per_seed.items()}
                               for name, per_seed in self.layout.get("ablation_masks", {}).items()}  # fmt: skip
        self.online_masks = {int(seed): {study: {n: read_json(work / path) for n, path in per_study.items()}
                                         for study, per_study in studies.items()}
                             for seed, studies in self.layout["online_masks"].items()}  # fmt: skip
        self.eval: dict[tuple, list[dict]] = {}  # (study, recon, network) -> one row per seed (shared nets: one)
        for path in self.layout["evaluations"]:
            for row in read_json(work / path)["rows"]:
                self.eval.setdefault((row["study"], row["recon"], row["network"]), []).append(row)
        # the same networks on the validation section (where every choice is made): (study, recon, network) -> rows
        self.val: dict[tuple, list[dict]] = {}
        for path in self.layout.get("validation_evaluations", []):
            for row in read_json(work / path)["rows"]:
                self.val.setdefault((row["study"], row["recon"], row["network"]), []).append(row)
        self.val_studies = sorted({k[0] for k in self.val})
        self.ood: dict[tuple, list[dict]] = {}  # (study, network) -> one row per seed (shared nets: one)
        for path in self.layout["ood_evaluations"]:
            for row in read_json(work / path)["rows"]:
                self.ood.setdefault((row["study"], row["network"]), []).append(row)
        self.input_name = next(k[2] for k, rows in self.eval.items() if rows[0].get("baseline"))
        self.ood_input_name = next(k[1] for k, rows in self.ood.items() if rows[0].get("baseline"))

    def metric(self, study: str, recon: str, network: str, key: str) -> dict:
        return spread([r[key] for r in self.eval.get((study, recon, network), [])])

    def val_metric(self, study: str, recon: str, network: str, key: str) -> dict:
        return spread([r[key] for r in self.val.get((study, recon, network), [])])

    def label(self, network: str) -> str:
        """results.json's name of a network: ``input`` for the un-denoised input, the online networks without the
        name of their base."""
        if network in (self.input_name, self.ood_input_name):
            return "input"
        return CANONICAL.get(network, network.split(" (on ")[0])

    def ood_metric(self, study: str, network: str, key: str) -> dict:
        return spread([r[key] for r in self.ood.get((study, network), [])])

    def checkpoint(self, network: str, seed: int, study: str | None = None) -> Path:
        """The checkpoint of ``network`` (shared, or of ``seed``; an online network: of ``study`` too)."""
        shared = self.layout["checkpoints"]
        if network in shared:
            return self.work / shared[network]
        per_seed = shared[str(seed)]
        return self.work / (per_seed["online"][study][network] if study is not None else per_seed[network])

    def row(self, study: str, recon: str, network: str, seed: int) -> dict | None:
        """The evaluation row of ``network`` for ``seed`` (the shared row for v1-net / v2-net / the input)."""
        rows = self.eval.get((study, recon, network), [])
        if len(rows) == 1:
            return rows[0]
        return next((r for r in rows if same_checkpoint(r, self.checkpoint(network, seed))), None)

    def ood_row(self, study: str, network: str, seed: int) -> dict | None:
        rows = self.ood.get((study, network), [])
        if len(rows) == 1:
            return rows[0]
        online = network in self.manifest["online_bases"].values()
        checkpoint = self.checkpoint(network, seed, study if online else None)
        return next((r for r in rows if same_checkpoint(r, checkpoint)), None)

    def train_seconds(self, curve) -> float:
        return float(self.curves[curve][-1]["train_seconds"])
