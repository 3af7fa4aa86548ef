"""Evaluation of denoising networks on test studies (paper Section 4, Table 1) and the KSE threshold sweep (Fig. 4).

* :func:`evaluate_networks` denoises the ``R`` noise realisations of every test study with every network and reports,
  per (study, recon, network) and for the un-denoised input as the baseline: the ensemble bias of every lesion
  (percent, against the 600 s reference and against the phantom truth when the record has one), its mean over the
  study's liver lesions, the liver ensemble CoV (percent) and the RMSE of the ensemble mean against the reference in
  the body (image units). It writes ``evaluation.csv``, ``evaluation_lesions.csv``, ``evaluation.json`` and
  ``evaluation.md`` (a table like the paper's Table 1).
* :func:`kse_sweep` drops, for each KSE threshold, the kernels that read feature maps scored as redundant
  (:func:`monai_tgd.tgd.drop_redundant`) and measures how much the output changes, against a control that zeroes
  the same number of randomly chosen input-channel kernels in the same layers; :func:`run_kse_sweep` does it on
  one realisation of a test study and writes ``kse_sweep.csv``, ``kse_sweep.json`` and ``kse_sweep.md``.

Every check of the inputs (checkpoints exist, load and fit the network; study files exist and share one shape) runs
before any inference. Every file is written through :func:`monai_tgd.io.atomic_path`.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from monai_tgd.io import atomic_path
from monai_tgd.kse import kse_scores
from monai_tgd.metrics import ensemble_bias, ensemble_cov, roi_bias, roi_cov, roi_mae, roi_rmse
from monai_tgd.tgd import conv_chain, drop_redundant, kse_masks

__all__ = [
    "load_network",
    "load_networks",
    "denoise",
    "liver_roi",
    "evaluate_networks",
    "evaluation_markdown",
    "kse_sweep",
    "kse_histogram",
    "zero_random_kernels",
    "run_kse_sweep",
    "kse_sweep_markdown",
    "LIVER_LABEL",
    "EVALUATION_COLUMNS",
    "LESION_COLUMNS",
    "evaluate_ood",
    "ood_markdown",
    "OOD_COLUMNS",
    "KSE_COLUMNS",
]

#: label of the liver in the datalist's label maps (lesions carry their own labels 10+ and so are excluded)
LIVER_LABEL = 2

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

#: columns of ``kse_sweep.csv`` (one row per threshold)
KSE_COLUMNS = [
    "threshold",
    "flagged_channels",
    "total_channels",
    "dropped_params_pct",
    "kse_output_change_pct",
    "random_dropped_params_pct",
    "random_output_change_pct",
    "random_output_change_pct_min",
    "random_output_change_pct_max",
    "random_draws",
]


# ---------------------------------------------------------------------------------------------------------------------
# networks


def _template(network_def: nn.Module | Callable[[], nn.Module] | None) -> nn.Module:
    if network_def is None:
        raise ValueError(
            "a checkpoint path needs network_def (the network to load it into, e.g. the bundle's @network_def)."
        )
    if isinstance(network_def, nn.Module):
        return copy.deepcopy(network_def)
    net = network_def()
    if not isinstance(net, nn.Module):
        raise ValueError(f"network_def must be an nn.Module or return one, got {type(net).__name__}.")
    return net


def _state_dict(checkpoint: Any, path: Path) -> dict:
    """The network's state_dict from a checkpoint: flat, or ``{"network": state_dict}`` as CheckpointSaver writes it."""
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("network"), Mapping):
        checkpoint = checkpoint["network"]
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        keys = list(checkpoint)[:5] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(
            f"checkpoint {path} holds no network state_dict (expected a state_dict or {{'network': state_dict}}; "
            f"found {keys})."
        )
    state = dict(checkpoint)
    if state and all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_network(
    spec: nn.Module | str | os.PathLike,
    network_def: nn.Module | Callable[[], nn.Module] | None = None,
    device: torch.device | str | None = None,
    name: str | None = None,
) -> nn.Module:
    """A network ready for inference (a copy, on ``device``, in eval mode) from a module or a checkpoint path.

    Args:
        spec: an ``nn.Module`` (copied), or the path of a checkpoint holding a state_dict, flat or as
            ``{"network": state_dict}`` (both are what MONAI's ``CheckpointSaver``/``CheckpointLoader`` handle).
        network_def: the network to load a checkpoint into (copied; an ``nn.Module`` or a factory).
        device: device of the returned network; default CPU.
        name: the network's name in error messages.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        ValueError: the file is not a readable checkpoint, holds no state_dict, or does not fit ``network_def``
            (missing/unexpected keys or other sizes).
    """
    label = f"network '{name}'" if name else "network"
    device = torch.device("cpu") if device is None else torch.device(device)
    if isinstance(spec, nn.Module):
        net = copy.deepcopy(spec)
    elif isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"{label}: checkpoint {path} not found.")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle, zip and torch errors all mean "not a readable checkpoint"
            raise ValueError(f"{label}: cannot read checkpoint {path} ({type(e).__name__}: {e}).") from e
        net = _template(network_def)
        try:
            net.load_state_dict(_state_dict(checkpoint, path), strict=True)
        except RuntimeError as e:
            raise ValueError(
                f"{label}: checkpoint {path} does not fit the network {type(net).__name__} built from network_def "
                f"(was it trained with other sizes, e.g. --features/--num_layers?): {e}"
            ) from e
    else:
        raise TypeError(f"{label}: expected an nn.Module or a checkpoint path, got {type(spec).__name__}.")
    return net.to(device).eval()


