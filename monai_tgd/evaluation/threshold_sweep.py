"""The KSE threshold sweep (paper Fig. 4): how much a network's output changes when the kernels that read feature
maps KSE scores as redundant are dropped, against dropping as many randomly chosen ones, and the KSE histogram."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from monai_tgd.kse import kse_scores
from monai_tgd.tgd import conv_chain, drop_redundant, kse_masks, zero_readers

from .loading import denoise, load_network, network_source, volume_tensor
from .records import check_study_files, load_image, load_label
from .rois import body_roi
from .tables import fmt, write_csv, write_json, write_text

__all__ = ["KSE_COLUMNS", "zero_random_kernels", "kse_sweep", "kse_histogram", "run_kse_sweep", "kse_sweep_markdown"]

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


def zero_random_kernels(
    network: nn.Module, counts: Mapping[str, int], rng: np.random.Generator
) -> tuple[nn.Module, float]:
    """A copy of ``network`` with ``counts[h]`` randomly chosen input-channel kernels ``W_i[:, c]`` zeroed in the
    conv fed by hidden conv ``h`` (the random control of :func:`monai_tgd.tgd.drop_redundant`; both zero through
    :func:`monai_tgd.tgd.zero_readers`). The channels of each hidden conv, in execution order, are
    ``rng.choice(C_in, counts[h], replace=False)``.

    Returns ``(copy, fraction)``, the fraction of all conv parameters zeroed, counted as ``drop_redundant`` does.
    """
    pruned = copy.deepcopy(network)
    chain = conv_chain(pruned)
    chosen = {}
    for h in chain.hidden:
        n = int(counts.get(h.name, 0))
        c_in = h.consumer.weight.shape[1]
        if not 0 <= n <= c_in:
            raise ValueError(f"zero_random_kernels: {n} channels requested for '{h.consumer_name}' with {c_in}.")
        chosen[h.name] = torch.zeros(c_in, dtype=torch.bool)
        chosen[h.name][torch.as_tensor(rng.choice(c_in, size=n, replace=False), dtype=torch.long)] = True
    return pruned, zero_readers(pruned, chosen, chain=chain)


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
    x = volume_tensor(volume)
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
        masks = kse_masks(network, t, alpha=alpha, k=k, chain=chain)
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
    source = network_source(network)
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
    field = f"realizations[{int(realization) % len(paths)}]"
    check_study_files([(name, {field: paths[int(realization)], "label": record["label"]})], prefix="run_kse_sweep: ")
    volume = load_image(paths[int(realization)], name, field)
    body = body_roi(load_label(record["label"], name))
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
        write_csv(out / "kse_sweep.csv", rows, KSE_COLUMNS)
        write_json(out / "kse_sweep.json", result)
        write_text(out / "kse_sweep.md", kse_sweep_markdown(result))
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
            f"{fmt(r['random_output_change_pct'])} [{fmt(r['random_output_change_pct_min'])}, "
            f"{fmt(r['random_output_change_pct_max'])}] (n = {r['random_draws']})"
            if r["random_draws"]
            else "n/a"
        )
        lines.append(
            f"| {r['threshold']:g} | {r['flagged_channels']} / {r['total_channels']} | "
            f"{fmt(r['dropped_params_pct'], 1)} | {fmt(r['kse_output_change_pct'])} | {random} |"
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
