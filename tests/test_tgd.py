import math

import pytest
import torch
from torch import nn
from torch.optim.optimizer import _global_optimizer_post_hooks

from monai_tgd.kse import kse_scores
from monai_tgd.networks import DnCNN
from monai_tgd.tgd import (
    TGD,
    conv_chain,
    drop_redundant,
    frozen_rows,
    kse_masks,
    mask_summary,
)

from .conftest import (
    OUTPUT_CONV,
    assert_frozen_elements_kept,
    assert_frozen_rows_kept,
    tgd_frozen_elements,
    tgd_frozen_rows,
)

HIDDEN = [f"blocks.{i}.conv" for i in range(3)]


def small_net(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    net = DnCNN(features=8, num_layers=4).to(dtype)
    with torch.no_grad():  # near-dead input channels, as a long pretraining leaves them
        for i in range(1, 4):
            net.blocks[i].conv.weight[:, ::2] *= 0.05
    return net


def batch(seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 3, 12, 12, generator=g, dtype=dtype)
    return x, x[:, 1:2] * 0.5 + 0.1


def loss_of(net, seed, dtype=torch.float32):
    x, y = batch(seed, dtype)
    return nn.functional.mse_loss(net(x), y)


def half_masks(net):
    return {h.name: torch.arange(h.conv.out_channels) % 2 == 0 for h in conv_chain(net).hidden}


def rows_of(net, masks):
    """(tensor name, frozen rows) of every masked parameter: hidden convs, their BNs, and the output conv."""
    chain = conv_chain(net)
    out = []
    for h in chain.hidden:
        for prefix in (h.name, h.norm_name):
            for pname in ("weight", "bias"):
                if prefix and f"{prefix}.{pname}" in dict(net.named_parameters()):
                    out.append((f"{prefix}.{pname}", ~masks[h.name]))
    for name, conv in chain.outputs:
        for pname, _ in conv.named_parameters():
            out.append((f"{name}.{pname}", torch.ones(conv.out_channels, dtype=torch.bool)))
    return out


def test_conv_chain_of_dncnn():
    chain = conv_chain(DnCNN(num_layers=5, features=4))
    assert [h.name for h in chain.hidden] == [f"blocks.{i}.conv" for i in range(4)]
    assert [h.norm_name for h in chain.hidden] == [None, "blocks.1.norm", "blocks.2.norm", "blocks.3.norm"]
    assert [h.consumer_name for h in chain.hidden] == [f"blocks.{i}.conv" for i in range(1, 5)]
    assert [name for name, _ in chain.outputs] == ["blocks.4.conv"]


def test_conv_chain_of_sequential_with_dropout_and_functional_relu():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout2d(0.1), nn.Conv2d(4, 2, 3))
    chain = conv_chain(net)
    assert [(h.name, h.norm_name, h.consumer_name) for h in chain.hidden] == [("0", "1", "4")]
    assert [n for n, _ in chain.outputs] == ["4"]


