"""Turn the outputs of ``study/run_study.py`` into ``results.md`` and the PNG figures.

Nothing here is typed by hand: every table cell is read from the run's files (``<work>/runs/*``: evaluation tables,
loss curves, the KSE sweep, TGD masks; ``<work>/stages.json``: wall times), every image panel is denoised from the
run's checkpoints, and every sentence comparing with the paper is computed from the same numbers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

import numpy as np

#: the paper's numbers (Section 4 and Table 1), for the side-by-side columns
PAPER = {
    "flagged_pct": {0.3: 51.4, 0.4: 51.6, 0.5: 53.0, 0.6: 67.3},
    "lesion_bias": {"v1-net": -6.30, "v2-net": -4.07, "FT-net": -4.71, "TGD-net": -3.77},
    "liver_cov": {"v1-net": 6.02, "v2-net": 8.56, "FT-net": 7.87, "TGD-net": 6.46},
    "time_saved_pct": 64.0,
}
MAIN_NETWORKS = ["v1-net", "v2-net", "FT-net", "TGD-net"]
CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "pet_tgd_denoising" / "configs"
LOW, HIGH = "test_low_bmi_lesion", "test_high_bmi"
#: how the paper's qualitative online claims are read: "the artefact disappears" = OOD error at least this much lower,
#: "similar denoising" = liver CoV within this much of the base's (percent, relative)
ONLINE_MARGIN_PCT = 10.0


# ---------------------------------------------------------------------------------------------------------------------
# reading and summarising


def _json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"report: {path} is missing; run study/run_study.py to produce it.")
    return json.loads(path.read_text(encoding="utf-8"))


def spread(values: Sequence[float]) -> dict:
    """Mean, sample SD (ddof 1; 0 for one value), min, max and count of the finite values."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": math.nan, "sd": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0, "min": float(v.min()),
            "max": float(v.max()), "n": int(v.size)}  # fmt: skip


def fmt(s: Mapping | float | None, digits: int = 2) -> str:
    """``mean ± sd (n)`` of a :func:`spread` (just the value for one run), or a plain number; ``n/a`` if none."""
    if isinstance(s, Mapping):
        if s["n"] == 0:
            return "n/a"
        return f"{s['mean']:.{digits}f}" if s["n"] == 1 else f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"
    return "n/a" if s is None or not math.isfinite(s) else f"{s:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"] + ["| " + " | ".join(r) + " |" for r in rows]


def overlap(a: Mapping, b: Mapping) -> bool:
    """True when the seed ranges of two spreads overlap (their difference is within seed-to-seed variation)."""
    return a["n"] > 0 and b["n"] > 0 and a["min"] <= b["max"] and b["min"] <= a["max"]


def compare(a: Mapping, b: Mapping, better: bool) -> str:
    """'agrees'/'**disagrees**' with a claim that holds when ``better``, qualified by the seed spread."""
    if a["n"] == 0 or b["n"] == 0:
        return "not measurable here"
    verdict = "agrees" if better else "**disagrees**"
    if a["n"] + b["n"] > 2 and overlap(a, b):
        verdict += " (the seed ranges overlap: the difference is within seed-to-seed variation)"
    return verdict


class Results:
    """Every output of one study run, grouped for the report; where each file is comes from the manifest's
    ``layout`` (written by ``run_study.py``)."""

    def __init__(self, work: Path, manifest: Mapping) -> None:
        self.work, self.manifest, self.layout = work, manifest, manifest["layout"]
        self.seeds = list(manifest["seeds"])
        self.weight_decay = float(manifest["weight_decay"])
        kse = {name: _json(work / path) for name, path in self.layout["kse"].items()}
        self.kse, self.kse_no_wd = kse["v1-net"], kse["no weight decay"]
        # curves: {"v1-net" | "v2-net" | "no weight decay": records, ("FT-net" | "TGD-net", seed): records}
        self.curves: dict = {}
        for name, where in self.layout["curves"].items():
            if isinstance(where, str):
                self.curves[name] = _json(work / where)["records"]
            else:
                self.curves |= {(name, int(seed)): _json(work / path)["records"] for seed, path in where.items()}
        self.masks = {int(seed): _json(work / path) for seed, path in self.layout["masks"].items()}
        self.tgd_threshold = float(self.masks[self.seeds[0]]["threshold"])
        self.online_masks = {int(seed): {study: {n: _json(work / path) for n, path in per_study.items()}
                                         for study, per_study in studies.items()}
                             for seed, studies in self.layout["online_masks"].items()}  # fmt: skip
        self.eval: dict[tuple, list[dict]] = {}  # (study, recon, network) -> one row per seed (shared nets: one)
        for path in self.layout["evaluations"]:
            for row in _json(work / path)["rows"]:
                self.eval.setdefault((row["study"], row["recon"], row["network"]), []).append(row)
        self.ood: dict[tuple, list[dict]] = {}  # (study, network) -> one row per seed (shared nets: one)
        for path in self.layout["ood_evaluations"]:
            for row in _json(work / path)["rows"]:
                self.ood.setdefault((row["study"], row["network"]), []).append(row)
        self.input_name = next(k[2] for k, rows in self.eval.items() if rows[0].get("baseline"))
        self.ood_input_name = next(k[1] for k, rows in self.ood.items() if rows[0].get("baseline"))

    def metric(self, study: str, recon: str, network: str, key: str) -> dict:
        return spread([r[key] for r in self.eval.get((study, recon, network), [])])

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
        return next((r for r in rows if Path(r["checkpoint"]) == self.checkpoint(network, seed)), None)

    def ood_row(self, study: str, network: str, seed: int) -> dict | None:
        rows = self.ood.get((study, network), [])
        if len(rows) == 1:
            return rows[0]
        online = network in self.manifest["online_bases"].values()
        checkpoint = self.checkpoint(network, seed, study if online else None)
        return next((r for r in rows if Path(r["checkpoint"]) == checkpoint), None)

    def train_seconds(self, curve) -> float:
        return float(self.curves[curve][-1]["train_seconds"])


