"""One source per bundle setting (``slab``, ``val_batch_size``, ``tgd_threshold``/``tgd_alpha``/``tgd_k``), handlers
disabled by name, the DDP device choice, and no Python logic in the configs (it lives in monai_tgd.bundle_helpers).

The configs are parsed with ``monai.bundle.ConfigParser`` and only the pieces under test are instantiated (no data,
no training); the end-to-end runs are in the other ``test_bundle_*`` files.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from monai.bundle import ConfigParser

import monai_tgd.bundle_helpers as helpers
from monai_tgd.bundle_helpers import workflow_configs
import monai_tgd.evaluation
from monai_tgd.handlers import TGDHandler
from monai_tgd.handlers.loss_curve import KSEFlaggedPercent
from monai_tgd.networks import DnCNN
from monai_tgd.tgd import kse_masks
from monai_tgd.transforms import RandSlab25Dd, Slab25Dd

from .conftest import BUNDLE, TINY_OVERRIDES

CONFIGS = BUNDLE / "configs"
WORKFLOW_CONFIGS = sorted(p for p in CONFIGS.glob("*.json") if p.name != "metadata.json")
RANK0_ONLY = ["train#stats_handler", "train#tensorboard_handler", "train#checkpoint_saver", "train#final_model_saver"]


def parser(*workflows: str, **overrides) -> ConfigParser:
    """The configs of ``workflows`` (``workflow_configs``: inference.json, train.json, then theirs), with the tiny
    sizes and ``overrides`` (config ids), like ``monai.bundle run``."""
    p = ConfigParser()
    p.read_config(workflow_configs(list(workflows) or "pretrain", CONFIGS))
    p.update({"bundle_root": str(BUNDLE), **TINY_OVERRIDES, **overrides})
    return p


def transforms_of(p: ConfigParser, compose_id: str, kind: type) -> list:
    return [t for t in p.get_parsed_content(compose_id).transforms if isinstance(t, kind)]


# ---- slab ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("slab", [3, 5])
def test_slab_sets_network_transforms_and_inferer_together(slab):
    """``--slab 5`` gives a 5-channel network, 5-slice training/validation slabs (targets stay 1 slice) and a 5-slice
    inferer, which fit together: every slab a transform makes goes through the network."""
    p = parser("online_n2n", "loss_curve", slab=slab)
    net = p.get_parsed_content("network_def").eval()
    assert net.blocks[0].conv.in_channels == slab
    assert p.get_parsed_content("inferer").slab == slab
    volume = {k: torch.rand(1, 40, 36, 9) for k in ("image", "target", "label")}

    (rand,) = transforms_of(p, "train#preprocessing", RandSlab25Dd)  # online_n2n's training slabs
    (common_rand,) = transforms_of(parser(slab=slab), "train#preprocessing", RandSlab25Dd)  # pretrain/finetune's
    (holdout,) = transforms_of(p, "n2n_holdout#preprocessing", Slab25Dd)
    (curve,) = transforms_of(p, "curve#preprocessing", Slab25Dd)
    samples = [rand(volume)[0], common_rand(volume)[0], holdout(volume)[0], curve(volume)[0]]
    with torch.no_grad():
        for sample in samples:
            assert sample["image"].shape[0] == slab and sample["target"].shape[0] == 1
            assert net(sample["image"][None]).shape == sample["target"][None].shape
        assert p.get_parsed_content("inferer")(volume["image"][None], net).shape == (1, 1, 40, 36, 9)


def _entries(node, key):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key or k.endswith("#" + key):
                yield v
            yield from _entries(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from _entries(v, key)


@pytest.mark.parametrize("path", WORKFLOW_CONFIGS, ids=lambda p: p.name)
def test_no_literal_slab_width(path):
    """Every slab width and the network's in_channels come from ``@slab`` (a slab list starts with it: the image)."""
    config = json.loads(path.read_text())
    setting = config.pop("slab", None)
    for value in _entries(config, "slab"):
        assert value == "@slab" or (isinstance(value, list) and value[0] == "@slab" and set(value[1:]) <= {1}), value
    for value in _entries(config, "in_channels"):
        assert value == "@slab", value
    if path.name == "inference.json":
        assert setting == 3 and config["network_def"]["in_channels"] == "@slab"