class ChannelShuffle(nn.Module):
    """A channel permutation between two convs (``x[:, perm]``): channel c of conv1 is not channel c of conv2's input."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 1, 3)

    def forward(self, x):
        y = self.conv1(x)
        return self.conv2(y[:, torch.tensor([1, 0, 3, 2])])


class LayerNormed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.norm, self.conv2 = nn.Conv2d(1, 4, 3), nn.LayerNorm([30, 30]), nn.Conv2d(4, 1, 3)

    def forward(self, x):
        return self.conv2(self.norm(self.conv1(x)))


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else x


@pytest.mark.parametrize(
    "net, match",
    [
        # residual additions and GroupNorm, refused before issue 12, are followed now (tests/test_tgd_monai_nets.py)
        (ChannelShuffle(), r"cannot resolve the consumer of conv 'conv1': its output goes through '__getitem__' in "
                           r"the network's forward\(\), .* reaches conv 'conv2'"),
        (LayerNormed(), r"cannot follow LayerNorm 'norm' \(call_module\): it normalises over the last dims \(30, 30\)"),
        (Branchy(), r"cannot follow data-dependent control flow: '__bool__' of a tensor computed from the input"),
    ],
)
def test_unsupported_topologies_name_the_conv(net, match):
    with pytest.raises(ValueError, match=match):
        kse_masks(net, 0.3)


def test_kse_masks_follow_fig2():
    net = small_net()
    masks = kse_masks(net, 0.3)
    assert list(masks) == HIDDEN  # the output conv gets no mask
    for i, name in enumerate(HIDDEN):
        expected = kse_scores(net.blocks[i + 1].conv.weight) < 0.3  # conv i's mask from conv i+1's input channels
        assert masks[name].dtype == torch.bool and torch.equal(masks[name], expected)
    assert all(m[::2].all() and not m[1::2].any() for m in masks.values())  # exactly the near-dead channels
    assert not any(m.any() for m in kse_masks(net, 0.0).values())


@pytest.mark.parametrize("threshold", [-0.1, 1.5, math.nan])
def test_kse_masks_threshold_errors(threshold):
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        kse_masks(small_net(), threshold)


def test_kse_masks_nan_weights_name_the_conv():
    net = small_net()
    with torch.no_grad():
        net.blocks[2].conv.weight[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="conv 'blocks.2.conv': .*NaN"):
        kse_masks(net, 0.3)


def test_mask_summary():
    net = small_net()
    summary = mask_summary(net, half_masks(net))
    assert all(summary[name] == 0.5 for name in HIDDEN) and summary["overall"] == 0.5


def masked_by_detach(net, masks, x):
    """Eq. 4 written independently: frozen channels of each hidden conv and BN output are cut from the graph."""

    def cut(y, mask):
        return torch.where(mask.view(1, -1, 1, 1), y, y.detach())

    h = x
    for i, block in enumerate(net.blocks):
        h = block.conv(h)
        name = f"blocks.{i}.conv"
        if name in masks:
            h = cut(h, masks[name])
            if hasattr(block, "norm"):
                h = cut(block.norm(h), masks[name])
            h = block.act(h)
    return x[:, 1:2] - h


def grads(net):
    return {n: p.grad.clone() for n, p in net.named_parameters()}


def test_activation_mode_backward_equals_independent_computation():
    net = small_net(dtype=torch.float64)
    masks = half_masks(net)
    x, y = batch(1, torch.float64)
    nn.functional.mse_loss(masked_by_detach(net, masks, x), y).backward()
    expected = grads(net)
    net.zero_grad()
    with TGD(net, masks, mode="activation", freeze_output=False):
        nn.functional.mse_loss(net(x), y).backward()
    got = grads(net)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-12, atol=1e-15, msg=name)
    assert got["blocks.0.conv.weight"][0].abs().sum() > 0  # retrained rows do get gradient


def test_parameter_mode_masks_only_parameter_gradients():
    net = small_net(dtype=torch.float64)
    masks = half_masks(net)
    loss_of(net, 1, torch.float64).backward()
    plain = grads(net)
    net.zero_grad()
    with TGD(net, masks, mode="parameter", freeze_output=True):
        loss_of(net, 1, torch.float64).backward()
    got = grads(net)
    frozen = dict(rows_of(net, masks))
    for name, g in plain.items():
        keep = ~frozen[name].view(-1, *([1] * (g.dim() - 1)))
        assert torch.equal(got[name], g * keep), name


def with_optimizer_state(net):
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for s in range(3):  # plain steps first: momentum a TGD run resumes with must not move frozen rows
        opt.zero_grad()
        loss_of(net, 100 + s).backward()
        opt.step()
    return opt


OPTIMIZERS = {
    "sgd_momentum_decay": lambda net: torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2),
    "adam": lambda net: torch.optim.Adam(net.parameters(), lr=1e-2),
    "adamw_decay": lambda net: torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.5),
    "rmsprop": lambda net: torch.optim.RMSprop(net.parameters(), lr=1e-3, momentum=0.5),
    "adam_resumed_state": with_optimizer_state,
}


def snapshot(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("mode", ["activation", "parameter"])
@pytest.mark.parametrize("make_optimizer", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_frozen_rows_bit_identical_retrained_rows_change(mode, make_optimizer):
    """The TGD guarantee holds after EVERY optimizer step, not only once ``remove()`` has copied the frozen rows back:
    an intermediate checkpoint or a validation during training sees the network as it is between steps.

    After each backward, the frozen rows' parameter gradients are exactly zero; after each ``opt.step()``, the frozen
    rows of the hidden convs and their BNs (weights, biases and, ``bn_stats="freeze"`` being the default, running
    mean/var) and the whole output conv equal their values at install, bit for bit, whatever the optimizer does with
    weight decay, momentum or a resumed state. Before ``remove()``, every retrained row of every masked tensor moved.
    """
    net = small_net()
    opt = make_optimizer(net)
    masks = kse_masks(net, 0.3)
    before = snapshot(net)
    frozen_params = {k: f for k, f in tgd_frozen_rows(before, masks).items() if k in dict(net.named_parameters())}
    output_params = [p for n, p in net.named_parameters() if n.startswith(f"{OUTPUT_CONV}.")]
    with TGD(net, masks, mode=mode):
        for step in range(6):
            opt.zero_grad()
            loss_of(net, step).backward()
            params = dict(net.named_parameters())
            for name, frozen in frozen_params.items():
                assert not params[name].grad[frozen].any(), f"step {step}: frozen rows of {name} got a gradient"
            assert all(not p.grad.any() for p in output_params), f"step {step}: the output conv got a gradient"
            opt.step()
            assert_frozen_rows_kept(before, net.state_dict(), masks, where=f"{mode}, after step {step}")
        after = net.state_dict()
        for name, frozen in tgd_frozen_rows(before, masks).items():
            retrain = ~frozen
            moved = (after[name][retrain] != before[name][retrain]).reshape(int(retrain.sum()), -1).any(dim=1)
            assert moved.all(), f"retrained rows {retrain.nonzero().flatten()[~moved].tolist()} of {name} did not move"


@pytest.mark.parametrize("bn_stats, frozen_stats_equal", [("update", False), ("freeze", True)])
def test_bn_running_statistics(bn_stats, frozen_stats_equal):
    """BN running mean/var of frozen channels stay at their install values after every step with
    ``bn_stats="freeze"`` and follow the data with ``"update"``; retrained channels' statistics always update."""
    net = small_net()
    masks = half_masks(net)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    before = snapshot(net)
    with TGD(net, masks, bn_stats=bn_stats):
        for step in range(3):
            opt.zero_grad()
            loss_of(net, step).backward()
            opt.step()
            for i in (1, 2):  # checked after each step, before remove() restores anything
                for stat in ("running_mean", "running_var"):
                    key, frozen = f"blocks.{i}.norm.{stat}", ~masks[f"blocks.{i}.conv"]
                    now = net.state_dict()[key]
                    assert torch.equal(now[frozen], before[key][frozen]) == frozen_stats_equal, (key, step)
                    assert not torch.equal(now[~frozen], before[key][~frozen]), (key, step)


