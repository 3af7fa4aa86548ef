"""Issue 14: one install of TGD per network, one trace per install, one rule for the frozen rows, one zeroing core for
the KSE sweep's pruning and its random control, TGDHandler's arguments checked at construction, and the evaluation
package's public names."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.fx
from torch import nn

import monai_tgd.evaluation
from monai_tgd.evaluation import zero_random_kernels
from monai_tgd.handlers import TGDHandler
from monai_tgd.kse import kse_scores
from monai_tgd.networks import DnCNN
from monai_tgd.tgd import TGD, conv_chain, drop_redundant, frozen_rows, kse_masks, mask_summary

# What `from monai_tgd.evaluation import ...` offered as monai_tgd/evaluation.py (bundle configs, study, docs use them).
EVALUATION_NAMES = [
    "load_network", "load_networks", "denoise", "liver_roi", "evaluate_networks", "evaluation_markdown", "kse_sweep",
    "kse_histogram", "zero_random_kernels", "run_kse_sweep", "kse_sweep_markdown", "LIVER_LABEL",
    "EVALUATION_COLUMNS", "LESION_COLUMNS", "evaluate_ood", "ood_markdown", "OOD_COLUMNS", "KSE_COLUMNS",
]  # fmt: skip

HIDDEN = ("blocks.0.conv", "blocks.1.conv", "blocks.2.conv")


def dncnn(seed=0):
    """DnCNN with 3 hidden convs (blocks.0 without BN, blocks.1-2 with BN) and the output conv blocks.3.conv."""
    torch.manual_seed(seed)
    net = DnCNN(features=6, num_layers=4)
    with torch.no_grad():
        for i in (1, 2):
            net.blocks[i].norm.running_mean.uniform_(-0.5, 0.5)
            net.blocks[i].norm.running_var.uniform_(0.5, 2.0)
            net.blocks[i].norm.bias.uniform_(-0.5, 0.5)
    return net


def retrain_pattern():
    """Retrain pattern with a layer that retrains everything (it has no frozen row) and one that retrains nothing."""
    return {
        "blocks.0.conv": torch.ones(6, dtype=torch.bool),
        "blocks.1.conv": torch.tensor([True, False, True, False, False, True]),
        "blocks.2.conv": torch.zeros(6, dtype=torch.bool),
    }


def test_evaluation_package_keeps_every_public_name():
    assert sorted(monai_tgd.evaluation.__all__) == sorted(EVALUATION_NAMES)
    for name in EVALUATION_NAMES:
        assert getattr(monai_tgd.evaluation, name) is not None


# ---------------------------------------------------------------------------------------------------------------------
# TGD: one install per network


def test_second_install_raises_until_the_first_is_removed():
    net = dncnn()
    first = TGD(net, retrain_pattern())
    with pytest.raises(ValueError, match=r"DnCNN already carries a TGD; call remove\(\)"):
        TGD(net, retrain_pattern(), mode="parameter")
    with pytest.raises(ValueError, match="already carries a TGD"):  # the same network behind a wrapper
        TGD(nn.DataParallel(net), retrain_pattern())
    first.remove()
    with TGD(net, retrain_pattern()):  # removed: a plain network again
        pass
    TGD(net, retrain_pattern()).remove()  # and the with block removed its TGD too
    TGD(dncnn(), retrain_pattern()).remove()  # another network is independent


def test_failed_install_leaves_the_network_free():
    net = dncnn()
    with pytest.raises(ValueError, match="no mask for hidden conv"):
        TGD(net, {"blocks.0.conv": torch.ones(6, dtype=torch.bool)})
    TGD(net, retrain_pattern()).remove()


# ---------------------------------------------------------------------------------------------------------------------
# one trace per install


@pytest.fixture
def traces(monkeypatch):
    """Every run of the channel trace (``conv_chain``'s forward pass through the network), counted."""
    import monai_tgd.tgd.chain as chain_module

    calls = []
    trace = chain_module.trace_channels

    def counting(*args, **kwargs):
        calls.append(args[0])
        return trace(*args, **kwargs)

    monkeypatch.setattr(chain_module, "trace_channels", counting)
    return calls


@pytest.mark.parametrize("masks", [None, "given"])
def test_handler_install_traces_the_network_once(traces, masks):
    net = dncnn()
    handler = TGDHandler(threshold=0.5, masks=retrain_pattern() if masks else None)
    handler.install(SimpleNamespace(network=net, state=SimpleNamespace(iteration=1)))  # the first ITERATION_STARTED
    assert len(traces) == 1
    assert handler.tgd is not None and handler.tgd.chain.hidden[0].conv is net.blocks[0].conv
    handler.remove()


def test_chain_argument_reuses_one_trace(traces):
    net = dncnn()
    chain = conv_chain(net)
    masks = kse_masks(net, 0.5, chain=chain)
    summary = mask_summary(net, masks, chain=chain)
    rows = frozen_rows(net, masks, chain=chain)
    TGD(net, masks, chain=chain).remove()
    assert len(traces) == 1
    again = kse_masks(net, 0.5)
    assert masks.keys() == again.keys() and all(torch.equal(masks[k], m) for k, m in again.items())
    assert summary == mask_summary(net, masks) and rows.keys() == frozen_rows(net, masks).keys()


def test_chain_of_another_network_is_refused():
    net, other = dncnn(), dncnn()
    with pytest.raises(ValueError, match="chain holds modules that are not in the given DnCNN"):
        TGD(net, retrain_pattern(), chain=conv_chain(other))
    with pytest.raises(ValueError, match="not in the given DnCNN"):
        kse_masks(net, 0.3, chain=conv_chain(other))
    with pytest.raises(TypeError, match="chain must be a ConvChain"):
        mask_summary(net, retrain_pattern(), chain={})


# ---------------------------------------------------------------------------------------------------------------------
# frozen rows: one rule, which TGD enforces


def expected_frozen_rows(freeze_output=True, bn_stats="freeze"):
    """Written out by hand for :func:`dncnn` and :func:`retrain_pattern`: blocks.0 retrains everything (nothing frozen),
    blocks.1 freezes rows 1, 3, 4 of its conv and BN, blocks.2 freezes every row, blocks.3 is the output conv."""
    part = torch.tensor([False, True, False, True, True, False])
    every = torch.ones(6, dtype=torch.bool)
    rows = {"blocks.1.conv.weight": part, "blocks.1.norm.weight": part, "blocks.1.norm.bias": part}
    if bn_stats == "freeze":
        rows |= {"blocks.1.norm.running_mean": part, "blocks.1.norm.running_var": part}
    rows |= {"blocks.2.conv.weight": every, "blocks.2.norm.weight": every, "blocks.2.norm.bias": every}
    if bn_stats == "freeze":
        rows |= {"blocks.2.norm.running_mean": every, "blocks.2.norm.running_var": every}
    if freeze_output:
        one = torch.ones(1, dtype=torch.bool)
        rows |= {"blocks.3.conv.weight": one, "blocks.3.conv.bias": one}
    return rows


@pytest.mark.parametrize("freeze_output", [True, False])
@pytest.mark.parametrize("bn_stats", ["freeze", "update"])
def test_frozen_rows_of_dncnn(freeze_output, bn_stats):
    net = dncnn()
    rows = frozen_rows(net, retrain_pattern(), freeze_output=freeze_output, bn_stats=bn_stats)
    expected = expected_frozen_rows(freeze_output, bn_stats)
    assert sorted(rows) == sorted(expected)
    for name, frozen in rows.items():
        assert frozen.dtype == torch.bool and frozen.device.type == "cpu" and torch.equal(frozen, expected[name]), name


@pytest.mark.parametrize("mode", ["activation", "parameter"])
@pytest.mark.parametrize("bn_stats", ["freeze", "update"])
def test_tgd_keeps_exactly_the_frozen_rows(mode, bn_stats):
    net = dncnn()
    masks = retrain_pattern()
    rows = frozen_rows(net, masks, bn_stats=bn_stats)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)  # decay would move unmasked rows too
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 3, 10, 10, generator=g), torch.rand(4, 1, 10, 10, generator=g)
    with TGD(net, masks, mode=mode, bn_stats=bn_stats):
        for _ in range(3):
            opt.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            opt.step()
    for name, value in net.state_dict().items():
        if value.dim() == 0:
            continue
        frozen = rows.get(name, torch.zeros(value.shape[0], dtype=torch.bool))
        assert torch.equal(value[frozen], before[name][frozen]), f"frozen rows of {name} moved"
        free = ~frozen
        if free.any():  # every other row trains (running stats follow the data)
            assert not torch.equal(value[free], before[name][free]), f"rows of {name} that TGD does not freeze stayed"