# ---- validation batch size -----------------------------------------------------------------------------------------


def test_val_batch_size_is_its_own_setting():
    """The validation loaders follow ``val_batch_size`` (default: ``sw_batch_size``), the inferer ``sw_batch_size``."""
    empty = {"n2n_holdout#dataset": [], "curve#dataset": []}
    p = parser("online_n2n", "loss_curve", **empty)
    assert p.get_parsed_content("val_batch_size") == TINY_OVERRIDES["sw_batch_size"]
    assert p.get_parsed_content("n2n_holdout#dataloader").batch_size == TINY_OVERRIDES["sw_batch_size"]
    p = parser("online_n2n", "loss_curve", val_batch_size=3, sw_batch_size=7, **empty)
    assert p.get_parsed_content("n2n_holdout#dataloader").batch_size == 3
    assert p.get_parsed_content("curve#dataloader").batch_size == 3
    assert p.get_parsed_content("inferer").sw_batch_size == 7


# ---- TGD's KSE settings --------------------------------------------------------------------------------------------

KSE = {"tgd_threshold": 0.6, "tgd_alpha": 2.0, "tgd_k": 2}


def test_tgd_settings_reach_the_handler_and_the_loss_curve_probe():
    p = parser("finetune_tgd", "loss_curve", **KSE)
    handler = p.get_parsed_content("tgd")
    assert isinstance(handler, TGDHandler)
    assert (handler.threshold, handler.alpha, handler.k) == (0.6, 2.0, 2)
    probe = p.get_parsed_content("curve#handler#probes#kse_flagged_channels_pct")
    assert isinstance(probe, KSEFlaggedPercent) and (probe.threshold, probe.alpha, probe.k) == (0.6, 2.0, 2)

    # the probe's value is the percent of channels TGD would retrain with the same settings
    torch.manual_seed(0)
    net = DnCNN(features=8, num_layers=4)
    masks = kse_masks(net, 0.6, alpha=2.0, k=2)
    expected = 100.0 * sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    default = KSEFlaggedPercent(0.6)(net)
    assert default != pytest.approx(expected)  # alpha and k matter for this network: the check below means something
    assert probe(net) == pytest.approx(expected, rel=1e-12)


def test_tgd_settings_reach_the_kse_sweep(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(monai_tgd.evaluation, "run_kse_sweep", lambda *a, **kw: calls.append(kw) or {"rows": []})
    checkpoint = tmp_path / "model_v1.pt"
    checkpoint.touch()
    p = parser("kse_sweep", kse_network=str(checkpoint), kse_records=[], **KSE)
    p.get_parsed_content("kse_result")
    assert len(calls) == 1 and (calls[0]["alpha"], calls[0]["k"]) == (2.0, 2)
    raw = json.loads((CONFIGS / "kse_sweep.json").read_text())
    assert not {"kse_alpha", "kse_k"} & set(raw)  # no second copy of the KSE settings


# ---- handlers by name ----------------------------------------------------------------------------------------------


def test_multi_gpu_disables_handlers_by_name():
    raw = json.loads((CONFIGS / "multi_gpu_train.json").read_text())
    disabled = sorted(k.removesuffix("#_disabled_") for k in raw if k.endswith("#_disabled_"))
    assert disabled == sorted(RANK0_ONLY)
    assert not [k for k in raw if re.search(r"#\d+(#|$)", k)], "an override addresses a list item by position"

    common = parser("finetune_tgd", "multi_gpu_train")
    listed = common["train"]["handlers"] + common["train"]["savers"]
    for name in disabled:
        assert common[name]["_target_"] in ("StatsHandler", "TensorBoardStatsHandler", "CheckpointSaver"), name
        assert f"@{name}" in listed, f"{name} is not attached through train#handlers or train#savers"

    for rank, expected in ((0, False), (1, True)):
        p = parser("finetune_tgd", "multi_gpu_train", ddp_rank=rank)
        assert all(p.get_parsed_content(f"{name}#_disabled_") is expected for name in disabled)
        handlers = helpers.enabled_handlers(p.get_parsed_content("train#handlers"))
        names = [type(h).__name__ for h in handlers]
        assert names == ["EpochSeedHandler"] + (["StatsHandler", "TensorBoardStatsHandler"] if rank == 0 else [])


def test_enabled_handlers_keeps_order_and_drops_disabled():
    a, b, c = object(), object(), object()
    assert helpers.enabled_handlers([a, None], None, [], [b, None, c]) == [a, b, c]


# ---- DDP device ----------------------------------------------------------------------------------------------------


@pytest.fixture
def gpus(monkeypatch):
    """Pretend this machine has ``n`` GPUs (0: no CUDA)."""

    def _set(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return _set


def ddp_device(monkeypatch, local_rank, local_world_size, **overrides):
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world_size))
    p = parser("finetune_tgd", "multi_gpu_train", **overrides)
    return p.get_parsed_content("device"), p.get_parsed_content("ddp_backend")