def time_to_loss(curve: Sequence[Mapping], loss: float) -> float:
    """Training seconds at which ``curve`` first reaches ``loss`` (linear between validations); NaN if never."""
    previous = None
    for record in curve:
        value, t = record["metrics"]["val_loss"], record["train_seconds"]
        if value <= loss:
            if previous is None or previous[1] == value:
                return float(t)
            t0, v0 = previous
            return float(t0 + (t - t0) * (v0 - loss) / (v0 - value))
        previous = (t, value)
    return math.nan


# ---------------------------------------------------------------------------------------------------------------------
# figures


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.part.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(path)


@cache
def _image(path: str) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(path).dataobj, dtype=np.float32)


@cache
def _network(checkpoint: Path):
    """A checkpoint of the run as a DnCNN of the checkpoint's own size (ready for inference)."""
    import torch

    from monai_tgd.evaluation import load_network
    from monai_tgd.networks import DnCNN

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    first = state["blocks.0.conv.weight"]
    layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    return load_network(checkpoint, DnCNN(in_channels=first.shape[1], features=first.shape[0], num_layers=layers))


def denoise_slice(network, volume: np.ndarray, z: int) -> np.ndarray:
    """Slice ``z`` (last axis) of ``network``'s output on ``volume``: the slice and its neighbours are enough."""
    from monai_tgd.evaluation import denoise
    from monai_tgd.inferers import Slab25DInferer

    lo = max(z - 1, 0)
    return denoise(network, volume[..., lo : z + 2], Slab25DInferer(3, -1, 4))[..., z - lo].numpy()


def _record(datalist: str, section: str, study: str, fields: list[str]) -> dict:
    from monai_tgd.data import load_datalist

    return next(r for r in load_datalist(datalist, section, fields, recon="v2") if r["study"] == study)


