"""Reproduce the paper's experiments (Sections 3-4, Table 1, Figs. 4-6) with the bundle and write the report.

    python study/run_study.py --profile quick        # CPU, 2 cores: about 2 hours; writes docs/results.{md,json}
    python study/run_study.py --profile paper        # the paper's sizes, for a GPU
    python study/run_study.py --profile tiny --work /tmp/s --docs /tmp/s/docs   # smoke run (the test suite's)

Every experiment is one bundle workflow run (``bundles/pet_tgd_denoising/configs``) in its own process: the
overrides of a stage are written to ``<work>/configs/<stage>.json``, merged after the workflow's configs, and the
exact command is at the top of ``<work>/logs/<stage>.log``, so any stage can be rerun by hand. Independent stages
run side by side (``--workers``, each with its share of the CPU threads).

Nothing is lost to an interruption: a stage counts as done when its last output exists and ``<work>/stages.json``
records it with the same settings; a training stage that was cut off resumes from its last epoch checkpoint (the
bundle's exact resume: weights, optimizer, TGD masks, loss curve and its training clock). Changing a profile's
settings reruns the stages they affect. The v1-net and v2-net are trained once and shared by all seeds; the
fine-tuning, ablation and online stages run once per seed. ``study/report/`` then turns the outputs into
``<docs>/results.md`` and ``<docs>/figures/*.png``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from report import write_report  # study/report/: this script's folder is on sys.path

from monai_tgd.bundle_helpers import workflow_configs
from monai_tgd.io import atomic_path, folder_lock

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "pet_tgd_denoising"
CONFIGS = BUNDLE / "configs"

#: Study sizes. ``bundle``: overrides of every workflow (network and patch sizes); ``bundle_files``: extra bundle
#: configs merged after the workflow's (the paper's sizes). v1-net and v2-net get the same recipe
#: (``pretrain_epochs``, the bundle's optimizer and weight decay) so that v2-net is the paper's "trained from
#: scratch" baseline.
PROFILES: dict[str, dict] = {
    "tiny": {
        "cohort": "tiny",
        "bundle": {"features": 8, "num_layers": 4, "samples_per_volume": 4, "patch_size": [32, 32], "batch_size": 4,
                   "sw_batch_size": 8},
        "bundle_files": [],
        "pretrain_epochs": 4,
        "pretrain_curve_interval": 2,
        "finetune_epochs": 4,
        "finetune_curve_interval": 1,
        "finetune_patience": 2,
        "finetune_restore_best": True,
        "variant_seeds": [0],
        "n2n_epochs": 2,
        "n2n_samples": 4,
        "seeds": [0, 1],
        "workers": 2,
    },
    "quick": {
        "cohort": "quick",
        # small inference batches are faster on a 2-core CPU (the activations stay in cache)
        "bundle": {"sw_batch_size": 4},
        "bundle_files": [],
        "pretrain_epochs": 1500,
        "pretrain_curve_interval": 50,
        "finetune_epochs": 200,
        "finetune_curve_interval": 10,
        "finetune_patience": 3,
        "finetune_restore_best": True,
        "variant_seeds": [0, 1, 2],
        "n2n_epochs": 60,
        "n2n_samples": 16,
        "seeds": [0, 1, 2],
        "workers": 2,
    },
    "paper": {
        "cohort": "paper",
        "bundle": {},
        "bundle_files": ["paper.json"],
        "pretrain_epochs": 500,
        "pretrain_curve_interval": 10,
        "finetune_epochs": 1000,
        "finetune_curve_interval": 10,
        "finetune_patience": 5,
        "finetune_restore_best": True,
        "variant_seeds": [0],
        "n2n_epochs": 150,
        "n2n_samples": 32,
        "seeds": [0, 1, 2],
        "workers": 1,
    },
}  # fmt: skip

#: TGD-net variants measured side by side with the bundle's default (TGD-net: finetune_tgd.json's readers "all" in the
#: parameter mode, phi 0.3, chosen on the validation study), on the validation study and the test studies:
#: {name: bundle overrides}
ABLATIONS = {
    # the paper's TGD: the retrained maps' readers stay frozen, gradients masked at the TGD layers
    "TGD-net (paper-literal)": {"tgd_readers": "none", "tgd_mode": "activation"},
    # only the output conv's columns reading retrained maps train too (the bundle's default before 0.5.0)
    "TGD-net (output readers)": {"tgd_readers": "output", "tgd_mode": "activation"},
    # the threshold from a fidelity budget (threshold_for_budget) on slabs of the fine-tuning studies, not 0.3
    "TGD-net (automatic threshold)": {"tgd_threshold": "auto"},
}
#: variants run at every seed (reported beside TGD-net in Table 1), the others at the profile's variant_seeds only
EVERY_SEED: tuple[str, ...] = ("TGD-net (automatic threshold)",)
#: further ablations, run with --controls only (with the no-weight-decay pretraining control)
CONTROL_ABLATIONS = {
    "TGD-net (output conv trained)": {"tgd_readers": "none", "tgd_mode": "activation", "tgd_freeze_output": False},
    # the paper-literal TGD restoring frozen rows after each step instead of masking gradients
    "TGD-net (paper-literal, parameter mode)": {"tgd_readers": "none", "tgd_mode": "parameter"},
    "TGD-net (BN statistics updated)": {"tgd_bn_stats": "update"},
}

#: the online networks: {base network: online network}; TGD-net was made at the bundle's tgd_threshold (0.3)
ONLINE_BASES = {"v2-net": "TGD_N2N-net (on v2-net)", "TGD-net": "TGD2_N2N-net (on TGD-net)"}
#: the online pass's KSE threshold (paper: TGD_N2N-net^0.4 and TGD^2_N2N-net^0.3,0.4)
N2N_THRESHOLD = 0.4


@dataclass
class Stage:
    """One bundle run: ``workflow`` configs (``bundle_helpers.workflow_configs``) with ``overrides``; done when ``marker`` exists.

    ``needs``: stages whose outputs it reads. ``run_dir``: set for training stages, which write epoch checkpoints
    there and can resume from them.
    """

    name: str
    workflow: list[str]
    overrides: dict
    marker: Path
    needs: list[str] = field(default_factory=list)
    run_dir: Path | None = None
    seed: int = 0


def slug(name: str) -> str:
    return "_".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


class Study:
    """The stages of the study for one profile and work folder, in dependency order."""

    def __init__(self, profile: str, work: Path, seeds: list[int], ablations: bool = True,
                 controls: bool = False) -> None:
        self.profile, self.settings = profile, PROFILES[profile]
        self.work, self.seeds, self.with_ablations, self.with_controls = work, seeds, ablations, controls
        self.models, self.runs = work / "models", work / "runs"
        self.datalist: str | None = None
        self.ood_studies: list[str] = []
        self.layout: dict = {}
        self._by_name: dict[str, Stage] = {}
        self._fingerprints: dict[str, str] = {}

    def model(self, name: str) -> Path:
        return self.models / f"model_{name}.pt"

    def prepare(self) -> None:
        """The simulated cohort (generated on first use, as the bundle does) and the list of online studies."""
        from monai_tgd.data import ensure_datalist

        cohort = BUNDLE / "data" / f"simulated_{self.settings['cohort']}" if self.profile != "tiny" else self.work / "cohort"
        self.datalist = ensure_datalist(None, cohort, self.settings["cohort"], 0)
        self.ood_studies = sorted({r["study"] for r in json.loads(Path(self.datalist).read_text(encoding="utf-8"))["ood"]})

    # ---- the stages ------------------------------------------------------------------------------------------------
    def train(self, name: str, workflow: list[str], needs: list[str], seed: int, curve: int | None = None,
              restore_best: bool = False, **overrides) -> Stage:
        if curve is not None:
            # restore_best.json (after loss_curve.json): the run ends with its weights of the best validation
            workflow = workflow + ["loss_curve"] + (["restore_best"] if restore_best else [])
            overrides["curve_interval"] = curve
        overrides = {"run_name": name, "final_model": str(self.model(name)), **overrides}
        return Stage(name, workflow, overrides, self.model(name), needs, self.runs / name, seed)

    def kse_sweep(self, name: str, network: str) -> Stage:
        overrides = {"run_name": name, "kse_network": str(self.model(network))}
        return Stage(name, ["kse_sweep"], overrides, self.runs / name / "kse_sweep.json", [network])

    def evaluate(self, name: str, networks: dict[str, str], needs: list[str], include_input: bool,
                 section: str = "test") -> Stage:
        overrides = {"run_name": name, "eval_networks": networks, "eval_recon": "all", "eval_roi_slices_only": True,
                     "eval_include_input": include_input, "eval_section": section}
        return Stage(name, ["evaluate"], overrides, self.runs / name / "evaluation.json", needs)

    def evaluate_ood(self, name: str, networks: dict[str, str], needs: list[str], studies: list[str] | None,
                     include_input: bool) -> Stage:
        overrides = {"run_name": name, "eval_networks": networks, "eval_studies": studies,
                     "eval_include_input": include_input}
        return Stage(name, ["evaluate_ood"], overrides, self.runs / name / "evaluation_ood.json", needs)

    def ablations(self) -> dict[str, dict]:
        """The TGD-net variants this study runs: {name: bundle overrides}."""
        if not self.with_ablations:
            return {}
        return {**ABLATIONS, **(CONTROL_ABLATIONS if self.with_controls else {})}

    def stages(self) -> list[Stage]:
        """Every stage, in dependency order; also fills :attr:`layout`, where the report finds each output."""
        s = self.settings
        recipe = {"epochs": s["pretrain_epochs"], "curve": s["pretrain_curve_interval"]}
        shared = {"v1-net": "v1", "v2-net": "v2"}
        nets = {n: str(self.model(r)) for n, r in shared.items()}
        out = [
            # the pretraining curves are monitored on the validation study's own recon
            self.train("v1", ["pretrain"], [], 0, curve_recon="v1", **recipe),
            self.train("v2", ["train_v2"], [], 0, **recipe),
            self.kse_sweep("kse_sweep", "v1"),
            self.evaluate("eval_shared", nets, ["v1", "v2"], True),
            self.evaluate("val_shared", nets, ["v1", "v2"], True, section="validation"),
            self.evaluate_ood("ood_shared", {"v2-net": str(self.model("v2"))}, ["v2"], None, include_input=True),
        ]
        self.layout = {
            "kse": {"v1-net": self.rel(out[2].marker)},
            "curves": {"v1-net": self.curve_file("v1"), "v2-net": self.curve_file("v2"), "FT-net": {}, "TGD-net": {}},
            "masks": {},
            "ablation_masks": {},
            "online_masks": {},
            "evaluations": [self.rel(out[3].marker)],
            "validation_evaluations": [self.rel(out[4].marker)],
            "ood_evaluations": [self.rel(out[5].marker)],
            "checkpoints": {n: self.rel(self.model(r)) for n, r in shared.items()},
        }  # fmt: skip
        if self.with_controls:
            # the control of the redundancy question: the same pretraining without the weight regulariser
            out.append(self.train("v1_no_wd", ["pretrain"], [], 0, curve_recon="v1", weight_decay=0.0, **recipe))
            out.append(self.kse_sweep("kse_sweep_no_wd", "v1_no_wd"))
            self.layout["kse"]["no weight decay"] = self.rel(out[-1].marker)
            self.layout["curves"]["no weight decay"] = self.curve_file("v1_no_wd")
        for seed in self.seeds:
            out += self.seed_stages(seed)
        self._by_name = {st.name: st for st in out}
        return out

    def seed_stages(self, seed: int) -> list[Stage]:
        s = self.settings
        ft, tgd = f"ft_s{seed}", f"tgd_s{seed}"
        # every fine-tuning: the same rule, until the validation loss flattens (or the epoch cap)
        tune = {"epochs": s["finetune_epochs"], "init_checkpoint": str(self.model("v1")),
                "curve": s["finetune_curve_interval"], "early_stop_patience": s["finetune_patience"],
                "restore_best": s["finetune_restore_best"]}
        out = [
            self.train(ft, ["finetune"], ["v1"], seed, **tune),
            self.train(tgd, ["finetune_tgd"], ["v1"], seed, **tune),
        ]
        key = str(seed)
        networks = {"FT-net": str(self.model(ft)), "TGD-net": str(self.model(tgd))}
        variant_seed = seed in s["variant_seeds"]
        for name, overrides in self.ablations().items():
            if variant_seed or name in EVERY_SEED:
                run = f"tgd_{slug(name.split('(')[1])}_s{seed}"
                out.append(self.train(run, ["finetune_tgd"], ["v1"], seed, **tune, **overrides))
                networks[name] = str(self.model(run))
                masks = self.rel(self.runs / run / "tgd_masks.json")
                self.layout["ablation_masks"].setdefault(name, {})[key] = masks
                self.layout["curves"].setdefault(name, {})[key] = self.curve_file(run)
        if variant_seed:
            out.append(self.evaluate(f"val_s{seed}", networks, [st.name for st in out], include_input=False,
                                     section="validation"))
            self.layout["validation_evaluations"].append(self.rel(out[-1].marker))
        out.append(self.evaluate(f"eval_s{seed}", networks, [st.name for st in out if st.name.startswith(("ft", "tgd"))],
                                 include_input=False))
        self.layout["curves"]["FT-net"][key] = self.curve_file(ft)
        self.layout["curves"]["TGD-net"][key] = self.curve_file(tgd)
        self.layout["masks"][key] = self.rel(self.runs / tgd / "tgd_masks.json")
        self.layout["evaluations"].append(self.rel(out[-1].marker))
        checkpoints = {n: self.rel(Path(c)) for n, c in networks.items()} | {"online": {}}
        for study in self.ood_studies:
            online, runs = {}, []
            for base, label in ONLINE_BASES.items():
                base_run = {"v2-net": "v2", "TGD-net": tgd}[base]
                runs.append(f"n2n_{study}_{base_run.split('_s')[0]}_s{seed}")
                out.append(self.train(
                    runs[-1], ["online_n2n"], [base_run], seed, n2n_study=study,
                    init_checkpoint=str(self.model(base_run)), n2n_epochs=s["n2n_epochs"],
                    samples_per_volume=s["n2n_samples"], n2n_time_budget_s=None, tgd_threshold=N2N_THRESHOLD,
                ))  # fmt: skip
                online[label] = str(self.model(runs[-1]))
            out.append(self.evaluate_ood(f"ood_{study}_s{seed}", {"TGD-net": networks["TGD-net"], **online},
                                         [tgd, *runs], [study], include_input=False))
            self.layout["ood_evaluations"].append(self.rel(out[-1].marker))
            checkpoints["online"][study] = {n: self.rel(Path(c)) for n, c in online.items()}
            self.layout["online_masks"].setdefault(key, {})[study] = {
                n: self.rel(self.runs / r / "tgd_masks.json") for n, r in zip(online, runs)
            }
        self.layout["checkpoints"][key] = checkpoints
        return out

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.work))

    def curve_file(self, run: str) -> str:
        return self.rel(self.runs / run / "loss_curve.json")

    # ---- running ---------------------------------------------------------------------------------------------------
    def overrides(self, stage: Stage) -> dict:
        return {
            "bundle_root": str(BUNDLE),
            "datalist": self.datalist,
            "ckpt_dir": str(self.models),
            "model_dir": str(self.models),
            "output_dir": str(self.runs),
            "seed": stage.seed,
            **self.settings["bundle"],
            **stage.overrides,
        }

    def fingerprint(self, stage: Stage) -> str:
        """Hash of what determines a stage's outputs: the library's code, the cohort's datalist, the stage's configs
        and overrides, and the fingerprints of the stages it reads (a retrained v1-net reruns all made from it)."""
        if stage.name not in self._fingerprints:
            files = self.config_files(stage)
            content = {
                "code": _code_digest(),
                "data": hashlib.sha256(Path(self.datalist).read_bytes()).hexdigest(),
                "configs": {f: (CONFIGS / f).read_text(encoding="utf-8") for f in files},
                "overrides": self.overrides(stage),
                "needs": [self.fingerprint(self._by_name[n]) for n in stage.needs],
            }
            text = json.dumps(content, sort_keys=True, default=str)
            # where the checkout and the work folder are does not change any output
            text = text.replace(str(self.work), "<work>").replace(str(BUNDLE), "<bundle>")
            digest = hashlib.sha256(text.encode()).hexdigest()
            self._fingerprints[stage.name] = digest[:16]
        return self._fingerprints[stage.name]

    def config_files(self, stage: Stage) -> list[str]:
        """The workflow's configs (inference.json, train.json, ...), then the profile's (``paper.json`` is merged last,
        as documented)."""
        return workflow_configs([*stage.workflow, *self.settings["bundle_files"]])

    def command(self, stage: Stage, config: Path) -> list[str]:
        files = self.config_files(stage)
        return [
            sys.executable, "-m", "monai.bundle", "run",
            "--config_file", str([str(CONFIGS / f) for f in files] + [str(config)]),
            "--meta_file", str(CONFIGS / "metadata.json"),
            "--logging_file", str(CONFIGS / "logging.conf"),
        ]  # fmt: skip

    def run_stage(self, stage: Stage, threads: int) -> dict:
        """Run one stage to completion in a child process; resume a cut-off training. Returns its timing record."""
        overrides = self.overrides(stage)
        fingerprint = self.fingerprint(stage)
        resumed_from = None
        if stage.run_dir is not None:
            started = stage.run_dir / "stage.json"
            previous = json.loads(started.read_text(encoding="utf-8")).get("fingerprint") if started.is_file() else None
            checkpoints = sorted(stage.run_dir.glob("checkpoint_epoch=*.pt"), key=lambda p: int(p.stem.split("=")[1]))
            if previous == fingerprint and checkpoints:
                resumed_from = int(checkpoints[-1].stem.split("=")[1])
                overrides["resume_from"] = str(checkpoints[-1])
            else:  # a different or unknown start: begin again from nothing
                shutil.rmtree(stage.run_dir, ignore_errors=True)
                stage.run_dir.mkdir(parents=True)
                _write_json(started, {"fingerprint": fingerprint})
        config = self.work / "configs" / f"{stage.name}.json"
        _write_json(config, overrides)
        command = self.command(stage, config)
        log = self.work / "logs" / f"{stage.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        start = time.perf_counter()
        # a resumed stage appends, so the log of its interrupted part is kept
        with open(log, "a" if resumed_from is not None else "w", encoding="utf-8") as f:
            f.write("$ " + " ".join(_quote(c) for c in command) + "\n\n")
            f.flush()
            code = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, cwd=BUNDLE, env=env).returncode
        seconds = time.perf_counter() - start
        if code != 0:
            raise RuntimeError(f"stage {stage.name} failed (exit code {code}); see {log}.")
        if not stage.marker.is_file():
            raise RuntimeError(f"stage {stage.name} finished without writing {stage.marker}; see {log}.")
        return {"seconds": round(seconds, 2), "fingerprint": fingerprint, "resumed_from_epoch": resumed_from,
                "threads": threads, "workflow": stage.workflow, "log": str(log.relative_to(self.work))}


@functools.cache
def _code_digest() -> str:
    """Hash of what the stages compute with: the monai_tgd package's code (parsed, so comments and docstrings do not
    count) and the versions of torch, MONAI and ignite."""
    import ast
    from importlib.metadata import version

    digest = hashlib.sha256(" ".join(version(p) for p in ("torch", "monai", "pytorch-ignite")).encode())
    for path in sorted((REPO / "monai_tgd").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
                getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + ast.dump(tree).encode())
    return digest.hexdigest()


def _quote(arg: str) -> str:
    return f'"{arg}"' if any(c in arg for c in " '[]") else arg


def _write_json(path: Path, content) -> None:
    """Atomic JSON write (:func:`monai_tgd.io.atomic_path`: complete under its final name or not at all)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(content, indent=1, default=str) + "\n", encoding="utf-8")