def test_ddp_device_on_a_one_gpu_runner(monkeypatch, gpus):
    gpus(1)
    assert ddp_device(monkeypatch, 1, 2, ddp_backend="gloo") == (torch.device("cuda:0"), "gloo")
    assert ddp_device(monkeypatch, 0, 1) == (torch.device("cuda:0"), "nccl")
    with pytest.raises(Exception) as error:
        ddp_device(monkeypatch, 1, 2)  # nccl cannot put two ranks on one GPU: say so instead of asking for cuda:1
    assert re.search(r"2 processes on this node but 1 GPU.*--ddp_backend gloo", repr(error.value.__cause__))


def test_ddp_device_one_gpu_per_rank_and_cpu(monkeypatch, gpus):
    gpus(2)
    assert ddp_device(monkeypatch, 1, 2) == (torch.device("cuda:1"), "nccl")
    assert ddp_device(monkeypatch, 3, 4, ddp_backend="gloo") == (torch.device("cuda:1"), "gloo")
    gpus(0)
    assert ddp_device(monkeypatch, 1, 2) == (torch.device("cpu"), "gloo")


def test_ddp_device_needs_torchrun_with_cuda(monkeypatch, gpus):
    gpus(1)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(RuntimeError, match="LOCAL_RANK is not set.*torchrun"):
        helpers.ddp_device("nccl")


# ---- finetune's trainable parameters -------------------------------------------------------------------------------


@pytest.mark.parametrize("blocks", [1, 3, 4])
def test_finetune_trains_the_last_blocks(blocks):
    p = parser("finetune", finetune_blocks=blocks)
    net = p.get_parsed_content("network")
    selected = p.get_parsed_content("trainable_parameters")
    expected = [q for n, q in net.named_parameters() if int(n.split(".")[1]) >= TINY_OVERRIDES["num_layers"] - blocks]
    assert len(selected) == len(expected) and all(a is b for a, b in zip(selected, expected))  # same objects, order
    optimizer = p.get_parsed_content("optimizer")
    assert [q for g in optimizer.param_groups for q in g["params"]] == selected


def test_last_blocks_parameters_rejects_bad_counts():
    net = DnCNN(features=4, num_layers=3)
    for count in (0, -1, 4, 1.5, True):
        with pytest.raises(ValueError, match="count must be an integer in \\[1, 3\\]"):
            helpers.last_blocks_parameters(net, count)
    with pytest.raises(ValueError, match="has no 'blocks'"):
        helpers.last_blocks_parameters(torch.nn.Linear(2, 2), 1)


# ---- evaluation: networks loaded once ------------------------------------------------------------------------------