def test_state_dict_keys_unchanged_and_remove_restores_plain_training():
    net = small_net()
    keys = list(net.state_dict())
    hooks = len(_global_optimizer_post_hooks)
    tgd = TGD(net, half_masks(net))
    assert list(net.state_dict()) == keys
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss_of(net, 0).backward()
    opt.step()
    tgd.remove()
    assert len(_global_optimizer_post_hooks) == hooks
    assert all(not m._forward_hooks for m in net.modules())
    assert all(not p._backward_hooks for p in net.parameters())
    plain = DnCNN(features=8, num_layers=4)
    plain.load_state_dict(net.state_dict())  # a TGD-fine-tuned checkpoint is a plain DnCNN checkpoint
    before = net.blocks[0].conv.weight.clone()
    opt.zero_grad()
    loss_of(net, 1).backward()
    opt.step()
    assert not torch.equal(net.blocks[0].conv.weight[1::2], before[1::2])  # frozen rows train again


def test_tgd_twice():
    """TGD^2: a second TGD with masks from the fine-tuned weights keeps ITS frozen rows (values at the second
    install) after every step."""
    net = small_net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for threshold in (0.3, 0.4):  # TGD^2: new masks from the fine-tuned weights
        masks = kse_masks(net, threshold)
        before = snapshot(net)
        with TGD(net, masks):
            for step in range(3):
                opt.zero_grad()
                loss_of(net, step).backward()
                opt.step()
                assert_frozen_rows_kept(before, net.state_dict(), masks, where=f"threshold {threshold}, step {step}")


