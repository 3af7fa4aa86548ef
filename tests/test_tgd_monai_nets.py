"""Issue 12: TGD on the networks MONAI users train (BasicUNet, UNet, SegResNet, DynUNet; 2D and 3D), and the channel
dependency analysis behind it (:func:`monai_tgd.tgd.conv_chain`) checked against small nets written out by hand."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from monai.networks.nets import BasicUNet, DynUNet, SegResNet, UNet
from torch import nn

from monai_tgd.handlers import TGDHandler
from monai_tgd.kse import kse_scores
from monai_tgd.tgd import TGD, conv_chain, frozen_rows, kse_masks, mask_summary, zero_readers

# ---------------------------------------------------------------------------------------------------------------------
# the dependency analysis on hand-built nets


class Concat(nn.Module):
    """a (2 maps) and b (3 maps) concatenated for c; d reads b alone after a max-pool and an upsampling."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(1, 3, 3, padding=1)
        self.c, self.d = nn.Conv2d(5, 2, 3, padding=1), nn.Conv2d(3, 2, 1)
        self.bn = nn.BatchNorm2d(3)
        self.pool, self.up = nn.MaxPool2d(2), nn.Upsample(scale_factor=2)

    def forward(self, x):
        a, b = torch.relu(self.a(x)), self.bn(self.b(x))
        c = self.c(torch.cat([a, b], dim=1))
        d = self.d(self.up(self.pool(torch.relu(b))))
        return c + d