def run_stages(study: Study, stages: list[Stage], workers: int) -> tuple[dict, int]:
    """Run every stage not yet done, ``workers`` at a time in dependency order; returns the timing records of all
    stages and how many ran now."""
    timings_path = study.work / "stages.json"
    timings = json.loads(timings_path.read_text(encoding="utf-8")) if timings_path.is_file() else {}
    # every fingerprint is computed here, on this thread, before any worker starts: the workers then only read the
    # cache (CPython 3.11's ast.parse, which the code digest uses, fails when two threads parse at once)
    fingerprints = {s.name: study.fingerprint(s) for s in stages}
    done = {
        s.name for s in stages
        if s.marker.is_file() and timings.get(s.name, {}).get("fingerprint") == fingerprints[s.name]
    }  # fmt: skip
    reused = set(done)
    for s in stages:
        if s.name in done:
            print(f"{s.name}: done before ({timings[s.name]['seconds']:.0f} s), reused", flush=True)
    threads = max(1, (os.cpu_count() or 1) // workers)
    pending = [s for s in stages if s.name not in done]
    running: dict[futures.Future, Stage] = {}
    failure: BaseException | None = None
    with futures.ThreadPoolExecutor(max_workers=workers) as pool:
        while pending or running:
            ready = [s for s in pending if all(n in done for n in s.needs)] if failure is None else []
            for s in ready[: workers - len(running)]:
                pending.remove(s)
                # an output or record from an earlier, different run of this stage must not pass for this one's
                s.marker.unlink(missing_ok=True)
                if timings.pop(s.name, None) is not None:
                    _write_json(timings_path, timings)
                print(f"{s.name} ...", flush=True)
                running[pool.submit(study.run_stage, s, threads)] = s
            if not running:
                break
            finished, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for future in finished:
                s = running.pop(future)
                try:
                    timings[s.name] = future.result()
                except BaseException as e:  # let the running stages finish, start no new one
                    failure = failure or e
                    print(f"{s.name}: FAILED: {e}", file=sys.stderr, flush=True)
                    continue
                done.add(s.name)
                _write_json(timings_path, timings)
                print(f"{s.name}: {timings[s.name]['seconds']:.0f} s", flush=True)
    if failure is not None:
        raise failure
    if pending:
        raise RuntimeError(f"stages never became ready: {[s.name for s in pending]}")
    return timings, len(stages) - len(reused)


def run_study(profile: str, work: Path, docs: Path, seeds: list[int] | None = None, ablations: bool = True,
              workers: int | None = None, controls: bool = False) -> Path:
    """Run (or resume) every stage, then write the report. Returns the path of ``results.md``."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {sorted(PROFILES)}.")
    seeds = list(PROFILES[profile]["seeds"] if seeds is None else seeds)
    if not seeds or len(seeds) != len(set(seeds)):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}.")
    workers = PROFILES[profile]["workers"] if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}.")
    try:
        import matplotlib  # noqa: F401  (the report's figures; checked before hours of training)
    except ImportError as e:
        raise SystemExit("the study's report needs matplotlib: pip install -e \".[study]\"") from e
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    with folder_lock(work, on_busy=lambda: _busy(work)):
        return _run_locked(profile, work, docs, seeds, ablations, workers, controls)


def _busy(work: Path) -> None:
    raise RuntimeError(f"another study run is using {work} (it holds {work / '.lock'}); wait for it or pick --work.")


def _run_locked(profile: str, work: Path, docs: Path, seeds: list[int], ablations: bool, workers: int,
                controls: bool) -> Path:
    began, started = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    print(f"study: profile {profile}, seeds {seeds}, {workers} worker(s), work folder {work}", flush=True)
    study = Study(profile, work, seeds, ablations, controls)
    study.prepare()
    stages = study.stages()
    timings, ran = run_stages(study, stages, workers)
    invocations_path = work / "invocations.json"
    invocations = json.loads(invocations_path.read_text(encoding="utf-8")) if invocations_path.is_file() else []
    invocations.append({"started": started, "seconds": round(time.perf_counter() - began, 1), "workers": workers,
                        "stages_run": ran, "stages_reused": len(stages) - ran})
    _write_json(invocations_path, invocations)
    manifest = {
        "profile": profile,
        "settings": PROFILES[profile],
        "seeds": seeds,
        "workers": workers,
        "ablations": study.ablations(),
        "every_seed": [n for n in EVERY_SEED if n in study.ablations()],
        "controls": controls,
        "online_bases": ONLINE_BASES,
        "n2n_threshold": N2N_THRESHOLD,
        "datalist": study.datalist,
        "ood_studies": study.ood_studies,
        "weight_decay": json.loads((CONFIGS / "train.json").read_text(encoding="utf-8"))["weight_decay"],
        "layout": study.layout,
        "stages": {s.name: timings[s.name] for s in stages},
        "invocations": invocations,
    }
    _write_json(work / "manifest.json", manifest)
    results = write_report(work, docs, manifest)
    print(f"study: {invocations[-1]['seconds'] / 60:.1f} min to run {ran} stage(s); report written to {results}",
          flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick", choices=sorted(PROFILES))
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: study_runs/<profile>)")
    parser.add_argument("--docs", type=Path, default=REPO / "docs", help="where results.md and figures/ go")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds of the per-seed stages")
    parser.add_argument("--workers", type=int, default=None, help="stages run side by side (default: the profile's)")
    parser.add_argument("--no-ablations", action="store_true", help="skip the TGD-net variants")
    parser.add_argument("--controls", action="store_true",
                        help="also run the no-weight-decay pretraining control and the mode/BN-statistics ablations")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the report from the work folder's manifest.json (after a complete run)")
    args = parser.parse_args(argv)
    work = args.work if args.work is not None else REPO / "study_runs" / args.profile
    if args.report_only:
        print(f"report written to {report_only(work, args.docs)}")
        return
    run_study(args.profile, work, args.docs, args.seeds, not args.no_ablations, args.workers, args.controls)


def report_only(work: Path, docs: Path) -> Path:
    """Rewrite ``results.md`` (and results.json, figures) from a finished run's ``manifest.json``; runs no stage."""
    manifest_path = work.resolve() / "manifest.json"
    if not manifest_path.is_file():
        raise SystemExit(f"--report-only needs a finished run: {manifest_path} does not exist.")
    return write_report(work.resolve(), docs, json.loads(manifest_path.read_text(encoding="utf-8")))


if __name__ == "__main__":
    main()
