"""The simulated cohort: profiles, per-study simulation, NIfTI/datalist writer, idempotent and resumable.

Layout of a cohort folder ``OUT``::

    OUT/datalist.json                 MONAI-style datalist (paths relative to OUT), see docs/simulator.md
    OUT/cohort.json                   completion marker, written last: settings hash + every file of the cohort
    OUT/.cohort_owner.json            written first: the profile name and seed whose cohort OUT holds
    OUT/.lock                         held (fcntl.flock, exclusive) by the process generating or checking OUT
    OUT/studies/<study>/study.json    per-study marker, written last for that study: study hash + its record(s)
    OUT/studies/<study>/{label,truth,mu}.nii.gz
    OUT/studies/<study>/<v1|v2>/<image>.nii.gz

Every file is written atomically (:func:`monai_tgd.io.atomic_path`). A cohort whose ``cohort.json`` carries the
current settings hash and whose files all exist is reused as is; otherwise the marker is removed first, studies
whose ``study.json`` matches are reused, the others are simulated again, and the datalist and marker are rewritten.
:func:`generate_cohort` holds an exclusive lock on ``OUT/.lock`` throughout, so concurrent callers on one folder
(e.g. every rank under ``torchrun``) run one after the other: the first generates, the others reuse its cohort.

``OUT`` is written only if it is new or empty, or holds a cohort this simulator wrote for the same profile name and
seed (recognised by ``.cohort_owner.json``, or by the ``cohort.json``/``datalist.json`` of cohorts written before it
existed); anything else is refused before a file is touched, so a user's folder or another seed's cohort is never
overwritten. A new simulator version or profile definition under the same name regenerates the cohort in place.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import nibabel as nib
import numpy as np

from monai_tgd.io import atomic_path, folder_lock

from .acquisition import ScannerModel, _block_mean, draw_counts, expected_rates, split_counts, thin_counts
from .osem import V1_AXIAL_FWHM_MM, V1_POSTFILTER_PER_PSF, osem, protocol
from .phantom import LABELS, Grid, PhantomSpec, label_names, place_lesions, random_phantom, rasterize
from .projector import Geometry

__all__ = [
    "Profile",
    "StudyPlan",
    "PROFILES",
    "SIMULATOR_VERSION",
    "NOISE_LEVELS_S",
    "REFERENCE_S",
    "plan_cohort",
    "settings_hash",
    "simulate_study",
    "generate_cohort",
]

SIMULATOR_VERSION = "4"
"""Bumped whenever a change alters the generated data; part of every settings hash."""
REFERENCE_S = 600.0
"""Duration of the full (reference/target) acquisition in seconds."""
NOISE_LEVELS_S = (30, 45, 60, 90, 120, 180)
"""Training input durations in seconds, thinned from the 600 s counts (the paper's noise levels)."""
OOD_INPUT_S = 120
UNITS = "SUV-like: activity concentration relative to soft tissue (= 1); liver ~2.5, lung ~0.3"
MU_UNITS = "1/cm"
"""Units of the saved attenuation maps (``mu.nii.gz``); the simulator works in 1/mm internally."""


@dataclass(frozen=True)
class Profile:
    """Sizes of a cohort. Geometry lengths in mm; the scanner's physics in ``scanner``.

    ``matrix`` x ``matrix`` pixels of ``pixel_mm`` in-plane, ``n_slices`` slices of ``slice_mm``; the sinogram
    has ``n_angles`` angles and ``matrix`` radial bins of ``pixel_mm``. OSEM runs ``iterations`` (v2) or
    ``v1_iterations`` (v1) iterations of ``subsets`` subsets: the v1 protocol's larger post-filter needs more
    iterations for a 60 s image of about the v2 noise level (liver CoV within 15 %, coarser grain; see
    docs/simulator.md). ``v1_postfilter_per_psf`` and ``v1_axial_fwhm_mm`` set the v1 post-filters (in-plane, as a
    multiple of the PSF FWHM; across slices in mm, 0 for none: :func:`~.osem.protocol`).
    """

    name: str
    matrix: int
    pixel_mm: float
    n_slices: int
    slice_mm: float
    n_angles: int
    n_train_low: int
    n_train_high: int
    n_finetune: int
    n_realizations: int = 10
    iterations: int = 3
    subsets: int = 8
    v1_iterations: int = 12
    v1_postfilter_per_psf: float = V1_POSTFILTER_PER_PSF
    v1_axial_fwhm_mm: float = V1_AXIAL_FWHM_MM
    scanner: ScannerModel = field(default_factory=ScannerModel)

    @property
    def geometry(self) -> Geometry:
        """The scanner's sinogram and reconstruction geometry."""
        return Geometry(self.matrix, self.pixel_mm, self.n_angles, self.matrix, self.pixel_mm)

    @property
    def grid(self) -> Grid:
        """The reconstruction voxel grid."""
        return Grid((self.matrix, self.matrix, self.n_slices), (self.pixel_mm, self.pixel_mm, self.slice_mm))


PROFILES = {
    "tiny": Profile("tiny", 40, 12.5, 12, 42.0, 32, 1, 1, 1, subsets=4, scanner=ScannerModel(sensitivity=2.0e-2)),
    "quick": Profile("quick", 128, 4.0, 64, 8.0, 96, 3, 3, 3, scanner=ScannerModel(sensitivity=4.0e-3)),
    "paper": Profile("paper", 192, 3.125, 128, 4.0, 192, 10, 10, 7, scanner=ScannerModel(sensitivity=4.0e-3)),
}  # fmt: skip
"""Built-in profiles: ``tiny`` for test suites (seconds), ``quick`` (default, ~2 min), ``paper`` (20 + 7 studies)."""


@dataclass(frozen=True)
class StudyPlan:
    """What to simulate for one study.

    Attributes:
        study: study id (also its folder name).
        role: "train" (in ``pretrain_v1`` and ``train_v2``), "finetune", "validation" (the study every choice is
            made on: epochs, threshold, variant), "test" or "ood".
        bmi_class: "low" or "high".
        recons: reconstruction versions to produce.
        lesions: fixed ``(organ, diameter_mm, contrast)`` lesions; None draws 4-8 random ones.
        ood: None, "bladder" or "catheter".
    """

    study: str
    role: str
    bmi_class: str
    recons: tuple[str, ...]
    lesions: tuple[tuple[str, float, float], ...] | None = None
    ood: str | None = None


def plan_cohort(profile: Profile) -> list[StudyPlan]:
    """The studies of a cohort: training (mixed BMI), fine-tuning (low BMI), test and out-of-distribution."""
    both = ("v1", "v2")
    plans = [StudyPlan(f"train_{i:02d}", "train", "low", both) for i in range(profile.n_train_low)]
    plans += [
        StudyPlan(f"train_{i:02d}", "train", "high", both)
        for i in range(profile.n_train_low, profile.n_train_low + profile.n_train_high)
    ]
    plans += [StudyPlan(f"finetune_{i:02d}", "finetune", "low", ("v2",)) for i in range(profile.n_finetune)]
    plans += [
        StudyPlan("val_low_bmi_lesion", "validation", "low", both, (("liver", 22.0, 4.0), ("liver", 16.0, 3.0),
                                                                    ("lung", 15.0, 8.0))),
        StudyPlan("test_low_bmi_lesion", "test", "low", both, (("liver", 24.0, 4.0), ("liver", 18.0, 3.0),
                                                               ("lung", 15.0, 8.0))),
        StudyPlan("test_high_bmi", "test", "high", both, (("liver", 24.0, 4.0), ("lung", 15.0, 8.0))),
        StudyPlan("ood_bladder", "ood", "low", both, (), "bladder"),
        StudyPlan("ood_catheter", "ood", "low", both, (), "catheter"),
    ]  # fmt: skip
    return plans


def _hash(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def settings_hash(profile: Profile, seed: int) -> str:
    """Hash of everything that determines a cohort's files (simulator version, profile, seed, study plans)."""
    return _hash({"version": SIMULATOR_VERSION, "profile": asdict(profile), "seed": seed,
                  "plans": [asdict(p) for p in plan_cohort(profile)]})  # fmt: skip


def _study_hash(profile: Profile, seed: int, plan: StudyPlan) -> str:
    return _hash({"version": SIMULATOR_VERSION, "profile": asdict(profile), "seed": seed, "plan": asdict(plan)})


def _study_rng(seed: int, study: str) -> np.random.Generator:
    """Independent random stream of one study: depends only on the cohort seed and the study id."""
    return np.random.default_rng([seed, zlib.crc32(study.encode())])


def _random_lesions(rng: np.random.Generator) -> tuple[tuple[str, float, float], ...]:
    """4-8 hot lesions of 10-28 mm, liver contrast 2-6 and lung 4-12: enough hot features of varied size and contrast
    in the training studies that the denoisers learn to keep them."""
    out = []
    for _ in range(int(rng.integers(4, 9))):
        organ = "liver" if rng.uniform() < 0.6 else "lung"
        contrast = rng.uniform(2.0, 6.0) if organ == "liver" else rng.uniform(4.0, 12.0)
        out.append((organ, float(rng.uniform(10.0, 28.0)), float(round(contrast, 2))))
    return tuple(out)


def _frames(plan: StudyPlan, profile: Profile, counts_600: np.ndarray, rng) -> tuple[list[str], list, list]:
    """Names, durations (s) and counts of the frames to reconstruct, all rebinned from the 600 s counts."""
    if plan.role in ("train", "finetune"):
        names = ["target_600s"] + [f"noisy_{d}s" for d in NOISE_LEVELS_S]
        counts = [counts_600] + [thin_counts(counts_600, d, REFERENCE_S, rng) for d in NOISE_LEVELS_S]
        return names, [REFERENCE_S, *NOISE_LEVELS_S], counts
    if plan.role in ("validation", "test"):
        n = profile.n_realizations
        frames = split_counts(counts_600, n, REFERENCE_S, rng)
        return (["reference_600s"] + [f"realization_{k:02d}" for k in range(n)],
                [REFERENCE_S] + [REFERENCE_S / n] * n, [counts_600, *frames])  # fmt: skip
    counts_120 = thin_counts(counts_600, OOD_INPUT_S, REFERENCE_S, rng)
    halves = split_counts(counts_120, 2, OOD_INPUT_S, rng)
    half = OOD_INPUT_S / 2
    return (["reference_600s", f"input_{OOD_INPUT_S}s", "half_0", "half_1"],
            [REFERENCE_S, OOD_INPUT_S, half, half], [counts_600, counts_120, *halves])  # fmt: skip


def simulate_study(plan: StudyPlan, profile: Profile, seed: int) -> dict:
    """Simulate one study in memory.

    Returns:
        dict with ``spec`` (:class:`PhantomSpec`), ``label`` (int16), ``truth`` (float32, SUV-like) and ``mu``
        (float32, 1/cm) volumes of shape ``profile.grid.shape``, ``frames`` (names, durations in s) and
        ``images[version]``: float32 array ``(n_frames, nx, ny, nz)`` in SUV-like units.
    """
    rng = _study_rng(seed, plan.study)
    sc = profile.scanner
    spec = random_phantom(rng, plan.bmi_class, plan.ood)
    lesions = _random_lesions(rng) if plan.lesions is None else plan.lesions
    grid = profile.grid
    spec = place_lesions(spec, grid, rng, list(lesions))
    fine = grid.refined(sc.inplane_oversampling, sc.axial_oversampling)
    activity, mu, _ = rasterize(spec, fine)
    _, _, label = rasterize(spec, grid)
    factors = (sc.inplane_oversampling, sc.inplane_oversampling, sc.axial_oversampling)
    truth, mu_map = _block_mean(activity, factors), _block_mean(mu, factors)
    rates = expected_rates(activity, mu, profile.geometry, sc)
    del activity, mu
    counts_600 = draw_counts(rates, REFERENCE_S, rng)
    names, durations, counts = _frames(plan, profile, counts_600, rng)
    counts = np.stack(counts)
    images = {
        v: osem(counts, durations, rates.attenuation, rates.background, sc.sensitivity, profile.geometry,
                protocol(v, sc.psf_fwhm_mm, profile.v1_iterations if v == "v1" else profile.iterations,
                         profile.subsets, profile.v1_postfilter_per_psf, profile.v1_axial_fwhm_mm), grid.voxel_mm[2])
        for v in plan.recons
    }  # fmt: skip
    return {"spec": spec, "label": label, "truth": truth.astype(np.float32), "mu": (10 * mu_map).astype(np.float32),
            "frames": (names, durations), "images": images,
            "scatter_fraction": float(rates.scatter_fraction.mean())}  # fmt: skip


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path, description: str) -> None:
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, 1)  # code 1 (scanner anatomical) for both, as elsewhere in the project
    img.set_sform(affine, 1)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = description[:79].encode()
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def _write_study(plan: StudyPlan, profile: Profile, seed: int, root: Path) -> dict:
    """Simulate ``plan`` and write its files and ``study.json``; return the study manifest."""
    sim = simulate_study(plan, profile, seed)
    spec: PhantomSpec = sim["spec"]
    folder = root / "studies" / plan.study
    # temporary files of an interrupted writer (see atomic_path); safe to delete: generate_cohort holds the folder
    # lock, so no other process writes into this cohort now
    for stale in folder.rglob(".partial-*"):
        stale.unlink()
    affine = profile.grid.affine()
    rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    files = {}
    for key, desc in (("label", "label map"), ("truth", "true activity, SUV-like"), ("mu", "mu 511 keV, 1/cm")):
        path = folder / f"{key}.nii.gz"
        _save_nifti(sim[key], affine, path, f"monai-tgd sim {plan.study} {desc}")
        files[key] = rel(path)
    names, durations = sim["frames"]
    images = {}
    for version, stack in sim["images"].items():
        images[version] = {}
        for name, duration, image in zip(names, durations, stack):
            path = folder / version / f"{name}.nii.gz"
            _save_nifti(image, affine, path, f"monai-tgd sim {plan.study} {version} {duration:g}s SUV-like")
            images[version][name] = rel(path)
    manifest = {
        "study_hash": _study_hash(profile, seed, plan),
        "plan": asdict(plan),
        "bmi": round(spec.bmi, 2),
        "label_names": {str(k): v for k, v in sorted(label_names(spec).items())},
        "lesions": [
            {"label": les.label, "organ": les.organ, "center_mm": list(les.center_mm), "diameter_mm": les.diameter_mm,
             "contrast": les.contrast, "activity": round(spec.uptake[les.organ] * les.contrast, 4)}
            for les in spec.lesions
        ],  # fmt: skip
        "scatter_fraction": round(sim["scatter_fraction"], 4),
        "files": files,
        "frames": {"names": names, "durations_s": durations},
        "images": images,
    }
    with atomic_path(folder / "study.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
    return manifest


def _study_files(manifest: dict) -> list[str]:
    return [*manifest["files"].values(), *(p for v in manifest["images"].values() for p in v.values())]


def _load_complete_study(root: Path, plan: StudyPlan, expected_hash: str) -> dict | None:
    """The study's manifest if it is complete for ``expected_hash`` (marker present, hash equal, files present)."""
    path = root / "studies" / plan.study / "study.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("study_hash") != expected_hash or not all((root / f).is_file() for f in _study_files(manifest)):
        return None
    return manifest


def _records(plan: StudyPlan, manifest: dict) -> dict[str, list[dict]]:
    """Datalist records of one study, keyed by datalist section."""
    common = {"study": plan.study, "role": plan.role, "bmi_class": plan.bmi_class, "bmi": manifest["bmi"],
              "label": manifest["files"]["label"], "label_names": manifest["label_names"],
              "truth": manifest["files"]["truth"],
              "mu_map": manifest["files"]["mu"], "lesions": manifest["lesions"],
              "scatter_fraction": manifest["scatter_fraction"]}  # fmt: skip
    names, durations = manifest["frames"]["names"], manifest["frames"]["durations_s"]
    out: dict[str, list[dict]] = {}
    for version, imgs in manifest["images"].items():
        rec = {**common, "recon": version}
        if plan.role in ("train", "finetune"):
            rec["target"] = imgs["target_600s"]
            rec.update({f"noisy_{d}s": imgs[f"noisy_{d}s"] for d in NOISE_LEVELS_S})
            rec["durations_s"] = {"target": REFERENCE_S, **{f"noisy_{d}s": float(d) for d in NOISE_LEVELS_S}}
            section = {"train": {"v1": "pretrain_v1", "v2": "train_v2"}, "finetune": {"v2": "finetune_v2"}}
            key = section[plan.role][version]
        elif plan.role in ("validation", "test"):
            rec["reference"] = imgs["reference_600s"]
            rec["realizations"] = [imgs[n] for n in names if n.startswith("realization_")]
            rec["realization_duration_s"] = durations[-1]
            rec["reference_duration_s"] = REFERENCE_S
            key = plan.role
        else:
            rec.update(ood_feature=plan.ood, reference=imgs["reference_600s"], reference_duration_s=REFERENCE_S)
            rec.update(input_120s=imgs[f"input_{OOD_INPUT_S}s"], halves=[imgs["half_0"], imgs["half_1"]])
            rec.update(half_duration_s=OOD_INPUT_S / 2, ood_label=LABELS["ood"])
            key = "ood"
        out.setdefault(key, []).append(rec)
    return out


OWNER_FILE = ".cohort_owner.json"
"""Written first into a cohort folder: ``{"writer": "monai_tgd.simulate", "profile": <name>, "seed": <seed>}``."""
_MACHINERY = (".lock",)
_MACHINERY_PREFIXES = (".write-test-", ".partial-")


def _folder_cohort(root: Path) -> tuple[object, object] | None:
    """``(profile name, seed)`` of the cohort this simulator wrote in ``root``, or None if it holds none."""
    for name in (OWNER_FILE, "cohort.json", "datalist.json"):
        try:
            content = json.loads((root / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(content, dict):
            continue
        if name == OWNER_FILE and content.get("writer") == "monai_tgd.simulate":
            return content.get("profile"), content.get("seed")
        if name == "cohort.json" and "settings_hash" in content and isinstance(content.get("profile"), dict):
            return content["profile"].get("name"), content.get("seed")
        if name == "datalist.json" and "settings_hash" in content and "simulator_version" in content:
            return content.get("profile"), content.get("seed")
    return None


def _check_folder(root: Path, profile: Profile, seed: int) -> None:
    """Refuse ``root`` unless it is new, empty (but for the lock machinery), or holds this profile's and seed's cohort.

    Only reads: run before anything is created in ``root``, and again under the folder lock."""
    if not root.is_dir():
        return  # new (created later), or not a folder (_check_writable says so)
    found = _folder_cohort(root)
    if found is None:
        foreign = sorted(e.name for e in root.iterdir()
                         if e.name not in _MACHINERY and not e.name.startswith(_MACHINERY_PREFIXES))  # fmt: skip
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise ValueError(
                f"refusing to write the cohort into {str(root)!r}: the folder is not empty ({len(foreign)} "
                f"{'entry' if len(foreign) == 1 else 'entries'}: {shown}) and holds no cohort written by "
                "monai_tgd.simulate. Give a new or empty folder."
            )
    elif found != (profile.name, seed):
        raise ValueError(
            f"{str(root)!r} holds the simulated cohort of profile {found[0]!r}, seed {found[1]!r}; refusing to replace "
            f"it with profile {profile.name!r}, seed {seed}. Give another folder (the bundle's cohort_dir is "
            "data/simulated_<profile> for seed 0 and data/simulated_<profile>_seed<seed> otherwise), or delete this "
            "one first."
        )


def _check_out(out: object) -> Path:
    if isinstance(out, str) and not out.strip():
        raise ValueError(f"out {out!r} is not a folder: give the cohort folder's path (a new or empty folder).")
    if not isinstance(out, (str, os.PathLike)):
        raise ValueError(f"out must be a folder path, got {type(out).__name__} {out!r}.")
    return Path(out)


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise PermissionError(f"cannot write the cohort to {str(out)!r}: {err}") from err


def _worker_init() -> None:
    """One torch thread per worker process: the workers already use every core."""
    import torch

    torch.set_num_threads(1)


def generate_cohort(
    out: str | os.PathLike,
    profile: str | Profile = "quick",
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Generate (or reuse) a simulated cohort in ``out`` and return the path of its ``datalist.json``.

    Args:
        out: cohort folder (created if needed): new, empty, or holding this simulator's cohort of the same profile
            name and seed.
        profile: a name in :data:`PROFILES` or a :class:`Profile`.
        seed: cohort seed; the cohort is a deterministic function of ``(profile, seed)``.
        workers: simulation processes; None uses ``min(2, cpu count)`` (1 for ``tiny``). Each process uses one
            torch thread.
        progress: show a tqdm progress bar over studies.
        log: callable receiving one-line status messages (e.g. ``print``); None is silent.

    Raises:
        ValueError: unknown profile name, negative seed, ``out`` empty, or ``out`` holding anything else than this
            profile's and seed's cohort (a user's files, another seed's cohort): nothing is written then.
        PermissionError: ``out`` cannot be created or written.

    Concurrent calls on the same ``out`` (from any process, e.g. every rank under ``torchrun``) are safe: each
    holds an exclusive lock on ``out/.lock`` for the whole call, so one generates and the others, once it is done,
    find the completed cohort and reuse it.
    """
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}.")
        profile = PROFILES[profile]
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}.")
    seed = int(seed)
    say = log or (lambda msg: None)
    root = _check_out(out)
    _check_folder(root, profile, seed)  # before anything (the lock file included) is created in it
    _check_writable(root)
    # the completion marker is checked only while holding the lock
    with folder_lock(root, lambda: say(f"waiting for another process generating the cohort in {root}")):
        _check_folder(root, profile, seed)  # another process may have started a cohort here meanwhile
        return _generate_locked(root, profile, seed, workers, progress, say)


def _generate_locked(root: Path, profile: Profile, seed: int, workers: int | None, progress: bool,
                     say: Callable[[str], None]) -> Path:  # fmt: skip
    """Body of :func:`generate_cohort`, run while holding the folder lock."""
    datalist_path, marker = root / "datalist.json", root / "cohort.json"
    digest = settings_hash(profile, seed)
    try:
        done = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        done = None
    if done and done.get("settings_hash") == digest and all((root / f).is_file() for f in done.get("files", [])):
        say(f"reusing the complete cohort in {root} (settings {digest})")
        return datalist_path
    with atomic_path(root / OWNER_FILE) as tmp:  # before any other file: the folder is this cohort's from now on
        tmp.write_text(json.dumps({"writer": "monai_tgd.simulate", "profile": profile.name, "seed": seed}))
    marker.unlink(missing_ok=True)  # from here on the folder is not a complete cohort until the marker is rewritten

    plans = plan_cohort(profile)
    manifests: dict[str, dict] = {}
    todo = []
    for plan in plans:
        m = _load_complete_study(root, plan, _study_hash(profile, seed, plan))
        if m is None:
            todo.append(plan)
        else:
            manifests[plan.study] = m
    say(f"{len(plans) - len(todo)} studies reused, {len(todo)} to simulate ({profile.name}, seed {seed})")
    if workers is None:
        workers = 1 if profile.name == "tiny" else min(2, os.cpu_count() or 1)
    from tqdm.auto import tqdm

    with tqdm(total=len(plans), initial=len(plans) - len(todo), desc=f"cohort {profile.name}", unit="study",
              disable=not progress) as bar:  # fmt: skip
        if workers <= 1 or len(todo) <= 1:
            for plan in todo:
                manifests[plan.study] = _write_study(plan, profile, seed, root)
                bar.update()
        else:
            ctx = get_context("spawn")  # no fork after torch/OpenMP threads have started
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
                futures = {pool.submit(_write_study, p, profile, seed, root): p for p in todo}
                for fut in as_completed(futures):
                    manifests[futures[fut].study] = fut.result()
                    bar.update()

    label_map = {str(v): k for k, v in LABELS.items()}
    label_map[str(LABELS["ood"])] = "ood (the out-of-distribution structure: irregular bladder or catheter)"
    label_map["10+"] = "lesion (one label per lesion, see each record's lesions)"
    datalist: dict = {
        "name": "monai-tgd simulated whole-body FDG-PET cohort",
        "description": "2D-per-slice PET simulation, OSEM v1/v2 reconstructions; see docs/simulator.md",
        "simulator_version": SIMULATOR_VERSION,
        "profile": profile.name,
        "seed": seed,
        "settings_hash": digest,
        "label_names": label_map,
        "voxel_size_mm": [profile.pixel_mm, profile.pixel_mm, profile.slice_mm],
        "image_shape": list(profile.grid.shape),
        "units": UNITS,
        "mu_units": MU_UNITS,
        "noise_levels_s": list(NOISE_LEVELS_S),
        "reference_duration_s": REFERENCE_S,
        "pretrain_v1": [],
        "train_v2": [],
        "finetune_v2": [],
        "validation": [],
        "test": [],
        "ood": [],
    }
    files = []
    for plan in plans:
        m = manifests[plan.study]
        for key, recs in _records(plan, m).items():
            datalist[key].extend(recs)
        files += [*_study_files(m), f"studies/{plan.study}/study.json"]
    with atomic_path(datalist_path) as tmp:
        tmp.write_text(json.dumps(datalist, indent=1))
    with atomic_path(marker) as tmp:
        tmp.write_text(json.dumps({"settings_hash": digest, "profile": asdict(profile), "seed": seed,
                                   "simulator_version": SIMULATOR_VERSION,
                                   "files": ["datalist.json", *files]}, indent=1))  # fmt: skip
    say(f"cohort complete: {datalist_path}")
    return datalist_path