class Residual(nn.Module):
    """s = a + b (b reads a); c reads relu(bn(s)): a's and b's channel n are coupled."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 1, 3)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x):
        a = self.a(x)
        s = a + self.b(torch.relu(a))
        return self.c(torch.relu(self.bn(s)))


class UpCat3d(nn.Module):
    """3D: a skip from a concatenated with a ConvTranspose3d upsampling of a strided conv, sliced and split."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv3d(1, 2, 3, padding=1)
        self.down = nn.Conv3d(2, 3, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose3d(3, 2, 2, stride=2)
        self.c = nn.Conv3d(4, 1, 1)
        self.e = nn.Conv3d(1, 1, 1)

    def forward(self, x):
        a = torch.relu(self.a(x))
        u = self.up(torch.relu(self.down(a)))
        y = torch.cat([u, a], 1)  # u: channels 0-1, a: channels 2-3
        first, rest = torch.split(y, [1, 3], dim=1)
        return self.c(torch.cat([first, rest], 1)) + self.e(y[:, 3:4])


class GroupNormed(nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.a, self.gn, self.c = nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(groups, 4), nn.Conv2d(4, 1, 3)

    def forward(self, x):
        return self.c(torch.relu(self.gn(self.a(x))))


def test_concat_readers_have_the_channel_offsets():
    chain = conv_chain(Concat())
    assert [h.name for h in chain.hidden] == ["a", "b"] and [n for n, _ in chain.outputs] == ["c", "d"]
    assert chain.readers_of("a") == [{("c", 0)}, {("c", 1)}]
    assert chain.readers_of("b") == [{("c", 2), ("d", 0)}, {("c", 3), ("d", 1)}, {("c", 4), ("d", 2)}]
    assert all(len(chain.coupled(n, c)) == 1 for n, k in (("a", 2), ("b", 3)) for c in range(k))  # nothing coupled
    (bn,) = chain.channel_modules
    assert bn.name == "bn" and [chain.units[u] for u in bn.units] == [(("b", c),) for c in range(3)]
    assert chain.hidden[1].norm_name == "bn" and chain.hidden[1].consumer is None  # b has two readers


def test_residual_addends_are_coupled():
    chain = conv_chain(Residual())
    assert [h.name for h in chain.hidden] == ["a", "b"] and [n for n, _ in chain.outputs] == ["c"]
    assert chain.readers_of("a") == [{("b", 0), ("c", 0)}, {("b", 1), ("c", 1)}]
    assert chain.readers_of("b") == [{("c", 0)}, {("c", 1)}]
    assert chain.coupled("a", 0) == {("a", 0), ("b", 0)} and chain.coupled("b", 1) == {("a", 1), ("b", 1)}
    (bn,) = chain.channel_modules
    assert [set(chain.units[u]) for u in bn.units] == [{("a", 0), ("b", 0)}, {("a", 1), ("b", 1)}]


def test_transposed_conv_split_and_slice_in_3d():
    chain = conv_chain(UpCat3d())
    assert [h.name for h in chain.hidden] == ["a", "down", "up"] and [n for n, _ in chain.outputs] == ["c", "e"]
    assert chain.readers_of("a") == [{("down", 0), ("c", 2)}, {("down", 1), ("c", 3), ("e", 0)}]
    assert chain.readers_of("down") == [{("up", 0)}, {("up", 1)}, {("up", 2)}]
    assert chain.readers_of("up") == [{("c", 0)}, {("c", 1)}]


@pytest.mark.parametrize("groups, coupled", [(2, {("a", 0), ("a", 1)}), (4, {("a", 0)}), (1, {("a", c) for c in range(4)})])
def test_groupnorm_couples_the_channels_of_a_group(groups, coupled):
    """Channels normalised by one GroupNorm group share statistics, so they share one decision (groups == channels:
    per channel, nothing coupled)."""
    chain = conv_chain(GroupNormed(groups))
    assert chain.coupled("a", 0) == coupled
    assert chain.readers_of("a") == [{("c", c)} for c in range(4)]


def test_kse_rule_every_reader_of_every_coupled_channel_must_score_redundant():
    """Concat: b's channel n is read by c (input 2 + n) and d (input n); retrained only when both score below the
    threshold. Residual: a's and b's channel n are one unit, read by b (input n) and c (input n) twice."""
    torch.manual_seed(0)
    net = Concat()
    sc, sd = kse_scores(net.c.weight), kse_scores(net.d.weight)
    for phi in (0.2, 0.5, 0.8, 1.0):
        masks = kse_masks(net, phi)
        assert masks["a"].tolist() == [bool(sc[n] < phi) for n in range(2)]
        assert masks["b"].tolist() == [bool(sc[2 + n] < phi and sd[n] < phi) for n in range(3)]
    net = Residual()
    sb, sc = kse_scores(net.b.weight), kse_scores(net.c.weight)
    for phi in (0.5, 1.0):
        masks = kse_masks(net, phi)
        expected = [bool(sb[n] < phi and sc[n] < phi) for n in range(2)]
        assert masks["a"].tolist() == expected and masks["b"].tolist() == expected


def test_zero_readers_zeroes_the_concatenated_columns():
    net = Concat()
    before = copy.deepcopy(net.state_dict())
    zero_readers(net, {"b": torch.tensor([False, True, False])})
    assert not net.c.weight[:, 3].any() and not net.d.weight[:, 1].any()
    others = [j for j in range(5) if j != 3]
    assert torch.equal(net.c.weight[:, others], before["c.weight"][:, others])


# ---------------------------------------------------------------------------------------------------------------------
# refusals


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.head = nn.Conv2d(1, 2, 3), nn.Linear(2, 1)

    def forward(self, x):
        return self.head(self.a(x).mean((2, 3)))


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential()
        self.a, self.c = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 1, 3)
        self.shuffle = Shuffle()

    def forward(self, x):
        return self.c(self.shuffle(self.a(x)))


class Shuffle(nn.Module):
    def forward(self, x):
        return torch.roll(x, 1, dims=1)


class GroupedReader(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, groups=4)

    def forward(self, x):
        return self.c(self.a(x))


class NormAfterOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.c, self.bn = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 2, 3), nn.BatchNorm2d(2)

    def forward(self, x):
        return self.bn(self.c(torch.relu(self.a(x))))


@pytest.mark.parametrize(
    "net, match",
    [
        (Head(), r"cannot follow Linear 'head' \(call_module\): TGD masks only convolutions, channel-wise norms"),
        (Gate(), r"cannot resolve the consumer of conv 'a': its output goes through 'roll' in forward\(\) of 'shuffle', "
                 r"which TGD cannot follow channel by channel, and then reaches conv 'c'"),
        (GroupedReader(), r"conv 'a' feeds conv 'c', which must have groups=1 .*got groups=4"),
        (NormAfterOutput(), r"cannot follow BatchNorm2d 'bn' \(call_module\): it follows output conv 'c'"),
        (nn.Sequential(nn.Conv2d(1, 6, 3), nn.LayerNorm(30), nn.Conv2d(6, 1, 3)),
         r"cannot follow LayerNorm '1' \(call_module\): it normalises over the last dims \(30,\), not channel by channel"),
    ],
    ids=["linear", "channel_roll_in_a_submodule", "grouped_reader", "norm_after_output", "layernorm"],
)
def test_refusals_name_the_operation_and_the_module(net, match):
    for call in (lambda: conv_chain(net), lambda: kse_masks(net, 0.3), lambda: TGD(net, {})):
        with pytest.raises(ValueError, match=match):
            call()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())  # the trace left nothing


class Fixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Conv2d(1, 2, 3), nn.Conv2d(2, 1, 3)

    def forward(self, x):
        if x.shape[-1] != 7:
            raise RuntimeError("7x7 inputs only")
        return self.c(torch.relu(self.a(x)))


def test_a_net_that_does_not_run_on_the_default_input_asks_for_one():
    with pytest.raises(ValueError, match=r"cannot run Fixed on a zeros input .*7x7 inputs only.*"
                                         r"conv_chain\(network, example_input=x\)"):
        conv_chain(Fixed())
    net = Fixed()
    chain = conv_chain(net, example_input=torch.zeros(2, 1, 7, 7))
    assert [h.name for h in chain.hidden] == ["a"] and [n for n, _ in chain.outputs] == ["c"]
    masks = kse_masks(net, 1.0, chain=chain)
    TGD(net, masks, chain=chain).remove()


# ---------------------------------------------------------------------------------------------------------------------
# the TGD guarantee on MONAI's networks


def make(name: str, dims: int) -> nn.Module:
    if name == "BasicUNet":
        return BasicUNet(spatial_dims=dims, in_channels=1, out_channels=1, features=(4, 4, 8, 8, 8, 4))
    if name == "UNet":  # BatchNorm (running statistics) and PReLU (one parameter for all channels)
        return UNet(spatial_dims=dims, in_channels=1, out_channels=1, channels=(4, 8, 8), strides=(2, 2),
                    num_res_units=1, norm="batch")
    if name == "SegResNet":  # GroupNorm with 2 channels per group
        return SegResNet(spatial_dims=dims, init_filters=8, in_channels=1, out_channels=1, blocks_down=(1, 1, 1),
                         blocks_up=(1, 1), norm=("group", {"num_groups": 4}))
    return DynUNet(spatial_dims=dims, in_channels=1, out_channels=1, kernel_size=[3, 3, 3], strides=[1, 2, 2],
                   upsample_kernel_size=[2, 2], filters=[4, 8, 8], res_block=True)


NETS = [(n, d) for d in (2, 3) for n in ("BasicUNet", "UNet", "SegResNet", "DynUNet")]
SIZE = {2: 32, 3: 16}


def setup(name: str, dims: int, seed: int = 0):
    torch.manual_seed(seed)
    net = make(name, dims)
    size = 32 if name == "BasicUNet" else SIZE[dims]
    chain = conv_chain(net)
    rng = random.Random(seed)
    units = [rng.random() < 0.5 for _ in chain.units]  # a mix of retrained and frozen units
    masks = {h.name: torch.tensor([units[u] for u in h.units]) for h in chain.hidden}
    flat = torch.cat(list(masks.values()))
    assert flat.any() and not flat.all()
    return net, chain, masks, size


