"""The bundle's training workflows end to end on the tiny simulated cohort."""

import json

import pytest
import torch

from .conftest import assert_tgd_kept_frozen, load_tiny_model


load = load_tiny_model  # a plain DnCNN state_dict: TGD leaves no trace in the checkpoint


@pytest.fixture
def v1_model(run_bundle, tmp_path):
    run_bundle("pretrain")
    return tmp_path / "models" / "model_v1.pt"


def test_finetune_tgd_keeps_frozen_kernels_of_v1(run_bundle, v1_model, tmp_path):
    run_bundle("finetune_tgd", tgd_threshold=0.5)
    v1, tgd = load(v1_model).state_dict(), load(tmp_path / "models" / "model_tgd.pt").state_dict()
    masks = torch.load(tmp_path / "runs" / "tgd" / "tgd_masks.pt", weights_only=True)
    info = json.loads((tmp_path / "runs" / "tgd" / "tgd_masks.json").read_text())
    assert info["threshold"] == 0.5 and set(masks) == {f"blocks.{i}.conv" for i in range(3)}
    assert_tgd_kept_frozen(v1, tgd, masks)


def test_finetune_trains_only_the_last_three_blocks(run_bundle, v1_model, tmp_path):
    run_bundle("finetune")
    v1, ft = load(v1_model).state_dict(), load(tmp_path / "models" / "model_ft.pt").state_dict()
    assert torch.equal(ft["blocks.0.conv.weight"], v1["blocks.0.conv.weight"])
    assert all(not torch.equal(ft[f"blocks.{i}.conv.weight"], v1[f"blocks.{i}.conv.weight"]) for i in (1, 2, 3))


def test_tgd_twice_on_its_own_output(run_bundle, v1_model, tmp_path):
    run_bundle("finetune_tgd")
    run_bundle("finetune_tgd", run_name="tgd2", init_checkpoint=str(tmp_path / "models" / "model_tgd.pt"),
               tgd_threshold=0.4)  # fmt: skip
    tgd, tgd2 = load(tmp_path / "models" / "model_tgd.pt").state_dict(), load(tmp_path / "models" / "model_tgd2.pt")
    masks = torch.load(tmp_path / "runs" / "tgd2" / "tgd_masks.pt", weights_only=True)
    frozen = ~masks["blocks.1.conv"]
    assert torch.equal(tgd2.state_dict()["blocks.1.conv.weight"][frozen], tgd["blocks.1.conv.weight"][frozen])


def test_resume_after_interruption_equals_uninterrupted_run(run_bundle, v1_model, tmp_path):
    run_bundle("finetune_tgd", run_name="full", epochs=3)
    run_bundle("finetune_tgd", run_name="cut", epochs=2)  # the interrupted run: its last checkpoint is epoch 2
    checkpoint = tmp_path / "runs" / "cut" / "checkpoint_epoch=2.pt"
    assert checkpoint.is_file()
    run_bundle("finetune_tgd", run_name="cut", epochs=3, resume_from=str(checkpoint))
    full, resumed = load(tmp_path / "models" / "model_full.pt"), load(tmp_path / "models" / "model_cut.pt")
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_bad_datalist_fails_before_training(run_bundle, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"pretrain_v1": [{"study": "s0", "target": "missing.nii.gz"}]}))
    with pytest.raises(Exception) as raised:
        run_bundle("pretrain", datalist=str(bad))
    causes, e = [], raised.value
    while e is not None:  # MONAI wraps errors raised inside config expressions
        causes.append(str(e))
        e = e.__cause__
    assert any("study s0, field 'target': file" in c and "missing.nii.gz not found" in c for c in causes), causes


def test_train_v2_from_scratch_on_the_v2_reconstructions(run_bundle, tmp_path):
    run_bundle("train_v2", epochs=1)
    assert load(tmp_path / "models" / "model_v2.pt") is not None
    assert not (tmp_path / "runs" / "v2" / "tgd_masks.pt").exists()  # a plain training run
