import json

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.utils import set_determinism
from torch import nn

from monai_tgd.handlers import TGDHandler
from monai_tgd.handlers import tgd_handler as tgd_handler_module
from monai_tgd.networks import DnCNN
from monai_tgd.tgd import kse_masks, mask_summary

from .conftest import (
    OUTPUT_CONV,
    assert_frozen_elements_kept,
    assert_frozen_rows_kept,
    assert_tgd_kept_frozen,
)


def make_net(seed=0):
    torch.manual_seed(seed)
    net = DnCNN(features=8, num_layers=4)
    with torch.no_grad():
        for i in range(1, 4):
            net.blocks[i].conv.weight[:, ::2] *= 0.05  # near-dead input channels: about half is retrained
    return net


def loader():
    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.rand(3, 12, 12, generator=g), "label": torch.rand(1, 12, 12, generator=g)} for _ in range(6)]
    return torch.utils.data.DataLoader(data, batch_size=2, shuffle=False)


def trainer(net, handlers, max_epochs=2, optimizer=None):
    optimizer = optimizer or torch.optim.Adam(net.parameters(), lr=1e-2)
    return SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=max_epochs, train_data_loader=loader(), network=net,
        optimizer=optimizer, loss_function=nn.MSELoss(), train_handlers=handlers,
    )  # fmt: skip


def frozen_rows_equal(net, reference, masks):
    sd, ref = net.state_dict(), reference.state_dict()
    for i in range(3):
        frozen = ~masks[f"blocks.{i}.conv"]
        keys = [f"blocks.{i}.conv.weight"] + ([f"blocks.{i}.norm.weight", f"blocks.{i}.norm.bias"] if i else [])
        if not all(torch.equal(sd[k][frozen], ref[k][frozen]) for k in keys):
            return False
    return torch.equal(sd["blocks.3.conv.weight"], ref["blocks.3.conv.weight"])


def test_trainer_run_installs_logs_writes_and_removes(tmp_path, caplog):
    """A SupervisedTrainer run with TGDHandler: masks computed from the weights as loaded, logged and written; the TGD
    guarantee holds after the optimizer step of EVERY iteration and in every checkpoint saved during the run (both
    taken while TGD is installed, so before ``remove()`` at COMPLETED copies the frozen rows back once more); TGD is
    removed at the end. AdamW's weight decay moves frozen rows at every step unless TGD restores them right after it.
    """
    net, original = make_net(), make_net()
    base = {k: v.clone() for k, v in original.state_dict().items()}  # the weights TGD is installed on
    expected_masks = kse_masks(original, 0.3)
    handler = TGDHandler(threshold=0.3, output_dir=tmp_path)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
    engine = trainer(net, [handler], optimizer=opt)
    # Intermediate checkpoints, as a resumable run saves them: mid-epoch 1 (iteration 2), mid-epoch 2, last iteration.
    saver = CheckpointSaver(
        str(tmp_path / "ckpt"), {"network": net, "optimizer": opt}, save_interval=2, epoch_level=False, n_saved=None
    )
    saver.attach(engine)
    checked = []

    @engine.on(Events.ITERATION_COMPLETED)  # attached after TGDHandler: runs after this iteration's optimizer step
    def frozen_rows_after_step(engine):
        assert handler.tgd is not None, "TGD not installed during the run"
        where = f"iteration {engine.state.iteration}"
        assert_frozen_rows_kept(base, net.state_dict(), expected_masks, bn_stats="freeze", where=where)
        checked.append(engine.state.iteration)

    with caplog.at_level("INFO", logger="TGDHandler"):
        engine.run()
    assert checked == list(range(1, 7))  # 3 iterations x 2 epochs, each checked
    masks = torch.load(tmp_path / "tgd_masks.pt", weights_only=True)
    assert {k: v.tolist() for k, v in masks.items()} == {k: v.tolist() for k, v in expected_masks.items()}
    info = json.loads((tmp_path / "tgd_masks.json").read_text())
    assert info["threshold"] == 0.3 and info["mode"] == "activation" and 0 < info["retrained_fraction"]["overall"] < 1
    assert info["readers"] == "none"
    assert "TGD retrains 50.0% of blocks.1.conv" in caplog.text and "of overall" in caplog.text
    saved = sorted((tmp_path / "ckpt").glob("*.pt"))  # names sort by iteration here (single digits)
    assert [f.name for f in saved] == [f"checkpoint_iteration={i}.pt" for i in (2, 4, 6)]
    for ckpt in saved:  # what a resumed run or an evaluation of an intermediate checkpoint would load
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["network"]
        assert_tgd_kept_frozen(base, state, expected_masks, "none", where=ckpt.name)  # frozen rows kept, retrained moved
    assert_tgd_kept_frozen(base, net.state_dict(), expected_masks, "none")
    assert not torch.equal(net.blocks[0].conv.weight, original.blocks[0].conv.weight)
    assert handler.tgd is None and all(not m._forward_hooks for m in net.modules())  # removed at COMPLETED


def test_precomputed_masks_from_file_and_dict(tmp_path):
    net = make_net()
    masks = {k: torch.zeros_like(v) for k, v in kse_masks(net, 0.3).items()}  # retrain nothing
    torch.save(masks, tmp_path / "m.pt")
    for given in (tmp_path / "m.pt", masks):
        net = make_net()
        trainer(net, [TGDHandler(masks=given, freeze_output=False)], max_epochs=1).run()
        assert frozen_rows_equal(net, make_net(), masks) is False  # only the output conv trained
        assert all(torch.equal(a, b) for a, b in zip(net.blocks[0].parameters(), make_net().blocks[0].parameters()))


