"""Issue 16, items 7 and 8: what TGD and 2.5D inference refuse or keep, each sub-item pinned by a regression test.

Item 8 (``monai_tgd.tgd``): one network-support check (in :func:`monai_tgd.tgd.conv_chain`, which every entry point
goes through) refuses what the masks cannot cover; one install per module; a dtype/device/identity check before
every optimizer step; a hint for ``torch.compile`` wrappers. A property test builds random small conv nets and
checks that TGD either refuses them naming the offending module, or keeps every frozen element bit-identical while
every retrained element moves. Item 7: a one-slice volume keeps its shape and slice thickness through inference.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from torch import nn

from monai_tgd.handlers import TGDHandler
from monai_tgd.inferers import Slab25DInferer
from monai_tgd.networks import DnCNN
from monai_tgd.tgd import (
    TGD,
    ConvChain,
    conv_chain,
    drop_redundant,
    frozen_rows,
    kse_masks,
    mask_summary,
    threshold_for_budget,
    zero_readers,
)

from .conftest import BUNDLE

# ---------------------------------------------------------------------------------------------------------------------
# fixtures and helpers


def dncnn(seed: int = 0, features: int = 4, num_layers: int = 4) -> DnCNN:
    torch.manual_seed(seed)
    return DnCNN(features=features, num_layers=num_layers)


def alternate(net: nn.Module, parity: int = 0) -> dict[str, torch.Tensor]:
    """Retrain every other channel of every hidden conv (``parity`` 0 or 1: complementary masks)."""
    return {h.name: torch.arange(h.conv.out_channels) % 2 == parity for h in conv_chain(net).hidden}


def snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def expand(frozen: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A ``frozen_rows`` mask broadcast to the full shape of its tensor."""
    return frozen.view(*frozen.shape, *([1] * (like.dim() - frozen.dim()))).expand_as(like)


def train(net: nn.Module, x: torch.Tensor, opt: torch.optim.Optimizer, steps: int = 3) -> None:
    net.train()
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        y = net(x + 0.1 * torch.randn(x.shape, generator=g, dtype=x.dtype))
        (y - 0.5).pow(2).mean().backward()
        opt.step()


class ChannelGate(nn.Module):
    """A gate from the mean over channels between two convs (squeeze-and-excitation style): every channel of c2's
    input depends on every channel of c1, which TGD cannot follow channel by channel. (A ConvTranspose output layer,
    refused here before issue 12, is supported now.)"""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        return self.c2(y * torch.sigmoid(y.mean(1, keepdim=True)))


class LinearHead(nn.Module):
    """conv -> conv -> flatten -> Linear (a classifier head)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 2, 3, padding=1)
        self.head = nn.Linear(2 * 8 * 8, 3)

    def forward(self, x):
        return self.head(torch.flatten(torch.relu(self.c2(torch.relu(self.c1(x)))), 1))


class SharedBN(nn.Module):
    """One BN after two hidden convs."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 1, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.c3(torch.relu(self.bn(self.c2(torch.relu(self.bn(self.c1(x)))))))


def every_entry_point(net: nn.Module, masks: dict | None = None) -> dict:
    """Each public function of monai_tgd.tgd that takes a network, called on ``net``."""
    masks = {} if masks is None else masks
    x = torch.rand(2, 1, 8, 8)
    return {
        "conv_chain": lambda: conv_chain(net),
        "kse_masks": lambda: kse_masks(net, 0.3),
        "TGD": lambda: TGD(net, masks),
        "frozen_rows": lambda: frozen_rows(net, masks),
        "mask_summary": lambda: mask_summary(net, masks),
        "zero_readers": lambda: zero_readers(net, {}),
        "drop_redundant": lambda: drop_redundant(net, 0.3),
        "threshold_for_budget": lambda: threshold_for_budget(net, x),
    }


# ---------------------------------------------------------------------------------------------------------------------
# item 8: networks the analysis cannot follow are refused by one check, naming the module and the op