def _show_row(axes, images: list[np.ndarray], titles: list[str], vmax: float, crop: tuple[slice, slice]) -> None:
    for ax, img, title in zip(axes, images, titles):
        ax.imshow(np.rot90(img[crop]), cmap="gray_r", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(title, fontsize=7)
        ax.axis("off")


def _body_crop(label_slice: np.ndarray, margin: int = 4) -> tuple[slice, slice]:
    ii, jj = np.nonzero(label_slice > 0)
    if ii.size == 0:
        return slice(None), slice(None)
    return slice(max(ii.min() - margin, 0), ii.max() + margin + 1), slice(max(jj.min() - margin, 0), jj.max() + margin + 1)


def _slice_of(roi: np.ndarray) -> int:
    """The slice (last axis) holding most of ``roi``; the middle slice if it is empty."""
    return int(np.argmax(roi.sum(axis=(0, 1)))) if roi.any() else roi.shape[-1] // 2


def _window(reference_slice: np.ndarray, body_slice: np.ndarray) -> float:
    values = reference_slice[body_slice] if body_slice.any() else reference_slice.ravel()
    return float(np.percentile(values, 99.5))


def figure_kse(res: Results, path: Path) -> None:
    """Fig. 4: the v1-net's output with the KSE-flagged kernels dropped, per threshold, and the change."""
    import matplotlib.pyplot as plt

    from monai_tgd.tgd import drop_redundant

    kse = res.kse
    volume = _image(kse["realization_path"])
    record = _record(res.manifest["datalist"], "test", kse["study"], ["label"])
    label = np.rint(_image(record["label"]))
    z = _slice_of(label >= 10)
    v1 = _network(res.checkpoint("v1-net", res.seeds[0]))
    original = denoise_slice(v1, volume, z)
    pruned = [denoise_slice(drop_redundant(v1, r["threshold"])[0], volume, z) for r in kse["rows"]]
    body, crop = label[..., z] > 0, _body_crop(label[..., z])
    vmax = _window(original, body)
    n = len(pruned) + 2
    fig, axes = plt.subplots(2, n, figsize=(2.0 * n, 4.4))
    titles = ["input (60 s)", "v1-net"] + [f"φ = {r['threshold']:g}: {r['dropped_params_pct']:.1f} % dropped"
                                           for r in kse["rows"]]
    _show_row(axes[0], [volume[..., z], original] + pruned, titles, vmax, crop)
    for ax in axes[1][:2]:
        ax.axis("off")
    for ax, image, r in zip(axes[1][2:], pruned, kse["rows"]):
        ax.imshow(np.rot90((image - original)[crop]), cmap="coolwarm", vmin=-vmax / 4, vmax=vmax / 4,
                  interpolation="nearest")
        ax.set_title(f"change {r['kse_output_change_pct']:.1f} %\n(random kernels {r['random_output_change_pct']:.1f} %)",
                     fontsize=7)
        ax.axis("off")
    fig.suptitle(f"{kse['study']} ({kse['recon']}), slice {z}: v1-net with the KSE-flagged kernels dropped; "
                 "row 2: dropped - original (window ±vmax/4); change: relative RMSE over the body", fontsize=8)
    _save(fig, path)
    plt.close(fig)


def figure_kse_distribution(res: Results, path: Path) -> None:
    """KSE score histograms of the v1-net and of its no-weight-decay control, and the flagged fraction as the
    v1-net, the control and the v2-net train."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    for sweep, colour, style, label in ((res.kse, "k", "-", "v1-net"),
                                        (res.kse_no_wd, "tab:orange", "--", "no weight decay")):  # fmt: skip
        edges = np.asarray(sweep["histogram"]["bin_edges"])
        a.stairs(sweep["histogram"]["counts"], edges, color=colour, ls=style, lw=2, label=label)
    a.axvline(0.3, color="r", ls="--", lw=1, label="φ = 0.3")
    a.set_xlabel("KSE score of an input channel (normalised per layer)")
    a.set_ylabel("input channels (all layers)")
    a.set_title("KSE scores after pretraining", fontsize=9)
    a.legend(fontsize=7)
    for name, colour, label in (("v1-net", "k", "v1-net"), ("no weight decay", "tab:orange", "v1, no weight decay"),
                                ("v2-net", "tab:blue", "v2-net")):  # fmt: skip
        curve = res.curves[name]
        b.plot([r["epoch"] for r in curve], [r["probes"]["kse_flagged_channels_pct"] for r in curve], ".-",
               color=colour, label=label, ms=3)
    b.set_xlabel("training epoch")
    b.set_ylabel("input channels with KSE < 0.3 (%)")
    b.set_title("redundancy as pretraining goes on", fontsize=9)
    b.legend(fontsize=7)
    _save(fig, path)
    plt.close(fig)


def figure_curves(res: Results, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    v2 = res.curves["v2-net"]
    ax.plot([r["train_seconds"] for r in v2], [r["metrics"]["val_loss"] for r in v2], "k-", label="v2-net (scratch)")
    for name, colour in (("FT-net", "tab:blue"), ("TGD-net", "tab:red")):
        for i, seed in enumerate(res.seeds):
            c = res.curves[(name, seed)]
            ax.plot([r["train_seconds"] for r in c], [r["metrics"]["val_loss"] for r in c], "-", color=colour,
                    alpha=0.8, label=f"{name} (from v1-net)" if i == 0 else None)
    ax.set_yscale("log")
    ax.set_xscale("symlog", linthresh=10)  # the fine-tuning runs last seconds, the v2-net's training minutes
    ax.set_xlim(left=0)
    ax.set_xlabel("training wall time (s, validation excluded; linear below 10 s, log above)")
    ax.set_ylabel("validation MSE (v2, 60 s vs 600 s)")
    ax.legend(fontsize=7)
    _save(fig, path)
    plt.close(fig)


def _draw_panels(rows: list[tuple[list[np.ndarray], list[str], np.ndarray, np.ndarray, np.ndarray]], title: str,
                 path: Path) -> None:
    """One figure row per ``(images, titles, reference slice, label slice, window ROI slice)``: cropped to the body,
    one window per row (0 to the reference's 99.5th percentile in the window ROI)."""
    import matplotlib.pyplot as plt

    columns = max(len(images) for images, *_ in rows)
    fig, axes = plt.subplots(len(rows), columns, squeeze=False, figsize=(2.0 * columns, 2.4 * len(rows)))
    for ax_row, (images, titles, reference, label, roi) in zip(axes, rows):
        _show_row(ax_row, images, titles, _window(reference, roi if roi.any() else label > 0), _body_crop(label))
    fig.suptitle(title, fontsize=8)
    _save(fig, path)
    plt.close(fig)


def figure_finetune(res: Results, path: Path) -> None:
    """Fig. 5: the liver-lesion slice of each v2 test study, input, reference and every network (first seed)."""
    seed, rows = res.seeds[0], []
    for study in (LOW, HIGH):
        record = _record(res.manifest["datalist"], "test", study, ["realizations", "reference", "label"])
        volume, reference = _image(record["realizations"][0]), _image(record["reference"])
        label = np.rint(_image(record["label"]))
        z = _slice_of(label >= 10)
        images, titles = [volume[..., z], reference[..., z]], ["input (60 s)", "600 s reference"]
        for name in MAIN_NETWORKS:
            images.append(denoise_slice(_network(res.checkpoint(name, seed)), volume, z))
            r = res.row(study, "v2", name, seed) or {}
            titles.append(f"{name}\nbias {fmt(r.get('liver_lesion_bias_ref_pct'))} %, "
                          f"CoV {fmt(r.get('liver_cov_pct'))} %")
        rows.append((images, titles, reference[..., z], label[..., z], label[..., z] > 0))
    _draw_panels(rows, f"v2 test studies, realisation 0, seed {seed}; one window per row (0 to the reference's 99.5th "
                 "percentile in the body); liver lesion bias vs 600 s and liver CoV over the 10 realisations", path)


def figure_online(res: Results, path: Path) -> None:
    """Fig. 6: the out-of-distribution slice of each online study, before and after online N2N TGD (first seed)."""
    seed, online, rows = res.seeds[0], res.manifest["online_bases"], []
    for study in res.manifest["ood_studies"]:
        record = _record(res.manifest["datalist"], "ood", study, ["input_120s", "reference", "label"])
        volume, reference = _image(record["input_120s"]), _image(record["reference"])
        label = np.rint(_image(record["label"]))
        z = _slice_of(label == int(record["ood_label"]))
        images, titles = [volume[..., z], reference[..., z]], [res.ood_input_name, "600 s reference"]
        for name in [*online, *online.values()]:
            checkpoint = res.checkpoint(name, seed, study if name in online.values() else None)
            images.append(denoise_slice(_network(checkpoint), volume, z))
            r = res.ood_row(study, name, seed) or {}
            titles.append(f"{name.split(' (')[0]}\nOOD RMSE {fmt(r.get('ood_rmse_ref'), 3)}")
        rows.append((images, titles, reference[..., z], label[..., z], label[..., z] == int(record["ood_label"])))
    _draw_panels(rows, f"out-of-distribution v2 studies, seed {seed}, slice with most of the structure, window 0 to the "
                 "reference's 99.5th percentile in it; OOD RMSE: inside the structure against the 600 s image", path)


# ---------------------------------------------------------------------------------------------------------------------
# the report's sections


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
    header = ["φ", "input channels flagged", "parameters dropped (%)", "paper (%)",
              "output change, flagged dropped (%)", "output change, random dropped (%)"]
    first, control = _paper_threshold_row(res.kse), _paper_threshold_row(res.kse_no_wd)
    phi = f"{first['threshold']:g}"
    hist = res.kse["histogram"]
    total = sum(hist["counts"])
    lowest_bin = f"[{hist['bin_edges'][0]:g}, {hist['bin_edges'][1]:g})"
    v1, no_wd = res.curves["v1-net"], res.curves["no weight decay"]
    probe = [r["probes"]["kse_flagged_channels_pct"] for r in v1]
    probe_no_wd = [r["probes"]["kse_flagged_channels_pct"] for r in no_wd]
    below, below_no_wd = _below_random(res.kse), _below_random(res.kse_no_wd)
    listed = lambda ts: " (φ = " + ", ".join(f"{t:g}" for t in ts) + ")" if ts else ""  # noqa: E731
    return [
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
        "The same pretraining without weight decay (the control, `v1_no_wd`, same data, epochs and seed):",
        "",
        *table(header, _sweep_rows(res.kse_no_wd)),
        "",
        "![KSE distribution](figures/kse_distribution.png)",
        "",
        f"* At φ = {phi}, {first['dropped_params_pct']:.1f} % of the v1-net's conv parameters are flagged (paper: "
        f"{PAPER['flagged_pct'].get(first['threshold'], math.nan):.1f} %); without weight decay "
        f"{control['dropped_params_pct']:.1f} %. {hist['counts'][0]} of {total} of the v1-net's input channels "
        f"({100 * hist['counts'][0] / total:.1f} %) score in {lowest_bin}, against "
        f"{res.kse_no_wd['histogram']['counts'][0]} without weight decay. KSE is min-max normalised per layer, so "
        "each layer's weakest channel scores 0 whatever the network; the paper's 51.4 % at φ = 0.3 and 51.6 % at 0.4 "
        "mean that about half of its kernels sit in a cluster far below the rest.",
        f"* As the v1-net pretrains, the channels flagged at 0.3 go from {probe[0]:.1f} % at initialisation to "
        f"{probe[-1]:.1f} % (right panel); without weight decay they end at {probe_no_wd[-1]:.1f} % (range "
        f"{min(probe_no_wd):.1f}-{max(probe_no_wd):.1f} %). "
        + _regulariser_effect(first["dropped_params_pct"] - control["dropped_params_pct"], phi),
        f"* Dropping the flagged kernels changed the output less than every random draw at {len(below)} of "
        f"{len(res.kse['rows'])} thresholds{listed(below)} for the v1-net, and at {len(below_no_wd)} of "
        f"{len(res.kse_no_wd['rows'])}{listed(below_no_wd)} for the control. In the paper the output at φ = 0.3 is "
        "almost identical to the original and artefacts appear above 0.4.",
    ]


def section_finetune(res: Results) -> list[str]:
    names = [res.input_name] + MAIN_NETWORKS
    metrics = [
        ("lesion bias vs 600 s (%)", "liver_lesion_bias_ref_pct", 2),
        ("lesion bias vs truth (%)", "liver_lesion_bias_truth_pct", 2),
        ("liver CoV (%)", "liver_cov_pct", 2),
        ("body RMSE vs 600 s (SUV)", "rmse_body_ref", 4),
    ]
    settings = res.manifest["settings"]
    lines = [
        "## 2. Fine-tuning to the new reconstruction (paper Table 1, Fig. 5)",
        "",
        f"v1-net: pretrained on the v1 (old OSEM) training studies, {settings['pretrain_epochs']} epochs. v2-net: the "
        "same recipe from scratch on the v2 reconstructions of the same studies. FT-net: v1-net with its last three "
        "conv blocks fine-tuned on the low-BMI v2 fine-tuning studies. TGD-net: v1-net TGD-fine-tuned "
        f"(φ = {res.tgd_threshold:g}) on "
        f"the same studies; both {settings['finetune_epochs']} epochs. Ensemble over the 10 x 60 s realisations of "
        "each test study: liver lesion bias in % of the 600 s reference's lesion mean (or of the phantom truth), "
        "mean over the study's liver lesions; liver CoV in %; over the slices from the first to the last holding "
        f"liver or lesion voxels. FT-net and TGD-net: mean ± SD over seeds {res.seeds}; v1-net and v2-net "
        "are shared by all seeds (one value).",
    ]
    for study in (LOW, HIGH):
        rows = []
        for title, key, digits in metrics:
            cells = [fmt(res.metric(study, "v2", n, key), digits) for n in names]
            if any(c != "n/a" for c in cells):
                rows.append([title] + cells)
        if study == LOW:
            rows.append(["paper: lesion bias (%)", ""] + [f"{PAPER['lesion_bias'][n]:.2f}" for n in MAIN_NETWORKS])
            rows.append(["paper: liver CoV (%)", ""] + [f"{PAPER['liver_cov'][n]:.2f}" for n in MAIN_NETWORKS])
        lines += ["", f"**{study} (v2)**", "", *table(["metric"] + names, rows)]
    retrained = spread([100 * m["retrained_fraction"]["overall"] for m in res.masks.values()])
    moved = {seed: _frozen_rows_moved(res, seed) for seed in res.seeds}
    m = {(s, n, k): res.metric(s, "v2", n, k) for s in (LOW, HIGH) for n in MAIN_NETWORKS
         for k in ("liver_lesion_bias_ref_pct", "liver_cov_pct")}  # fmt: skip
    bias = lambda n: m[(LOW, n, "liver_lesion_bias_ref_pct")]  # noqa: E731
    cov = lambda s, n: m[(s, n, "liver_cov_pct")]  # noqa: E731
    return lines + [
        "",
        f"TGD-net retrained {fmt(retrained, 1)} % of the hidden convs' and their BNs' parameters. Frozen rows "
        "(weights, BN affine parameters and running statistics, the output conv) compared with the v1-net's: "
        + ("bit-identical in every seed." if not any(moved.values()) else
           "**changed** in " + "; ".join(f"seed {k}: {', '.join(v)}" for k, v in moved.items() if v) + "."),
        "",
        "![fine-tuning panels](figures/fig5_finetune.png)",
        "",
        "What the paper claims and what this run shows (low-BMI study unless said otherwise):",
        "",
        f"* TGD-net has the smallest lesion bias of the fine-tuned networks (paper: -3.77 vs FT-net -4.71 %). Here "
        f"TGD-net {fmt(bias('TGD-net'))} % vs FT-net {fmt(bias('FT-net'))} %: "
        f"{compare(bias('TGD-net'), bias('FT-net'), abs(bias('TGD-net')['mean']) <= abs(bias('FT-net')['mean']))}.",
        f"* The v1-net, made for the old reconstruction, under-estimates the lesion more than the v2-net (paper: -6.30 "
        f"vs -4.07 %). Here v1-net {fmt(bias('v1-net'))} % vs v2-net {fmt(bias('v2-net'))} %: "
        f"{compare(bias('v1-net'), bias('v2-net'), bias('v1-net')['mean'] < bias('v2-net')['mean'])}.",
        f"* TGD-net keeps a lower liver CoV than FT-net (paper: 6.46 vs 7.87 %). Here TGD-net "
        f"{fmt(cov(LOW, 'TGD-net'))} % vs FT-net {fmt(cov(LOW, 'FT-net'))} %: "
        f"{compare(cov(LOW, 'TGD-net'), cov(LOW, 'FT-net'), cov(LOW, 'TGD-net')['mean'] <= cov(LOW, 'FT-net')['mean'])}.",
        f"* FT-net leaves noise in the high-BMI study that TGD-net removes (paper, Fig. 5). High-BMI liver CoV here: "
        f"TGD-net {fmt(cov(HIGH, 'TGD-net'))} % vs FT-net {fmt(cov(HIGH, 'FT-net'))} %: "
        f"{compare(cov(HIGH, 'TGD-net'), cov(HIGH, 'FT-net'), cov(HIGH, 'TGD-net')['mean'] <= cov(HIGH, 'FT-net')['mean'])}.",
    ]


def _frozen_rows_moved(res: Results, seed: int) -> list[str]:
    """Names of the v1-net's tensors whose rows TGD froze (per the run's ``tgd_masks.json``) but that differ in
    TGD-net: the TGD guarantee checked on the run's own checkpoints (empty = kept)."""
    import torch

    from monai_tgd.tgd import conv_chain

    settings = res.masks[seed]
    v1 = _network(res.checkpoint("v1-net", seed))
    tuned = torch.load(res.checkpoint("TGD-net", seed), map_location="cpu", weights_only=True)
    names = {id(m): n for n, m in v1.named_modules()}
    chain = conv_chain(v1)
    frozen: dict[str, torch.Tensor] = {}  # module name -> bool rows frozen
    for h in chain.hidden:
        rows = torch.ones(h.conv.out_channels, dtype=torch.bool)
        rows[torch.as_tensor(settings["retrained_channels"][h.name], dtype=torch.long)] = False
        frozen[h.name] = rows
        if h.norm is not None:
            frozen[names[id(h.norm)]] = rows
    if settings["freeze_output"]:
        frozen |= {name: torch.ones(conv.out_channels, dtype=torch.bool) for name, conv in chain.outputs}
    kept_stats = settings["bn_stats"] == "freeze"
    moved = []
    for key, value in v1.state_dict().items():
        module, _, attr = key.rpartition(".")
        if module not in frozen or value.dim() == 0 or (attr.startswith("running_") and not kept_stats):
            continue
        if not torch.equal(value[frozen[module]], tuned[key][frozen[module]]):
            moved.append(key)
    return moved


def section_forgetting(res: Results) -> list[str]:
    names = ["v1-net", "FT-net", "TGD-net", *res.manifest["ablations"]]
    keys = (("liver_lesion_bias_ref_pct", 2), ("liver_cov_pct", 2), ("rmse_body_ref", 4))
    lines = [
        "## 3. Forgetting: the old reconstruction and high-BMI data",
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


def section_cost(res: Results) -> list[str]:
    v2 = res.curves["v2-net"]
    settings = res.manifest["settings"]
    rows, to_loss, total, at_start = [], [], [], 0
    for seed in res.seeds:
        for name in ("TGD-net", "FT-net"):
            curve = res.curves[(name, seed)]
            final, seconds = curve[-1]["metrics"]["val_loss"], curve[-1]["train_seconds"]
            scratch = time_to_loss(v2, final)
            saved = 100 * (1 - seconds / scratch) if math.isfinite(scratch) and scratch > 0 else math.nan
            if name == "TGD-net":
                total.append(100 * (1 - seconds / res.train_seconds("v2-net")))
                if scratch == 0:
                    at_start += 1  # the v2-net's initialisation already had that loss: nothing to save
                elif math.isfinite(saved):
                    to_loss.append(saved)
            reached = ("at initialisation" if scratch == 0 else f"{scratch:.1f}" if math.isfinite(scratch)
                       else f"not reached in {res.train_seconds('v2-net'):.0f}")
            rows.append([f"{name}, seed {seed}", f"{curve[0]['metrics']['val_loss']:.5f}", f"{final:.5f}",
                         f"{seconds:.1f}", reached, fmt(saved, 1)])
    never = len(res.seeds) - len(to_loss) - at_start
    lines = [
        "## 4. Cost: TGD fine-tuning vs training the v2-net from scratch",
        "",
        "Validation loss: MSE of the network on every second slice of the first 60 s realisation of each v2 test "
        "study against its 600 s image, every few epochs (monitoring only: no checkpoint is chosen by it). Time: "
        "training wall time without the validations (`LossCurveHandler`). The v2-net's time to the same loss is "
        "interpolated between its validations. The v1-net's pretraining is not counted: it exists already, as in the "
        "paper.",
        "",
        *table(["run", "val. loss at start", "val. loss at end", "training time (s)",
                "v2-net from scratch to that loss (s)", "time saved (%)"], rows),
        "",
        f"v2-net from scratch: val. loss {v2[0]['metrics']['val_loss']:.5f} -> {v2[-1]['metrics']['val_loss']:.5f} "
        f"in {res.train_seconds('v2-net'):.0f} s ({v2[-1]['epoch']} epochs); lowest "
        f"{min(r['metrics']['val_loss'] for r in v2):.5f}.",
        "",
        "![validation curves](figures/loss_curves.png)",
        "",
        f"* Whole runs: TGD fine-tuning ({settings['finetune_epochs']} epochs on the fine-tuning studies) took "
        f"{fmt(spread(total), 1)} % less training time than the v2-net ({settings['pretrain_epochs']} epochs on the "
        "training studies). Paper: 64 % saved, with 500 epochs for both on 7 and 20 studies, so there the saving is "
        "mostly the data ratio"
        + ("; here the epochs differ too." if settings["finetune_epochs"] != settings["pretrain_epochs"] else "."),
    ]
    if to_loss:
        lines.append(f"* To the same validation loss: TGD saved {fmt(spread(to_loss), 1)} % (the {len(to_loss)} of "
                     f"{len(res.seeds)} seeds whose final loss the v2-net reached during its training).")
    start = spread([res.curves[("TGD-net", seed)][0]["metrics"]["val_loss"] for seed in res.seeds])
    gain = spread([100 * (1 - res.curves[("TGD-net", sd)][-1]["metrics"]["val_loss"] /
                          res.curves[("TGD-net", sd)][0]["metrics"]["val_loss"]) for sd in res.seeds])
    v1_time = time_to_loss(v2, start["mean"])
    lines.append(
        f"* The v1-net itself, before any fine-tuning, has validation loss {start['mean']:.5f}; the v2-net needs "
        + (f"{v1_time:.1f} s to reach it" if math.isfinite(v1_time) else "longer than its whole training to reach it")
        + f". TGD's fine-tuning lowered the loss by {fmt(gain, 1)} % of that, so most of the time saved comes from "
        "starting with a pretrained network rather than from what TGD learned."
        if math.isfinite(gain["mean"]) and gain["mean"] < 5 else
        f"* The v1-net itself, before any fine-tuning, has validation loss {start['mean']:.5f}; TGD's fine-tuning "
        f"lowered it by {fmt(gain, 1)} %."
    )
    if at_start:
        lines.append(f"* For {at_start} seed(s) TGD-net ends at a validation loss no lower than the v2-net's at "
                     "initialisation, before any training: there is no training time to compare.")
    if never:
        lines.append(f"* For {never} seed(s) the v2-net never reached TGD-net's final validation loss: TGD-net ends "
                     "below anything the network trained from scratch reached.")
    return lines


def section_online(res: Results) -> list[str]:
    online = list(res.manifest["online_bases"].values())
    names = [res.ood_input_name, "v2-net", "TGD-net", *online]
    keys = (("ood_rmse_ref", 4), ("ood_mae_ref", 4), ("ood_bias_ref_pct", 2), ("liver_pixel_cov_pct", 2))
    lines = [
        "## 5. Online learning on out-of-distribution studies (paper Fig. 6)",
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


def _retrained_weight_share(checkpoint: Path, masks_file: Mapping) -> list[list[str]]:
    """Per hidden conv of a network: the share of its channels TGD retrains (``tgd_masks.json`` content), and the
    share of the consumer conv's |weight| that reads them (the only way a retrained feature reaches the next layer's
    frozen channels)."""
    import torch

    from monai_tgd.tgd import conv_chain

    masks = masks_file["retrained_channels"]
    chain = conv_chain(_network(checkpoint))
    outputs = {name for name, _ in chain.outputs}
    rows = []
    for h in chain.hidden:
        retrained = torch.as_tensor(masks[h.name], dtype=torch.long)
        weight = h.consumer.weight.detach().abs().double()
        share = float(weight[:, retrained].sum() / weight.sum()) if retrained.numel() else 0.0
        reader = h.consumer_name + (" (output conv)" if h.consumer_name in outputs else "")
        rows.append([h.name, reader, f"{100 * retrained.numel() / h.conv.out_channels:.1f}",
                     f"{100 * share:.2f}"])
    return rows


def _output_share(checkpoint: Path, masks_file: Mapping) -> float:
    """Percent of the output conv's |weight| that reads the last hidden layer's retrained channels."""
    return next((float(r[3]) for r in _retrained_weight_share(checkpoint, masks_file) if "(output conv)" in r[1]),
                math.nan)


def section_ablation(res: Results) -> list[str]:
    variants = ["TGD-net", *res.manifest["ablations"]]
    if len(variants) == 1:
        return []
    columns = ((LOW, "v2", "liver_lesion_bias_ref_pct", 2), (LOW, "v2", "liver_cov_pct", 2),
               (HIGH, "v2", "liver_cov_pct", 2), (LOW, "v1", "liver_cov_pct", 2), (LOW, "v1", "rmse_body_ref", 4))
    rows = [[n] + [fmt(res.metric(s, r, n, k), d) for s, r, k, d in columns] for n in variants]
    hist = res.kse["histogram"]
    per_layer = [[layer] + [str(c) for c in counts] for layer, counts in hist["per_layer"].items()]
    edges = hist["bin_edges"]
    bins = [f"[{edges[i]:.1f}, {edges[i + 1]:.1f})" for i in range(len(edges) - 1)]
    cov = {n: res.metric(LOW, "v2", n, "liver_cov_pct") for n in variants}
    lines = [
        "## 6. Ablations of TGD-net, and where the retrained kernels can act",
        "",
        "TGD-net is the paper's reading: gradients masked on the activations after each conv and BN (`mode="
        "\"activation\"`, Eq. 4), output conv frozen, the frozen channels' BN running statistics kept (the paper "
        "masks BN's gamma, beta and sigma^2 with the kernels). Each variant changes one of these; same data, epochs "
        "and seeds. Mean ± SD over seeds.",
        "",
        *table(["variant", "v2 low BMI: lesion bias (%)", "v2 low BMI: liver CoV (%)", "v2 high BMI: liver CoV (%)",
                "v1 low BMI: liver CoV (%)", "v1 low BMI: body RMSE (SUV)"], rows),
        "",
    ]
    for n in variants[1:]:
        spread_note = ("" if min(cov[n]["n"], cov["TGD-net"]["n"]) < 2 else
                       " (seed ranges overlap)" if overlap(cov[n], cov["TGD-net"]) else " (seed ranges apart)")
        lines.append(f"* {n}: v2 low-BMI liver CoV {fmt(cov[n])} vs {fmt(cov['TGD-net'])} % for TGD-net{spread_note}.")
    return lines + [
        "",
        "Where the retrained channels can act: TGD retrains the convs that make the flagged feature maps, but the "
        "next conv reads those maps through the very weights KSE found small, and with the output conv frozen the "
        f"last hidden layer's retrained maps reach the output only through it (v1-net, masks at φ = "
        f"{res.tgd_threshold:g}):",
        "",
        *table(["hidden conv", "read by", "channels retrained (%)", "share of the reader's |weight| on them (%)"],
               _retrained_weight_share(res.checkpoint("v1-net", res.seeds[0]), res.masks[res.seeds[0]])),
        "",
        "KSE scores of the v1-net's input channels per layer (counts per bin; the convs fed by a hidden conv):",
        "",
        *table(["layer", *bins], per_layer),
    ]


def section_differences(res: Results) -> list[str]:
    """Where this run and the paper differ, with the reasons the run's own numbers point to."""
    datalist = json.loads(Path(res.manifest["datalist"]).read_text(encoding="utf-8"))
    shape, voxel = datalist["image_shape"], datalist["voxel_size_mm"]
    counts = {k: len(datalist[k]) for k in ("pretrain_v1", "finetune_v2")}
    settings = res.manifest["settings"]
    v1 = res.curves["v1-net"][-1]
    lesions = [p for r in res.eval.get((LOW, "v2", res.input_name), []) for p in r["lesions"] if p["organ"] == "liver"]
    input_bias = res.metric(LOW, "v2", res.input_name, "liver_lesion_bias_truth_pct")
    network_bias = [res.metric(LOW, "v2", n, "liver_lesion_bias_ref_pct")["mean"] for n in MAIN_NETWORKS]
    output_share = _output_share(res.checkpoint("v1-net", res.seeds[0]), res.masks[res.seeds[0]])
    bundle = {**{k: v for k, v in json.loads((CONFIGS / "common.json").read_text(encoding="utf-8")).items()
                 if k in ("samples_per_volume", "batch_size", "patch_size", "features")}, **settings["bundle"]}
    lines = [
        "## 7. Where this run and the paper differ, and the likely reasons",
        "",
        f"* **Data.** {counts['pretrain_v1']} simulated training studies and {counts['finetune_v2']} fine-tuning "
        f"studies (paper: 20 and 7 clinical studies), {shape[0]} x {shape[1]} x {shape[2]} voxels of "
        f"{voxel[0]:g} x {voxel[1]:g} x {voxel[2]:g} mm. The simulator's v1 and v2 differ only in resolution "
        "modelling and post-filter; real protocol changes (scatter, normalisation, scanner texture) may differ more.",
        "* **Lesions are a few voxels.** The low-BMI study's liver lesions cover "
        + ", ".join(f"{p['voxels']} voxels ({p['diameter_mm']:g} mm)" for p in lesions)
        + f". The 60 s input's lesion bias against the phantom truth is already {fmt(input_bias)} % (the "
        "reconstruction's partial-volume loss), and against the 600 s image the four networks' lesion bias is "
        f"{min(network_bias):.1f} to {max(network_bias):.1f} % (paper: -3.8 to -6.3 %). Differences between networks "
        "are read against that and against the seed spread.",
        f"* **Training length and size.** v1-net and v2-net: {settings['pretrain_epochs']} epochs, {v1['iteration']} "
        f"steps of {bundle['samples_per_volume'] * bundle['batch_size']} slabs of "
        f"{' x '.join(str(n) for n in bundle['patch_size'])} pixels, {bundle['features']} features (paper: 500 epochs "
        f"over 30,720 slices of 20 studies, 64 features); fine-tuning {settings['finetune_epochs']} epochs (paper: "
        "500). One pretraining seed per network: the KSE cluster and everything fine-tuned from it come from that "
        "one run.",
    ]
    if math.isfinite(output_share) and output_share < 5:
        lines.append(
            f"* **Where TGD can act.** With the output conv frozen, the retrained feature maps of the last hidden "
            f"layer reach the output through {output_share:.2f} % of the output conv's |weight| (section 6): KSE "
            "flags exactly the maps the next layer barely reads, so retraining their producers changes the output "
            "little unless the reader is retrained too (the 'output conv trained' ablation). The paper does not "
            "report this share; a network whose flagged kernels are small but not near zero leaves TGD more room."
        )
    cov_in = {r: res.metric(LOW, r, res.input_name, "liver_cov_pct")["mean"] for r in ("v1", "v2")}
    v1_net, v2_net = (res.metric(LOW, "v2", n, "liver_cov_pct")["mean"] for n in ("v1-net", "v2-net"))
    v1_bias, v2_bias = (res.metric(LOW, "v2", n, "liver_lesion_bias_ref_pct")["mean"] for n in ("v1-net", "v2-net"))
    if v2_net < v1_net:
        lines.append(
            f"* **The v2-net smooths more than the v1-net on v2 images** (low-BMI liver CoV {v2_net:.2f} vs "
            f"{v1_net:.2f} %, lesion bias {v2_bias:.2f} vs {v1_bias:.2f} %), the reverse of the paper, where the "
            "v1-net over-smoothed v2 images. The simulated v2 images are much noisier than the v1 ones (60 s input liver CoV "
            f"{cov_in['v2']:.1f} vs {cov_in['v1']:.1f} %: resolution modelling without the larger post-filter), so "
            "the v2-net learned to smooth harder; the paper's v2 changed the noise texture (grain size) more than its "
            "level."
        )
    seed = res.seeds[0]
    for study in res.manifest["ood_studies"]:
        inp, v2 = (res.ood_metric(study, n, "ood_rmse_ref") for n in (res.ood_input_name, "v2-net"))
        bias = res.ood_metric(study, "v2-net", "ood_bias_ref_pct")
        online_name = res.manifest["online_bases"]["v2-net"]
        online = res.ood_metric(study, online_name, "ood_rmse_ref")
        if not (inp["n"] and v2["n"] and online["n"]):
            continue
        if v2["mean"] < inp["mean"]:
            lines.append(
                f"* **{study}: the v2-net's error in the structure ({fmt(v2, 4)}) is below the un-denoised input's "
                f"({fmt(inp, 4)}),** so no artefact like the paper's Fig. 6 dominates the error there; online learning "
                "can only reduce what the base network gets wrong."
            )
        else:
            lines.append(
                f"* **{study}: the base networks alter the structure** (v2-net error {v2['mean'] / inp['mean']:.1f} "
                f"x the input's, bias {fmt(bias)} %), the artefact online learning is for, and online TGD changed the "
                f"error by {100 * (online['mean'] / v2['mean'] - 1):+.1f} %. Likely reasons (not measured here): the "
                "structure is a small part of the one study the Noise2Noise slabs are drawn from, and the channels "
                f"retrained online (φ = {res.manifest['n2n_threshold']:g}) reach the v2-net's output through "
                f"{_output_share(res.checkpoint('v2-net', seed), res.online_masks[seed][study][online_name]):.2f} % "
                f"of its output conv's |weight| (seed {seed})."
            )
    return lines + [
        "* Nothing was tuned on the test studies: the pretraining recipe (weight decay, epochs) was chosen from the "
        "pretrained network's KSE scores (section 1), the premise of TGD, not from any test result; every seed run "
        "is reported.",
    ]


def section_runtime(res: Results) -> list[str]:
    groups: dict[str, float] = {}
    for name, t in res.manifest["stages"].items():
        key = name.rsplit("_s", 1)[0] if name.rsplit("_s", 1)[-1].isdigit() else name
        key = "online N2N" if key.startswith("n2n_") else "evaluate OOD" if key.startswith("ood_") else key
        groups[key] = groups.get(key, 0.0) + t["seconds"]
    invocations = res.manifest["invocations"]
    runs = [[i["started"], f"{i['seconds'] / 60:.1f}", str(i["workers"]), str(i["stages_run"]), str(i["stages_reused"])]
            for i in invocations if i["stages_run"]]  # fmt: skip
    report_only = sum(1 for i in invocations if not i["stages_run"])
    return [
        "## Run time",
        "",
        "The invocations of the study on this work folder that ran stages (wall time until the report is written)"
        + (f"; {report_only} more reused every stage and only rewrote the report" if report_only else "") + ":",
        "",
        *table(["started", "minutes", "stages side by side", "stages run", "stages reused"], runs),
        "",
        "Sum of the stages' own wall times, all seeds (per stage: `stages.json`; logs with the exact commands: "
        "`logs/`):",
        "",
        *table(["stage", "seconds"], [[k, f"{v:.0f}"] for k, v in groups.items()]),
    ]


def write_report(work: Path, docs: Path, manifest: Mapping) -> Path:
    """Write ``docs/results.md`` and ``docs/figures/*.png`` from the study run in ``work``; returns the .md path."""
    import matplotlib

    matplotlib.use("Agg")
    work, docs = Path(work), Path(docs)
    res = Results(work, manifest)
    figures = docs / "figures"
    figure_kse(res, figures / "fig4_kse_threshold.png")
    figure_kse_distribution(res, figures / "kse_distribution.png")
    figure_curves(res, figures / "loss_curves.png")
    figure_finetune(res, figures / "fig5_finetune.png")
    figure_online(res, figures / "fig6_online.png")
    settings = manifest["settings"]
    bundle = {**settings["bundle"]}
    lines = [
        "# Results: the paper's experiments on the simulated cohort",
        "",
        f"Written by `python study/run_study.py --profile {manifest['profile']}` (seeds {manifest['seeds']}); every "
        "number and figure below comes from that run's files and is rewritten when it reruns. The study runs the "
        "bundle's workflows (`bundles/pet_tgd_denoising`); each stage's command is in its log.",
        "",
        f"Sizes: the `{manifest['profile']}` simulated cohort; the bundle's "
        + ("`paper.json`" if settings["bundle_files"] else "`common.json`")
        + (f" with {json.dumps(bundle)}" if bundle else "")
        + f"; v1-net and v2-net {settings['pretrain_epochs']} epochs; FT-net and TGD-net {settings['finetune_epochs']} "
        f"epochs; online N2N {settings['n2n_epochs']} epochs of {settings['n2n_samples']} slabs per half.",
        "",
    ]
    for section in (section_threshold, section_finetune, section_forgetting, section_cost, section_online,
                    section_ablation, section_differences, section_runtime):
        lines += section(res) + [""]
    path = docs / "results.md"
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(path)
    return path