def _source(spec: Any) -> str:
    """How a network was given, for the reports: its checkpoint path or ``<ClassName>``."""
    return str(spec) if isinstance(spec, (str, os.PathLike)) else f"<{type(spec).__name__}>"


def load_networks(
    networks: Mapping[str, nn.Module | str | os.PathLike],
    network_def: nn.Module | Callable[[], nn.Module] | None = None,
    device: torch.device | str | None = None,
) -> dict[str, nn.Module]:
    """:func:`load_network` for each ``{name: module or checkpoint path}``; checks every entry before returning."""
    if not isinstance(networks, Mapping) or not networks:
        raise ValueError(f"networks must be a non-empty {{name: checkpoint path or module}}, got {networks!r}.")
    return {str(name): load_network(spec, network_def, device, name=str(name)) for name, spec in networks.items()}


def _as_tensor(volume: Any) -> torch.Tensor:
    if isinstance(volume, torch.Tensor):
        return volume.detach().as_subclass(torch.Tensor).to(torch.float32)
    return torch.as_tensor(np.asarray(volume), dtype=torch.float32)


def denoise(
    network: nn.Module, volume: Any, inferer: Callable, device: torch.device | str | None = None
) -> torch.Tensor:
    """Denoise one volume ``[*spatial]`` or a stack ``[N, *spatial]`` (e.g. the ``R`` realisations) in one call.

    The stack is passed to ``inferer`` as the batch ``[N, 1, *spatial]`` (e.g.
    :class:`monai_tgd.inferers.Slab25DInferer`, which batches the slabs), under ``torch.no_grad()`` with the network
    in eval mode, on ``device`` (default: the network's). Returns float32 on the CPU, the shape of ``volume``.
    """
    x = _as_tensor(volume)
    if x.ndim not in (3, 4):
        raise ValueError(f"denoise: volume must be [*spatial] (3D) or [N, *spatial], got shape {tuple(x.shape)}.")
    if device is None:
        param = next(network.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    batch = (x[None] if x.ndim == 3 else x)[:, None].to(device)
    network.eval()
    with torch.no_grad():
        out = inferer(batch, network)
    out = out.as_subclass(torch.Tensor) if isinstance(out, torch.Tensor) else torch.as_tensor(out)
    if out.shape != batch.shape:
        raise ValueError(f"denoise: the inferer returned shape {tuple(out.shape)} for input {tuple(batch.shape)}.")
    out = out[:, 0].detach().to("cpu", torch.float32)
    return out[0] if x.ndim == 3 else out


# ---------------------------------------------------------------------------------------------------------------------
# regions


def _in_plane(ndim: int, axial_axis: int) -> np.ndarray:
    """3x3 structuring element in the plane perpendicular to ``axial_axis`` (size 1 along it): erosion and dilation
    with it never cross slices."""
    shape = [3] * ndim
    shape[axial_axis] = 1
    return np.ones(shape, dtype=bool)


def liver_roi(label: np.ndarray, erosion: int = 1, axial_axis: int = -1) -> tuple[np.ndarray, int]:
    """Liver mask (label 2) eroded by ``erosion`` voxels in-plane (not along ``axial_axis``).

    Lesions carry their own labels (10+), so they are never inside it. If the erosion would empty the mask (coarse
    images), the un-eroded mask is used. Returns ``(mask, erosion actually applied)``.
    """
    liver = np.asarray(label) == LIVER_LABEL
    if erosion > 0 and liver.any():
        eroded = ndimage.binary_erosion(liver, structure=_in_plane(liver.ndim, axial_axis), iterations=erosion)
        if eroded.any():
            return eroded, erosion
    return liver, 0


# ---------------------------------------------------------------------------------------------------------------------
# evaluation


def _load_image(path: str) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(path).dataobj, dtype=np.float32)