def run_with_checkpoints(tmp_path, max_epochs, resume_from=None):
    set_determinism(seed=0)
    net = make_net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    handler = TGDHandler(threshold=0.3, output_dir=tmp_path / "out")
    handlers = [handler]
    engine = trainer(net, handlers, max_epochs=max_epochs, optimizer=opt)
    objects = {"network": net, "optimizer": opt, "trainer": engine, "tgd": handler}
    if resume_from:
        CheckpointLoader(load_path=str(resume_from), load_dict=objects).attach(engine)
    CheckpointSaver(str(tmp_path / "ckpt"), objects, save_interval=1, epoch_level=True, n_saved=None).attach(engine)
    engine.run()
    set_determinism(seed=None)
    return net


def test_resume_reuses_saved_masks_and_matches_uninterrupted_run(tmp_path, monkeypatch):
    uninterrupted = run_with_checkpoints(tmp_path / "a", max_epochs=2)
    run_with_checkpoints(tmp_path / "b", max_epochs=1)  # "interrupted" after epoch 1
    ckpt = tmp_path / "b" / "ckpt" / "checkpoint_epoch=1.pt"
    assert ckpt.is_file()

    def must_not_recompute(*args, **kwargs):
        raise AssertionError("masks recomputed from half-fine-tuned weights")

    monkeypatch.setattr(tgd_handler_module, "kse_masks", must_not_recompute)
    resumed = run_with_checkpoints(tmp_path / "b", max_epochs=2, resume_from=ckpt)
    for (name, a), b in zip(uninterrupted.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_without_masks_fails_or_falls_back_to_masks_file(tmp_path):
    net = make_net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = trainer(net, [], max_epochs=1, optimizer=opt)
    CheckpointSaver(str(tmp_path), {"network": net, "trainer": first}, save_final=True).attach(first)
    first.run()
    ckpt = next(tmp_path.glob("*.pt"))
    for output_dir in (None, tmp_path / "empty"):
        engine = trainer(make_net(), [TGDHandler(output_dir=output_dir)], max_epochs=2)
        CheckpointLoader(load_path=str(ckpt), load_dict={"trainer": engine}).attach(engine)
        with pytest.raises(RuntimeError, match="resumes at iteration 3 but no TGD masks were restored"):
            engine.run()
    masks_dir = tmp_path / "with_masks"
    masks_dir.mkdir()
    saved = {k: torch.ones_like(v) for k, v in kse_masks(make_net(), 0.3).items()}
    torch.save(saved, masks_dir / "tgd_masks.pt")
    handler = TGDHandler(output_dir=masks_dir)
    engine = trainer(make_net(), [handler], max_epochs=2)
    CheckpointLoader(load_path=str(ckpt), load_dict={"trainer": engine}).attach(engine)
    engine.run()
    assert all(m.all() for m in handler.masks.values())


def test_failure_removes_tgd_and_propagates(tmp_path):
    net = make_net()
    handler = TGDHandler(threshold=0.3)
    engine = trainer(net, [handler])

    @engine.on(Events.ITERATION_COMPLETED(once=2))
    def boom(_):
        raise KeyboardInterrupt("stop")

    with pytest.raises(KeyboardInterrupt):
        engine.run()
    assert handler.tgd is None and all(not m._forward_hooks for m in net.modules())


def test_errors(tmp_path):
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        TGDHandler(threshold=2.0)
    with pytest.raises(FileNotFoundError, match="masks file .*missing.pt not found"):
        TGDHandler(masks=tmp_path / "missing.pt")
    torch.save([1, 2], tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="must hold a dict of conv name -> bool tensor"):
        TGDHandler(masks=tmp_path / "bad.pt")


@pytest.mark.parametrize("mode", ["activation", "parameter"])
def test_readers_output_run(tmp_path, mode):
    """``readers="output"`` through the handler: the frozen elements (the output conv's bias and its columns of kept
    maps included) are bit-identical after every iteration's step under AdamW's decay, the output columns of the
    retrained maps move, and ``tgd_masks.json`` records ``readers`` and counts the reader kernels."""
    net, original = make_net(), make_net()
    base = {k: v.clone() for k, v in original.state_dict().items()}
    masks = kse_masks(original, 0.3)
    handler = TGDHandler(threshold=0.3, mode=mode, readers="output", output_dir=tmp_path)
    engine = trainer(net, [handler], optimizer=torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1))
    checked = []

    @engine.on(Events.ITERATION_COMPLETED)
    def frozen_after_step(engine):
        assert handler.tgd is not None and handler.tgd.readers == "output"
        assert_frozen_elements_kept(base, net.state_dict(), masks, "output", where=f"iteration {engine.state.iteration}")
        checked.append(engine.state.iteration)

    engine.run()
    assert checked == list(range(1, 7))
    retrained = masks["blocks.2.conv"]
    w_now, w_then = net.state_dict()[f"{OUTPUT_CONV}.weight"], base[f"{OUTPUT_CONV}.weight"]
    assert (w_now[:, retrained] != w_then[:, retrained]).flatten(2).any(dim=2).all()
    assert torch.equal(w_now[:, ~retrained], w_then[:, ~retrained])
    info = json.loads((tmp_path / "tgd_masks.json").read_text())
    assert info["readers"] == "output" and info["mode"] == mode
    assert info["retrained_fraction"]["overall"] == mask_summary(original, masks, readers="output")["overall"]
    assert info["retrained_fraction"]["overall"] != mask_summary(original, masks)["overall"]


def test_readers_errors():
    with pytest.raises(ValueError, match=r"TGDHandler: readers must be one of \('none', 'output', 'all'\), got 'x'"):
        TGDHandler(readers="x")
    with pytest.raises(ValueError, match="readers='all' needs mode='parameter', got mode='activation'"):
        TGDHandler(readers="all")
    assert TGDHandler(readers="all", mode="parameter").readers == "all"