def test_frozen_rows_checks_its_arguments():
    net = dncnn()
    with pytest.raises(TypeError, match="freeze_output must be a bool"):
        frozen_rows(net, retrain_pattern(), freeze_output="yes")
    with pytest.raises(ValueError, match="bn_stats must be one of"):
        frozen_rows(net, retrain_pattern(), bn_stats="frozen")
    with pytest.raises(ValueError, match="mask of 'blocks.1.conv' must be a bool tensor"):
        frozen_rows(net, {**retrain_pattern(), "blocks.1.conv": torch.ones(6)})


# ---------------------------------------------------------------------------------------------------------------------
# the KSE sweep's pruning and its random control


def conv_parameter_count(net):
    return sum(p.numel() for m in net.modules() if isinstance(m, nn.Conv2d) for p in m.parameters())


@pytest.mark.parametrize("threshold", [0.3, 0.6])
def test_drop_redundant_against_kse_scores(threshold):
    net = dncnn(seed=3)
    expected = {k: v.clone() for k, v in net.state_dict().items()}
    dropped = 0
    for consumer in ("blocks.1.conv", "blocks.2.conv", "blocks.3.conv"):  # the convs fed by the hidden convs
        weight = expected[f"{consumer}.weight"]
        flagged = kse_scores(weight) < threshold
        weight[:, flagged] = 0
        dropped += weight.shape[0] * int(flagged.sum()) * 9
    assert dropped > 0
    pruned, fraction = drop_redundant(net, threshold)
    for name, value in pruned.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert fraction == dropped / conv_parameter_count(net)
    assert torch.equal(net.blocks[1].conv.weight, dncnn(seed=3).blocks[1].conv.weight)  # the original is untouched