def _image_shape(path: str, where: str) -> tuple[int, ...]:
    import nibabel as nib

    if not Path(path).is_file():
        raise FileNotFoundError(f"{where}: file {path} not found.")
    try:
        return tuple(nib.load(path).shape)
    except Exception as e:
        raise ValueError(f"{where}: cannot read image {path} ({type(e).__name__}: {e}).") from e


def _check_record(record: Mapping, index: int) -> None:
    """Fields and image shapes of a test record, from the headers only (no voxel data read)."""
    name = record.get("study", f"#{index}")
    for field in ("reference", "realizations", "label"):
        if field not in record:
            raise ValueError(
                f"study {name}: missing field '{field}' (test records need reference, realizations, label)."
            )
    realizations = record["realizations"]
    if not isinstance(realizations, (list, tuple)) or len(realizations) < 2:
        raise ValueError(f"study {name}: 'realizations' must list at least 2 images, got {realizations!r}.")
    fields = {"reference": record["reference"], "label": record["label"]}
    if record.get("truth"):
        fields["truth"] = record["truth"]
    fields.update({f"realizations[{i}]": p for i, p in enumerate(realizations)})
    shapes = {f: _image_shape(str(p), f"study {name}, field '{f}'") for f, p in fields.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"study {name}: images of different shapes: {shapes}.")
    if len(shapes["reference"]) != 3:
        raise ValueError(f"study {name}: images must be 3D volumes, got shape {shapes['reference']}.")
    for i, lesion in enumerate(record.get("lesions") or []):
        if not isinstance(lesion, Mapping) or "label" not in lesion:
            raise ValueError(f"study {name}: lesions[{i}] has no 'label' (got {lesion!r}).")


def _roi_slices(roi: np.ndarray, axial_axis: int, halo: int) -> tuple[np.ndarray, slice]:
    """Slices to denoise for the metrics in ``roi``: from ``halo`` before its first slice along ``axial_axis`` to
    ``halo`` after its last (the 2.5D input of every ROI slice is then that of the whole volume), and the part of
    them that holds the ROI (where the metrics are taken; the halo's own outputs see a clipped border)."""
    axis = axial_axis % roi.ndim
    occupied = np.flatnonzero(roi.any(axis=tuple(a for a in range(roi.ndim) if a != axis)))
    if occupied.size == 0:
        return np.arange(roi.shape[axis]), slice(None)
    first, last = int(occupied[0]), int(occupied[-1])
    keep = np.arange(max(first - halo, 0), min(last + halo + 1, roi.shape[axis]))
    return keep, slice(first - int(keep[0]), last - int(keep[0]) + 1)


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
    }
    return summary, per_lesion


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _json_safe(value.item())
    return value


