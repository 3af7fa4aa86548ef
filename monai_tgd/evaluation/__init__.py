"""Evaluation of denoising networks: the code of the bundle's evaluate, evaluate_ood and kse_sweep workflows.

* :func:`evaluate_networks` (``table1.py``, paper Table 1) denoises the ``R`` noise realisations of every test study
  with every network and reports, per (study, recon, network) and for the un-denoised input as the baseline: the
  ensemble bias of every lesion (percent, against the 600 s reference and against the phantom truth when the record
  has one), its mean over the study's liver lesions, the liver ensemble CoV (percent) and the RMSE of the ensemble
  mean against the reference in the body (image units). It writes ``evaluation.csv``, ``evaluation_lesions.csv``,
  ``evaluation.json`` and ``evaluation.md`` (a table like the paper's Table 1).
* :func:`evaluate_ood` (``ood.py``, paper Fig. 6) denoises the 120 s input of every out-of-distribution study and
  reports the error inside the structure the networks never saw (hallucination) and the liver pixel CoV (retained
  denoising); it writes ``evaluation_ood.csv`` and ``evaluation_ood.json``.
* :func:`kse_sweep` (``threshold_sweep.py``, paper Fig. 4) drops, for each KSE threshold, the kernels that read
  feature maps scored as redundant (:func:`monai_tgd.tgd.drop_redundant`) and measures how much the output changes,
  against a control that zeroes the same number of randomly chosen input-channel kernels in the same layers;
  :func:`run_kse_sweep` does it on one realisation of a test study and writes ``kse_sweep.csv``, ``kse_sweep.json``
  and ``kse_sweep.md``.

The pieces they share: ``loading.py`` (networks from modules or checkpoints, :func:`denoise`), ``records.py``
(reading and checking datalist records), ``rois.py`` (the label-map conventions: body, liver, lesions, the
out-of-distribution structure), ``per_network.py`` (the loop over the input and each network: timing, row, log) and
``tables.py`` (CSV/JSON/markdown files). Every check of the inputs (checkpoints exist, load and fit the network;
study files exist and share one shape) runs before any inference. Every file is written through
:func:`monai_tgd.io.atomic_path`.
"""

from .loading import denoise, load_network, load_networks
from .ood import OOD_COLUMNS, evaluate_ood, ood_markdown
from .rois import LIVER_LABEL, liver_roi
from .table1 import EVALUATION_COLUMNS, LESION_COLUMNS, evaluate_networks, evaluation_markdown
from .threshold_sweep import (
    KSE_COLUMNS,
    kse_histogram,
    kse_sweep,
    kse_sweep_markdown,
    run_kse_sweep,
    zero_random_kernels,
)

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