def batches(dims: int, size: int, steps: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.rand(2, 1, *([size] * dims), generator=g)
        yield x, (x * 0.5 + 0.1)


def train(net, opt, data, autocast=False):
    for x, y in data:
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = nn.functional.mse_loss(net(x).float(), y)
        loss.backward()
        opt.step()
        yield


def expand(frozen: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return frozen.view(*frozen.shape, *([1] * (like.dim() - frozen.dim()))).expand_as(like)


def check_kept(base: dict, now: dict, rows: dict, where: str) -> None:
    for key, frozen in rows.items():
        f = expand(frozen, base[key])
        assert torch.equal(now[key][f], base[key][f]), f"{where}: frozen elements of {key} moved"


def check_conv_rows(base: dict, now: dict, chain, masks, where: str, all_moved: bool) -> None:
    """Independently of frozen_rows: each hidden conv's frozen output channels (rows; columns of a transposed conv's
    weight) are kept, its retrained ones moved (all of them with decoupled weight decay, some otherwise)."""
    moved_any = False
    for h in chain.hidden:
        w0, w1 = base[f"{h.name}.weight"], now[f"{h.name}.weight"]
        if h.conv.transposed:
            w0, w1 = w0.transpose(0, 1), w1.transpose(0, 1)
        m = masks[h.name]
        assert torch.equal(w1[~m], w0[~m]), f"{where}: frozen rows of {h.name} moved"
        moved = (w1[m] != w0[m]).flatten(1).any(1)
        assert not all_moved or moved.all(), f"{where}: retrained rows of {h.name} did not all move"
        moved_any |= bool(moved.any())
    assert moved_any, f"{where}: no retrained row moved"


@pytest.mark.parametrize("name, dims", NETS, ids=[f"{n}-{d}d" for n, d in NETS])
def test_frozen_rows_bit_identical_on_monai_nets(name, dims):
    """AdamW with weight decay (activation mode), SGD with momentum and decay (parameter mode), CPU autocast bf16:
    after every step every frozen element (conv rows, norm affine rows and, bn_stats="freeze", running statistics;
    the whole output conv) equals its value at install, and retrained rows move. With every unit frozen, no tensor of
    the whole network moves at all (nothing escapes the analysis)."""
    net0, chain, masks, size = setup(name, dims)
    cases = [
        ("adamw", "activation", lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.5), False),
        ("sgd", "parameter", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.1), False),
        ("autocast", "activation", lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1), True),
    ]
    for label, mode, opt_of, autocast in cases:
        net = copy.deepcopy(net0)
        base = {k: v.clone() for k, v in net.state_dict().items()}
        opt = opt_of(net.parameters())
        rows = frozen_rows(net, masks, chain=conv_chain(net))
        with TGD(net, masks, mode=mode):
            for step, _ in enumerate(train(net, opt, batches(dims, size, 2), autocast)):
                check_kept(base, net.state_dict(), rows, f"{name} {dims}D {label} step {step}")
        now = net.state_dict()
        check_conv_rows(base, now, chain, masks, f"{name} {dims}D {label}", all_moved=label == "adamw")
        stats = [k for k in rows if k.endswith("running_mean")]
        assert (name == "UNet") == bool(stats), stats
    net = copy.deepcopy(net0)
    base = {k: v.clone() for k, v in net.state_dict().items()}
    nothing = {h.name: torch.zeros_like(m) for h, m in zip(chain.hidden, masks.values())}
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.5)
    with TGD(net, nothing, mode="parameter"):
        for _ in train(net, opt, batches(dims, size, 2)):
            pass
    moved = [k for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked") and not torch.equal(v, base[k])]
    assert not moved, f"{name} {dims}D: with every channel frozen these moved: {moved}"


@pytest.mark.parametrize("name, dims", [("BasicUNet", 2), ("SegResNet", 3), ("UNet", 2), ("DynUNet", 3)])
def test_resume_through_the_handler_state_is_bit_identical(name, dims):
    """2 steps, a checkpoint (network, optimizer, TGDHandler state), a fresh network and optimizer loaded from it
    and 2 more steps end bit-identical to 4 uninterrupted steps, with the frozen rows of the first install kept."""
    net0, chain, masks, size = setup(name, dims, seed=1)
    data = list(batches(dims, size, 4, seed=2))
    base = {k: v.clone() for k, v in net0.state_dict().items()}
    rows = frozen_rows(net0, masks, chain=chain)

    straight = copy.deepcopy(net0)
    opt = torch.optim.AdamW(straight.parameters(), lr=1e-2, weight_decay=0.1)
    with TGD(straight, masks, mode="parameter", readers="all"):
        for _ in train(straight, opt, data):
            pass

    first = copy.deepcopy(net0)
    opt = torch.optim.AdamW(first.parameters(), lr=1e-2, weight_decay=0.1)
    handler = TGDHandler(masks=masks, mode="parameter", readers="all")
    with TGD(first, handler.masks, mode="parameter", readers="all"):
        for _ in train(first, opt, data[:2]):
            pass
        checkpoint = copy.deepcopy({"network": first.state_dict(), "optimizer": opt.state_dict(),
                                    "tgd": handler.state_dict()})
    resumed = make(name, dims)
    resumed.load_state_dict(checkpoint["network"])
    opt = torch.optim.AdamW(resumed.parameters(), lr=1e-2, weight_decay=0.1)
    opt.load_state_dict(checkpoint["optimizer"])
    loaded = TGDHandler(threshold=0.3)
    loaded.load_state_dict(checkpoint["tgd"])
    with TGD(resumed, loaded.masks, mode="parameter", readers="all"):
        for _ in train(resumed, opt, data[2:]):
            pass
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), f"{name} {dims}D: {key} differs after resume"
    all_rows = frozen_rows(net0, masks, chain=chain, readers="all")
    check_kept(base, resumed.state_dict(), all_rows, f"{name} {dims}D resumed")
    assert set(all_rows) <= set(rows)