def test_freeze_output_false_trains_output_conv():
    net = small_net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    before = net.blocks[3].conv.weight.clone()
    with TGD(net, half_masks(net), freeze_output=False):
        loss_of(net, 0).backward()
        opt.step()
    assert not torch.equal(net.blocks[3].conv.weight, before)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m.update({"blocks.9.conv": torch.ones(8, dtype=torch.bool)}), "'blocks.9.conv', which is not a hidden"),
        (lambda m: m.update({"blocks.3.conv": torch.ones(1, dtype=torch.bool)}), "'blocks.3.conv', which is not a hidden"),
        (lambda m: m.update({"blocks.1.conv": torch.ones(7, dtype=torch.bool)}), r"mask of 'blocks.1.conv' must be .*\(8,\)"),
        (lambda m: m.update({"blocks.1.conv": torch.ones(8)}), r"mask of 'blocks.1.conv' must be a bool"),
        (lambda m: m.pop("blocks.2.conv"), "no mask for hidden conv 'blocks.2.conv'"),
    ],
)
def test_mismatched_masks(edit, match):
    net = small_net()
    masks = half_masks(net)
    edit(masks)
    with pytest.raises(ValueError, match=match):
        TGD(net, masks)


@pytest.mark.parametrize("kwargs, match", [({"mode": "layer"}, "mode must be one of"), ({"bn_stats": "x"}, "bn_stats")])
def test_bad_options(kwargs, match):
    net = small_net()
    with pytest.raises(ValueError, match=match):
        TGD(net, half_masks(net), **kwargs)


def test_drop_redundant_removes_feature_maps_exactly():
    net = small_net().eval()
    pruned, fraction = drop_redundant(net, 0.3)
    masks = kse_masks(net, 0.3)
    # independent: zero the redundant feature maps at the consumers' inputs of the original network
    handles = [
        net.blocks[i + 1].conv.register_forward_pre_hook(
            lambda m, inp, keep=~masks[name]: (inp[0] * keep.view(1, -1, 1, 1),)
        )
        for i, name in enumerate(HIDDEN)
    ]
    x, _ = batch(3)
    with torch.no_grad():
        expected = net(x)
        for h in handles:
            h.remove()
        torch.testing.assert_close(pruned.eval()(x), expected)
        assert not torch.equal(net(x), expected)  # the original is untouched
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    total = sum(p.numel() for c in convs for p in c.parameters())
    dropped = sum(int(masks[n].sum()) * net.blocks[i + 1].conv.weight[:, 0].numel() for i, n in enumerate(HIDDEN))
    assert fraction == dropped / total > 0
    same, zero = drop_redundant(net, 0.0)
    assert zero == 0.0 and all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), net.state_dict().values()))


def test_only_optimizers_of_the_network_restore_frozen_rows():
    net = small_net()
    masks = half_masks(net)
    other = nn.Linear(2, 2)
    other_opt, opt = torch.optim.SGD(other.parameters(), lr=0.1), torch.optim.SGD(net.parameters(), lr=0.1)
    with TGD(net, masks):
        original = net.blocks[0].conv.weight[1].clone()
        with torch.no_grad():
            net.blocks[0].conv.weight[1] += 1  # row 1 is frozen
        other(torch.ones(1, 2)).sum().backward()
        other_opt.step()
        assert torch.equal(net.blocks[0].conv.weight[1], original + 1)
        loss_of(net, 0).backward()
        opt.step()
        assert torch.equal(net.blocks[0].conv.weight[1], original)


