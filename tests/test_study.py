"""The reproduction study (study/run_study.py, study/report/) end to end on the tiny profile: the CI smoke run."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ._bitwise import CHILD_RUNS_EXACT, assert_same_weights

STUDY = Path(__file__).resolve().parents[1] / "study"
sys.path.insert(0, str(STUDY))

import report  # noqa: E402
import run_study  # noqa: E402

FIGURES = ["fig4_kse_threshold.png", "kse_distribution.png", "loss_curves.png", "fig5_finetune.png", "fig6_online.png"]
SEED = 0  # the seed of the tiny study run below
LOW, HIGH = "test_low_bmi_lesion", "test_high_bmi"  # the tiny cohort's test studies
#: the paper's numbers the report prints beside the run's (paper Section 4 and Table 1): the only table cells that do
#: not come from the run's files
PAPER_FLAGGED_PCT = {0.3: "51.4", 0.4: "51.6", 0.5: "53.0", 0.6: "67.3"}
PAPER_ROWS = {"paper: lesion bias (%)": {"v1-net": "-6.30", "v2-net": "-4.07", "FT-net": "-4.71", "TGD-net": "-3.77"},
              "paper: liver CoV (%)": {"v1-net": "6.02", "v2-net": "8.56", "FT-net": "7.87", "TGD-net": "6.46"}}


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    pytest.importorskip("matplotlib")
    work = tmp_path_factory.mktemp("study")
    results = run_study.run_study("tiny", work / "work", work / "docs", seeds=[SEED], workers=2)
    return work / "work", results


# ---- the report's tables, recomputed from the run's files ------------------------------------------------------


@dataclass
class Table:
    label: str  # the last non-empty line above the table: its bold caption or the paragraph introducing it
    header: list[str]
    rows: list[list[str]]


def markdown_tables(text: str) -> list[Table]:
    lines = text.splitlines()
    tables, i = [], 0
    while i < len(lines):
        if lines[i].startswith("| ") and i + 1 < len(lines) and re.fullmatch(r"(\|---)+\|", lines[i + 1]):
            j = i + 2
            while j < len(lines) and lines[j].startswith("| "):
                j += 1
            label = next(line for line in reversed(lines[:i]) if line.strip())
            tables.append(Table(label, _cells(lines[i]), [_cells(line) for line in lines[i + 2 : j]]))
            i = j
        else:
            i += 1
    return tables


def _cells(line: str) -> list[str]:
    # cells are separated by " | "; a cell may hold bars without spaces around them ("|weight|")
    return [c.strip() for c in line.strip()[1:-1].strip().split(" | ")]


def _read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def num(value, digits: int) -> str:
    """A number as the report writes it (one seed: the value; missing: n/a)."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def v2_time_to(curve: list[dict], loss: float) -> float:
    """Training seconds at which a loss curve first reaches ``loss``, linear between its validations; NaN if never."""
    for k, record in enumerate(curve):
        value, seconds = record["metrics"]["val_loss"], record["train_seconds"]
        if value <= loss:
            if k == 0:
                return float(seconds)
            before = curve[k - 1]
            v0, t0 = before["metrics"]["val_loss"], before["train_seconds"]
            return t0 + (seconds - t0) * (v0 - loss) / (v0 - value)
    return math.nan


def stage_group(name: str) -> str:
    """The run-time table's row of a stage: per-seed stages summed over seeds, online and OOD stages together."""
    base = re.sub(r"_s\d+$", "", name)
    return "online N2N" if base.startswith("n2n_") else "evaluate OOD" if base.startswith("ood_") else base


HEADINGS = ("## Premises", "## Targets", "## 1. Threshold study", "## 2. Fine-tuning", "## 3. Convergence",
            "## 4. Forgetting", "## 5. Cost", "## 6. Online learning", "## 7. TGD-net and its variants")
#: results.json's names for the markdown's: Table 1's metric rows, the online table's columns
JSON_TABLE1 = {"lesion bias vs 600 s (%)": "lesion_bias_ref", "liver CoV (%)": "liver_cov",
               "body RMSE vs 600 s (SUV)": "rmse_body_ref", "image RMSE vs 600 s (SUV)": "rmse_body_ref_image"}
JSON_ONLINE = {"OOD RMSE vs 600 s (SUV)": "ood_rmse", "liver pixel CoV (%)": "liver_cov"}


def json_name(network: str) -> str:
    """results.json's network name for a report label: the input, and the online networks without their base."""
    return "input" if network.startswith("input (") else network.split(" (on ")[0]


def same(cell: str, value) -> bool:
    """The markdown cell is ``value`` printed with the cell's own number of decimals ("n/a" for None)."""
    if value is None:
        return cell == "n/a"
    decimals = len(cell.split(".")[1]) if "." in cell else 0
    return cell == f"{value:.{decimals}f}"


