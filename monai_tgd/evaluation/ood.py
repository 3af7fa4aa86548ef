"""Out-of-distribution evaluation (paper Fig. 6): hallucination and retained denoising on studies with a structure
the networks never saw (the irregular bladder, the catheter)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from monai_tgd.metrics import roi_bias, roi_cov, roi_mae, roi_rmse

from .loading import load_networks, network_sources
from .per_network import check_input_name, rows_per_network
from .records import check_ood_records, load_image, load_label
from .rois import body_roi, liver_roi, ood_roi
from .tables import csv_text, fmt, json_text, write_texts

__all__ = ["OOD_COLUMNS", "evaluate_ood", "ood_markdown"]

#: columns of ``evaluation_ood.csv`` (one row per out-of-distribution study, recon and network, the input included)
OOD_COLUMNS = [
    "study",
    "recon",
    "ood_feature",
    "network",
    "checkpoint",
    "ood_voxels",
    "ood_rmse_ref",
    "ood_mae_ref",
    "ood_bias_ref_pct",
    "liver_pixel_cov_pct",
    "rmse_body_ref",
    "seconds",
]


def evaluate_ood(
    networks: Mapping[str, nn.Module | str | os.PathLike],
    records: Sequence[Mapping],
    inferer: Callable,
    device: torch.device | str | None = None,
    output_dir: str | os.PathLike | None = None,
    network_def: nn.Module | Callable[[], nn.Module] | None = None,
    input_key: str = "input_120s",
    studies: Sequence[str] | None = None,
    ood_dilation: int = 1,
    liver_erosion: int = 1,
    axial_axis: int = -1,
    include_input: bool = True,
    log: Callable[[str], Any] | None = print,
) -> list[dict]:
    """Hallucination and retained denoising on out-of-distribution studies (paper Fig. 6).

    Each record's ``input_key`` image (the 120 s study whose two 60 s halves are what online N2N learns from) is
    denoised by every network, then compared with the record's 600 s ``reference``:

    * ``ood_rmse_ref`` / ``ood_mae_ref`` (image units) and ``ood_bias_ref_pct`` (percent of the reference ROI mean)
      inside the out-of-distribution ROI: the voxels labelled ``record["ood_label"]`` (the irregular bladder or the
      catheter), dilated in-plane by ``ood_dilation`` voxels so artefacts at its rim count. A network that
      hallucinates (paints the structure it never saw as something else) has a large error there. NaN when no
      voxel carries the label (a structure thinner than a voxel).
    * ``liver_pixel_cov_pct``: :func:`monai_tgd.metrics.roi_cov` (ddof 1, percent) in the liver eroded by
      ``liver_erosion`` (:func:`liver_roi`): the noise left in one image, since an online study has one realisation;
      NaN without a liver.
    * ``rmse_body_ref``: RMSE against the reference over the body (label > 0).

    ``studies``: evaluate only the records of these study ids (an unknown id raises); None: all.

    Rows (fields of :data:`OOD_COLUMNS`) come per (record, network), the un-denoised input first (network
    ``"input (120 s)"`` for ``input_120s``). ``output_dir``
    gets ``evaluation_ood.csv`` and ``evaluation_ood.json``, written only once every study was evaluated.

    Raises:
        FileNotFoundError / ValueError: before any inference, for a missing or unfitting checkpoint, no records, a
            missing field or a non-integer ``ood_label``, or any bad file
            (:func:`monai_tgd.evaluation.records.check_ood_records`: every file is read in full first; missing,
            truncated or corrupted files, NaN/inf voxels, a ``label`` that is not an integer-valued label map with a
            body voxel, images of different shapes within a study). The message names the path, study and field.
    """
    say = log or (lambda _msg: None)
    if studies is not None:
        unknown = sorted(set(studies) - {r.get("study") for r in records})
        if unknown:
            raise ValueError(f"evaluate_ood: studies {unknown} not among {[r.get('study') for r in records]}.")
        records = [r for r in records if r.get("study") in set(studies)]
    if not records:
        raise ValueError("evaluate_ood: no out-of-distribution records to evaluate.")
    models = load_networks(networks, network_def, device)
    sources = network_sources(networks)
    duration = input_key.rsplit("_", 1)[-1].removesuffix("s")  # "input_120s" -> "120"
    input_name = (f"input ({duration} s)" if duration.isdigit() else f"input ({input_key})") if include_input else None
    check_input_name(input_name, models, "evaluate_ood")
    start = time.perf_counter()
    checked = check_ood_records(records, input_key)  # every file read in full and validated, before any inference
    say(f"evaluate_ood: {len(checked)} input files of {len(records)} record(s) read and checked in "
        f"{time.perf_counter() - start:.2f} s")  # fmt: skip

    rows: list[dict] = []
    for index, record in enumerate(records):
        study = record.get("study", "")
        name = str(record.get("study", f"#{index}"))  # as in the messages of check_ood_records
        image = load_image(record[input_key], name, input_key)
        reference = load_image(record["reference"], name, "reference")
        label = load_label(record["label"], name)
        ood = ood_roi(label, record["ood_label"], ood_dilation, axial_axis)
        has_roi = bool(ood.any())
        has_bias = has_roi and reference[ood].mean() != 0
        if not has_roi:  # a structure thinner than a voxel (e.g. the catheter of a coarse test cohort)
            say(f"evaluate_ood: {study}: no voxel has the out-of-distribution label {record['ood_label']}; "
                "its ROI metrics are NaN.")
        elif not has_bias:
            say(f"evaluate_ood: {study}: the reference is 0 in the out-of-distribution ROI; its bias is NaN.")
        liver, _ = liver_roi(label, liver_erosion, axial_axis)
        has_liver = int(liver.sum()) > 1
        body = body_roi(label)

        def measure(out: np.ndarray, network: str) -> tuple[dict, dict]:
            return {
                "ood_voxels": int(ood.sum()),
                "ood_rmse_ref": roi_rmse(out, reference, ood) if has_roi else float("nan"),
                "ood_mae_ref": roi_mae(out, reference, ood) if has_roi else float("nan"),
                "ood_bias_ref_pct": roi_bias(out, reference, ood) if has_bias else float("nan"),
                "liver_pixel_cov_pct": roi_cov(out, liver) if has_liver else float("nan"),
                "rmse_body_ref": roi_rmse(out, reference, body),
            }, {}

        fields = {"study": study, "recon": record.get("recon", ""), "ood_feature": record.get("ood_feature", "")}
        rows += rows_per_network(
            image, models, sources, inferer, device, measure, fields, input_name,
            lambda r: f"evaluate_ood: {r['study']} {r['network']}: OOD-ROI RMSE {r['ood_rmse_ref']:.4f}, bias "
            f"{r['ood_bias_ref_pct']:.2f} %, liver pixel CoV {r['liver_pixel_cov_pct']:.2f} %",
            say,
        )  # fmt: skip
    if output_dir is not None:
        out_dir = Path(output_dir)
        content = json_text(
            {
                "description": "Error inside the out-of-distribution ROI against the 600 s reference and liver pixel "
                "CoV of the denoised input (paper Fig. 6)",
                "input": input_key,
                "ood_dilation_voxels": ood_dilation,
                "rows": rows,
            }
        )
        write_texts(  # both or none
            {out_dir / "evaluation_ood.csv": csv_text(rows, OOD_COLUMNS), out_dir / "evaluation_ood.json": content}
        )
    return rows


def ood_markdown(rows: Sequence[Mapping]) -> str:
    """Markdown table of :func:`evaluate_ood` rows, one line per (study, network)."""
    lines = [
        "| study | feature | network | OOD-ROI RMSE vs 600 s (SUV) | OOD-ROI MAE (SUV) | OOD-ROI bias (%) | liver pixel CoV (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['study']} | {r.get('ood_feature', '')} | {r['network']} | {fmt(r['ood_rmse_ref'], 4)} | "
            f"{fmt(r['ood_mae_ref'], 4)} | {fmt(r['ood_bias_ref_pct'])} | {fmt(r['liver_pixel_cov_pct'])} |"
        )
    return "\n".join(lines) + "\n"