@pytest.mark.parametrize(
    "make, match",
    [
        (ChannelGate, r"cannot resolve the consumer of conv 'c1': its output goes through 'mean' in the network's "
                      r"forward\(\), which TGD cannot follow channel by channel, and then reaches conv 'c2'"),
        (LinearHead, r"cannot follow Linear 'head' \(call_module\): TGD masks only convolutions"),
        (SharedBN, r"BatchNorm2d 'bn' is called 2 times in forward\(\); a BN shared by two convs would merge"),
    ],
    ids=["channel_gate", "flatten_linear_head", "shared_bn"],
)
def test_unsupported_networks_are_refused_by_every_entry_point(make, match):
    """The three networks of the issue were accepted (the ConvTranspose / Linear trained fully despite
    freeze_output=True, the conv before it frozen whole without a KSE mask; the shared BN shrank the retrained set).
    Every entry point now raises the same ValueError, which says what is supported, before any mask or step."""
    net = make()
    before = snapshot(net)
    messages = set()
    for name, call in every_entry_point(net).items():
        with pytest.raises(ValueError, match=match) as e:
            call()
        messages.add(str(e.value))
        assert "Supported: Conv1d/2d/3d and ConvTranspose1d/2d/3d layers" in str(e.value), name
    assert len(messages) == 1  # one check, one message
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert all(not m._forward_hooks for m in net.modules())  # nothing installed


def test_a_supported_network_with_parameter_free_ops_after_the_output_conv_is_accepted():
    """What the check allows around the chain: parameter-free ops before the first and after the output conv (DnCNN's
    residual subtraction, a flatten), a BN without state after the output conv."""

    class Tail(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 2, 3, padding=1)
            self.norm = nn.BatchNorm2d(2, affine=False, track_running_stats=False)

        def forward(self, x):
            return torch.flatten(self.norm(self.c2(torch.relu(self.c1(x * 2.0)))), 1).mean(1)

    chain = conv_chain(Tail())
    assert [h.name for h in chain.hidden] == ["c1"] and [n for n, _ in chain.outputs] == ["c2"]


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 1, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.c2(torch.relu(self.c1(x))) * self.scale


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 1, 1)
        self.c2.weight = self.c1.weight

    def forward(self, x):
        return self.c3(torch.relu(self.c2(torch.relu(self.c1(x)))))


class InputNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm, self.c1, self.c2 = nn.BatchNorm2d(1), nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x):
        return self.c2(torch.relu(self.c1(self.norm(x))))


@pytest.mark.parametrize(
    "net, match",
    [
        (Scaled(), r"cannot follow parameter 'scale', read directly in the network's forward\(\) by 'mul'"),
        (Tied(), r"parameter 'c2.weight' of Conv2d 'c2' is the same tensor as 'c1.weight' \(shared weights\)"),
        (InputNorm(), r"cannot follow BatchNorm2d 'norm' \(call_module\): its channel 0 is not made by a hidden conv "
                      r"\(it normalises the network input\)"),
    ],
    ids=["bare_parameter", "tied_weights", "bn_on_the_input"],
)
def test_other_state_outside_the_chain_is_refused(net, match):
    """The same check covers the other ways a parameter escapes the masks (or two masks meet in one tensor)."""
    with pytest.raises(ValueError, match=match):
        kse_masks(net, 0.3)


# ---------------------------------------------------------------------------------------------------------------------
# item 8: one TGD per module, however the network is reached


def test_second_tgd_through_a_wrapper_or_a_submodule_is_refused_naming_remove():
    """A second TGD on a wrapper of the network or on one of its submodules was accepted: both TGDs then restored
    their frozen rows, so with complementary masks nothing trained."""
    net = dncnn()
    first = TGD(net, alternate(net, 0))
    wrapper = nn.Sequential(net)
    with pytest.raises(ValueError, match=r"the Sequential already carries a TGD through its module '0.blocks.0.conv' "
                                         r"\(a TGD installed on a DnCNN\); call remove\(\) on that TGD"):
        TGD(wrapper, alternate(wrapper, 1))
    with pytest.raises(ValueError, match=r"already carries a TGD through its module '0.conv'.*call remove\(\)"):
        TGD(net.blocks, alternate(net.blocks, 1))
    with pytest.raises(ValueError, match=r"the DnCNN already carries a TGD; call remove\(\)"):
        TGD(net, alternate(net, 1))
    first.remove()
    TGD(wrapper, alternate(wrapper, 1)).remove()  # removed: any of them may carry one again
    with TGD(net.blocks, alternate(net.blocks, 1)):
        pass