def same_spread(cell: str, entry: dict) -> bool:
    """A "mean ± sd" cell (one value: "mean", and results.json's SD is 0) against a {"mean", "sd"} entry."""
    mean, _, sd = cell.partition(" ± ")
    return same(mean, entry["mean"]) and (same(sd, entry["sd"]) if sd else entry["sd"] in (0, 0.0, None))


def check_json_against_markdown(text: str, summary: dict) -> None:
    """Every Table 1 and online number of results.json is in results.md's tables and equal up to their rounding;
    every premise and target has the same value, threshold and verdict; the premises come before any TGD number."""
    assert "## Premises" in text and text.index("## Premises") < text.index("TGD")
    checked = {"table1": 0, "online": 0}
    verdicts: dict[str, dict] = {"premise": {}, "target": {}}
    for t in markdown_tables(text):
        if t.header[0] == "metric":
            study, recon = re.fullmatch(r"\*\*(\S+) \((v\d)\)\*\*", t.label).groups()
            for row in (r for r in t.rows if r[0] in JSON_TABLE1):
                for network, cell in zip(t.header[1:], row[1:]):
                    entry = summary["table1"][study][recon][json_name(network)][JSON_TABLE1[row[0]]]
                    assert same_spread(cell, entry), (study, recon, network, row[0], cell, entry)
                    checked["table1"] += 1
        elif t.header[:2] == ["network", "OOD RMSE vs 600 s (SUV)"]:
            study = re.match(r"\*\*(\S+)\*\*", t.label).group(1)
            for row in t.rows:
                for column, cell in zip(t.header[1:], row[1:]):
                    if column in JSON_ONLINE:
                        entry = summary["online"][study][json_name(row[0])][JSON_ONLINE[column]]
                        assert same_spread(cell, entry), (study, row[0], column, cell, entry)
                        checked["online"] += 1
        elif t.header[0] in verdicts:
            for row in t.rows:
                verdicts[t.header[0]][row[0].strip("`")] = row
    # nothing in results.json that the markdown does not show
    assert checked["table1"] == sum(len(n) for s in summary["table1"].values() for r in s.values() for n in r.values())
    assert checked["online"] == sum(len(n) for s in summary["online"].values() for n in s.values())
    for kind, key in (("premise", "premises"), ("target", "targets")):
        assert sorted(verdicts[kind]) == sorted(summary[key]), kind
        for name, entry in summary[key].items():
            row = verdicts[kind][name]
            assert (row[-1] == "met") == entry["met"] and row[-1] in ("met", "**not met**"), (name, row, entry)
            assert same(row[2], entry["value"]) and same(row[4], entry["threshold"]) and row[3] == entry["rule"], name
    chosen = re.search(r"Chosen: \*\*(.+?)\*\*", text).group(1)
    assert chosen == summary["variants"]["chosen"]