def test_mask_summary_and_kse_masks_on_a_unet():
    """The masks kse_masks gives on a MONAI net pass TGD's coupling check, and mask_summary counts them."""
    torch.manual_seed(0)
    net = make("UNet", 2)
    masks = kse_masks(net, 0.9)
    summary = mask_summary(net, masks)
    assert set(summary) == set(masks) | {"overall"} and 0 <= summary["overall"] <= 1
    TGD(net, masks).remove()


def test_the_trace_leaves_the_network_and_the_rng_as_they_were():
    """conv_chain runs the network once in training mode: BN running statistics, train/eval flags and the RNG
    (dropout) are restored, so tracing does not change a later training run."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.ReLU(), nn.Conv2d(4, 1, 3)).eval()
    net[1].train()
    with torch.no_grad():
        net[1].running_mean.fill_(0.3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    chain = conv_chain(net)
    assert [h.norm_name for h in chain.hidden] == ["1"]
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in net] == [False, True, False, False, False]


@pytest.mark.parametrize("num_parameters", [1, 2])
def test_prelu_rows_follow_their_channels_and_a_shared_one_trains_only_with_all(num_parameters):
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.PReLU(num_parameters), nn.Conv2d(2, 1, 3))
    for retrain, expected in (([True, False], [num_parameters == 1, True]), ([True, True], None)):
        rows = frozen_rows(net, {"0": torch.tensor(retrain)})
        got = rows.get("1.weight")
        want = None if expected is None else torch.tensor(expected[:num_parameters] if num_parameters == 2 else [True])
        assert (got is None and want is None) or torch.equal(got, want), (retrain, got)


@pytest.mark.parametrize("name", ["BasicUNet", "UNet", "SegResNet", "DynUNet"])
def test_drop_redundant_on_monai_nets_zeroes_exactly_the_readers_of_flagged_maps(name):
    """``drop_redundant`` (paper Fig. 4) on MONAI's networks: a copy in which, for every map KSE flags (every reader
    scores it below the threshold), each reading input channel is zero, and nothing else changed; the original is
    untouched and the copy still runs."""
    from monai_tgd.tgd import drop_redundant

    torch.manual_seed(0)
    net = make(name, 2)
    before = {k: v.detach().clone() for k, v in net.named_parameters()}  # one name per tensor (DynUNet aliases)
    chain = conv_chain(net)
    for threshold in (0.5, 0.7, 0.9, 0.97, 0.99):  # the first that flags some maps but not all (random weights)
        flat = torch.cat(list(kse_masks(net, threshold, chain=chain).values()))
        if flat.any() and not flat.all():
            break
    masks = kse_masks(net, threshold, chain=chain)
    assert torch.cat(list(masks.values())).any(), "no map flagged: the test needs some"
    pruned, fraction = drop_redundant(net, threshold)
    assert all(torch.equal(v, before[k]) for k, v in net.named_parameters())  # the original is untouched
    expected = {k: v.clone() for k, v in before.items()}
    for h in chain.hidden:  # independently of zero_readers: walk the readers of each flagged channel
        for channel, readers in enumerate(chain.readers_of(h.name)):
            if masks[h.name][channel]:
                for reader, column in readers:
                    weight = expected[f"{reader}.weight"]
                    (weight[column] if net.get_submodule(reader).transposed else weight[:, column]).zero_()
    after = dict(pruned.named_parameters())
    differ = [k for k in expected if not torch.equal(after[k], expected[k])]
    assert not differ, differ
    assert any(not torch.equal(after[k], before[k]) for k in before) and 0 < fraction < 1
    with torch.no_grad():
        assert torch.isfinite(pruned.eval()(torch.rand(1, 1, 32, 32))).all()