def test_deep_copy_of_a_network_carrying_tgd_is_a_plain_network():
    """copy.deepcopy copies forward hooks: the copy carried the first TGD's layers, so a TGD on the copy with other
    masks got zero gradients in the channels it retrains. The copied TGD layers now act only on their own module."""
    net = dncnn()
    with TGD(net, alternate(net, 0)):
        copied = copy.deepcopy(net)
    assert any(m._forward_hooks for m in copied.modules())  # the copy does hold the copied hooks
    masks = alternate(copied, 1)
    rows = frozen_rows(copied, masks)
    before = snapshot(copied)
    with TGD(copied, masks):
        train(copied, torch.rand(2, 3, 8, 8), torch.optim.Adam(copied.parameters(), lr=1e-2))
    after = copied.state_dict()
    for key, frozen in rows.items():
        full = expand(frozen, before[key])
        assert torch.equal(after[key][full], before[key][full]), key
        if key.endswith("weight") and key != "blocks.3.conv.weight":
            assert (after[key][~full] != before[key][~full]).all(), f"{key}: a retrained element did not move"


# ---------------------------------------------------------------------------------------------------------------------
# item 8: moving, casting or replacing parameters after install fails at the step, naming TGD


def test_double_after_install_fails_before_the_step_naming_tgd():
    """net.double() after install failed at the first step with torch's index_copy_ dtype error, which does not
    mention TGD, after the step had already moved the frozen rows."""
    net = dncnn()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    with pytest.raises(RuntimeError, match=r"TGD: 'blocks.0.conv.weight' is now torch.float64 on cpu, but TGD was "
                                           r"installed when it was torch.float32 on cpu\. Install TGD after moving or "
                                           r"casting the network"):
        with TGD(net, alternate(net)):  # leaving the block on the error removes TGD without a second error
            net.double()
            net(torch.rand(2, 3, 8, 8, dtype=torch.float64)).mean().backward()
            before = snapshot(net)  # after the forward pass, which moves BN running statistics
            opt.step()
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # refused before the step
    assert all(not m._forward_hooks for m in net.modules()) and all(not p._backward_hooks for p in net.parameters())
    with TGD(net, alternate(net)):  # installed after the cast: trains
        train(net, torch.rand(2, 3, 8, 8, dtype=torch.float64), opt, steps=1)


@pytest.mark.parametrize("mode", ["activation", "parameter"])
def test_parameters_replaced_after_install_fail_at_the_step(mode):
    """load_state_dict(assign=True) swaps the parameter tensors: TGD would guard the old ones, whether the optimizer
    holds the old or the new tensors."""
    net = dncnn()
    old_opt = torch.optim.SGD(net.parameters(), lr=0.1)
    tgd = TGD(net, alternate(net), mode=mode)
    net.load_state_dict(snapshot(net), assign=True)
    new_opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(torch.rand(2, 3, 8, 8)).mean().backward()
    for opt in (old_opt, new_opt):
        with pytest.raises(RuntimeError, match=r"TGD: 'blocks.0.conv.weight' is no longer the tensor TGD was installed "
                                               r"on .*call remove\(\) on this TGD"):
            opt.step()
    tgd.remove()


def test_moved_network_fails_at_the_first_backward_naming_tgd():
    """A device move after install: the TGD layer (activation mode) fails in the forward pass with a TGD message,
    instead of torch's device mismatch inside a backward hook. ('meta' stands in for an accelerator.)"""
    net = dncnn()
    with TGD(net, alternate(net)):
        net.to("meta")
        with pytest.raises(RuntimeError, match=r"TGD: the output of 'blocks.0.conv' is now on meta, but TGD was "
                                               r"installed when it was on cpu\. Install TGD after moving"):
            net(torch.rand(2, 3, 8, 8, device="meta"))


# ---------------------------------------------------------------------------------------------------------------------
# item 8: torch.compile