def check_verdicts(files: RunFiles, summary: dict) -> None:
    """The premises, targets, variant choice and convergence records of results.json against this test's own
    reading of issue 11's rules, from the run's evaluation rows and loss curves (one seed)."""
    ev, ood = files.evals, files.ood

    def agree(entry: dict, value: float, threshold: float, met: bool) -> bool:
        """results.json's entry holds value and threshold (null where not a number) and the verdict."""
        close = [e is None if not math.isfinite(x) else e == pytest.approx(x, rel=1e-9, abs=1e-12)
                 for e, x in ((entry["value"], value), (entry["threshold"], threshold))]
        return all(close) and entry["met"] is met

    def rule(name: str) -> str:  # issue 11's comparisons: strictly lower, within a limit, at least, strictly above
        return "<" if name.startswith(("shift", "gap")) else ">=" if name.startswith(
            ("resolvable", "artefact", "closure")) else ">" if name == "ft_forgets" else "<="

    def ratio(a, b) -> float:  # nan where a structure has no voxel at this resolution (no OOD value)
        return a / b if a is not None and b else math.nan

    inp = next(n for (_, _, n), row in ev.items() if row["baseline"])
    m = lambda s, r, n, k: ev[(s, r, n)][k]  # noqa: E731
    expected = {}  # name: (value, threshold, met)
    for s in (LOW, HIGH):
        expected[f"shift_liver_cov[{s}]"] = tuple(m(s, "v2", n, "liver_cov_pct") for n in ("v1-net", "v2-net"))
        bias = [m(s, "v2", n, "liver_lesion_bias_ref_pct") for n in ("v1-net", "v2-net")]
        if None not in bias and all(math.isfinite(b) for b in bias):
            expected[f"shift_lesion_bias[{s}]"] = tuple(bias)
        c1, c2 = m(s, "v1", inp, "liver_cov_pct"), m(s, "v2", inp, "liver_cov_pct")
        expected[f"input_cov_match[{s}]"] = (100 * abs(c1 - c2) / c2, 15.0, 100 * abs(c1 - c2) / c2 <= 15)
        expected[f"gap[{s}]"] = (m(s, "v2", "v2-net", "rmse_body_ref"), m(s, "v2", "v1-net", "rmse_body_ref"))
    # forgetting: the rise of the v1 body RMSE from v1-net's (a fall is none); FT-net must forget for it to mean much
    change = {n: sum(m(s, "v1", n, "rmse_body_ref") - m(s, "v1", "v1-net", "rmse_body_ref") for s in (LOW, HIGH)) / 2
              for n in ("TGD-net", "FT-net")}  # fmt: skip
    forget = {n: max(c, 0.0) for n, c in change.items()}
    expected["ft_forgets"] = (change["FT-net"], 0.0, change["FT-net"] > 0)
    v2b = m(LOW, "v2", "v2-net", "liver_lesion_bias_ref_pct")
    expected[f"resolvable_lesions[{LOW}]"] = (v2b, -10.0, v2b >= -10)
    for (study, network), row in ood.items():
        if network in ("v2-net", "TGD-net"):
            given = next(x for (s, _), x in ood.items() if s == study and x["baseline"])
            r = ratio(row["ood_rmse_ref"], given["ood_rmse_ref"])
            who = network if network == "v2-net" else f"TGD-net s{SEED}"
            expected[f"artefact[{study}, {who}]"] = (r, 1.5, r >= 1.5)
    # strict "lower than" premises: value < threshold
    expected = {k: v if len(v) == 3 else (*v, v[0] < v[1]) for k, v in expected.items()}
    assert sorted(summary["premises"]) == sorted(expected)
    for name, (value, threshold, met) in expected.items():
        assert agree(summary["premises"][name], value, threshold, met), (name, summary["premises"][name])
        assert summary["premises"][name]["rule"] == rule(name), name

    r1, r2, rt = (m(LOW, "v2", n, "rmse_body_ref") for n in ("v1-net", "v2-net", "TGD-net"))
    closure = 100 * (r1 - rt) / (r1 - r2)
    bt, bf = (abs(m(LOW, "v2", n, "liver_lesion_bias_ref_pct")) for n in ("TGD-net", "FT-net"))
    ct, cf = (m(HIGH, "v2", n, "liver_cov_pct") for n in ("TGD-net", "FT-net"))
    wanted = {f"closure[{LOW}]": (closure, 50.0, closure >= 50), f"lesion_bias_vs_ft[{LOW}]": (bt, bf, bt <= bf),
              "forgetting": (forget["TGD-net"], forget["FT-net"] / 2, forget["TGD-net"] <= forget["FT-net"] / 2),
              f"high_bmi_cov[{HIGH}]": (ct, cf, ct <= cf)}  # fmt: skip
    for study in {s for s, _ in ood}:
        for base, online in (("v2-net", "TGD_N2N-net"), ("TGD-net", "TGD2_N2N-net")):
            b = ood[(study, base)]
            o = next(row for (s, n), row in ood.items() if s == study and json_name(n) == online)
            cut = 100 * (ratio(o["ood_rmse_ref"], b["ood_rmse_ref"]) - 1)
            cov = 100 * (ratio(o["liver_pixel_cov_pct"], b["liver_pixel_cov_pct"]) - 1)
            if not math.isfinite(cut):  # the report counts a seed only where both changes are measurable
                cov = math.nan
            wanted[f"online_ood_rmse[{study}, {online}]"] = (cut, -30.0, cut <= -30)
            wanted[f"online_liver_cov[{study}, {online}]"] = (cov, 10.0, cov <= 10)
    assert sorted(summary["targets"]) == sorted(wanted)
    for name, (value, threshold, met) in wanted.items():
        assert agree(summary["targets"][name], value, threshold, met), (name, summary["targets"][name])
        assert summary["targets"][name]["rule"] == rule(name), name

    # the variant choice: made on the validation study only
    val, names = files.val, [n for n in files.tuned if n != "FT-net"]
    vstudies = sorted({s for s, _, _ in val})
    forgetting = {n: max(0.0, sum(val[(s, "v1", n)]["rmse_body_ref"] - val[(s, "v1", "v1-net")]["rmse_body_ref"]
                                  for s in vstudies) / len(vstudies)) for n in files.tuned}  # fmt: skip
    rmse = {n: sum(val[(s, "v2", n)]["rmse_body_ref"] for s in vstudies) / len(vstudies) for n in names}
    qualified = [n for n in names if forgetting[n] <= forgetting["FT-net"] / 2]
    chosen = min(qualified, key=rmse.get) if qualified else min(names, key=forgetting.get)
    v = summary["variants"]
    assert (v["chosen"], v["bundle_default"], v["chosen_is_default"]) == (chosen, "TGD-net", chosen == "TGD-net")
    assert sorted(v["qualified"]) == sorted(qualified)
    assert v["forgetting_limit"] == pytest.approx(forgetting["FT-net"] / 2, rel=1e-9)

    cap = files.manifest["settings"]["finetune_epochs"]
    for name, curve in files.tuning.items():
        losses = [r["metrics"]["val_loss"] for r in curve]
        assert summary["convergence"][name][str(SEED)] == {
            "steps": curve[-1]["iteration"], "epochs": curve[-1]["epoch"], "train_seconds": curve[-1]["train_seconds"],
            "val_loss_start": losses[0], "val_loss_best": min(losses), "val_loss_stop": losses[-1],
            "stopped_by": "epoch cap" if curve[-1]["epoch"] >= cap else "plateau rule"}, name
    assert summary["seeds"] == [SEED]


