"""The KSE threshold chosen from a fidelity budget (``tgd.threshold_for_budget``, ``TGDHandler(threshold="auto")``).

The change of the output is recomputed here independently of the library's pruning (``zero_readers``,
``drop_redundant``): forward pre-hooks zero the redundant input channels of each reading conv, on a float64 network,
over the whole batch at once.
"""

import json
import math

import pytest
import torch
from monai.engines import SupervisedTrainer
from torch import nn

from monai_tgd.handlers import TGDHandler
from monai_tgd.kse import kse_scores
from monai_tgd.networks import DnCNN
from monai_tgd.tgd import kse_masks, threshold_for_budget

READERS = [1, 2, 3, 4]  # blocks whose conv reads a hidden conv's feature maps


def make_net(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    net = DnCNN(features=8, num_layers=5).to(dtype)
    with torch.no_grad():  # near-dead input channels of varied strength, as a pretraining with weight decay leaves
        for i in READERS:
            net.blocks[i].conv.weight[:, ::2] *= torch.linspace(0.01, 0.3, 4, dtype=dtype).view(1, 4, 1, 1)
        net.blocks[-1].conv.weight *= 30  # a noise estimate of the size of the signal: changes of 0.01-7 %
    return net.eval()


def inputs(seed=1, n=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=g, dtype=dtype) + 0.5


def scores_of(net):
    return {i: kse_scores(net.blocks[i].conv.weight) for i in READERS}


def change_when_dropping(net, x, dropped):
    """Relative RMSE of the output with the input channels ``dropped[i]`` (bool [C]) of conv ``i`` zeroed."""
    with torch.no_grad():
        y = net(x)
        handles = [
            net.blocks[i].conv.register_forward_pre_hook(
                lambda m, inp, keep=~dropped[i]: (inp[0] * keep.view(1, -1, 1, 1),)
            )
            for i in READERS
        ]
        try:
            y_dropped = net(x)
        finally:
            for h in handles:
                h.remove()
    return math.sqrt(float(((y_dropped - y) ** 2).sum()) / float((y**2).sum()))


def levels_of(scores):
    return sorted({s for layer in scores.values() for s in layer.tolist() if s < 1.0})


# seed 3 at 0.049: the change passes the budget at phi = 0.43 and falls below it again from 0.66 on (dropping more
# kernels is not always a larger change), so the answer is 0.43, not the largest phi whose own change fits.
@pytest.mark.parametrize("seed, budget", [(0, 0.002), (0, 0.005), (0, 0.01), (3, 0.049)])
def test_phi_meets_the_budget_and_flagging_its_own_channels_breaks_it(seed, budget):
    net, x = make_net(seed), inputs()
    phi, change = threshold_for_budget(net, x, max_change=budget)
    scores = scores_of(net)
    assert phi in levels_of(scores) + [1.0]
    for level in [s for s in levels_of(scores) if s < phi]:  # every phi' <= phi flags one of these sets (or none)
        assert change_when_dropping(net, x, {i: s <= level for i, s in scores.items()}) <= budget, level
    at_phi = change_when_dropping(net, x, {i: s < phi for i, s in scores.items()})
    assert change == pytest.approx(at_phi, rel=1e-9, abs=1e-15) and change <= budget
    if phi < 1.0:
        assert change_when_dropping(net, x, {i: s <= phi for i, s in scores.items()}) > budget
    masks = kse_masks(net, phi)  # what TGD retrains at phi: exactly the channels scoring below it
    assert all(torch.equal(masks[f"blocks.{i - 1}.conv"], scores[i] < phi) for i in READERS)


def test_the_three_budgets_give_three_different_thresholds():
    """Guards the parametrised test above against a network on which every budget gives 1.0 or the lowest score."""
    net, x = make_net(), inputs()
    phis = [threshold_for_budget(net, x, max_change=b)[0] for b in (0.002, 0.005, 0.01)]
    assert len(set(phis)) == 3 and min(levels_of(scores_of(net))) < phis[0] and phis[-1] < 1.0


def test_monotone_in_the_budget():
    net, x = make_net(seed=3), inputs()
    results = [threshold_for_budget(net, x, max_change=b) for b in (0.0005, 0.001, 0.003, 0.01, 0.03, 0.1, 0.5)]
    phis = [phi for phi, _ in results]
    assert phis == sorted(phis) and len(set(phis)) > 2
    assert all(change <= b for (_, change), b in zip(results, (0.0005, 0.001, 0.003, 0.01, 0.03, 0.1, 0.5)))


def test_same_result_for_one_batch_or_several_float32():
    net, x = make_net(dtype=torch.float32), inputs(n=11, dtype=torch.float32)  # more than one chunk of 8
    one = threshold_for_budget(net, x, max_change=0.01)
    assert threshold_for_budget(net, [x[:1], x[1:4], x[4:]], max_change=0.01) == one
    assert threshold_for_budget(net, (x[j : j + 1] for j in range(len(x))), max_change=0.01) == one


class BatchSensitive(DnCNN):
    """A DnCNN whose output moves with the batch size, as float rounding of batched kernels can."""

    def forward(self, x):
        return super().forward(x) + 1e-2 * x.shape[0]


def test_same_result_for_one_batch_or_several_when_the_batch_size_matters():
    torch.manual_seed(0)
    net, x = BatchSensitive(features=8, num_layers=5).double().eval(), inputs(n=11)
    one = threshold_for_budget(net, x, max_change=0.01)
    assert threshold_for_budget(net, [x[:1], x[1:4], x[4:]], max_change=0.01) == one
    assert threshold_for_budget(net, (x[j : j + 1] for j in range(len(x))), max_change=0.01) == one


def test_nothing_breaks_the_budget_gives_one_and_the_network_is_untouched():
    net, x = make_net(), inputs()
    with torch.no_grad():
        net.blocks[-1].conv.weight *= 1e-6  # the residual network then returns (almost) its centre slice
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    phi, change = threshold_for_budget(net, x, max_change=0.01)
    assert phi == 1.0 and 0 < change <= 0.01
    assert change == pytest.approx(change_when_dropping(net.eval(), x, {i: s < 1.0 for i, s in scores_of(net).items()}))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("budget", [0.0, 1.0, -0.1, math.nan, True, "0.01"])
def test_budget_outside_zero_one(budget):
    with pytest.raises(ValueError, match=r"max_change must be a relative RMSE in \(0, 1\)"):
        threshold_for_budget(make_net(), inputs(), max_change=budget)


@pytest.mark.parametrize("empty", [[], torch.zeros(0, 3, 16, 16, dtype=torch.float64), iter(())])
def test_empty_inputs(empty):
    with pytest.raises(ValueError, match="inputs hold no samples"):
        threshold_for_budget(make_net(), empty)


def test_bad_input_and_zero_output():
    with pytest.raises(ValueError, match=r"batch 1 is list"):
        threshold_for_budget(make_net(), [inputs(), [1, 2]])
    net = make_net()
    with torch.no_grad():
        net.blocks[-1].conv.weight.zero_()
        net.blocks[-1].conv.bias.zero_()
    with pytest.raises(ValueError, match="output on inputs is 0 everywhere"):
        threshold_for_budget(net, torch.zeros(2, 3, 16, 16, dtype=torch.float64))


def test_unsupported_network_names_the_conv():
    class ChannelRoll(nn.Module):  # channels change place between the convs: no per-channel mask can follow them
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 1, 3, padding=1)

        def forward(self, x):
            return self.b(torch.roll(torch.relu(self.a(x)), 1, dims=1))

    with pytest.raises(ValueError, match="consumer of conv 'a'.*'roll'"):
        threshold_for_budget(ChannelRoll(), torch.rand(1, 3, 8, 8))