def test_compiled_module_gets_the_orig_mod_hint():
    """A torch.compile wrapper failed with fx's "cannot trace OptimizedModule", without the way out."""
    net = dncnn()
    compiled = torch.compile(net, backend="eager")  # the wrapper is what matters; no inductor import needed
    match = (r"TGD: the network is a torch.compile wrapper \(OptimizedModule of a DnCNN\), which TGD cannot "
             r"trace; pass the uncompiled module, model._orig_mod")
    for call in every_entry_point(compiled).values():
        with pytest.raises(ValueError, match=match):
            call()
    with pytest.raises(ValueError, match=match):
        TGD(nn.DataParallel(compiled), {})
    handler = TGDHandler(threshold=0.3)
    engine = type("Engine", (), {"network": compiled, "state": type("State", (), {"iteration": 1})()})()
    with pytest.raises(ValueError, match=match):
        handler.install(engine)
    kse_masks(compiled._orig_mod, 0.3)  # the hint works


def test_tgd_on_orig_mod_installed_before_the_first_compiled_run_gives_the_eager_gradients():
    """What the hint says: TGD on ``model._orig_mod``, installed before the compiled module first runs, gives the
    same gradients as TGD on the plain network ("aot_eager": no C++ compiler needed)."""
    net, x = dncnn(), torch.rand(2, 3, 8, 8)
    plain, inner = copy.deepcopy(net), copy.deepcopy(net)
    with TGD(plain, alternate(plain)):
        plain(x).pow(2).mean().backward()
    compiled = torch.compile(inner, backend="aot_eager")
    with TGD(compiled._orig_mod, alternate(inner)):
        compiled(x).pow(2).mean().backward()
    for (name, p), q in zip(plain.named_parameters(), inner.parameters()):
        assert torch.equal(p.grad, q.grad), name


# ---------------------------------------------------------------------------------------------------------------------
# cleanup: one source per option rule; no bare assert in frozen_rows


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "layer"},
        {"freeze_output": 1},
        {"bn_stats": "x"},
        {"readers": "x"},
        {"readers": "all", "mode": "activation"},
        {"readers": ["all"]},
    ],
)
def test_handler_checks_options_with_the_engines_rule(kwargs):
    """TGDHandler rejects exactly what TGD rejects, with TGD's message under its own prefix."""
    net = dncnn()
    with pytest.raises((ValueError, TypeError)) as engine_error:
        TGD(net, alternate(net), **kwargs)
    with pytest.raises(type(engine_error.value)) as handler_error:
        TGDHandler(threshold=0.3, **kwargs)
    assert str(handler_error.value) == str(engine_error.value).replace("TGD:", "TGDHandler:", 1)


def test_masks_that_split_coupled_channels_are_refused_with_a_value_error():
    """Before issue 12 a hand-made chain naming one conv as the consumer of two hidden convs hit a bare assert here;
    a conv reading several hidden convs is normal now (concatenations). What TGD refuses instead is masks that give
    two coupled channels (added together) different decisions, naming both."""

    class Added(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 1, 1)

        def forward(self, x):
            return self.c(torch.relu(self.a(x) + self.b(x)))

    net = Added()
    masks = {"a": torch.tensor([True, False]), "b": torch.tensor([False, False])}
    for call in (lambda: frozen_rows(net, masks), lambda: TGD(net, masks), lambda: mask_summary(net, masks)):
        with pytest.raises(ValueError, match=r"the masks of coupled channels differ: channel 0 of 'a' is retrained, "
                                             r"channel 0 of 'b' is frozen"):
            call()
    masks["b"] = torch.tensor([True, False])
    assert torch.equal(frozen_rows(net, masks)["a.weight"], torch.tensor([False, True]))


# ---------------------------------------------------------------------------------------------------------------------
# item 8: property test on random small conv nets


FLAWS = {
    # flaw: (is it supported, the name the refusal must quote)
    None: (True, None),
    "grouped_producer": (True, None),
    "convtranspose_output": (True, None),  # supported since issue 12
    "linear_head": (False, "Linear 'layers.head'"),
    "shared_bn": (False, "'layers.shared'"),
    "grouped_consumer": (False, "conv 'layers.c1'"),
    "bn_after_output": (False, "'layers.bn_out'"),
    "prelu": (True, None),  # one parameter for all channels: frozen unless all of them are retrained (issue 12)
    "scale": (False, "parameter 'scale'"),
    "tied": (False, "'layers.c2.weight'"),
    "residual": (True, None),  # coupled channels since issue 12
    "layernorm": (False, "LayerNorm 'layers.ln'"),
    "channel_flip": (False, "consumer of conv 'layers.c0'"),
}