# ---------------------------------------------------------------------------------------------------------------------
# readers: the kernels that read retrained maps


READER_OPTIMIZERS = {k: OPTIMIZERS[k] for k in ("sgd_momentum_decay", "adam", "adamw_decay")}
LAST_HIDDEN = HIDDEN[-1]  # feeds the output conv


def test_readers_none_is_the_paper_rule():
    """``readers="none"`` (and the default) freezes exactly the rows of the hidden convs and BNs and the whole output
    conv, as 1-D row masks: the rule before readers existed, listed independently from DnCNN's naming."""
    net = small_net()
    masks = kse_masks(net, 0.3)
    base = snapshot(net)
    expected = {**tgd_frozen_rows(base, masks), f"{OUTPUT_CONV}.weight": torch.ones(1, dtype=torch.bool),
                f"{OUTPUT_CONV}.bias": torch.ones(1, dtype=torch.bool)}  # fmt: skip
    for rows in (frozen_rows(net, masks), frozen_rows(net, masks, readers="none")):
        assert sorted(rows) == sorted(expected)
        for key, frozen in rows.items():
            assert frozen.dim() == 1 and torch.equal(frozen, expected[key]), key


@pytest.mark.parametrize("readers", ["output", "all"])
def test_frozen_rows_with_readers_match_independent_listing(readers):
    """The reader kernels unfrozen by ``frozen_rows`` are those listed from DnCNN's naming; weights with reader
    columns come as ``(out_channels, in_channels)`` masks, everything else stays 1-D."""
    net = small_net()
    masks = kse_masks(net, 0.3)
    base = snapshot(net)
    expected = tgd_frozen_elements(base, masks, readers)
    rows = frozen_rows(net, masks, readers=readers)
    assert sorted(rows) == sorted(expected)
    two_d = {OUTPUT_CONV + ".weight"} | ({f"{n}.weight" for n in HIDDEN[1:]} if readers == "all" else set())
    for key, frozen in rows.items():
        assert frozen.dim() == (2 if key in two_d else 1), key
        full = frozen.view(*frozen.shape, *([1] * (base[key].dim() - frozen.dim()))).expand_as(base[key])
        assert torch.equal(full, expected[key]), key


def run_readers(net, masks, mode, readers, make_optimizer, steps=5):
    """Train under TGD, checking after every backward that frozen elements have exactly zero gradient and after every
    step that they are bit-identical (both from the independent listing); returns the weights at install."""
    opt = make_optimizer(net)
    before = snapshot(net)
    frozen = tgd_frozen_elements(before, masks, readers)
    params = dict(net.named_parameters())
    with TGD(net, masks, mode=mode, readers=readers):
        for step in range(steps):
            opt.zero_grad()
            loss_of(net, step).backward()
            for key, f in frozen.items():
                if key in params:
                    assert not params[key].grad[f].any(), f"step {step}: frozen elements of {key} got a gradient"
            opt.step()
            assert_frozen_elements_kept(before, net.state_dict(), masks, readers, where=f"{mode} {readers} step {step}")
    return before


def kernels_moved(now, then):
    """Per kernel ``[m, c]`` of a conv weight: did any of its elements change."""
    return (now != then).flatten(2).any(dim=2)


@pytest.mark.parametrize("mode", ["activation", "parameter"])
@pytest.mark.parametrize("make_optimizer", READER_OPTIMIZERS.values(), ids=READER_OPTIMIZERS.keys())
def test_readers_output_trains_only_the_output_columns_of_retrained_maps(mode, make_optimizer):
    net = small_net()
    masks = kse_masks(net, 0.3)
    retrained = masks[LAST_HIDDEN]
    assert retrained.any() and not retrained.all()
    before = run_readers(net, masks, mode, "output", make_optimizer)
    after = net.state_dict()
    w_now, w_then = after[f"{OUTPUT_CONV}.weight"], before[f"{OUTPUT_CONV}.weight"]
    moved = kernels_moved(w_now, w_then)
    assert moved[:, retrained].all(), f"reader columns {retrained.nonzero().flatten().tolist()} did not all move"
    assert torch.equal(w_now[:, ~retrained], w_then[:, ~retrained]), "other output columns moved"
    assert torch.equal(after[f"{OUTPUT_CONV}.bias"], before[f"{OUTPUT_CONV}.bias"]), "output bias moved"
    for name in HIDDEN[1:]:  # hidden consumers keep whole frozen rows with "output"
        frozen = ~masks[name]
        assert torch.equal(after[f"{name}.weight"][frozen], before[f"{name}.weight"][frozen]), name