class RunFiles:
    """What every table of the report is made of, read from the run's own files."""

    def __init__(self, work: Path) -> None:
        import torch

        runs = work / "runs"
        self.evals, self.ood = {}, {}
        for name in ("eval_shared", f"eval_s{SEED}"):
            for row in _read(runs / name / "evaluation.json")["rows"]:
                key = (row["study"], row["recon"], row["network"])
                assert key not in self.evals
                self.evals[key] = row
        self.tuned = list(_read(runs / f"eval_s{SEED}" / "evaluation.json")["networks"])  # FT-net, TGD-net, variants
        self.val = {}  # the validation section: shared networks and this seed's fine-tuned ones
        for name in ("val_shared", f"val_s{SEED}"):
            for row in _read(runs / name / "evaluation.json")["rows"]:
                key = (row["study"], row["recon"], row["network"])
                assert key not in self.val
                self.val[key] = row
        self.manifest = _read(work / "manifest.json")
        for path in sorted(runs.glob("ood_*/evaluation_ood.json")):
            for row in _read(path)["rows"]:
                assert (row["study"], row["network"]) not in self.ood
                self.ood[(row["study"], row["network"])] = row
        self.sweeps = {name: _read(runs / name / "kse_sweep.json") for name in ("kse_sweep", "kse_sweep_no_wd")
                       if (runs / name).is_dir()}  # the no-weight-decay control: --controls only
        self.curves = {run: _read(runs / run / "loss_curve.json")["records"]
                       for run in ("v2", f"tgd_s{SEED}", f"ft_s{SEED}")}
        # the loss curve of every fine-tuning run of SEED, by network: the run folder is runs/<stage>/
        self.tuning = {name: _read(work / per_seed[str(SEED)])["records"]
                       for name, per_seed in self.manifest["layout"]["curves"].items()
                       if isinstance(per_seed, dict) and str(SEED) in per_seed}  # fmt: skip
        self.masks = _read(runs / f"tgd_s{SEED}" / "tgd_masks.json")["retrained_channels"]
        self.v1 = torch.load(work / "models" / "model_v1.pt", map_location="cpu", weights_only=True)
        self.stages, self.invocations = _read(work / "stages.json"), _read(work / "invocations.json")

    # one method per kind of table; each checks every cell and that no row is missing
    def sweep(self, t: Table) -> None:
        sweep = self.sweeps["kse_sweep_no_wd" if "`v1_no_wd`" in t.label else "kse_sweep"]
        assert [float(row[0]) for row in t.rows] == [r["threshold"] for r in sweep["rows"]]
        for row, r in zip(t.rows, sweep["rows"]):
            assert row[1:] == [
                f"{r['flagged_channels']} / {r['total_channels']}", f"{r['dropped_params_pct']:.1f}",
                PAPER_FLAGGED_PCT[r["threshold"]], f"{r['kse_output_change_pct']:.2f}",
                f"{r['random_output_change_pct']:.2f} [{r['random_output_change_pct_min']:.2f}, "
                f"{r['random_output_change_pct_max']:.2f}]",
            ], row  # fmt: skip

    def table1(self, t: Table) -> tuple:
        study, recon = re.fullmatch(r"\*\*(\S+) \((v\d)\)\*\*", t.label).groups()
        metrics = {"lesion bias vs 600 s (%)": ("liver_lesion_bias_ref_pct", 2),
                   "lesion bias vs truth (%)": ("liver_lesion_bias_truth_pct", 2),
                   "liver CoV (%)": ("liver_cov_pct", 2), "body RMSE vs 600 s (SUV)": ("rmse_body_ref", 4),
                   "image RMSE vs 600 s (SUV)": ("rmse_body_ref_image", 4)}
        baseline = next(n for (s, r, n), row in self.evals.items() if (s, r) == (study, recon) and row["baseline"])
        # the variants run at every seed stand beside TGD-net (the tiny run: the automatic threshold)
        every_seed = self.manifest["every_seed"]
        assert every_seed == [n for n in run_study.EVERY_SEED if n in self.manifest["ablations"]] and every_seed
        assert t.header[1:] == [baseline, "v1-net", "v2-net", "FT-net", "TGD-net", *every_seed]
        for row in t.rows:
            if row[0] in PAPER_ROWS:
                assert row[1:] == [""] + [PAPER_ROWS[row[0]].get(n, "—") for n in t.header[2:]], row
            else:
                key, digits = metrics[row[0]]
                assert row[1:] == [num(self.evals[(study, recon, n)][key], digits) for n in t.header[1:]], row
        assert set(metrics) <= {row[0] for row in t.rows}
        return study, recon

    def forgetting(self, t: Table) -> tuple:
        study, recon = re.fullmatch(r"\*\*(\S+) \((v\d)\)\*\*", t.label).groups()
        keys = [("liver_lesion_bias_ref_pct", 2), ("liver_cov_pct", 2), ("rmse_body_ref", 4)]
        base = self.evals[(study, recon, "v1-net")]
        assert sorted(row[0] for row in t.rows) == sorted(["v1-net", *self.tuned])
        for row in t.rows:
            r = self.evals[(study, recon, row[0])]
            expected = [num(r[k], d) if row[0] == "v1-net" else f"{num(r[k], d)} ({r[k] - base[k]:+.{d}f})"
                        for k, d in keys]  # fmt: skip
            assert row[1:] == expected, row
        return study, recon

    def cost(self, t: Table) -> None:
        v2 = self.curves["v2"]
        assert sorted(row[0] for row in t.rows) == sorted(f"{n}, seed {SEED}" for n in ("TGD-net", "FT-net"))
        for row in t.rows:
            curve = self.curves[{"TGD-net": "tgd", "FT-net": "ft"}[row[0].split(",")[0]] + f"_s{SEED}"]
            final, seconds = curve[-1]["metrics"]["val_loss"], curve[-1]["train_seconds"]
            scratch = v2_time_to(v2, final)
            reached = ("at initialisation" if scratch == 0 else f"{scratch:.1f}" if math.isfinite(scratch)
                       else f"not reached in {v2[-1]['train_seconds']:.0f}")  # fmt: skip
            saved = 100 * (1 - seconds / scratch) if math.isfinite(scratch) and scratch > 0 else math.nan
            assert row[1:] == [f"{curve[0]['metrics']['val_loss']:.5f}", f"{final:.5f}", f"{seconds:.1f}", reached,
                               num(saved, 1)], row  # fmt: skip

    def convergence(self, t: Table) -> None:
        cap = self.manifest["settings"]["finetune_epochs"]
        assert sorted(row[0] for row in t.rows) == sorted(f"{n}, seed {SEED}" for n in self.tuning)
        for row in t.rows:
            curve = self.tuning[row[0].split(",")[0]]
            losses = [r["metrics"]["val_loss"] for r in curve]
            assert row[1:] == [str(curve[-1]["iteration"]), str(curve[-1]["epoch"]),
                               f"{curve[-1]['train_seconds']:.1f}", f"{losses[0]:.5f}", f"{min(losses):.5f}",
                               f"{losses[-1]:.5f}", "epoch cap" if curve[-1]["epoch"] >= cap else "plateau rule"], row

    def online(self, t: Table) -> str:
        study, voxels = re.fullmatch(r"\*\*(\S+)\*\* \((\d+) voxels in the OOD ROI\)", t.label).groups()
        keys = [("ood_rmse_ref", 4), ("ood_mae_ref", 4), ("ood_bias_ref_pct", 2), ("liver_pixel_cov_pct", 2)]
        assert sorted(row[0] for row in t.rows) == sorted(n for s, n in self.ood if s == study)
        for row in t.rows:
            r = self.ood[(study, row[0])]
            assert r["ood_voxels"] == int(voxels) and row[1:] == [num(r[k], d) for k, d in keys], row
        return study

    def variants(self, t: Table) -> str:
        """A variants table (validation or test section, by its caption): each study's v2 numbers and the v1
        forgetting (body-RMSE change from v1-net, mean over the studies) of FT-net, TGD-net and every variant."""
        where, studies = re.fullmatch(r"\*\*(Validation|Test) \((.+)\)\*\*", t.label).groups()
        rows, studies = (self.val if where == "Validation" else self.evals), studies.split(", ")
        assert studies == sorted({s for s, _, _ in rows}) if where == "Validation" else studies == [LOW, HIGH]
        assert [row[0] for row in t.rows] == list(self.tuned)  # FT-net, TGD-net, then the variants
        for row in t.rows:
            v1 = [rows[(s, "v1", row[0])]["rmse_body_ref"] - rows[(s, "v1", "v1-net")]["rmse_body_ref"]
                  for s in studies]
            assert row[1:] == [num(rows[(s, "v2", row[0])][k], d) for s in studies
                               for k, d in (("rmse_body_ref", 4), ("liver_lesion_bias_ref_pct", 2),
                                            ("liver_cov_pct", 2))] + [num(sum(v1) / len(v1), 4)], row
        return where

    def premise_table(self, t: Table) -> None:
        assert t.header == ["premise", "what", "value", "rule", "threshold", "verdict"]

    def target_table(self, t: Table) -> None:
        assert t.header == ["target", "what", "value", "rule", "threshold", "verdict"]

    def hidden_convs(self, t: Table) -> None:
        layers = sum(1 for k in self.v1 if re.fullmatch(r"blocks\.\d+\.conv\.weight", k))
        assert [row[0] for row in t.rows] == [f"blocks.{i}.conv" for i in range(layers - 1)]
        for i, row in enumerate(t.rows):
            reader, retrained = f"blocks.{i + 1}.conv", self.masks[row[0]]
            weight = self.v1[f"{reader}.weight"].abs().double()
            share = float(weight[:, retrained].sum() / weight.sum())
            assert row[1:] == [reader + (" (output conv)" if i + 1 == layers - 1 else ""),
                               f"{100 * len(retrained) / self.v1[f'{row[0]}.weight'].shape[0]:.1f}",
                               f"{100 * share:.2f}"], row  # fmt: skip

    def kse_histogram(self, t: Table) -> None:
        hist = self.sweeps["kse_sweep"]["histogram"]
        edges = hist["bin_edges"]
        assert t.header[1:] == [f"[{a:.1f}, {b:.1f})" for a, b in zip(edges, edges[1:])]
        assert {row[0]: row[1:] for row in t.rows} == {k: [str(c) for c in v] for k, v in hist["per_layer"].items()}

    def invocations_table(self, t: Table) -> None:
        assert t.rows == [[i["started"], f"{i['seconds'] / 60:.1f}", str(i["workers"]), str(i["stages_run"]),
                           str(i["stages_reused"])] for i in self.invocations if i["stages_run"]]  # fmt: skip

    def stage_seconds(self, t: Table) -> None:
        groups: dict[str, float] = {}
        for name, record in self.stages.items():
            groups[stage_group(name)] = groups.get(stage_group(name), 0.0) + record["seconds"]
        cells = {row[0]: row[1] for row in t.rows}
        assert sorted(cells) == sorted(groups)
        for name, seconds in groups.items():  # whole seconds of a sum: the summation order may move a .5 either way
            assert re.fullmatch(r"\d+", cells[name]) and abs(int(cells[name]) - seconds) <= 0.5 + 1e-6, name


