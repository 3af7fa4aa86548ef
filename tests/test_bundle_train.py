"""The bundle's training workflows end to end on the tiny simulated cohort."""

import json
from pathlib import Path

import pytest
import torch

from ._bitwise import assert_same_weights, exact_kernels  # noqa: F401  (exact_kernels: a fixture)
from .conftest import assert_tgd_kept_frozen, bundle_readers, load_tiny_model, tgd_frozen_elements


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
    assert_tgd_kept_frozen(v1, tgd, masks, bundle_readers("finetune_tgd"))


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
    # the second pass keeps what its own masks freeze, against the first pass's output (not the v1-net)
    assert_tgd_kept_frozen(tgd, tgd2.state_dict(), masks, bundle_readers("finetune_tgd"))


def train_loss_steps(run_dir) -> list[list[int]]:
    """The iterations logged by each run into ``run_dir`` (one TensorBoard file per run), sorted."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = []
    for events in run_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        runs.append([e.step for e in acc.Scalars("train_loss")])
    return sorted(runs)


def test_resume_mid_run_continues_from_the_checkpoint(run_bundle, v1_model, tmp_path, exact_kernels):
    """A run cut after epoch 1 of 3 and resumed from its epoch checkpoint trains epochs 2-3 only, starting from the
    checkpoint's state, and ends with the uninterrupted run's bits."""
    run_bundle("finetune_tgd", run_name="full", epochs=3)
    run_bundle("finetune_tgd", run_name="cut", epochs=1)  # the interrupted run: killed after epoch 1's checkpoint
    (tmp_path / "models" / "model_cut.pt").unlink()  # ... so it never wrote its final model
    cut = tmp_path / "runs" / "cut"
    checkpoint = cut / "checkpoint_epoch=1.pt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    per_epoch = state["trainer"]["epoch_length"]
    assert state["trainer"]["iteration"] == per_epoch >= 1  # one epoch done
    run_bundle("finetune_tgd", run_name="cut", epochs=3, resume_from=str(checkpoint))

    full, resumed = load(tmp_path / "models" / "model_full.pt"), load(tmp_path / "models" / "model_cut.pt")
    assert_same_weights(full.state_dict(), resumed.state_dict())  # CPU, or CUDA with exact_kernels: bit for bit
    # the resumed run trained iterations per_epoch+1 .. 3*per_epoch, not 1 .. 3*per_epoch again
    assert train_loss_steps(cut) == [list(range(1, per_epoch + 1)), list(range(per_epoch + 1, 3 * per_epoch + 1))]

    # and it started from the checkpoint's weights: resumed from a copy whose frozen kernels of blocks.1.conv are
    # moved (TGD keeps frozen kernels as loaded, with the masks the checkpoint carries), those kernels end as in the
    # copy, not as in v1-net, which a run that ignored the checkpoint would start from
    readers = bundle_readers("finetune_tgd")
    frozen = tgd_frozen_elements(state["network"], state["tgd"]["masks"], readers)["blocks.1.conv.weight"]
    assert frozen.any() and not frozen.all()
    weight = state["network"]["blocks.1.conv.weight"]
    weight[frozen] += 0.25
    torch.save(state, tmp_path / "moved.pt")
    run_bundle("finetune_tgd", run_name="moved", epochs=3, resume_from=str(tmp_path / "moved.pt"))
    moved = load(tmp_path / "models" / "model_moved.pt").state_dict()["blocks.1.conv.weight"]
    assert torch.equal(moved[frozen], weight[frozen])
    assert not torch.equal(moved[frozen], load(v1_model).state_dict()["blocks.1.conv.weight"][frozen])


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


def test_train_v2_from_scratch_on_the_v2_reconstructions(run_bundle, tiny_cohort, tmp_path, exact_kernels):
    """train_v2 is pretrain's recipe from the seeded initialisation, on the datalist's ``train_v2`` section: with that
    section replaced by the ``pretrain_v1`` records it gives v1-net's bits, and on the real datalist other weights."""
    run_bundle("pretrain", epochs=1)
    v1 = load(tmp_path / "models" / "model_v1.pt").state_dict()
    content = json.loads(Path(tiny_cohort).read_text())
    root = Path(tiny_cohort).parent  # the copy below is elsewhere: its records get absolute file paths
    absolute = lambda r: {k: str(root / v) if isinstance(v, str) and (root / v).is_file() else v  # noqa: E731
                          for k, v in r.items()}
    sections = {k: [absolute(r) for r in v] for k, v in content.items() if isinstance(v, list) and v
                and all(isinstance(r, dict) for r in v)}  # fmt: skip
    swapped = tmp_path / "swapped_datalist.json"
    swapped.write_text(json.dumps({**content, **sections, "train_v2": sections["pretrain_v1"]}))
    run_bundle("train_v2", epochs=1, datalist=str(swapped), run_name="v2_on_v1_data")
    assert_same_weights(v1, load(tmp_path / "models" / "model_v2_on_v1_data.pt").state_dict())

    run_bundle("train_v2", epochs=1)
    v2 = load(tmp_path / "models" / "model_v2.pt").state_dict()
    assert not torch.equal(v2["blocks.0.conv.weight"], v1["blocks.0.conv.weight"])  # other data, other weights
    assert {r["recon"] for r in content["train_v2"]} == {"v2"}
    assert not (tmp_path / "runs" / "v2" / "tgd_masks.pt").exists()  # a plain training run