@pytest.mark.parametrize("workflow, function", [("evaluate", "evaluate_networks"), ("evaluate_ood", "evaluate_ood")])
def test_evaluation_configs_load_each_network_once(monkeypatch, tmp_path, workflow, function):
    """The configs only check that the checkpoints exist; the evaluation function (which loads them) gets the paths."""
    loads, calls = [], []
    monkeypatch.setattr(monai_tgd.evaluation, "load_network", lambda *a, **kw: loads.append(a))
    monkeypatch.setattr(monai_tgd.evaluation, "load_networks", lambda *a, **kw: loads.append(a))
    monkeypatch.setattr(monai_tgd.evaluation, function, lambda networks, *a, **kw: calls.append(networks) or [])
    monkeypatch.setattr(monai_tgd.evaluation, "evaluation_markdown", lambda rows: "")
    monkeypatch.setattr(monai_tgd.evaluation, "ood_markdown", lambda rows: "")
    networks = {"a": str(tmp_path / "a.pt"), "b": str(tmp_path / "b.pt")}
    for path in networks.values():
        open(path, "w").close()
    p = parser(workflow, eval_networks=networks, eval_records=[], output_dir=str(tmp_path / "runs"))
    for i in range(len(p["run"])):
        p.get_parsed_content(f"run#{i}")
    assert calls == [networks] and loads == []


def test_require_checkpoints_names_every_missing_one(tmp_path):
    present = tmp_path / "present.pt"
    present.touch()
    nets = {"v1-net": str(tmp_path / "v1.pt"), "ok": str(present), "module": torch.nn.Linear(1, 1), "TGD": tmp_path}
    with pytest.raises(FileNotFoundError) as error:
        helpers.require_checkpoints(nets)
    message = str(error.value)
    assert f"network 'v1-net': checkpoint {tmp_path / 'v1.pt'} not found" in message
    assert f"network 'TGD': checkpoint {tmp_path} not found" in message and "'ok'" not in message
    assert helpers.require_checkpoints({"ok": str(present), "module": torch.nn.Linear(1, 1)}) == 2
    with pytest.raises(ValueError, match="non-empty"):
        helpers.require_checkpoints({})


# ---- small helpers -------------------------------------------------------------------------------------------------


def test_online_n2n_names(tmp_path):
    p = parser("online_n2n", init_checkpoint="/x/models/model_tgd.pt", n2n_study="ood_catheter",
               output_dir=str(tmp_path / "runs"), denoise_files=["/data/input_120s.nii.gz"])  # fmt: skip
    assert p.get_parsed_content("run_name") == "n2n_ood_catheter_tgd"
    assert helpers.checkpoint_run_name("models/model_v2.pt") == "v2"
    assert helpers.checkpoint_run_name("run.model_x.pt") == "run"
    layout = p.get_parsed_content("denoise#save_nifti").saver.folder_layout
    expected = str(tmp_path / "runs" / "n2n_ood_catheter_tgd" / "ood_catheter_denoised.nii.gz")
    assert layout.filename("/data/input_120s.nii.gz") == expected  # named after the study, whatever the input file
    assert p.get_parsed_content("n2n_holdout#evaluator#metric_cmp_fn")(0.1, 0.2) is True


def test_prepare_batch():
    batch = {"image": torch.ones(2, 3, 4, 4), "target": torch.zeros(2, 1, 4, 4), "other": torch.ones(1)}
    image, target = parser().get_parsed_content("prepare_batch")(batch, torch.device("cpu"))
    assert image is batch["image"] and target is batch["target"]


# ---- no Python logic in the JSON -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", WORKFLOW_CONFIGS, ids=lambda p: p.name)
def test_configs_hold_no_lambdas_or_string_parsing(path):
    text = path.read_text()
    assert "lambda" not in text, f"{path.name}: a lambda (make it a named helper in monai_tgd.bundle_helpers)"
    assert ".split(" not in text, f"{path.name}: string parsing (make it a named helper)"