def test_report_and_figures_come_from_the_run(tiny_study):
    """Every cell of every table in results.md equals the value recomputed here from the run's files (evaluation
    JSONs, KSE sweeps, loss curves, TGD masks, the v1-net checkpoint, stages.json, invocations.json) with the report's
    rounding, but the paper's numbers printed beside them; every figure is there."""
    work, results = tiny_study
    text = results.read_text(encoding="utf-8")
    for name in FIGURES:
        png = results.parent / "figures" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"(figures/{name})" in text
    for heading in HEADINGS:
        assert heading in text
    assert [text.index(h) for h in HEADINGS] == sorted(text.index(h) for h in HEADINGS)

    files = RunFiles(work)
    seen: dict[str, list] = {}
    for t in markdown_tables(text):
        assert all(len(row) == len(t.header) for row in t.rows), t.header
        first, second = t.header[0], t.header[1]
        kind = {"φ": "sweep", "metric": "table1", "variant": "variants", "hidden conv": "hidden_convs",
                "layer": "kse_histogram", "started": "invocations_table", "stage": "stage_seconds",
                "premise": "premise_table", "target": "target_table"}.get(first)
        if first == "network":
            kind = "online" if second.startswith("OOD RMSE") else "forgetting"
        if first == "run":
            kind = "convergence" if second == "steps" else "cost"
        assert kind is not None, f"a table this test does not check: {t.header}"
        seen.setdefault(kind, []).append(getattr(files, kind)(t) if hasattr(files, kind) else t)
    assert len(seen["sweep"]) == len(files.sweeps) == 1  # the tiny run has no --controls
    assert sorted(seen["table1"]) == sorted((s, r) for s in (LOW, HIGH) for r in ("v1", "v2"))
    assert sorted(seen["forgetting"]) == [(HIGH, "v1"), (HIGH, "v2"), (LOW, "v1")]
    assert sorted(seen["online"]) == sorted({s for s, _ in files.ood})
    assert sorted(seen["variants"]) == ["Test", "Validation"]
    assert all(len(seen[k]) == 1 for k in ("cost", "convergence", "hidden_convs", "kse_histogram",
                                           "invocations_table", "stage_seconds", "premise_table", "target_table"))

    # every stage's exact command is in its log, so it can be rerun by hand
    log = (work / "logs" / "tgd_s0.log").read_text(encoding="utf-8")
    assert log.startswith("$ ") and "-m monai.bundle run" in log.splitlines()[0] and "configs/tgd_s0.json" in log


