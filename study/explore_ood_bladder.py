"""Issue 11, premise "real artefacts": how hot must the out-of-distribution bladder be for a base network's error
inside it to reach 1.5 times the un-denoised 120 s input's?

Simulates only the quick cohort's ``ood_bladder`` study (seed 0, the cohort's own plan) with the bladder's nominal
uptake set to each given value (the simulator's default is ``UPTAKE["ood_bladder"]`` = 40), then runs
:func:`monai_tgd.evaluation.evaluate_ood` with the shipped v1-net and TGD-net (v2-net is not shipped) and prints,
per reconstruction, each network's RMSE against the 600 s image inside the (dilated) structure and its ratio to the
input's. Nothing is written outside ``--out`` (one folder per uptake); the shipped weights are only read.

    python study/explore_ood_bladder.py --out /tmp/ood_bladder 40 80 120      # about 1 min per uptake on 1 core
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from monai_tgd.evaluation import evaluate_ood
from monai_tgd.inferers import Slab25DInferer
from monai_tgd.networks import DnCNN
from monai_tgd.simulate import cohort, phantom

MODELS = Path(__file__).resolve().parents[1] / "bundles" / "pet_tgd_denoising" / "models"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("uptakes", type=float, nargs="+", help="nominal bladder uptakes (SUV-like) to simulate")
    p.add_argument("--out", required=True, help="a new or empty folder for the simulated studies")
    args = p.parse_args()
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"--out {out}: not empty; give a new or empty folder.")
    torch.set_flush_denormal(True)  # as the bundle's evaluation workflows
    profile = cohort.PROFILES["quick"]
    plan = next(p for p in cohort.plan_cohort(profile) if p.ood == "bladder")
    networks = {"v1-net": str(MODELS / "model_v1.pt"), "TGD-net": str(MODELS / "model.pt")}
    default = phantom.UPTAKE["ood_bladder"]
    try:
        for uptake in args.uptakes:
            phantom.UPTAKE["ood_bladder"] = uptake
            root = out / f"uptake_{uptake:g}"
            manifest = cohort._write_study(plan, profile, 0, root)
            records = [_absolute(r, root) for r in cohort._records(plan, manifest)["ood"]]
            rows = evaluate_ood(networks, records, Slab25DInferer(slab=3, axis=-1, sw_batch_size=32), "cpu",
                                network_def=DnCNN(features=32, num_layers=8), log=None)  # fmt: skip
            for recon in ("v1", "v2"):
                mine = [r for r in rows if r["recon"] == recon]
                base = next(r for r in mine if r["network"].startswith("input"))["ood_rmse_ref"]
                cells = [f"{r['network']} {r['ood_rmse_ref']:.3f} (x{r['ood_rmse_ref'] / base:.2f})" for r in mine]
                print(f"bladder uptake {uptake:g}, {recon}: RMSE in the structure vs 600 s: " + ", ".join(cells))
    finally:
        phantom.UPTAKE["ood_bladder"] = default


def _absolute(record: dict, root: Path) -> dict:
    def fix(value):
        if isinstance(value, list):
            return [fix(v) for v in value]
        return str(root / value) if isinstance(value, str) and value.endswith(".nii.gz") else value

    return {k: fix(v) for k, v in record.items()}


if __name__ == "__main__":
    main()