def test_handler_auto_chooses_logs_writes_and_resumes(tmp_path):
    net, x = make_net(dtype=torch.float32), inputs(dtype=torch.float32)
    expected = threshold_for_budget(net, x, max_change=0.01)
    calls = []
    handler = TGDHandler(
        threshold="auto", max_change=0.01, calibration=lambda: calls.append(1) or x, output_dir=tmp_path
    )
    data = [{"image": xi, "label": xi[1:2]} for xi in x]
    SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, network=net, train_data_loader=torch.utils.data.DataLoader(data, 2),
        optimizer=torch.optim.Adam(net.parameters(), lr=1e-3), loss_function=nn.MSELoss(), train_handlers=[handler],
    ).run()  # fmt: skip
    assert calls == [1] and handler.chosen == {"threshold": expected[0], "change": expected[1]}
    masks = torch.load(tmp_path / "tgd_masks.pt", weights_only=True)
    info = json.loads((tmp_path / "tgd_masks.json").read_text())
    assert info["threshold"] == "auto" and info["chosen_threshold"] == expected[0]
    assert info["threshold_change"] == expected[1] and info["max_change"] == 0.01
    reference = make_net(dtype=torch.float32)  # the weights as loaded, before fine-tuning
    assert all(torch.equal(masks[n], m) for n, m in kse_masks(reference, expected[0]).items())
    resumed = TGDHandler(threshold="auto", calibration=x)
    resumed.load_state_dict(handler.state_dict())
    assert resumed.chosen == handler.chosen and all(torch.equal(resumed.masks[n], m) for n, m in masks.items())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"threshold": "auto"}, "needs calibration="),
        ({"threshold": "auto", "calibration": "slices.pt"}, "needs calibration="),
        ({"threshold": "auto", "calibration": torch.ones(1), "max_change": 2.0}, r"max_change must be .* \(0, 1\)"),
        ({"threshold": "automatic"}, r"threshold must be in \[0, 1\] or 'auto'"),
    ],
)
def test_handler_auto_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TGDHandler(**kwargs)