def test_premises_targets_and_variants_follow_their_rules(tiny_study):
    """Each premise, target, the variant choice and the convergence records of results.json, recomputed here from
    the run's evaluation files and loss curves with the rules of issue 11 (one seed: means are the values)."""
    work, results = tiny_study
    check_verdicts(RunFiles(work), _read(results.parent / "results.json"))


def test_results_json_agrees_with_the_markdown(tiny_study):
    """results.json holds the markdown's numbers: every Table 1 and online cell (mean and SD), every premise and
    target with its verdict; and the premises come before the first TGD number of results.md."""
    _, results = tiny_study
    check_json_against_markdown(results.read_text(encoding="utf-8"), _read(results.parent / "results.json"))


def test_second_run_reuses_every_stage(tiny_study, capsys):
    work, results = tiny_study
    before = json.loads((work / "stages.json").read_text())
    run_study.run_study("tiny", work, results.parent, seeds=[0], workers=2)
    assert json.loads((work / "stages.json").read_text()) == before
    out = capsys.readouterr().out
    assert out.count("reused") == len(before) and " ..." not in out


def test_cut_off_training_resumes_from_its_checkpoint(tiny_study):
    """A training stage cut off after epoch 1 (its epoch-1 checkpoint written, no final model) resumes from that
    checkpoint: the resumed process restores it, trains epochs 2 to the uninterrupted run's last (its epoch cap or
    plateau stop) only, carries the loss curve on, and ends with the
    uninterrupted run's weights (bit for bit where the stages can be deterministic: see tests/_bitwise.py)."""
    import torch

    work, results = tiny_study
    run_dir, final, log = work / "runs" / "ft_s0", work / "models" / "model_ft_s0.pt", work / "logs" / "ft_s0.log"
    weights = torch.load(final, weights_only=True)
    curve = _read(run_dir / "loss_curve.json")["records"]
    threads = _read(work / "stages.json")["ft_s0"]["threads"]
    last = curve[-1]["epoch"]  # the cap, or where the plateau rule stopped the run
    assert last >= 2 and [r["epoch"] for r in curve] == list(range(last + 1))

    # the interrupted run: the stage's command and settings in a fresh run folder (as the study starts one), stopped
    # after epoch 1's checkpoint (epochs=1) and without its final model
    study = run_study.Study("tiny", work, [SEED])
    study.prepare()
    stage = next(s for s in study.stages() if s.name == "ft_s0")
    config = work / "cut" / "ft_s0.json"
    config.parent.mkdir()
    config.write_text(json.dumps({**_read(work / "configs" / "ft_s0.json"), "epochs": 1,
                                  "final_model": str(work / "cut" / "model.pt")}))  # fmt: skip
    for path in run_dir.iterdir():
        if path.name != "stage.json":  # the study's record of the settings the folder was started with
            path.unlink()
    final.unlink()
    command = study.command(stage, config)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    with open(log, "w", encoding="utf-8") as f:
        f.write("$ " + " ".join(command) + "\n\n")
        f.flush()
        code = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, cwd=run_study.BUNDLE, env=env).returncode
    assert code == 0, f"the cut-off run failed; see {log}"
    assert sorted(p.name for p in run_dir.glob("checkpoint_epoch=*.pt")) == ["checkpoint_epoch=1.pt"]
    cut_log, cut_curve = log.read_text(encoding="utf-8"), _read(run_dir / "loss_curve.json")["records"]

    run_study.run_study("tiny", work, results.parent, seeds=[SEED], workers=2)
    assert _read(work / "stages.json")["ft_s0"]["resumed_from_epoch"] == 1
    text = log.read_text(encoding="utf-8")
    assert text.startswith(cut_log)  # the interrupted run's log is kept, the resumed run's appended
    resumed = text[len(cut_log) :]
    assert resumed.startswith("$ ") and resumed.count("\n$ ") == 0
    assert f"Restored all variables from {run_dir / 'checkpoint_epoch=1.pt'}" in resumed
    trained = [int(e) for e in re.findall(r"SupervisedTrainer\b.*\bEpoch\[(\d+)\] Complete", resumed)]
    # an epoch the plateau rule ends is trained, but ignite does not log it as complete
    trained += [int(e) for e in re.findall(r"PlateauStopHandler\b.*\bstopping at epoch (\d+)", resumed)]
    assert trained == list(range(2, last + 1))  # a run started from scratch would train epoch 1 again

    assert_same_weights(weights, torch.load(final, weights_only=True), exact=CHILD_RUNS_EXACT)
    records = _read(run_dir / "loss_curve.json")["records"]
    assert records[:2] == cut_curve  # epochs 0-1 restored with the checkpoint (their clock too), not measured again
    assert [(r["epoch"], r["iteration"]) for r in records] == [(r["epoch"], r["iteration"]) for r in curve]
    losses = [r["metrics"]["val_loss"] for r in records]
    assert losses == ([r["metrics"]["val_loss"] for r in curve] if CHILD_RUNS_EXACT else
                      pytest.approx([r["metrics"]["val_loss"] for r in curve], rel=1e-4))  # fmt: skip


