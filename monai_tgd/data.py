"""Datalists of PET studies: the simulated cohort by default, or the user's own JSON, checked before any long work.

A datalist is a MONAI-style JSON object whose sections (``pretrain_v1``, ``train_v2``, ``finetune_v2``,
``validation``, ``test``, ``ood``) are lists of study records; file paths are absolute or relative to the datalist's folder. The fields are
documented in ``docs/simulator.md`` and the bundle's model card.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "PATH_FIELDS",
    "cohort_folder",
    "ensure_datalist",
    "load_datalist",
    "check_record_files",
    "n2n_pairs",
    "holdout_slices",
    "calibration_slabs",
]


def cohort_folder(data_dir: str | os.PathLike, profile: str, seed: int) -> str:
    """Folder of the simulated cohort of ``profile`` and ``seed`` in ``data_dir``: ``simulated_<profile>`` for seed 0
    (the name it has always had, so existing cohorts are reused) and ``simulated_<profile>_seed<seed>`` otherwise.

    A cohort's files are a function of the simulator version, the profile and the seed
    (:func:`monai_tgd.simulate.cohort.settings_hash`); the folder is keyed by the two a user chooses, so runs with
    different seeds never share (or overwrite) one folder. A new simulator version regenerates the cohort in place.
    :func:`monai_tgd.simulate.generate_cohort` refuses a folder that holds another profile's or seed's cohort.

    Raises:
        ValueError: ``profile`` is not a valid file name (:func:`monai_tgd.io.check_name`), ``seed`` not an int >= 0.
    """
    from .io import check_name

    check_name(profile, "profile")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}.")
    return os.path.join(os.fspath(data_dir), f"simulated_{profile}" + (f"_seed{int(seed)}" if seed else ""))


def ensure_datalist(
    datalist: str | os.PathLike | None = None,
    cohort_dir: str | os.PathLike | None = None,
    profile: str = "quick",
    seed: int = 0,
) -> str:
    """Path of the datalist to use: ``datalist`` if given (it must exist), else the simulated cohort of ``profile`` and
    ``seed`` in ``cohort_dir``, generated on first use (and reused afterwards; see
    :func:`monai_tgd.simulate.generate_cohort`, which refuses a folder holding anything else).

    Raises:
        ValueError: ``datalist`` is an empty string (not a path; None selects the simulated cohort), or neither
            ``datalist`` nor ``cohort_dir`` is given.
        FileNotFoundError: ``datalist`` does not exist.
    """
    if isinstance(datalist, str) and not datalist.strip():
        raise ValueError(
            f"datalist {datalist!r} is not a path: give a datalist JSON file, or null (None) for the simulated cohort."
        )
    if datalist is not None:
        path = Path(datalist)
        if not path.is_file():
            raise FileNotFoundError(f"datalist {path} not found (expected a JSON file with study records).")
        return str(path)
    if cohort_dir is None:
        raise ValueError("ensure_datalist: give a datalist JSON or a cohort_dir for the simulated cohort.")
    from .simulate import generate_cohort  # only needed when the default data is used

    return str(generate_cohort(cohort_dir, profile, seed, log=print))


#: Record fields that hold file paths (or lists of them); ``noisy_<t>s`` fields too. Relative paths are relative to
#: the datalist's folder.
PATH_FIELDS = ("image", "target", "label", "truth", "mu_map", "reference", "input_120s", "realizations", "halves")


def _is_path_field(field: str, required: Sequence[str]) -> bool:
    return field in PATH_FIELDS or field.startswith("noisy_") or field in required


def _resolve(value, base: Path):
    if isinstance(value, str):
        return value if os.path.isabs(value) else str(base / value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [_resolve(v, base) for v in value]
    return value


def check_record_files(records: Sequence[dict]) -> list[dict]:
    """Read in full and validate every file the datalist ``records`` name, before any training step; returns
    ``records``.

    The files are those of the path fields (:data:`PATH_FIELDS`, ``noisy_*``; list fields item by item, e.g.
    ``halves[1]``): ``label`` as an integer-valued label map, the others as PET images
    (:func:`monai_tgd.transforms.validate.check_files`: a truncated or corrupted ``.nii.gz`` fails its gzip check,
    images must be finite). Each distinct file is read once and not kept; all problems are reported together, each
    naming study, field and path. Training reads the same files again through its own loaders.
    """
    from .transforms.validate import check_files, where

    entries = []
    for index, record in enumerate(records):
        study = record.get("study", f"#{index}")
        for field, value in record.items():
            if not _is_path_field(field, ()):
                continue
            items = [(field, value)] if isinstance(value, (str, os.PathLike)) else \
                [(f"{field}[{i}]", v) for i, v in enumerate(value) if isinstance(v, (str, os.PathLike))]
            kind = "label" if field == "label" else "image"
            entries += [(path, where(study, name), kind) for name, path in items]
    if entries:
        check_files(entries)
    return list(records)


def load_datalist(
    datalist: str | os.PathLike, section: str, required: Sequence[str] = (), recon: str | None = None
) -> list[dict]:
    """Records of one section, with relative file paths made absolute, checked before any long work.

    Args:
        datalist: the datalist JSON.
        section: e.g. ``"pretrain_v1"``, ``"finetune_v2"``, ``"test"``, ``"ood"``.
        required: fields every record must have; those holding file paths (or lists of them) must exist.
        recon: keep only records of this reconstruction version (``"v1"``/``"v2"``); None keeps all.

    Raises:
        ValueError: unreadable JSON, missing or empty section, a record without a required field.
        FileNotFoundError: a required file does not exist (the message names the study and field).
    """
    path = Path(datalist)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read datalist {path}: {e}") from e
    records = content.get(section) if isinstance(content, dict) else None
    if not isinstance(records, list) or not records:
        sections = [k for k, v in content.items() if isinstance(v, list)] if isinstance(content, dict) else []
        raise ValueError(f"datalist {path} has no non-empty section '{section}'; sections found: {sections}.")
    base = path.parent
    out = []
    for i, record in enumerate(records):
        if recon is not None and record.get("recon") != recon:
            continue
        record = {k: _resolve(v, base) if _is_path_field(k, required) else v for k, v in record.items()}
        name = record.get("study", f"#{i}")
        for field in required:
            if record.get(field) is None:
                raise ValueError(f"datalist {path}, section '{section}', study {name}: missing field '{field}'.")
            value = record[field]
            for f in value if isinstance(value, list) else [value]:
                if _is_path_field(field, required) and not Path(f).exists():
                    raise FileNotFoundError(f"datalist {path}, study {name}, field '{field}': file {f} not found.")
        out.append(record)
    if not out:
        raise ValueError(f"datalist {path}, section '{section}': no records with recon={recon!r}.")
    return out


def n2n_pairs(record: dict, halves_key: str = "halves", input_key: str = "image", target_key: str = "target") -> list:
    """Noise2Noise training pairs of one study: half 1 -> half 2 and half 2 -> half 1 (paper Section 3.2)."""
    first, second = record[halves_key]
    common = {k: v for k, v in record.items() if k != halves_key}
    return [{**common, input_key: first, target_key: second}, {**common, input_key: second, target_key: first}]


def holdout_slices(every: int) -> slice:
    """Every ``every``-th slice, starting at ``every // 2``: a held-out subset spread over the whole volume (e.g. for
    the online N2N loss), so training never centres a sample on it."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 2:
        raise ValueError(f"holdout_slices: every must be an integer >= 2 (every n-th slice is held out), got {every!r}.")
    return slice(every // 2, None, every)


def calibration_slabs(
    records: Sequence[dict], key: str, per_study: int = 4, slab: int = 3, axis: int = -1
) -> torch.Tensor:
    """Network inputs for calibrating a setting on training studies, e.g. the automatic KSE threshold
    (:func:`monai_tgd.tgd.threshold_for_budget`): ``per_study`` 2.5D slabs per study, centred on evenly spaced slices
    (the end slices excluded), whole in-plane.

    Args:
        records: datalist records (e.g. of ``finetune_v2``; never test studies) whose ``key`` is an image file.
        key: the record field of the input image (e.g. ``"noisy_60s"``), in the network's input units.
        per_study: slabs per study, >= 1.
        slab, axis: slab width (odd) and the slab (axial) axis of the image array, as for
            :func:`monai_tgd.transforms.slab.extract_slabs`.

    Returns:
        float32 ``[len(records) * per_study, slab, *in-plane]``, studies in the order given.

    Raises:
        ValueError: no records, ``per_study < 1``, a record without ``key``, or images of different in-plane sizes.
    """
    from monai.transforms import LoadImage

    from .transforms.slab import extract_slabs

    if isinstance(per_study, bool) or not isinstance(per_study, int) or per_study < 1:
        raise ValueError(f"calibration_slabs: per_study must be an int >= 1, got {per_study!r}.")
    if not records:
        raise ValueError("calibration_slabs: no records; give the training (e.g. fine-tuning) studies.")
    load = LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)
    slabs = []
    for i, record in enumerate(records):
        if record.get(key) is None:
            raise ValueError(f"calibration_slabs: study {record.get('study', f'#{i}')} has no field '{key}'.")
        volume = torch.as_tensor(load(record[key]))
        length = volume.shape[axis if axis < 0 else axis + 1]
        centres = np.linspace(0, length - 1, per_study + 2).round().astype(int)[1:-1]
        slabs.append(extract_slabs(volume, centres.tolist(), slab=slab, axis=axis))
    shapes = {tuple(s.shape[2:]) for s in slabs}
    if len(shapes) > 1:
        raise ValueError(f"calibration_slabs: the studies' in-plane sizes differ: {sorted(shapes)}.")
    return torch.cat(slabs).float()