def test_zero_random_kernels_against_the_rng():
    net = dncnn(seed=4)
    counts = {"blocks.0.conv": 2, "blocks.1.conv": 0, "blocks.2.conv": 5, "not.a.conv": 9}  # unknown names ignored
    rng = np.random.default_rng(7)
    expected = {k: v.clone() for k, v in net.state_dict().items()}
    dropped = 0
    for hidden, consumer in zip(HIDDEN, ("blocks.1.conv", "blocks.2.conv", "blocks.3.conv")):
        channels = rng.choice(6, size=counts[hidden], replace=False)  # one draw per hidden conv, in order
        expected[f"{consumer}.weight"][:, torch.as_tensor(channels, dtype=torch.long)] = 0
        dropped += expected[f"{consumer}.weight"].shape[0] * len(channels) * 9
    pruned, fraction = zero_random_kernels(net, counts, np.random.default_rng(7))
    for name, value in pruned.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert fraction == dropped / conv_parameter_count(net)
    with pytest.raises(ValueError, match="7 channels requested for 'blocks.1.conv' with 6"):
        zero_random_kernels(net, {"blocks.0.conv": 7}, np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------------------------------
# TGDHandler: every argument checked at construction; state always carries the masks


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(threshold=1.5), ValueError, r"threshold must be in \[0, 1\]"),
        (dict(threshold=math.nan), ValueError, r"threshold must be in \[0, 1\]"),
        (dict(threshold="0.3"), ValueError, r"threshold must be in \[0, 1\]"),
        (dict(mode="activations"), ValueError, "mode must be one of"),
        (dict(bn_stats="frozen"), ValueError, "bn_stats must be one of"),
        (dict(freeze_output="yes"), TypeError, "freeze_output must be a bool"),
        (dict(alpha=-0.5), ValueError, "alpha must be a finite number >= 0"),
        (dict(alpha=math.inf), ValueError, "alpha must be a finite number >= 0"),
        (dict(alpha=math.nan), ValueError, "alpha must be a finite number >= 0"),
        (dict(k=0), ValueError, "k must be a positive int"),
        (dict(k=2.5), ValueError, "k must be a positive int"),
        (dict(k=True), ValueError, "k must be a positive int"),
        (dict(masks=[True, False]), ValueError, "masks must hold a dict of conv name -> bool tensor"),
        (dict(masks={"blocks.0.conv": torch.ones(6)}), ValueError, "masks must hold a dict of conv name -> bool"),
        (dict(masks={"blocks.0.conv": [True]}), ValueError, "masks must hold a dict of conv name -> bool"),
        (dict(output_dir=3), TypeError, "output_dir must be a path or None"),
        (dict(network="net"), TypeError, "network must be an nn.Module or None"),
        (dict(name=5), TypeError, "name must be a str or None"),
    ],
)
def test_handler_rejects_bad_arguments_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        TGDHandler(**kwargs)