def test_changed_settings_rerun_the_stage_and_what_depends_on_it(tiny_study):
    work, _ = tiny_study
    study = run_study.Study("tiny", work, [0])
    study.prepare()
    stages = {s.name: s for s in study.stages()}
    before = {name: study.fingerprint(s) for name, s in stages.items()}
    changed = run_study.Study("tiny", work, [0])
    changed.prepare()
    changed.settings = {**changed.settings, "finetune_epochs": changed.settings["finetune_epochs"] + 1}
    after = {s.name: changed.fingerprint(s) for s in changed.stages()}
    moved = {name for name in before if before[name] != after[name]}
    assert {"ft_s0", "tgd_s0", "eval_s0"} <= moved
    assert not moved & {"v1", "v2", "kse_sweep", "eval_shared", "val_shared", "ood_shared"}


def test_bad_arguments_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="unknown profile"):
        run_study.run_study("huge", tmp_path, tmp_path)
    with pytest.raises(ValueError, match="distinct"):
        run_study.run_study("tiny", tmp_path, tmp_path, seeds=[1, 1])
    with pytest.raises(ValueError, match="workers"):
        run_study.run_study("tiny", tmp_path, tmp_path, workers=0)
    assert not any(tmp_path.iterdir())


def test_time_to_loss_interpolates_between_validations():
    curve = [{"train_seconds": t, "metrics": {"val_loss": v}} for t, v in ((0, 1.0), (10, 0.5), (20, 0.25))]
    assert report.time_to_loss(curve, 0.75) == pytest.approx(5.0)
    assert report.time_to_loss(curve, 0.25) == pytest.approx(20.0)
    assert report.time_to_loss(curve, 2.0) == 0.0
    assert math.isnan(report.time_to_loss(curve, 0.1))