class RandomNet(nn.Module):
    """A small conv net described by ``spec``: a list of ``(op, name)`` run in order (unrolled by fx's trace)."""

    def __init__(self, spec: list[tuple[str, str]], modules: dict[str, nn.Module]):
        super().__init__()
        self.spec = spec
        self.layers = nn.ModuleDict(modules)
        if any(op == "scale" for op, _ in spec):
            self.scale = nn.Parameter(torch.full((1,), 1.5))

    def forward(self, x):
        saved = None
        for op, name in self.spec:
            if op == "module":
                x = self.layers[name](x)
            elif op == "relu":
                x = F.relu(x)
            elif op == "tanh":
                x = torch.tanh(x)
            elif op == "flatten":
                x = torch.flatten(x, 1)
            elif op == "save":
                saved = x
            elif op == "add_saved":
                x = x + saved
            elif op == "scale":
                x = x * self.scale
            elif op == "channel_flip":
                x = torch.flip(x, [1])
        return x


def random_net(rng: random.Random) -> tuple[RandomNet, str | None, int, int]:
    """A random net, its flaw (None or a key of FLAWS), its input channels and spatial dims (1 or 2)."""
    flaw = rng.choice([None] * 6 + [f for f in FLAWS if f is not None])
    dims = rng.choice([1, 2])
    conv, bn = (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d)
    depth = rng.randint(3 if flaw in ("shared_bn", "tied", "residual") else 2, 5)  # convs
    width = rng.choice([2, 4, 6])
    widths = [width] * (depth - 1) if flaw in ("shared_bn", "tied", "residual", "grouped_consumer") else [
        rng.choice([2, 3, 4, 5, 6]) for _ in range(depth - 1)]
    in_ch = 2 if flaw == "grouped_producer" else rng.choice([1, 2])
    out_ch = rng.choice([1, 2])
    chans = [in_ch, *widths, out_ch]
    modules: dict[str, nn.Module] = {}
    spec: list[tuple[str, str]] = []
    for i in range(depth):
        k = rng.choice([1, 3])
        last = i == depth - 1
        use_bn = not last and rng.random() < 0.5
        groups = 1
        if flaw == "grouped_producer" and i == 0:
            groups = 2 if chans[1] % 2 == 0 else 1
            if groups == 1:
                chans[1] = widths[0] = 2 * chans[1]  # keep it grouped
                groups = 2
        if flaw == "grouped_consumer" and i == 1:
            groups = 2 if chans[1] % 2 == 0 and chans[2] % 2 == 0 else 1
        if flaw == "convtranspose_output" and last:
            layer: nn.Module = (nn.ConvTranspose1d if dims == 1 else nn.ConvTranspose2d)(chans[i], chans[i + 1], 2, 2)
            modules["out"] = layer
            spec.append(("module", "out"))
            break
        modules[f"c{i}"] = conv(chans[i], chans[i + 1], k, padding=k // 2, bias=not use_bn, groups=groups)
        if flaw == "residual" and i == 0:
            spec += [("module", "c0"), ("save", "")]
        else:
            spec.append(("module", f"c{i}"))
        if flaw == "shared_bn" and i in (0, 1):
            modules.setdefault("shared", bn(chans[1]))
            spec.append(("module", "shared"))
        elif use_bn:
            modules[f"bn{i}"] = bn(chans[i + 1])
            spec.append(("module", f"bn{i}"))
        if not last:
            if flaw == "prelu" and i == 0:
                modules["prelu"] = nn.PReLU()
                spec.append(("module", "prelu"))
            if flaw == "layernorm" and i == 0:
                modules["ln"] = nn.LayerNorm(6)
                spec.append(("module", "ln"))
            if flaw == "channel_flip" and i == 0:
                spec.append(("channel_flip", ""))
            act = rng.choice(["relu", "tanh", "leaky", "dropout"])
            if act in ("relu", "tanh"):
                spec.append((act, ""))
            else:
                modules[f"act{i}"] = nn.LeakyReLU(0.1) if act == "leaky" else nn.Dropout(0.1)
                spec.append(("module", f"act{i}"))
        if flaw == "residual" and i == 1:
            spec.append(("add_saved", ""))
    if flaw == "grouped_consumer" and modules["c1"].groups == 1:
        flaw = None  # odd widths: no grouped consumer could be built
    if flaw == "tied":
        modules["c2"].weight = modules["c1"].weight
    if flaw == "bn_after_output":
        modules["bn_out"] = bn(out_ch)
        spec.append(("module", "bn_out"))
    if flaw == "linear_head":
        modules["head"] = nn.Linear(out_ch * 6 ** dims, 3)
        spec += [("flatten", ""), ("module", "head")]
    if flaw == "scale":
        spec.append(("scale", ""))
    return RandomNet(spec, modules), flaw, in_ch, dims


SEEDS, CASES = range(4), range(14)  # 14: every flaw, including those added in issue 12


def case_net(seed: int, case: int) -> tuple[RandomNet, str | None, int, int]:
    """The net of one case: its own fixed-seed streams, so that it does not depend on what other cases drew."""
    torch.manual_seed(1000 * seed + case)
    return random_net(random.Random(f"net {seed} {case}"))


def test_the_random_nets_cover_every_flaw_and_plain_nets():
    flaws = [case_net(seed, case)[1] for seed in SEEDS for case in CASES]
    assert set(flaws) == set(FLAWS)
    assert sum(FLAWS[f][0] for f in flaws) >= len(flaws) // 3  # a third or more install


@pytest.mark.parametrize("seed", SEEDS)
def test_random_conv_nets_are_refused_naming_the_module_or_keep_every_frozen_element(seed):
    """Random depth, widths, kernel sizes, BN or not, activations as modules or functions, 1D or 2D, and now and
    then an unsupported op. A supported net installs, and over three AdamW steps (weight decay would move anything
    not restored) every element frozen_rows lists stays bit-identical and every other nonzero element moves; an
    unsupported one is refused by kse_masks and TGD with a ValueError quoting the module."""
    for case in CASES:
        net, flaw, in_ch, dims = case_net(seed, case)
        rng = random.Random(f"options {seed} {case}")
        where = f"seed {seed}, case {case}, flaw {flaw}: {net.spec}"
        x = torch.rand(4, in_ch, *([6] * dims))
        supported, name = FLAWS[flaw]
        if not supported:
            for call, args in ((kse_masks, (net, 0.5)), (TGD, (net, {}))):
                with pytest.raises(ValueError) as e:
                    call(*args)
                assert name in str(e.value) and str(e.value).startswith("TGD: "), where
            continue
        chain = conv_chain(net)
        assert set(kse_masks(net, 0.5, chain=chain)) == {h.name for h in chain.hidden}, where
        units = [rng.random() < 0.5 for _ in chain.units]  # one decision per coupled unit (a residual add's channels)
        masks = {h.name: torch.tensor([units[u] for u in h.units]) for h in chain.hidden}
        mode = rng.choice(["activation", "parameter"])
        readers = rng.choice(["none", "output"] + (["all"] if mode == "parameter" else []))
        options = {"mode": mode, "freeze_output": rng.random() < 0.7, "bn_stats": rng.choice(["freeze", "update"]),
                   "readers": readers}
        where += f" {options}"
        rows = frozen_rows(net, masks, options["freeze_output"], options["bn_stats"], chain=chain, readers=readers)
        # frozen_rows itself against the net: rows ~mask of each hidden conv (its weight: without readers) and of its
        # BN's affine parameters and, with bn_stats="freeze", running statistics; all rows of the output convs
        for h in chain.hidden:
            expected = ~masks[h.name]
            keys = [f"{h.name}.weight"] if readers == "none" else []
            if h.norm is not None:
                keys += [f"{h.norm_name}.{a}" for a in ("weight", "bias")]
                keys += [f"{h.norm_name}.{a}" for a in ("running_mean", "running_var") if options["bn_stats"] == "freeze"]
            for key in keys:
                assert torch.equal(rows.get(key, torch.zeros_like(expected)), expected), f"{key}; {where}"
        for out, _ in chain.outputs:
            assert (f"{out}.bias" in rows) == options["freeze_output"], where
        before = snapshot(net)
        with TGD(net, masks, chain=chain, **options):
            train(net, x, torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1))
        after = net.state_dict()
        params = dict(net.named_parameters())
        for key, value in before.items():
            frozen = expand(rows[key], value) if key in rows else torch.zeros_like(value, dtype=torch.bool)
            assert torch.equal(after[key][frozen], value[frozen]), f"{key} frozen element moved; {where}"
            if key in params:
                moving = ~frozen & (value != 0)
                assert (after[key][moving] != value[moving]).all(), f"{key}: a retrained element did not move; {where}"