def test_handler_accepts_good_arguments(tmp_path):
    net = dncnn()
    torch.save(retrain_pattern(), tmp_path / "m.pt")
    handler = TGDHandler(threshold=np.float32(0.5), mode="parameter", bn_stats="update", freeze_output=False, alpha=0,
                         k=np.int64(3), masks=tmp_path / "m.pt", output_dir=str(tmp_path), network=net, name="tgd")
    handler.install(SimpleNamespace(network=net, state=SimpleNamespace(iteration=1)))
    handler.remove()
    written = json.loads((tmp_path / "tgd_masks.json").read_text())  # numpy settings are written as numbers
    assert (written["threshold"], written["alpha"], written["k"], written["mode"]) == (0.5, 0, 3, "parameter")
    with pytest.raises(FileNotFoundError, match="masks file .*missing.pt not found"):
        TGDHandler(masks=tmp_path / "missing.pt")


def test_handler_state_always_carries_the_masks(tmp_path):
    fresh = TGDHandler()
    assert fresh.state_dict() == {"masks": None, "chosen": None}  # a checkpoint saved before the first iteration
    torch.save(fresh.state_dict(), tmp_path / "early.pt")
    early = torch.load(tmp_path / "early.pt", weights_only=True)
    given = TGDHandler(masks=retrain_pattern())
    given.load_state_dict(early)  # no masks yet in the checkpoint: keep the given ones
    assert given.masks.keys() == retrain_pattern().keys()
    fresh.load_state_dict(early)
    assert fresh.masks is None
    fresh.load_state_dict(given.state_dict())
    assert all(torch.equal(fresh.masks[k], m) for k, m in retrain_pattern().items())


@pytest.mark.parametrize(
    "state, match",
    [
        ({}, r"expected \{'masks': .*got \[\]"),
        ({"tgd_masks": {}}, r"expected \{'masks'"),
        ([1], r"expected \{'masks'"),
        ({"masks": [True]}, "'masks' must hold a dict of conv name -> bool tensor"),
        ({"masks": {"blocks.0.conv": torch.ones(6)}}, "'masks' must hold a dict of conv name -> bool tensor"),
    ],
)
def test_handler_load_state_dict_refuses_a_state_without_masks(state, match):
    handler = TGDHandler()
    with pytest.raises(ValueError, match=match):
        handler.load_state_dict(state)
    assert handler.masks is None
