"""Issue 11, premise "shift in the paper's direction": does a v1 protocol that mis-models the axial resolution make
the v1-net over-smooth v2 images, as in the paper?

Generates the quick cohort with the given v1 protocol (``Profile.v1_iterations``, ``v1_postfilter_per_psf``,
``v1_axial_fwhm_mm``; v2 as in the simulator), pretrains the v1-net and the v2-net with the study's recipe for
``--epochs`` epochs side by side (the study's own stages: ``study/run_study.py``'s ``v1``, ``v2`` and ``val_shared``,
resumable), evaluates both on the validation study and prints the premises' rules on it: the shift (v1-net's liver
CoV below v2-net's and its lesion bias more negative, on v2 images), the 60 s inputs' liver CoVs within 15 % of each
other, the body-RMSE gap, and the resolvable lesions (v2-net's lesion bias within -10 %). A simulator candidate is
judged here on the validation study only, so that the study's premises, measured on the test studies, stay a
test of it. Everything goes to ``--work``; the v1 protocol defaults to the simulator's.

    python study/explore_shift.py --work /tmp/shift --epochs 300                     # the candidate (about 15 min)
    python study/explore_shift.py --work /tmp/shift_v3 --epochs 300 --v1-iterations 8 --v1-postfilter-per-psf 1.7 \\
        --v1-axial-fwhm-mm 0                                                          # simulator v3's v1, same recipe
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from report.checks import BIAS, COV, INPUT_COV_MATCH_PCT, RESOLVABLE_BIAS_PCT, RMSE  # study/ is on sys.path
from run_study import PROFILES, Study, run_stages

from monai_tgd.simulate import PROFILES as COHORTS
from monai_tgd.simulate import generate_cohort

IMAGE_RMSE = "rmse_body_ref_image"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, required=True, help="work folder (cohort, models, logs); resumable")
    p.add_argument("--epochs", type=int, default=300, help="pretraining epochs of v1-net and v2-net (study: 1500)")
    quick = COHORTS["quick"]
    p.add_argument("--v1-iterations", type=int, default=quick.v1_iterations)
    p.add_argument("--v1-postfilter-per-psf", type=float, default=quick.v1_postfilter_per_psf)
    p.add_argument("--v1-axial-fwhm-mm", type=float, default=quick.v1_axial_fwhm_mm)
    args = p.parse_args()
    if args.epochs < 1:
        raise SystemExit(f"--epochs must be >= 1, got {args.epochs}.")
    work = args.work.resolve()
    profile = dataclasses.replace(quick, v1_iterations=args.v1_iterations,
                                  v1_postfilter_per_psf=args.v1_postfilter_per_psf,
                                  v1_axial_fwhm_mm=args.v1_axial_fwhm_mm)  # fmt: skip
    study = Study("quick", work, [0], ablations=False)
    study.settings = {**PROFILES["quick"], "pretrain_epochs": args.epochs}
    study.datalist = str(generate_cohort(work / "cohort", profile, 0, progress=False, log=print))
    stages = [s for s in study.stages() if s.name in ("v1", "v2", "val_shared")]
    run_stages(study, stages, workers=2)
    rows = json.loads((work / "runs" / "val_shared" / "evaluation.json").read_text(encoding="utf-8"))["rows"]
    value = {(r["study"], r["recon"], r["network"]): r for r in rows}
    inp = next(r["network"] for r in rows if r.get("baseline"))
    print(f"\nv1 protocol: {args.v1_iterations} iterations, in-plane post-filter {args.v1_postfilter_per_psf} x PSF, "
          f"axial post-filter {args.v1_axial_fwhm_mm} mm; v1-net and v2-net {args.epochs} epochs; validation study")
    for study_name in sorted({r["study"] for r in rows}):
        def get(recon, net, key):
            return value[(study_name, recon, net)][key]

        c1, c2 = get("v1", inp, COV), get("v2", inp, COV)
        checks = [
            ("shift_liver_cov", get("v2", "v1-net", COV), "<", get("v2", "v2-net", COV)),
            ("shift_lesion_bias", get("v2", "v1-net", BIAS), "<", get("v2", "v2-net", BIAS)),
            ("input_cov_match", 100 * abs(c1 - c2) / c2, "<=", INPUT_COV_MATCH_PCT),
            ("gap", get("v2", "v2-net", RMSE), "<", get("v2", "v1-net", RMSE)),
            ("resolvable_lesions", get("v2", "v2-net", BIAS), ">=", RESOLVABLE_BIAS_PCT),
        ]
        for name, a, rule, b in checks:
            if a != a or b != b:  # a study without lesions
                continue
            met = a < b if rule == "<" else a <= b if rule == "<=" else a >= b
            print(f"  {name}[{study_name}]: {a:.4g} {rule} {b:.4g}: {'met' if met else 'NOT met'}")
        for net in ("v1-net", "v2-net"):
            cells = [f"{recon} CoV {get(recon, net, COV):.2f} % bias {get(recon, net, BIAS):.2f} % "
                     f"RMSE {get(recon, net, RMSE):.4f} image RMSE {get(recon, net, IMAGE_RMSE):.4f}"
                     for recon in ("v1", "v2")]
            print(f"    {study_name} {net}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
