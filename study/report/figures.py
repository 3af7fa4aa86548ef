"""The report's PNG figures, drawn from the run's files: panels are denoised from the run's own checkpoints.

* :func:`figure_kse` (paper Fig. 4), :func:`figure_kse_distribution`: the KSE threshold study.
* :func:`figure_curves`: validation loss against training time (the cost of fine-tuning vs training from scratch).
* :func:`figure_finetune` (paper Fig. 5), :func:`figure_online` (paper Fig. 6): image panels of every network.

Each figure is written through :func:`monai_tgd.io.atomic_path`: complete under its final name or not at all.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from .networks import network
from .results import HIGH, LOW, MAIN_NETWORKS, Results
from .stats import fmt


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    from monai_tgd.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)


@cache
def _image(path: str) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(path).dataobj, dtype=np.float32)


def denoise_slice(net, volume: np.ndarray, z: int) -> np.ndarray:
    """Slice ``z`` (last axis) of ``net``'s output on ``volume``: the slice and its neighbours are enough."""
    from monai_tgd.evaluation import denoise
    from monai_tgd.inferers import Slab25DInferer

    lo = max(z - 1, 0)
    return denoise(net, volume[..., lo : z + 2], Slab25DInferer(3, -1, 4))[..., z - lo].numpy()


def _record(datalist: str, section: str, study: str, fields: list[str]) -> dict:
    from monai_tgd.data import load_datalist

    return next(r for r in load_datalist(datalist, section, fields, recon="v2") if r["study"] == study)


def _show_row(axes, images: list[np.ndarray], titles: list[str], vmax: float, crop: tuple[slice, slice]) -> None:
    for ax, img, title in zip(axes, images, titles):
        ax.imshow(np.rot90(img[crop]), cmap="gray_r", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(title, fontsize=7)
        ax.axis("off")


def _body_crop(label_slice: np.ndarray, margin: int = 4) -> tuple[slice, slice]:
    """The bounding box of the labelled voxels plus ``margin`` (the whole slice if none is labelled)."""
    from monai.transforms.utils import generate_spatial_bounding_box

    if not (label_slice > 0).any():
        return slice(None), slice(None)
    start, end = generate_spatial_bounding_box(label_slice[None], margin=margin, allow_smaller=True)
    return slice(start[0], end[0]), slice(start[1], end[1])


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
    v1 = network(res, res.checkpoint("v1-net", res.seeds[0]))
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


def figure_kse_distribution(res: Results, path: Path) -> None:
    """KSE score histograms of the v1-net and of its no-weight-decay control, and the flagged fraction as the
    v1-net, the control and the v2-net train (the control only when the run has it: ``--controls``)."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    sweeps = [(res.kse, "k", "-", "v1-net"), (res.kse_no_wd, "tab:orange", "--", "no weight decay")]
    for sweep, colour, style, label in (s for s in sweeps if s[0] is not None):  # the control: --controls only
        edges = np.asarray(sweep["histogram"]["bin_edges"])
        a.stairs(sweep["histogram"]["counts"], edges, color=colour, ls=style, lw=2, label=label)
    a.axvline(0.3, color="r", ls="--", lw=1, label="φ = 0.3")
    a.set_xlabel("KSE score of an input channel (normalised per layer)")
    a.set_ylabel("input channels (all layers)")
    a.set_title("KSE scores after pretraining", fontsize=9)
    a.legend(fontsize=7)
    for name, colour, label in (("v1-net", "k", "v1-net"), ("no weight decay", "tab:orange", "v1, no weight decay"),
                                ("v2-net", "tab:blue", "v2-net")):  # fmt: skip
        if name not in res.curves:
            continue
        curve = res.curves[name]
        b.plot([r["epoch"] for r in curve], [r["probes"]["kse_flagged_channels_pct"] for r in curve], ".-",
               color=colour, label=label, ms=3)
    b.set_xlabel("training epoch")
    b.set_ylabel("input channels with KSE < 0.3 (%)")
    b.set_title("redundancy as pretraining goes on", fontsize=9)
    b.legend(fontsize=7)
    _save(fig, path)


def figure_curves(res: Results, path: Path) -> None:
    """Validation loss against training wall time: the v2-net from scratch, FT-net and TGD-net from the v1-net."""
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
    ax.set_ylabel("validation MSE (validation study, v2, 60 s vs 600 s)")
    ax.legend(fontsize=7)
    _save(fig, path)


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
            images.append(denoise_slice(network(res, res.checkpoint(name, seed)), volume, z))
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
            images.append(denoise_slice(network(res, checkpoint), volume, z))
            r = res.ood_row(study, name, seed) or {}
            titles.append(f"{name.split(' (')[0]}\nOOD RMSE {fmt(r.get('ood_rmse_ref'), 3)}")
        rows.append((images, titles, reference[..., z], label[..., z], label[..., z] == int(record["ood_label"])))
    _draw_panels(rows, f"out-of-distribution v2 studies, seed {seed}, slice with most of the structure, window 0 to the "
                 "reference's 99.5th percentile in it; OOD RMSE: inside the structure against the 600 s image", path)


#: every figure, with the file name the report's sections link to
FIGURES = {
    "fig4_kse_threshold.png": figure_kse,
    "kse_distribution.png": figure_kse_distribution,
    "loss_curves.png": figure_curves,
    "fig5_finetune.png": figure_finetune,
    "fig6_online.png": figure_online,
}