def _write_csv(path: Path, rows: Sequence[Mapping], columns: Sequence[str]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({c: ("" if _json_safe(row.get(c)) is None else row.get(c)) for c in columns})


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _write_json(path: Path, content: Any) -> None:
    _write_text(path, json.dumps(_json_safe(content), indent=2, allow_nan=False) + "\n")


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
      (label > 0), in image units.

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
            missing file or field, or images of different shapes within a study.
    """
    say = log or (lambda _msg: None)
    if not records:
        raise ValueError("evaluate_networks: no test records to evaluate (empty datalist section?).")
    models = load_networks(networks, network_def, device)
    sources = {str(k): _source(v) for k, v in networks.items()}
    input_name = None
    if include_input:
        durations = {r.get("realization_duration_s") for r in records}
        duration = durations.pop() if len(durations) == 1 else None
        input_name = f"input ({duration:g} s)" if isinstance(duration, (int, float)) else "input"
        if input_name in models:
            raise ValueError(
                f"evaluate_networks: '{input_name}' is reserved for the un-denoised input; rename that network."
            )
    if roi_slices_only and not isinstance(getattr(inferer, "slab", None), int):
        raise ValueError(
            "evaluate_networks: roi_slices_only needs an inferer with an integer 'slab' (the slices each output "
            f"slice sees, e.g. Slab25DInferer), got {type(inferer).__name__}."
        )
    for i, record in enumerate(records):
        _check_record(record, i)

    rows: list[dict] = []
    for record in records:
        study, recon = record.get("study", ""), record.get("recon", "")
        realizations = np.stack([_load_image(str(p)) for p in record["realizations"]])
        reference = _load_image(str(record["reference"]))
        truth = _load_image(str(record["truth"])) if record.get("truth") else None
        label = np.rint(_load_image(str(record["label"]))).astype(np.int64)
        liver, erosion = liver_roi(label, liver_erosion, axial_axis)
        body = label > 0
        if not body.any():
            raise ValueError(f"study {study}: the label map has no body voxel (label > 0).")
        lesions = record.get("lesions") or []
        inner = (slice(None),) * label.ndim  # the evaluated part of what is denoised
        if roi_slices_only:
            keep, roi_part = _roi_slices(liver | (label >= 10), axial_axis, inferer.slab // 2)
            realizations = np.take(realizations, keep, axis=1 + axial_axis % label.ndim)  # [R, *spatial]
            inner = tuple(roi_part if a == axial_axis % label.ndim else slice(None) for a in range(label.ndim))
            reference, label, liver, body = (np.take(a, keep, axis=axial_axis)[inner] for a in (reference, label, liver, body))
            truth = None if truth is None else np.take(truth, keep, axis=axial_axis)[inner]
        common = {
            "study": study,
            "recon": recon,
            "bmi_class": record.get("bmi_class", ""),
            "realizations": int(realizations.shape[0]),
            "liver_voxels": int(liver.sum()),
            "liver_erosion": erosion,
            "evaluated_slices": int(label.shape[axial_axis]),
        }
        ensembles: list[tuple[str, str, Callable[[], np.ndarray]]] = []
        if include_input:
            ensembles.append((input_name, "", lambda: realizations[(slice(None), *inner)]))
        for name, net in models.items():
            ensembles.append(
                (name, sources[name], lambda net=net: denoise(net, realizations, inferer, device).numpy()[(slice(None), *inner)])
            )
        for name, source, produce in ensembles:
            start = time.perf_counter()
            images = produce()
            summary, per_lesion = _study_metrics(images, reference, truth, label, lesions, liver, body)
            seconds = time.perf_counter() - start
            rows.append(
                {
                    **common,
                    "network": name,
                    "baseline": name == input_name,
                    "checkpoint": source,
                    **summary,
                    "seconds": round(seconds, 3),
                    "lesions": [{"study": study, "recon": recon, "network": name, **p} for p in per_lesion],
                }
            )
            say(
                f"evaluate: {study} {recon} {name}: liver lesion bias {summary['liver_lesion_bias_ref_pct']:.2f} % "
                f"(vs 600 s), liver CoV {summary['liver_cov_pct']:.2f} % ({seconds:.1f} s)"
            )

    if output_dir is not None:
        out = Path(output_dir)
        _write_csv(out / "evaluation.csv", rows, EVALUATION_COLUMNS)
        _write_csv(out / "evaluation_lesions.csv", [p for r in rows for p in r["lesions"]], LESION_COLUMNS)
        _write_json(
            out / "evaluation.json",
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
            },
        )
        _write_text(out / "evaluation.md", evaluation_markdown(rows))
    return rows


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _bold_best(values: list[float], skip: int, key: Callable[[float], float]) -> set[int]:
    """Indices (>= skip) of the best finite value by ``key`` (ties all bold); none if fewer than 2 candidates."""
    candidates = [(key(v), i) for i, v in enumerate(values) if i >= skip and v is not None and math.isfinite(v)]
    if len(candidates) < 2:
        return set()
    best = min(c for c, _ in candidates)
    return {i for c, i in candidates if c == best}


def evaluation_markdown(rows: Sequence[Mapping]) -> str:
    """Markdown tables of :func:`evaluate_networks` rows: per (study, recon), metrics as rows and networks as
    columns (like the paper's Table 1), then the bias of each lesion. The best network value (smallest absolute
    bias, smallest CoV and RMSE; the input column excluded) is in bold."""
    lines = [
        "# Evaluation: ensemble lesion bias and liver CoV (paper Table 1)",
        "",
        "Bias: ensemble bias over the R realisations, percent of the ROI mean of the 600 s reference (or of the "
        "phantom truth); lesion bias is the mean over the study's liver lesions. CoV: liver ensemble CoV in percent "
        "(liver label eroded in-plane, lesions excluded). RMSE: ensemble mean vs reference in the body, image units "
        "(SUV-like). **Bold**: best network (input excluded).",
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
            bold = _bold_best(values, skip, order)
            cells = [f"**{_fmt(v, digits)}**" if i in bold else _fmt(v, digits) for i, v in enumerate(values)]
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
                    truth = _fmt(p["bias_truth_pct"])
                    cells.append(_fmt(p["bias_ref_pct"]) + (f" ({truth})" if truth != "n/a" else ""))
                lines.append(
                    f"| {lesion['lesion_label']} | {lesion['organ']} | {_fmt(lesion['diameter_mm'], 1)} | "
                    f"{lesion['voxels']} | " + " | ".join(cells) + " |"
                )
    return "\n".join(lines) + "\n"


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
    gets ``evaluation_ood.csv`` and ``evaluation_ood.json``. All inputs are checked before any inference.
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
    duration = input_key.rsplit("_", 1)[-1].removesuffix("s")  # "input_120s" -> "120"
    input_name = f"input ({duration} s)" if duration.isdigit() else f"input ({input_key})"
    if include_input and input_name in models:
        raise ValueError(f"evaluate_ood: '{input_name}' is reserved for the un-denoised input; rename that network.")
    for i, record in enumerate(records):
        name = record.get("study", f"#{i}")
        for field in (input_key, "reference", "label", "ood_label"):
            if field not in record:
                raise ValueError(f"study {name}: missing field '{field}' (out-of-distribution records need it).")
        shapes = {f: _image_shape(str(record[f]), f"study {name}, field '{f}'") for f in (input_key, "reference", "label")}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"study {name}: images of different shapes: {shapes}.")
        if isinstance(record["ood_label"], bool) or not isinstance(record["ood_label"], int):
            raise ValueError(f"study {name}: 'ood_label' must be an integer label value, got {record['ood_label']!r}.")

    rows: list[dict] = []
    for record in records:
        study = record.get("study", "")
        image = _load_image(str(record[input_key]))
        reference = _load_image(str(record["reference"]))
        label = np.rint(_load_image(str(record["label"]))).astype(np.int64)
        ood = label == int(record["ood_label"])
        if ood_dilation > 0 and ood.any():
            ood = ndimage.binary_dilation(ood, structure=_in_plane(ood.ndim, axial_axis), iterations=ood_dilation)
        has_roi = bool(ood.any())
        has_bias = has_roi and reference[ood].mean() != 0
        if not has_roi:  # a structure thinner than a voxel (e.g. the catheter of a coarse test cohort)
            say(f"evaluate_ood: {study}: no voxel has the out-of-distribution label {record['ood_label']}; "
                "its ROI metrics are NaN.")
        elif not has_bias:
            say(f"evaluate_ood: {study}: the reference is 0 in the out-of-distribution ROI; its bias is NaN.")
        liver, _ = liver_roi(label, liver_erosion, axial_axis)
        has_liver = int(liver.sum()) > 1
        body = label > 0
        candidates: list[tuple[str, str, Callable[[], np.ndarray]]] = []
        if include_input:
            candidates.append((input_name, "", lambda: image))
        for name, net in models.items():
            candidates.append((name, _source(networks[name]), lambda net=net: denoise(net, image, inferer, device).numpy()))
        for name, source, produce in candidates:
            start = time.perf_counter()
            out = produce()
            row = {
                "study": study,
                "recon": record.get("recon", ""),
                "ood_feature": record.get("ood_feature", ""),
                "network": name,
                "baseline": not source,
                "checkpoint": source,
                "ood_voxels": int(ood.sum()),
                "ood_rmse_ref": roi_rmse(out, reference, ood) if has_roi else float("nan"),
                "ood_mae_ref": roi_mae(out, reference, ood) if has_roi else float("nan"),
                "ood_bias_ref_pct": roi_bias(out, reference, ood) if has_bias else float("nan"),
                "liver_pixel_cov_pct": roi_cov(out, liver) if has_liver else float("nan"),
                "rmse_body_ref": roi_rmse(out, reference, body),
                "seconds": round(time.perf_counter() - start, 3),
            }
            rows.append(row)
            say(
                f"evaluate_ood: {study} {name}: OOD-ROI RMSE {row['ood_rmse_ref']:.4f}, bias {row['ood_bias_ref_pct']:.2f} %, "
                f"liver pixel CoV {row['liver_pixel_cov_pct']:.2f} %"
            )
    if output_dir is not None:
        out_dir = Path(output_dir)
        _write_csv(out_dir / "evaluation_ood.csv", rows, OOD_COLUMNS)
        _write_json(
            out_dir / "evaluation_ood.json",
            {
                "description": "Error inside the out-of-distribution ROI against the 600 s reference and liver pixel "
                "CoV of the denoised input (paper Fig. 6)",
                "input": input_key,
                "ood_dilation_voxels": ood_dilation,
                "rows": rows,
            },
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
            f"| {r['study']} | {r.get('ood_feature', '')} | {r['network']} | {_fmt(r['ood_rmse_ref'], 4)} | "
            f"{_fmt(r['ood_mae_ref'], 4)} | {_fmt(r['ood_bias_ref_pct'])} | {_fmt(r['liver_pixel_cov_pct'])} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# KSE sweep


def zero_random_kernels(
    network: nn.Module, counts: Mapping[str, int], rng: np.random.Generator
) -> tuple[nn.Module, float]:
    """A copy of ``network`` with ``counts[h]`` randomly chosen input-channel kernels ``W_i[:, c]`` zeroed in the
    conv fed by hidden conv ``h`` (the random control of :func:`monai_tgd.tgd.drop_redundant`).

    Returns ``(copy, fraction)``, the fraction of all conv parameters zeroed, counted as ``drop_redundant`` does.
    """
    pruned = copy.deepcopy(network)
    chain = conv_chain(pruned)
    dropped = 0
    with torch.no_grad():
        for h in chain.hidden:
            n = int(counts.get(h.name, 0))
            c_in = h.consumer.weight.shape[1]
            if not 0 <= n <= c_in:
                raise ValueError(f"zero_random_kernels: {n} channels requested for '{h.consumer_name}' with {c_in}.")
            channels = torch.as_tensor(np.sort(rng.choice(c_in, size=n, replace=False)), dtype=torch.long)
            h.consumer.weight[:, channels.to(h.consumer.weight.device)] = 0
            dropped += h.consumer.weight[:, channels].numel()
    convs = [h.conv for h in chain.hidden] + [conv for _, conv in chain.outputs]
    total = sum(p.numel() for conv in convs for p in conv.parameters(recurse=False))
    return pruned, dropped / total


def _relative_change(output: torch.Tensor, original: torch.Tensor, mask: torch.Tensor) -> float:
    """``100 * ||output - original||_mask / ||original||_mask`` (relative RMSE in percent)."""
    a, b = output[mask].double(), original[mask].double()
    norm = float(torch.sqrt(torch.mean(b**2)))
    if norm == 0:
        raise ValueError("kse_sweep: the original network's output is 0 in the body; a relative change is undefined.")
    return 100.0 * float(torch.sqrt(torch.mean((a - b) ** 2))) / norm


def kse_sweep(
    network: nn.Module,
    volume: Any,
    thresholds: Sequence[float] = (0.3, 0.4, 0.5, 0.6),
    inferer: Callable | None = None,
    body_mask: Any = None,
    seed: int = 0,
    random_draws: int = 3,
    alpha: float = 1.0,
    k: int = 5,
    device: torch.device | str | None = None,
) -> list[dict]:
    """How much the output changes when the KSE-redundant kernels are dropped, per threshold (paper Fig. 4).

    For each threshold: :func:`monai_tgd.tgd.drop_redundant` (kernels ``W_i[:, c]`` of every input channel ``c``
    scoring below it) and ``random_draws`` controls that zero the same number of randomly chosen input channels in
    the same layers (:func:`zero_random_kernels`; draw ``j`` of threshold ``t`` uses
    ``numpy.random.default_rng([seed, j, round(1e6 t)])``, so a result does not depend on the other thresholds).
    The output change is the relative RMSE (percent) of the pruned network's output against the original
    network's, over ``body_mask`` (default: the whole volume).

    Rows have the fields of :data:`KSE_COLUMNS` and ``flagged_per_layer`` ``{consumer conv: flagged channels}``.
    """
    if inferer is None:
        from monai_tgd.inferers import Slab25DInferer

        inferer = Slab25DInferer()
    if random_draws < 0:
        raise ValueError(f"kse_sweep: random_draws must be >= 0, got {random_draws}.")
    for t in thresholds:
        if not 0.0 <= float(t) <= 1.0:
            raise ValueError(f"kse_sweep: thresholds must be in [0, 1], got {t}.")
    network = network.eval()
    chain = conv_chain(network)  # checks the network's structure before any inference
    x = _as_tensor(volume)
    mask = torch.ones(x.shape, dtype=torch.bool) if body_mask is None else torch.as_tensor(np.asarray(body_mask)).bool()
    if mask.shape != x.shape:
        raise ValueError(f"kse_sweep: body_mask shape {tuple(mask.shape)} differs from the volume's {tuple(x.shape)}.")
    if not mask.any():
        raise ValueError("kse_sweep: body_mask is empty.")
    original = denoise(network, x, inferer, device)
    total_channels = sum(h.consumer.weight.shape[1] for h in chain.hidden)
    rows = []
    for t in thresholds:
        t = float(t)
        masks = kse_masks(network, t, alpha=alpha, k=k)
        counts = {h.name: int(masks[h.name].sum()) for h in chain.hidden}
        pruned, fraction = drop_redundant(network, t, alpha=alpha, k=k)
        change = _relative_change(denoise(pruned, x, inferer, device), original, mask)
        random_changes, random_fraction = [], float("nan")
        for draw in range(random_draws):
            rng = np.random.default_rng([int(seed), draw, int(round(t * 1e6))])
            control, random_fraction = zero_random_kernels(network, counts, rng)
            random_changes.append(_relative_change(denoise(control, x, inferer, device), original, mask))
        rows.append(
            {
                "threshold": t,
                "flagged_channels": sum(counts.values()),
                "total_channels": total_channels,
                "dropped_params_pct": 100.0 * fraction,
                "kse_output_change_pct": change,
                "random_dropped_params_pct": 100.0 * random_fraction,
                "random_output_change_pct": float(np.mean(random_changes)) if random_changes else float("nan"),
                "random_output_change_pct_min": float(np.min(random_changes)) if random_changes else float("nan"),
                "random_output_change_pct_max": float(np.max(random_changes)) if random_changes else float("nan"),
                "random_draws": random_draws,
                "flagged_per_layer": {h.consumer_name: counts[h.name] for h in chain.hidden},
            }
        )
    return rows


def kse_histogram(network: nn.Module, bins: int = 10, alpha: float = 1.0, k: int = 5) -> dict:
    """Histogram over [0, 1] of the KSE scores of the input channels of every conv fed by a hidden conv.

    Returns ``{"bin_edges": [bins + 1], "counts": [bins] (all layers), "per_layer": {consumer conv: [bins]}}``.
    """
    if bins < 1:
        raise ValueError(f"kse_histogram: bins must be >= 1, got {bins}.")
    edges = np.linspace(0.0, 1.0, bins + 1)
    per_layer = {}
    for h in conv_chain(network).hidden:
        scores = kse_scores(h.consumer.weight, alpha=alpha, k=k).cpu().numpy()
        per_layer[h.consumer_name] = np.histogram(scores, bins=edges)[0].astype(int).tolist()
    counts = np.sum([c for c in per_layer.values()], axis=0).astype(int).tolist() if per_layer else [0] * bins
    return {"bin_edges": edges.tolist(), "counts": counts, "per_layer": per_layer}


def _select_study(records: Sequence[Mapping], study: int | str) -> Mapping:
    if not records:
        raise ValueError("run_kse_sweep: no records (empty datalist section?).")
    if isinstance(study, str):
        found = [r for r in records if r.get("study") == study]
        if not found:
            raise ValueError(f"run_kse_sweep: study '{study}' not among {[r.get('study') for r in records]}.")
        return found[0]
    if not -len(records) <= int(study) < len(records):
        raise ValueError(f"run_kse_sweep: study index {study} out of range for {len(records)} records.")
    return records[int(study)]


def run_kse_sweep(
    network: nn.Module | str | os.PathLike,
    records: Sequence[Mapping],
    inferer: Callable,
    device: torch.device | str | None = None,
    output_dir: str | os.PathLike | None = None,
    network_def: nn.Module | Callable[[], nn.Module] | None = None,
    thresholds: Sequence[float] = (0.3, 0.4, 0.5, 0.6),
    study: int | str = 0,
    realization: int = 0,
    seed: int = 0,
    random_draws: int = 3,
    bins: int = 10,
    alpha: float = 1.0,
    k: int = 5,
) -> dict:
    """:func:`kse_sweep` on realisation ``realization`` of study ``study`` (index or id) of ``records``, body = label
    > 0, plus :func:`kse_histogram`; writes ``kse_sweep.csv``, ``kse_sweep.json`` and ``kse_sweep.md`` to
    ``output_dir``. Returns ``{"network", "study", "recon", "realization", "body_voxels", "rows", "histogram"}``."""
    source = _source(network)
    net = load_network(network, network_def, device, name="kse_network")
    record = _select_study(records, study)
    name = record.get("study", str(study))
    paths = record.get("realizations")
    if not isinstance(paths, (list, tuple)) or not paths:
        raise ValueError(f"run_kse_sweep: study {name} has no 'realizations'.")
    if not -len(paths) <= int(realization) < len(paths):
        raise ValueError(
            f"run_kse_sweep: study {name} has {len(paths)} realisations; index {realization} is out of range."
        )
    if "label" not in record:
        raise ValueError(f"run_kse_sweep: study {name} has no 'label' (needed for the body mask).")
    shapes = {f: _image_shape(str(p), f"study {name}, field '{f}'") for f, p in
              {"realization": paths[int(realization)], "label": record["label"]}.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"run_kse_sweep: study {name}: images of different shapes: {shapes}.")
    volume = _load_image(str(paths[int(realization)]))
    body = np.rint(_load_image(str(record["label"]))) > 0
    rows = kse_sweep(net, volume, thresholds, inferer, body, seed, random_draws, alpha, k, device)
    result = {
        "network": source,
        "study": name,
        "recon": record.get("recon", ""),
        "realization": int(realization),
        "realization_path": str(paths[int(realization)]),
        "body_voxels": int(body.sum()),
        "seed": int(seed),
        "rows": rows,
        "histogram": kse_histogram(net, bins, alpha, k),
    }
    if output_dir is not None:
        out = Path(output_dir)
        _write_csv(out / "kse_sweep.csv", rows, KSE_COLUMNS)
        _write_json(out / "kse_sweep.json", result)
        _write_text(out / "kse_sweep.md", kse_sweep_markdown(result))
    return result


def kse_sweep_markdown(result: Mapping) -> str:
    """Markdown tables of a :func:`run_kse_sweep` result: the sweep (paper Fig. 4) and the KSE score histogram."""
    lines = [
        "# KSE threshold sweep (paper Fig. 4)",
        "",
        f"Network {result['network']}; study {result['study']}, recon {result['recon']}, realisation "
        f"{result['realization']}; body {result['body_voxels']} voxels. Output change: RMSE between the pruned and "
        "the original network's outputs in the body, percent of the original output's RMS. Random control: the same "
        f"number of input-channel kernels per layer, chosen at random (seed {result['seed']}); mean [min, max] over "
        "the draws.",
        "",
        "| KSE threshold | flagged input channels | conv parameters dropped (%) | output change, KSE-flagged (%) | "
        "output change, random (%) |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        random = (
            f"{_fmt(r['random_output_change_pct'])} [{_fmt(r['random_output_change_pct_min'])}, "
            f"{_fmt(r['random_output_change_pct_max'])}] (n = {r['random_draws']})"
            if r["random_draws"]
            else "n/a"
        )
        lines.append(
            f"| {r['threshold']:g} | {r['flagged_channels']} / {r['total_channels']} | "
            f"{_fmt(r['dropped_params_pct'], 1)} | {_fmt(r['kse_output_change_pct'])} | {random} |"
        )
    hist = result.get("histogram")
    if hist:
        layers = list(hist["per_layer"])
        edges = hist["bin_edges"]
        lines += [
            "",
            "KSE scores of the input channels of the convs fed by hidden convs (counts per bin):",
            "",
            "| KSE score | all | " + " | ".join(layers) + " |",
            "|---" * (len(layers) + 2) + "|",
        ]
        for b in range(len(hist["counts"])):
            closing = "]" if b == len(hist["counts"]) - 1 else ")"
            cells = [str(hist["per_layer"][name][b]) for name in layers]
            bin_name = f"[{edges[b]:.1f}, {edges[b + 1]:.1f}{closing}"
            lines.append(f"| {bin_name} | {hist['counts'][b]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
