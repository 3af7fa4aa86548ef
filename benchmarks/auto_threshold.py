"""What the automatic KSE threshold (``tgd.threshold_for_budget``) picks for a network, and what it costs.

    python benchmarks/auto_threshold.py                                   # shipped v1-net, quick cohort, 0.5 % and 1 %
    python benchmarks/auto_threshold.py --budgets 0.01 --checkpoint bundles/pet_tgd_denoising/models/model_v1.pt

Calibration inputs are the bundle's: ``data.calibration_slabs`` of the cohort's fine-tuning studies (``finetune_v2``,
never test studies), 4 slabs per study of the 60 s image. Prints one JSON line per budget: the chosen threshold, the
output change of dropping what it flags, the retrained share of the hidden parameters (``tgd.mask_summary``) and the
wall time of the search; and the retrained share at the paper's 0.3 for comparison. The cohort is generated in
``--cohort`` (default ``/tmp/monai_tgd_quick_cohort``) on first use.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from monai_tgd.data import calibration_slabs, ensure_datalist, load_datalist
from monai_tgd.networks import DnCNN
from monai_tgd.tgd import kse_masks, mask_summary, threshold_for_budget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="bundles/pet_tgd_denoising/models/model_v1.pt")
    parser.add_argument("--cohort", default="/tmp/monai_tgd_quick_cohort")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.005, 0.01])
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--num_layers", type=int, default=8)
    args = parser.parse_args()
    datalist = ensure_datalist(None, args.cohort, "quick", 0)
    slabs = calibration_slabs(load_datalist(datalist, "finetune_v2", ["noisy_60s"]), "noisy_60s", per_study=4)
    net = DnCNN(features=args.features, num_layers=args.num_layers)
    net.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True))
    print(json.dumps({"calibration": list(slabs.shape), "threads": torch.get_num_threads()}))
    for budget in args.budgets:
        start = time.perf_counter()
        phi, change = threshold_for_budget(net, slabs, budget)
        seconds = time.perf_counter() - start
        retrained = mask_summary(net, kse_masks(net, phi))["overall"]
        print(json.dumps({"max_change": budget, "phi": round(phi, 4), "change": round(change, 5),
                          "retrained_overall": round(retrained, 4), "seconds": round(seconds, 1)}))
    print(json.dumps({"phi": 0.3, "retrained_overall": round(mask_summary(net, kse_masks(net, 0.3))["overall"], 4)}))


if __name__ == "__main__":
    main()