# ---- denormal flushing: one setting, kept by multi_gpu_train.json -----------------------------------------------------


@pytest.mark.parametrize(
    "workflows, expected",
    [
        (["pretrain"], False), (["train_v2"], False), (["finetune"], True), (["finetune_tgd"], True),
        (["online_n2n"], True), (["evaluate"], True), (["evaluate_ood"], True), (["kse_sweep"], True),
        (["finetune_tgd", "multi_gpu_train"], True), (["pretrain", "multi_gpu_train"], False),
    ],
)  # fmt: skip
def test_flush_denormal_is_one_setting_every_initialize_applies(workflows, expected):
    """``flush_denormal`` decides; every workflow's ``initialize``, DDP's included (it replaced the list and dropped
    the flush before), calls ``torch.set_flush_denormal`` with it."""
    p = parser(*workflows)
    assert p.get_parsed_content("flush_denormal") is expected
    assert "$torch.set_flush_denormal(@flush_denormal)" in p["initialize"], p["initialize"]


def test_inference_flushes_denormals():
    p = ConfigParser()
    p.read_config(str(CONFIGS / "inference.json"))
    assert p["flush_denormal"] is True and "$torch.set_flush_denormal(@flush_denormal)" in p["initialize"]


# ---- a user's scans: every image the bundle loads is put in the canonical orientation ------------------------------


@pytest.mark.parametrize(
    "workflows, compose_id",
    [
        (["pretrain"], "train#preprocessing"), (["online_n2n"], "train#preprocessing"),
        (["online_n2n"], "n2n_holdout#preprocessing"), (["finetune_tgd", "loss_curve"], "curve#preprocessing"),
        (["online_n2n"], "denoise#preprocessing"),
    ],
)  # fmt: skip
def test_every_loaded_image_is_put_in_the_canonical_orientation(workflows, compose_id):
    """Issue 13: the keys of each ``LoadImaged`` of the training, validation and denoising pipelines go through a
    ``CanonicalPETOrientationd`` before any slab is cut or voxel size checked, so slabs run along the
    superior-inferior axis whatever the file's array order (the inference pipeline's end-to-end test is in
    test_bundle_pet_inputs.py)."""
    from monai.transforms import LoadImaged

    from monai_tgd.transforms import CanonicalPETOrientationd, PETSpacingd, RandSlab25Dd, Slab25Dd

    transforms = parser(*workflows).get_parsed_content(compose_id).transforms
    loads = [i for i, t in enumerate(transforms) if isinstance(t, LoadImaged)]
    assert loads, f"{compose_id} loads no image"
    for i in loads:
        later = transforms[i + 1 :]
        first_geometric = next((j for j, t in enumerate(later) if isinstance(t, (RandSlab25Dd, Slab25Dd, PETSpacingd))),
                               len(later))  # fmt: skip
        oriented = set()
        for t in later[:first_geometric]:
            if isinstance(t, CanonicalPETOrientationd):
                oriented |= set(t.keys)
        assert set(transforms[i].keys) <= oriented, f"{compose_id}: {transforms[i].keys} not oriented before slabs"


def test_restore_best_adds_its_handler_to_the_curve_monitors():
    """restore_best.json appends ``curve#best`` to loss_curve.json's monitors (``+train#monitors``) instead of
    re-listing them: the curve, the stopper, then the best-weights keeper, attached before the savers."""
    from monai_tgd.handlers import LossCurveHandler, PlateauStopHandler, RestoreBestHandler

    monitors = parser("finetune_tgd", "loss_curve", "restore_best", early_stop_patience=3).get_parsed_content(
        "train#monitors")  # fmt: skip
    assert [type(m) for m in monitors] == [LossCurveHandler, PlateauStopHandler, RestoreBestHandler]
    assert [type(m) for m in parser("finetune_tgd", "loss_curve", early_stop_patience=3).get_parsed_content(
        "train#monitors")] == [
        LossCurveHandler, PlateauStopHandler]  # fmt: skip