def test_spread_and_its_format():
    s = report.spread([1.0, 2.0, 3.0, float("nan")])
    assert (s["mean"], s["sd"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 1.0, 3.0, 3)
    assert report.fmt(s) == "2.00 ± 1.00" and report.fmt(report.spread([4.0])) == "4.00"
    assert report.fmt(report.spread([])) == "n/a"
    assert report.overlap(report.spread([1, 2]), report.spread([2, 3])) and not report.overlap(
        report.spread([1, 2]), report.spread([3, 4])
    )


def test_fingerprints_are_computed_before_the_workers_start(tmp_path, monkeypatch):
    """The code digest parses the package with ``ast.parse``, which CPython 3.11 does not allow on two threads at
    once ("AST constructor recursion depth mismatch"): it must all happen on the calling thread."""
    import ast
    import threading

    study = run_study.Study("tiny", tmp_path, [0])
    study.prepare()
    stages = study.stages()
    parsed_on, real_parse = set(), ast.parse
    monkeypatch.setattr(ast, "parse", lambda *a, **k: parsed_on.add(threading.current_thread().name) or real_parse(*a, **k))
    run_study._code_digest.cache_clear()
    seen = []

    def fake_run(stage, threads):
        seen.append(stage.name in study._fingerprints)
        stage.marker.parent.mkdir(parents=True, exist_ok=True)
        stage.marker.write_text("{}")
        return {"seconds": 0.0, "fingerprint": study.fingerprint(stage)}

    monkeypatch.setattr(study, "run_stage", fake_run)
    try:
        run_study.run_stages(study, stages, workers=2)
    finally:
        run_study._code_digest.cache_clear()
    assert parsed_on == {threading.current_thread().name}
    assert seen and all(seen)


def test_variant_numbers_are_means_over_the_variant_seeds():
    """The variants' validation and test numbers (and so the variant choice) average each seed's own checkpoint;
    forgetting counts the mean rise on v1 only (a fall is 0)."""
    from report.checks import _variant_numbers

    class Res:  # the one thing _variant_numbers asks of the run: which checkpoint is a network's at a seed
        @staticmethod
        def checkpoint(network, seed):
            return Path(f"model_{network}_s{seed}.pt")

    def row(checkpoint, rmse, bias=0.0, cov=0.0):
        return {"checkpoint": f"/work/models/{checkpoint}", "rmse_body_ref": rmse, "liver_lesion_bias_ref_pct": bias,
                "liver_cov_pct": cov}

    rows = {("val", "v2", "TGD-net"): [row("model_TGD-net_s0.pt", 0.10, -10.0, 7.0),
                                       row("model_TGD-net_s1.pt", 0.20, -20.0, 9.0)],
            ("val", "v1", "TGD-net"): [row("model_TGD-net_s0.pt", 0.05), row("model_TGD-net_s1.pt", 0.09)],
            ("val", "v1", "v1-net"): [row("model_v1.pt", 0.08)]}  # fmt: skip
    both = _variant_numbers(Res(), rows, ["val"], "TGD-net", [0, 1])
    assert both["val"] == pytest.approx({"rmse_body_ref": 0.15, "lesion_bias_ref": -15.0, "liver_cov": 8.0})
    assert both["v1_change"] == pytest.approx(-0.01) and both["v1_forgetting"] == 0.0
    one = _variant_numbers(Res(), rows, ["val"], "TGD-net", [1])
    assert one["val"]["rmse_body_ref"] == 0.20 and one["v1_change"] == pytest.approx(0.01)
    assert one["v1_forgetting"] == pytest.approx(0.01)