def test_bundle_finetune_tgd_with_automatic_threshold(run_bundle, tiny_cohort, tmp_path):
    """``--tgd_threshold auto``: the threshold is chosen on slabs of the fine-tuning studies (never test studies) as
    loaded, the masks follow it and the guarantee holds; the choice is written next to the masks."""
    from monai_tgd.data import calibration_slabs, load_datalist

    from .conftest import assert_tgd_kept_frozen, bundle_readers, load_tiny_model

    run_bundle("pretrain", epochs=1)
    v1 = load_tiny_model(tmp_path / "models" / "model_v1.pt")
    records = load_datalist(tiny_cohort, "finetune_v2")
    slabs = calibration_slabs(records, "noisy_60s", per_study=4)
    assert slabs.shape[:2] == (4 * len(records), 3)
    phi, change = threshold_for_budget(v1, slabs, max_change=0.02)
    run_bundle("finetune_tgd", epochs=1, tgd_threshold="auto", tgd_max_change=0.02)
    info = json.loads((tmp_path / "runs" / "tgd" / "tgd_masks.json").read_text())
    assert (info["threshold"], info["chosen_threshold"], info["max_change"]) == ("auto", phi, 0.02)
    assert info["threshold_change"] == pytest.approx(change, rel=1e-6)
    masks = torch.load(tmp_path / "runs" / "tgd" / "tgd_masks.pt", weights_only=True)
    assert all(torch.equal(masks[n], m) for n, m in kse_masks(v1, phi).items())
    tuned = load_tiny_model(tmp_path / "models" / "model_tgd.pt").state_dict()
    assert_tgd_kept_frozen(v1.state_dict(), tuned, masks, bundle_readers("finetune_tgd"))


def test_calibration_slabs_are_evenly_spaced_slabs_of_each_study(tmp_path):
    import nibabel as nib
    import numpy as np

    from monai_tgd.data import calibration_slabs

    volume = np.arange(4 * 5 * 12, dtype=np.float32).reshape(4, 5, 12)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "a.nii.gz")
    nib.save(nib.Nifti1Image(volume * 2, np.eye(4)), tmp_path / "b.nii.gz")
    records = [{"study": "a", "x": str(tmp_path / "a.nii.gz")}, {"study": "b", "x": str(tmp_path / "b.nii.gz")}]
    slabs = calibration_slabs(records, "x", per_study=2)
    centres = [4, 7]  # round(linspace(0, 11, 4))[1:-1]
    expected = [torch.as_tensor(f * volume[..., c - 1 : c + 2]).permute(2, 0, 1) for f in (1, 2) for c in centres]
    assert torch.equal(slabs, torch.stack(expected))
    with pytest.raises(ValueError, match="study b has no field 'y'"):
        calibration_slabs([{"study": "a", "y": records[0]["x"]}, records[1]], "y")
    with pytest.raises(ValueError, match="per_study must be an int >= 1"):
        calibration_slabs(records, "x", per_study=0)


def test_loss_curve_probe_follows_the_chosen_threshold():
    from monai_tgd.handlers.loss_curve import KSEFlaggedPercent

    net = make_net(dtype=torch.float32)
    handler = TGDHandler(threshold="auto", calibration=inputs(dtype=torch.float32))
    probe = KSEFlaggedPercent("auto", tgd=handler)
    assert math.isnan(probe(net))  # nothing chosen yet (the start of a run)
    handler.chosen = {"threshold": 0.5, "change": 0.0}
    flagged = [bool(s < 0.5) for i in READERS for s in kse_scores(net.blocks[i].conv.weight)]
    assert probe(net) == pytest.approx(100 * sum(flagged) / len(flagged))
    with pytest.raises(ValueError, match="needs tgd="):
        KSEFlaggedPercent("auto")


def test_a_change_equal_to_the_budget_is_within_it():
    """The budget is inclusive ("at most max_change"): with the change of the returned phi as the budget, the same
    phi comes back (on this network every smaller flagged set changes the output less, checked independently)."""
    net, x = make_net(), inputs()
    phi, change = threshold_for_budget(net, x, max_change=0.002)
    scores = scores_of(net)
    assert all(change_when_dropping(net, x, {i: s <= level for i, s in scores.items()}) <= change
               for level in levels_of(scores) if level < phi)  # fmt: skip
    assert threshold_for_budget(net, x, max_change=change) == (phi, change)
