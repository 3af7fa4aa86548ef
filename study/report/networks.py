"""The run's checkpoints as networks, built from the bundle config of the stage that trained them.

``run_study.py`` runs each training stage as the bundle's workflow: the workflow's configs (``workflow_configs``), the
profile's extra configs (``paper.json``), then the stage's overrides (``<work>/configs/<stage>.json``), and the stage
saves its network to ``<work>/models/model_<stage>.pt``. :func:`stage_config` merges the same files, and
:func:`network` builds the config's ``network_def`` and loads the checkpoint into it with the library's
:func:`monai_tgd.evaluation.load_network` (``weights_only`` loading, eval mode, CPU).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from monai_tgd.bundle_helpers import workflow_configs

from .results import Results

CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "pet_tgd_denoising" / "configs"


def stage_config(res: Results, checkpoint: Path):
    """The bundle config (a ``monai.bundle.ConfigParser``) of the stage of the run that trained ``checkpoint``."""
    from monai.bundle import ConfigParser

    stage = Path(checkpoint).stem.removeprefix("model_")
    overrides = res.work / "configs" / f"{stage}.json"
    if stage not in res.manifest["stages"] or not overrides.is_file():
        raise FileNotFoundError(f"report: no stage '{stage}' with overrides {overrides} in this run.")
    workflow = res.manifest["stages"][stage]["workflow"]
    files = workflow_configs([*workflow, *res.manifest["settings"]["bundle_files"]])
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files] + [str(overrides)])
    return parser


@cache
def network(res: Results, checkpoint: Path):
    """The checkpoint of the run as the network its stage trained (ready for inference; cached per checkpoint)."""
    from monai_tgd.evaluation import load_network

    network_def = stage_config(res, checkpoint).get_parsed_content("network_def")
    return load_network(checkpoint, network_def, name=Path(checkpoint).stem)