# ---------------------------------------------------------------------------------------------------------------------
# item 7: a one-slice volume keeps its shape and slice thickness


@pytest.mark.parametrize("axis", [-1, 0])
def test_inferer_keeps_a_singleton_slice_axis_and_the_affine(axis):
    """Slab25DInferer on [B, C, H, W, 1] (or a singleton along another axis): same shape, the input's affine, and
    the network's output on the slab of the one slice repeated (replicated border)."""
    shape = [1, 1, 5, 4, 3]
    shape[2 + axis % 3] = 1
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.27, 1.0], dtype=torch.float64))
    volume = MetaTensor(torch.rand(shape), affine=affine, meta={"filename_or_obj": "one.nii.gz"})
    torch.manual_seed(0)
    net = DnCNN(features=4, num_layers=3).eval()
    with torch.no_grad():
        out = Slab25DInferer(slab=3, axis=axis)(volume, net)
        plane = volume.as_tensor().select(2 + axis % 3, 0)  # [1, 1, *inplane]
        expected = net(plane.repeat(1, 3, *([1] * (plane.dim() - 2)))).unsqueeze(2 + axis % 3)
    assert tuple(out.shape) == tuple(shape) and isinstance(out, MetaTensor)
    assert torch.equal(out.affine, affine)
    torch.testing.assert_close(out.as_tensor(), expected)