@pytest.mark.parametrize("make_optimizer", READER_OPTIMIZERS.values(), ids=READER_OPTIMIZERS.keys())
def test_readers_all_trains_reader_kernels_in_frozen_rows(make_optimizer):
    net = small_net()
    masks = kse_masks(net, 0.3)
    before = run_readers(net, masks, "parameter", "all", make_optimizer)
    after = net.state_dict()
    for i in range(1, 4):  # every conv fed by a hidden conv
        name, fed_by = f"blocks.{i}.conv", f"blocks.{i - 1}.conv"
        maps = masks[fed_by]
        rows = ~masks[name] if name in masks else torch.ones(after[f"{name}.weight"].shape[0], dtype=torch.bool)
        assert rows.any() and maps.any()
        now, then = after[f"{name}.weight"][rows], before[f"{name}.weight"][rows]
        assert kernels_moved(now[:, maps], then[:, maps]).all(), f"reader kernels of frozen rows of {name} stayed"
        assert torch.equal(now[:, ~maps], then[:, ~maps]), f"other kernels of frozen rows of {name} moved"


def test_readers_errors():
    net = small_net()
    masks = half_masks(net)
    with pytest.raises(ValueError, match=r"readers='all' needs mode='parameter', got mode='activation'"):
        TGD(net, masks, mode="activation", readers="all")
    with pytest.raises(ValueError, match=r"readers must be one of \('none', 'output', 'all'\), got 'outputs'"):
        TGD(net, masks, readers="outputs")
    with pytest.raises(ValueError, match="readers must be one of"):
        frozen_rows(net, masks, readers=None)
    with pytest.raises(ValueError, match="readers must be one of"):
        mask_summary(net, masks, readers="some")
    # nothing installed by the refused calls: a TGD goes on, and the network trains plainly after its removal
    assert all(not m._forward_hooks for m in net.modules()) and all(not p._backward_hooks for p in net.parameters())
    TGD(net, masks, mode="parameter", readers="all").remove()


def test_mask_summary_counts_reader_kernels():
    net = small_net()
    masks = half_masks(net)  # 4 of 8 channels per hidden conv
    hidden = sum(p.numel() for i in range(3) for p in net.blocks[i].parameters())  # convs and their BNs
    out = sum(p.numel() for p in net.blocks[3].conv.parameters())
    half = mask_summary(net, masks)["overall"]
    assert half == 0.5
    assert mask_summary(net, masks, readers="output")["overall"] == (0.5 * hidden + 4 * 9) / (hidden + out)
    # "all": also the 4 frozen rows x 4 reader columns x 9 of blocks.1 and blocks.2
    assert mask_summary(net, masks, readers="all")["overall"] == (0.5 * hidden + 4 * 9 + 2 * 4 * 4 * 9) / (hidden + out)


def output_change(readers, steps=8):
    net = small_net()
    masks = kse_masks(net, 0.3)
    x, _ = batch(50)
    with torch.no_grad():
        start = net.eval()(x)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    with TGD(net, masks, mode="parameter", readers=readers):
        for step in range(steps):
            opt.zero_grad()
            loss_of(net, step).backward()
            opt.step()
    with torch.no_grad():
        return float((net.eval()(x) - start).pow(2).mean().sqrt())


def test_readers_output_lets_retrained_maps_reach_the_output():
    """From the same start and data, a few steps move the output on a fixed input several times more when the output
    conv's reader columns of the retrained maps train (their kernels start near zero, as in the measured problem)."""
    none, output = output_change("none"), output_change("output")
    assert output > 2 * none > 0, (none, output)
