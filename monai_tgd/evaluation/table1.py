"""Table 1 of the paper: ensemble lesion bias, liver CoV and body RMSE of every network on every test study."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from monai_tgd.metrics import ensemble_bias, ensemble_cov, roi_rmse

from .loading import load_networks, network_sources
from .per_network import check_input_name, rows_per_network
from .records import check_test_records, load_image, load_label
from .rois import FIRST_LESION_LABEL, body_roi, liver_roi, roi_slices
from .tables import bold_best, csv_text, fmt, json_text, write_texts

__all__ = ["EVALUATION_COLUMNS", "LESION_COLUMNS", "evaluate_networks", "evaluation_markdown"]

#: columns of ``evaluation.csv`` (one row per study, recon and network, the input included)
EVALUATION_COLUMNS = [
    "study",
    "recon",
    "bmi_class",
    "network",
    "checkpoint",
    "realizations",
    "n_liver_lesions",
    "liver_lesion_bias_ref_pct",
    "liver_lesion_bias_truth_pct",
    "liver_cov_pct",
    "liver_voxels",
    "liver_erosion",
    "evaluated_slices",
    "rmse_body_ref",
    "rmse_body_truth",
    "rmse_body_ref_image",
    "seconds",
]

#: columns of ``evaluation_lesions.csv`` (one row per study, recon, network and lesion)
LESION_COLUMNS = [
    "study",
    "recon",
    "network",
    "lesion_label",
    "organ",
    "diameter_mm",
    "contrast",
    "voxels",
    "bias_ref_pct",
    "bias_truth_pct",
]


def _nan_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _study_metrics(
    images: np.ndarray,
    reference: np.ndarray,
    truth: np.ndarray | None,
    label: np.ndarray,
    lesions: Sequence[Mapping],
    liver: np.ndarray,
    body: np.ndarray,
) -> tuple[dict, list[dict]]:
    """Metrics of one ensemble ``images [R, *spatial]``: summary fields and one dict per lesion."""
    per_lesion = []
    for lesion in lesions:
        roi = label == int(lesion["label"])
        voxels = int(roi.sum())
        bias_ref = ensemble_bias(images, reference, roi) if voxels else float("nan")
        bias_truth = ensemble_bias(images, truth, roi) if voxels and truth is not None else float("nan")
        per_lesion.append(
            {
                "lesion_label": int(lesion["label"]),
                "organ": lesion.get("organ", ""),
                "diameter_mm": lesion.get("diameter_mm", float("nan")),
                "contrast": lesion.get("contrast", float("nan")),
                "voxels": voxels,
                "bias_ref_pct": bias_ref,
                "bias_truth_pct": bias_truth,
            }
        )
    in_liver = [p for p in per_lesion if p["organ"] == "liver" and p["voxels"]]
    mean_image = images.mean(axis=0, dtype=np.float64)
    summary = {
        "n_liver_lesions": len(in_liver),
        "liver_lesion_bias_ref_pct": _nan_mean([p["bias_ref_pct"] for p in in_liver]),
        "liver_lesion_bias_truth_pct": _nan_mean([p["bias_truth_pct"] for p in in_liver]),
        "liver_cov_pct": ensemble_cov(images, liver) if liver.any() else float("nan"),
        "rmse_body_ref": roi_rmse(mean_image, reference, body),
        "rmse_body_truth": roi_rmse(mean_image, truth, body) if truth is not None else float("nan"),
        # the error of one denoised image, as a reader sees it: bias and the noise left (the RMSE of the ensemble
        # mean above keeps only the bias, so it ranks the un-denoised input first)
        "rmse_body_ref_image": float(np.sqrt(np.mean([roi_rmse(image, reference, body) ** 2 for image in images]))),
    }
    return summary, per_lesion


def evaluate_networks(
    networks: Mapping[str, nn.Module | str | os.PathLike],
    records: Sequence[Mapping],
    inferer: Callable,
    device: torch.device | str | None = None,
    output_dir: str | os.PathLike | None = None,
    network_def: nn.Module | Callable[[], nn.Module] | None = None,
    liver_erosion: int = 1,
    axial_axis: int = -1,
    include_input: bool = True,
    roi_slices_only: bool = False,
    log: Callable[[str], Any] | None = print,
) -> list[dict]:
    """Ensemble lesion bias, liver CoV and body RMSE of every network on every test study (paper Table 1).

    For each record, the ``R`` realisations are denoised in one batched inferer call per network. Rows, one per
    (study, recon, network), the un-denoised realisations first (network ``"input (60 s)"``, the duration taken
    from the record's ``realization_duration_s``), have the fields of :data:`EVALUATION_COLUMNS` and ``lesions``
    (one dict per lesion of the record, fields of :data:`LESION_COLUMNS`) and ``baseline`` (True for the input):

    * ``liver_lesion_bias_ref_pct`` / ``_truth_pct``: mean over the study's liver lesions of the ensemble bias
      (:func:`monai_tgd.metrics.ensemble_bias`, percent) against the reference (600 s) / the phantom truth (NaN
      without ``truth``). A lesion's ROI is its label in the label map; a lesion absent from the label map (smaller
      than a voxel) gets NaN and ``voxels`` 0 and is left out of the mean.
    * ``liver_cov_pct``: :func:`monai_tgd.metrics.ensemble_cov` (percent, ddof 1) in the liver (label 2) eroded by
      ``liver_erosion`` voxels in-plane (:func:`liver_roi`; ``liver_erosion`` column: the erosion applied).
    * ``rmse_body_ref`` / ``rmse_body_truth``: RMSE of the ensemble mean against the reference / truth over the body
      (label > 0), in image units: the systematic error only (the un-denoised input, unbiased, scores lowest).
    * ``rmse_body_ref_image``: RMSE of one denoised realisation against the reference over the body, the root of the
      mean over the ``R`` realisations of each image's mean squared error: bias and the noise left together, the
      error a reader of one denoised image sees (and what the networks are trained to lower), in image units.

    Args:
        networks: ``{name: nn.Module or checkpoint path}``, in column order.
        records: test records (``reference``, ``realizations``, ``label``; optional ``truth``, ``lesions``,
            ``study``, ``recon``, ``bmi_class``), as from :func:`monai_tgd.data.load_datalist`.
        inferer: e.g. :class:`monai_tgd.inferers.Slab25DInferer`.
        device: device for inference.
        output_dir: where ``evaluation.csv``, ``evaluation_lesions.csv``, ``evaluation.json`` and
            ``evaluation.md`` are written; None writes nothing.
        network_def: the network to load checkpoints into.
        liver_erosion: in-plane erosion of the liver ROI, in voxels.
        axial_axis: spatial axis across slices (the inferer's slab axis); erosion is perpendicular to it.
        include_input: add the rows of the un-denoised realisations.
        roi_slices_only: evaluate only the slices from the first to the last one holding a liver or lesion voxel
            (denoised with ``inferer.slab // 2`` neighbours on each side, so their 2.5D input is the same as in the
            whole volume): lesion bias and liver CoV are unchanged, inference is several times faster, and the body
            RMSE is then over those slices only (``evaluated_slices`` column).
        log: progress messages (None: silent).

    Raises:
        FileNotFoundError / ValueError: before any inference, for a missing or unfitting checkpoint, no records, a
            missing field, or any bad file (:func:`monai_tgd.evaluation.records.check_test_records`: every file is
            read in full first; missing, truncated or corrupted files, NaN/inf voxels, a ``label`` that is not an
            integer-valued label map with a body voxel, images of different shapes within a study). The message
            names the path, the study and the field. Nothing is written unless every study was evaluated.
    """
    say = log or (lambda _msg: None)
    if not records:
        raise ValueError("evaluate_networks: no test records to evaluate (empty datalist section?).")
    models = load_networks(networks, network_def, device)
    sources = network_sources(networks)
    input_name = None
    if include_input:
        durations = {r.get("realization_duration_s") for r in records}
        duration = durations.pop() if len(durations) == 1 else None
        input_name = f"input ({duration:g} s)" if isinstance(duration, (int, float)) else "input"
        check_input_name(input_name, models, "evaluate_networks")
    if roi_slices_only and not isinstance(getattr(inferer, "slab", None), int):
        raise ValueError(
            "evaluate_networks: roi_slices_only needs an inferer with an integer 'slab' (the slices each output "
            f"slice sees, e.g. Slab25DInferer), got {type(inferer).__name__}."
        )
    start = time.perf_counter()
    checked = check_test_records(records)  # every file read in full and validated, before any inference
    say(f"evaluate: {len(checked)} input files of {len(records)} record(s) read and checked in "
        f"{time.perf_counter() - start:.2f} s")  # fmt: skip

    rows: list[dict] = []
    for index, record in enumerate(records):
        study, recon = record.get("study", ""), record.get("recon", "")
        name = str(record.get("study", f"#{index}"))  # as in the messages of check_test_records
        realizations = np.stack(
            [load_image(p, name, f"realizations[{i}]") for i, p in enumerate(record["realizations"])]
        )
        reference = load_image(record["reference"], name, "reference")
        truth = load_image(record["truth"], name, "truth") if record.get("truth") else None
        label = load_label(record["label"], name)
        liver, erosion = liver_roi(label, liver_erosion, axial_axis)
        body = body_roi(label)
        lesions = record.get("lesions") or []
        inner = (slice(None),) * label.ndim  # the evaluated part of what is denoised
        if roi_slices_only:
            keep, roi_part = roi_slices(liver | (label >= FIRST_LESION_LABEL), axial_axis, inferer.slab // 2)
            realizations = np.take(realizations, keep, axis=1 + axial_axis % label.ndim)  # [R, *spatial]
            inner = tuple(roi_part if a == axial_axis % label.ndim else slice(None) for a in range(label.ndim))
            reference, label, liver, body = (np.take(a, keep, axis=axial_axis)[inner] for a in (reference, label, liver, body))
            truth = None if truth is None else np.take(truth, keep, axis=axial_axis)[inner]

        def measure(images: np.ndarray, network: str) -> tuple[dict, dict]:
            summary, per_lesion = _study_metrics(images, reference, truth, label, lesions, liver, body)
            return summary, {"lesions": [{"study": study, "recon": recon, "network": network, **p} for p in per_lesion]}

        fields = {
            "study": study,
            "recon": recon,
            "bmi_class": record.get("bmi_class", ""),
            "realizations": int(realizations.shape[0]),
            "liver_voxels": int(liver.sum()),
            "liver_erosion": erosion,
            "evaluated_slices": int(label.shape[axial_axis]),
        }
        rows += rows_per_network(
            realizations, models, sources, inferer, device, measure, fields, input_name,
            lambda r: f"evaluate: {r['study']} {r['recon']} {r['network']}: liver lesion bias "
            f"{r['liver_lesion_bias_ref_pct']:.2f} % (vs 600 s), liver CoV {r['liver_cov_pct']:.2f} % "
            f"({r['seconds']:.1f} s)",
            say, region=(slice(None), *inner),
        )  # fmt: skip

    if output_dir is not None:
        out = Path(output_dir)
        content = json_text(
            {
                "description": "Ensemble lesion bias and liver CoV over the R noise realisations of each test study "
                "(paper Table 1); see the bundle docs/evaluate_kse_sweep.md",
                "units": {
                    "bias": "percent of the reference ROI mean",
                    "cov": "percent",
                    "rmse": "image units (SUV-like)",
                },
                "networks": sources,
                "liver_erosion_voxels": liver_erosion,
                "rows": rows,
            }
        )
        write_texts(  # all four or none
            {
                out / "evaluation.csv": csv_text(rows, EVALUATION_COLUMNS),
                out / "evaluation_lesions.csv": csv_text([p for r in rows for p in r["lesions"]], LESION_COLUMNS),
                out / "evaluation.json": content,
                out / "evaluation.md": evaluation_markdown(rows),
            }
        )
    return rows


def evaluation_markdown(rows: Sequence[Mapping]) -> str:
    """Markdown tables of :func:`evaluate_networks` rows: per (study, recon), metrics as rows and networks as
    columns (like the paper's Table 1), then the bias of each lesion. The best network value (smallest absolute
    bias, smallest CoV and RMSE; the input column excluded) is in bold."""
    lines = [
        "# Evaluation: ensemble lesion bias and liver CoV (paper Table 1)",
        "",
        "Bias: ensemble bias over the R realisations, percent of the ROI mean of the 600 s reference (or of the "
        "phantom truth); lesion bias is the mean over the study's liver lesions. CoV: liver ensemble CoV in percent "
        "(liver label eroded in-plane, lesions excluded). Body RMSE: ensemble mean vs reference in the body (the bias "
        "only); image RMSE: each denoised image vs reference in the body (bias and noise), image units (SUV-like). "
        "**Bold**: best network (input excluded).",
    ]
    groups: dict[tuple, list[Mapping]] = {}
    for row in rows:
        groups.setdefault((row["study"], row["recon"]), []).append(row)
    metrics = [
        ("Liver lesion bias vs 600 s (%)", "liver_lesion_bias_ref_pct", abs, 2),
        ("Liver lesion bias vs truth (%)", "liver_lesion_bias_truth_pct", abs, 2),
        ("Liver CoV (%)", "liver_cov_pct", lambda v: v, 2),
        ("Body RMSE vs 600 s (SUV)", "rmse_body_ref", lambda v: v, 4),
        ("Body RMSE vs truth (SUV)", "rmse_body_truth", lambda v: v, 4),
        ("Image RMSE vs 600 s (SUV)", "rmse_body_ref_image", lambda v: v, 4),
    ]
    for (study, recon), group in groups.items():
        names = [r["network"] for r in group]
        skip = sum(1 for r in group if r.get("baseline"))  # the input comes first
        first = group[0]
        bmi = f", {first['bmi_class']} BMI" if first.get("bmi_class") else ""
        n_lesions = first.get("n_liver_lesions", 0)
        lines += [
            "",
            f"## {study}{bmi}, recon {recon}, R = {first['realizations']} realisations, "
            f"{n_lesions} liver lesion(s), liver ROI {first.get('liver_voxels', 'n/a')} voxels "
            f"(eroded {first.get('liver_erosion', 0)})",
            "",
            "| metric | " + " | ".join(names) + " |",
            "|---" * (len(names) + 1) + "|",
        ]
        for title, key, order, digits in metrics:
            values = [r.get(key) for r in group]
            if all(v is None or not math.isfinite(v) for v in values):
                continue
            bold = bold_best(values, skip, order)
            cells = [f"**{fmt(v, digits)}**" if i in bold else fmt(v, digits) for i, v in enumerate(values)]
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
        lesions = first.get("lesions") or []
        if lesions:
            lines += ["", "Ensemble bias vs 600 s (%) per lesion (vs truth in brackets):", ""]
            lines += ["| lesion | organ | diameter (mm) | voxels | " + " | ".join(names) + " |",
                      "|---" * (len(names) + 4) + "|"]
            for j, lesion in enumerate(lesions):
                cells = []
                for r in group:
                    p = r["lesions"][j]
                    truth = fmt(p["bias_truth_pct"])
                    cells.append(fmt(p["bias_ref_pct"]) + (f" ({truth})" if truth != "n/a" else ""))
                lines.append(
                    f"| {lesion['lesion_label']} | {lesion['organ']} | {fmt(lesion['diameter_mm'], 1)} | "
                    f"{lesion['voxels']} | " + " | ".join(cells) + " |"
                )
    return "\n".join(lines) + "\n"