def run_inference(tmp_path: Path, data: np.ndarray) -> nib.Nifti1Image:
    """The bundle's ``inference`` workflow on one NIfTI with a random tiny DnCNN; returns the written output."""
    from monai.bundle import run

    torch.manual_seed(0)
    (tmp_path / "models").mkdir()
    torch.save(DnCNN(features=4, num_layers=3).state_dict(), tmp_path / "models" / "model.pt")
    affine = np.diag([2.0, 2.0, 3.27, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 7.0]
    src = nib.Nifti1Image(data, affine)
    src.header.set_xyzt_units("mm", "sec")
    (tmp_path / "in").mkdir()
    nib.save(src, tmp_path / "in" / "pet.nii.gz")
    files = [str(BUNDLE / "configs" / "inference.json")]
    run(config_file=files, meta_file=str(BUNDLE / "configs" / "metadata.json"), logging_file=False,
        bundle_root=str(BUNDLE), datalist=str(tmp_path / "unused.json"), ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "runs"), features=4, num_layers=3, input_files=[str(tmp_path / "in" / "pet.nii.gz")],
        trained_spacing=[2.0, 2.0, 3.27])  # the input's own voxel size: no resampling
    (out,) = (tmp_path / "runs").rglob("*.nii.gz")
    return nib.load(out)


# A [H, W, 1] input came out (H, W), and a [H, W, 1, 1] one failed in the writer ("SaveImage cannot find a suitable
# writer": its resampling got the squeezed 2D array with the 3D affine): monai_tgd.io.AtomicNibabelWriter.set_data_array


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((6, 5, 4), (6, 5, 4)),
        ((6, 5, 4, 1), (6, 5, 4)),  # a 4D singleton input gives a 3D output
        ((6, 5, 1), (6, 5, 1)),
        ((6, 5, 1, 1), (6, 5, 1)),
    ],
    ids=["3d", "4d_singleton", "one_slice", "one_slice_4d_singleton"],
)
def test_inference_output_has_the_input_shape_and_voxel_size(tmp_path, shape, expected):
    """docs (inference_online_n2n.md): the output has the input's shape (a 4D singleton input gives a 3D output) and
    exactly its affine. A one-slice volume came out 2D, without its slice thickness (pixdim[3])."""
    out = run_inference(tmp_path, np.random.default_rng(0).random(shape).astype(np.float32))
    assert out.shape == expected
    assert out.header.get_zooms()[:3] == pytest.approx((2.0, 2.0, 3.27))
    assert out.affine[2, 2] == pytest.approx(3.27)
