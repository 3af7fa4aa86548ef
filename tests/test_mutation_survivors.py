"""Tests that kill mutants which survived the rest of the suite (``bash benchmarks/mutation.sh``, see
docs/mutation_testing.md).

Each test names the claim it guards; expected values come from independent computations (closed forms, numpy, MONAI's
own metrics), not from the code under test. The mutant ids in the comments are mutmut's.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.metrics import SSIMMetric
from torch import nn
from torch.nn import functional as F

from monai_tgd.inferers import Slab25DInferer
from monai_tgd.kse import kse_scores
from monai_tgd.metrics import (
    BodyPSNRHandler,
    BodyPSNRMetric,
    BodySSIMHandler,
    BodySSIMMetric,
    EnsembleBiasHandler,
    EnsembleCoVHandler,
    ROIMAEHandler,
    ROIRMSEHandler,
    body_psnr,
    body_ssim,
    ensemble_bias,
    roi_rmse,
)
from monai_tgd.tgd import (
    TGD,
    conv_chain,
    drop_redundant,
    frozen_rows,
    kse_masks,
    mask_summary,
    threshold_for_budget,
    zero_readers,
)
from monai_tgd.transforms.counts import SplitCounts, SplitCountsd, ThinCounts, ThinCountsd


def _rng_images(shape=(16, 16), seed=0):
    g = np.random.default_rng(seed)
    ref = g.uniform(1.0, 5.0, shape)
    img = ref + g.normal(0.0, 0.5, shape)
    body = np.zeros(shape, bool)
    body[2:-2, 3:-3] = True
    return img, ref, body


# --------------------------------------------------------------------------------------------------------------------
# transforms/counts.py


def test_split_frames_are_uniform_multinomial():
    """SplitCounts sends each count to each of n frames with probability 1/n (x__SplitCounts.randomize_17: 1/(n+k))."""
    counts = np.full(64, 30_000, dtype=np.int64)
    frames = SplitCounts(3).set_random_state(seed=0)(counts)
    fractions = np.array([f.sum() for f in frames]) / counts.sum()
    # each frame total ~ Binomial(1.92e6, 1/3): sd of the fraction ~3.4e-4
    np.testing.assert_allclose(fractions, [1 / 3] * 3, atol=3e-3)


def test_split_keeps_int64_counts_above_float_precision():
    """Frames sum back to the input exactly, also for int64 counts that float64 cannot hold (_counts_to_numpy_7)."""
    counts = torch.tensor([2**53 + 1, 3], dtype=torch.int64)
    frames = SplitCounts(2).set_random_state(seed=0)(counts)
    assert (frames[0] + frames[1]).tolist() == counts.tolist()


def test_thin_accepts_bfloat16_count_tensors():
    """Float count tensors of any dtype are read (bfloat16 has no numpy dtype; _counts_to_numpy_6)."""
    counts = torch.tensor([0.0, 4.0, 100.0], dtype=torch.bfloat16)
    out = ThinCounts(600, 600).set_random_state(seed=0)(counts)
    assert out.dtype == torch.bfloat16 and out.tolist() == counts.tolist()  # keep probability 1


def test_thin_randomize_default_keeps_everything():
    """``ThinCounts.randomize(data)`` without a probability keeps every count (default 1.0; randomize_1)."""
    data = np.array([0, 5, 17], dtype=np.int64)
    assert ThinCounts(60, 600).set_random_state(seed=0).randomize(data).tolist() == data.tolist()


def test_split_explicit_source_duration_sets_frame_durations():
    """An explicit source_duration gives the frames' meta duration, also through SplitCountsd (SplitCounts.__call___3,
    SplitCountsd.__init___10/12)."""
    img = MetaTensor(torch.full((4,), 10.0))  # no duration in meta
    frames = SplitCounts(2, 120).set_random_state(seed=0)(img)
    assert [f.meta["duration"] for f in frames] == [60.0, 60.0]
    frames_d = SplitCountsd("x", 4, 600).set_random_state(seed=0)({"x": img})
    assert [d["x"].meta["duration"] for d in frames_d] == [150.0] * 4


@pytest.mark.parametrize(
    "dict_cls,array_cls,args", [(ThinCountsd, ThinCounts, (60, 600)), (SplitCountsd, SplitCounts, (3, 600))]
)
def test_dict_transforms_follow_a_given_random_state(dict_cls, array_cls, args):
    """``set_random_state(state=...)`` of the dict versions draws from that state, like the array versions
    (ThinCountsd/SplitCountsd.set_random_state_2/4)."""
    counts = np.arange(50, dtype=np.int64) * 7
    expected = array_cls(*args).set_random_state(state=np.random.RandomState(5))(counts)
    got = dict_cls("x", *args).set_random_state(state=np.random.RandomState(5))({"x": counts})
    if dict_cls is ThinCountsd:
        np.testing.assert_array_equal(got["x"], expected)
    else:
        for d, e in zip(got, expected):
            np.testing.assert_array_equal(d["x"], e)


# --------------------------------------------------------------------------------------------------------------------
# metrics


def test_body_psnr_odd_body_and_explicit_peak():
    """PSNR over a body with an odd voxel count equals 20 log10(peak) - 10 log10(MSE) (body_psnr_29), with the given
    max_val honoured by the cumulative metric (BodyPSNRMetric.__init___4/7) and get_not_nans (3/6)."""
    img, ref, body = _rng_images()
    body[2, 3] = False
    assert body.sum() % 2 == 1
    mse = np.mean((img[body] - ref[body]) ** 2)
    expected = 20 * math.log10(ref[body].max()) - 10 * math.log10(mse)
    assert body_psnr(img, ref, body) == pytest.approx(expected, rel=1e-12)
    expected_10 = 20 * math.log10(10.0) - 10 * math.log10(mse)
    metric = BodyPSNRMetric(max_val=10.0, get_not_nans=True)
    t = lambda a: torch.from_numpy(np.asarray(a, np.float64))[None, None]  # noqa: E731
    metric(t(img), torch.cat([t(ref), t(body)], 1))
    value, not_nans = metric.aggregate()
    assert value.item() == pytest.approx(expected_10, rel=1e-6) and not_nans.item() == 1


def _monai_ssim(img, ref, data_range, win_size=11, sigma=1.5):
    m = SSIMMetric(spatial_dims=img.ndim, data_range=data_range, win_size=win_size, kernel_sigma=sigma)
    return m(torch.from_numpy(img)[None, None], torch.from_numpy(ref)[None, None]).item()


def test_body_ssim_uses_the_data_range():
    """With the body covering every window centre, body SSIM is MONAI's SSIM for the same data_range, also for a data
    range far from 1 (body_ssim_51)."""
    img, ref, _ = _rng_images((20, 20))
    img, ref = 300.0 * img, 300.0 * ref
    body = np.ones(img.shape, bool)
    span = float(np.ptp(ref))
    assert body_ssim(img, ref, body) == pytest.approx(_monai_ssim(img, ref, span), rel=1e-6)


def test_body_ssim_window_as_long_as_the_image():
    """An image exactly win_size long has one SSIM window and is valid (body_ssim_21: k >= s rejects it)."""
    img, ref, _ = _rng_images((11, 11))
    body = np.ones(img.shape, bool)
    assert body_ssim(img, ref, body) == pytest.approx(_monai_ssim(img, ref, float(np.ptp(ref))), rel=1e-6)


def test_body_ssim_metric_defaults_and_window_arguments():
    """BodySSIMMetric's defaults are MONAI's SSIM window (11, sigma 1.5; BodySSIMMetric.__init___1/2) and it passes
    win_size/kernel_sigma/get_not_nans on (12/13, 5/10); y_pred and roi shapes are checked (_study_args_4/6)."""
    img, ref, _ = _rng_images((20, 20))
    body = np.ones(img.shape, bool)
    t = lambda a: torch.from_numpy(np.asarray(a, np.float64))[None, None]  # noqa: E731
    span = float(np.ptp(ref))
    for kwargs, expected in [
        ({}, _monai_ssim(img, ref, span)),
        ({"win_size": 7, "kernel_sigma": 1.0}, _monai_ssim(img, ref, span, 7, 1.0)),
    ]:
        metric = BodySSIMMetric(get_not_nans=True, **kwargs)
        metric(t(img), torch.cat([t(ref), t(body)], 1))
        value, not_nans = metric.aggregate()
        assert value.item() == pytest.approx(expected, rel=1e-6) and not_nans.item() == 1
    with pytest.raises(ValueError, match="shape mismatch"):
        BodySSIMMetric()(torch.cat([t(img), t(img)], 1), t(ref), roi=t(body))
    with pytest.raises(ValueError, match="shape mismatch"):
        BodySSIMMetric()(t(img), t(ref), roi=torch.cat([t(body), t(body)], 1))


def test_metrics_read_bfloat16_tensors():
    """Torch inputs of any float dtype are converted to float64 (as_float64_2: bfloat16 has no numpy dtype)."""
    img, ref, body = _rng_images()
    img_bf = torch.from_numpy(img).to(torch.bfloat16)
    expected = np.sqrt(np.mean((img_bf.double().numpy()[body] - ref[body]) ** 2))
    assert roi_rmse(img_bf, ref, body) == pytest.approx(expected, rel=1e-12)


def test_ensemble_bias_of_a_single_voxel():
    """Realisations ``[R]`` of a 0-d study are valid (``_realizations_2/3``): bias of mean(1, 3) against 2 is 0 %,
    against 4 is -50 %."""
    assert ensemble_bias(np.array([1.0, 3.0]), np.array(2.0), np.array(True)) == 0.0
    assert ensemble_bias(np.array([1.0, 3.0]), np.array(4.0), np.array(True)) == -50.0


def _run_engine(batches, attach):
    engine = Engine(lambda e, b: b)
    attach(engine)
    engine.run(batches, max_epochs=1)
    return engine


def test_handlers_report_the_plain_functions_per_study():
    """Every metric handler wraps its metric with the given reduction/arguments and saves per-study details
    (handler mutants: metric/output_transform/reduction/max_val/data_range/win_size/kernel_sigma/save_details)."""
    studies = [_rng_images((20, 20), seed=s) for s in range(2)]
    t = lambda a: torch.from_numpy(np.asarray(a, np.float64))[None, None]  # noqa: E731
    batches = [{"img": t(i), "ref": t(r), "body": t(b)} for i, r, b in studies]
    ref_roi = lambda o: (o["img"], torch.cat([o["ref"], o["body"]], 1))  # noqa: E731
    mae = [float(np.mean(np.abs(i[b] - r[b]))) for i, r, b in studies]
    rmse = [float(np.sqrt(np.mean((i[b] - r[b]) ** 2))) for i, r, b in studies]
    psnr = [20 * math.log10(7.0) - 10 * math.log10(np.mean((i[b] - r[b]) ** 2)) for i, r, b in studies]
    ssim = [body_ssim(i, r, b, data_range=4.0, win_size=5, kernel_sigma=1.0) for i, r, b in studies]
    ssim_default = [body_ssim(i, r, b) for i, r, b in studies]
    # independent check of the SSIM reference values: MONAI's SSIM over the window centres of a full body
    full = np.ones((20, 20), bool)
    assert body_ssim(studies[0][0], studies[0][1], full, data_range=4.0, win_size=5, kernel_sigma=1.0) == (
        pytest.approx(_monai_ssim(studies[0][0], studies[0][1], 4.0, 5, 1.0), rel=1e-6))

    def attach(engine):
        ROIMAEHandler(reduction="sum", output_transform=ref_roi).attach(engine, "mae")
        ROIRMSEHandler(reduction="sum", output_transform=ref_roi).attach(engine, "rmse")
        BodyPSNRHandler(max_val=7.0, reduction="sum", output_transform=ref_roi).attach(engine, "psnr")
        BodySSIMHandler(data_range=4.0, win_size=5, kernel_sigma=1.0, reduction="sum",
                        output_transform=ref_roi).attach(engine, "ssim")
        BodySSIMHandler(output_transform=ref_roi).attach(engine, "ssim_default")
        EnsembleCoVHandler(reduction="sum", output_transform=lambda o: (torch.cat([o["img"], o["ref"]], 1),
                                                                        o["body"])).attach(engine, "cov")

    engine = _run_engine(batches, attach)
    cov = [100 * np.std(np.stack([i, r])[:, b], axis=0, ddof=1).mean() / np.stack([i, r])[:, b].mean()
           for i, r, b in studies]
    for name, per_study, reduce in [("mae", mae, sum), ("rmse", rmse, sum), ("psnr", psnr, sum), ("ssim", ssim, sum),
                                    ("ssim_default", ssim_default, np.mean), ("cov", cov, sum)]:
        assert engine.state.metrics[name] == pytest.approx(reduce(per_study), rel=1e-6), name
        assert engine.state.metric_details[name].flatten().tolist() == pytest.approx(per_study, rel=1e-6), name


# --------------------------------------------------------------------------------------------------------------------
# inferers.py


def test_inferer_rejects_bool_batch_size():
    """``sw_batch_size=True`` is rejected, not read as 1 (Slab25DInferer.__init___12)."""
    with pytest.raises(ValueError, match="sw_batch_size"):
        Slab25DInferer(sw_batch_size=True)


def test_inferer_metatensor_output_keeps_the_network_dtype():
    """A MetaTensor input gives a MetaTensor in the network's output dtype, not the input's (__call___118)."""
    volume = MetaTensor(torch.rand(1, 1, 6, 5, 4, dtype=torch.float64), affine=torch.eye(4))
    net = lambda x: x[:, 1:2].float() * 2  # noqa: E731  centre slice of the 3-slab, in float32
    out = Slab25DInferer(slab=3)(volume, net)
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32
    torch.testing.assert_close(out.as_tensor(), (volume.as_tensor() * 2).float())


# --------------------------------------------------------------------------------------------------------------------
# kse.py


def _kse_reference(weight: np.ndarray, alpha: float = 1.0, k: int = 5) -> np.ndarray:
    """Li et al. / Chen et al. Eq. 1-3 written out with loops and exact pairwise differences."""
    n_out, c_in = weight.shape[:2]
    kernels = weight.reshape(n_out, c_in, -1).astype(np.float64)
    s = np.abs(kernels).sum(axis=(0, 2))
    e = np.zeros(c_in)
    nb = min(k, n_out - 1)
    for c in range(c_in):
        if nb == 0:
            continue
        pts = kernels[:, c, :]
        d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1))
        np.fill_diagonal(d, np.inf)
        dm = np.sort(d, axis=1)[:, :nb].sum(axis=1)
        if dm.sum() > 0:
            p = dm / dm.sum()
            p = p[p > 0]
            e[c] = -(p * np.log2(p)).sum()

    def mm(x, constant):
        return np.full_like(x, constant) if x.max() == x.min() else (x - x.min()) / (x.max() - x.min())

    return mm(np.sqrt(mm(s, 0.0) / (1 + alpha * mm(e, 0.0))), 1.0)


@pytest.mark.parametrize(
    "shape,alpha,k",
    [
        ((6, 5, 3), 1.0, 5),  # Conv1d weight (kse_scores_3/4 reject 3-D weights)
        ((6, 5, 3, 3), 1.0, 1),  # k = 1 (kse_scores_14/15 reject it; 49 zeroes the entropy for one neighbour)
        ((2, 5, 3, 3), 1.0, 5),  # N_out = 2: one neighbour per kernel (kse_scores_49)
        ((6, 5, 3, 3), 0.0, 5),  # alpha = 0: sparsity only (kse_scores_16 rejects it)
    ],
)
def test_kse_matches_the_loop_reference_on_edge_parameters(shape, alpha, k):
    """kse_scores equals the loop reference for Conv1d weights, k = 1, two output channels and alpha = 0."""
    g = np.random.default_rng(1)
    w = g.normal(size=shape)
    if shape[0] == 2:
        w[:, 0] = w[:1, 0]  # identical kernels in channel 0: entropy 0 there, 1 bit elsewhere
    np.testing.assert_allclose(kse_scores(torch.from_numpy(w), alpha=alpha, k=k).numpy(), _kse_reference(w, alpha, k),
                               rtol=0, atol=1e-12)


def test_kse_identical_kernels_have_zero_distance_in_wide_layers():
    """Identical kernels are at distance exactly 0 also with more than 25 output channels, where torch.cdist's default
    switches to the |a|^2 + |b|^2 - 2ab shortcut (kse_scores_58: distances of ~1e-7 between identical kernels)."""
    g = np.random.default_rng(2)
    w = g.normal(size=(40, 4, 3, 3)) + 1e3  # weights near 1e3, where the shortcut's cancellation shows
    w[:20, 0] = w[0, 0]  # 20 identical kernels in channel 0
    # exact distances: ~1e-16 from the reference; the shortcut: ~3e-7
    np.testing.assert_allclose(kse_scores(torch.from_numpy(w)).numpy(), _kse_reference(w), rtol=0, atol=1e-10)


def test_kse_equal_sparsity_ranks_nothing():
    """When every input channel has the same L1 norm the normalised sparsity is 0 everywhere, so KSE is 0 everywhere
    and the scores are all ones whatever the entropies (kse_scores_122: constant sparsity read as 1)."""
    w = np.array([[1.0, 1.0, 1.0], [1.0, -1.0, 2.0], [1.0, 1.0, 0.5], [1.0, -1.0, 0.5]])[:, :, None, None]  # L1 = 4
    assert np.abs(w).sum(axis=(0, 2, 3)).tolist() == [4.0, 4.0, 4.0]
    assert kse_scores(torch.from_numpy(w)).tolist() == [1.0, 1.0, 1.0]
    np.testing.assert_array_equal(_kse_reference(w), [1.0, 1.0, 1.0])


# --------------------------------------------------------------------------------------------------------------------
# tgd.py


class _Functional(nn.Module):
    """Convs joined by functional activations and tensor methods (F.relu, torch.tanh, x.relu(), x.contiguous())."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(2, 6, 3), nn.Conv2d(6, 6, 3), nn.Conv2d(6, 6, 3)
        self.c4 = nn.Conv2d(6, 1, 1)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = torch.tanh(self.c2(x))
        x = self.c3(x).relu().contiguous()
        return self.c4(x)


class _ChannelFlip(nn.Module):
    """Channel-mixing operations between convs that are neither modules nor element-wise: must be refused."""

    def __init__(self, op):
        super().__init__()
        self.c1, self.c2, self.op = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 1, 3), op

    def forward(self, x):
        y = self.c1(x)
        y = torch.flip(y, [1]) if self.op == "function" else y.flip(1)
        return self.c2(y)


def test_conv_chain_follows_functional_and_method_activations():
    """F.relu / torch.tanh / x.relu() / x.contiguous() between convs keep the chain (conv_chain_18, 21-24, 26-29)."""
    chain = conv_chain(_Functional())
    assert [(h.name, h.consumer_name) for h in chain.hidden] == [("c1", "c2"), ("c2", "c3"), ("c3", "c4")]
    assert [n for n, _ in chain.outputs] == ["c4"]


@pytest.mark.parametrize("op", ["function", "method"])
def test_conv_chain_refuses_channel_mixing_calls(op):
    """A channel flip (a call_function or a call_method) between two convs is not element-wise: refused rather than
    masked as if channel c of conv 1 were channel c of conv 2 (conv_chain_20, 24, 25, 29)."""
    with pytest.raises(ValueError, match="cannot resolve the consumer of conv 'c1'"):
        conv_chain(_ChannelFlip(op))


class _Revisit(nn.Module):
    """conv c1's output is used twice; the only path to conv c2 is found after revisiting a node."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        c = self.c1(x)
        a = torch.relu(c)
        b = torch.sigmoid(c)
        v = a * 2.0
        s = a + b
        return self.c2(v) + s


def test_conv_chain_search_for_a_reading_conv_is_exhaustive():
    """A conv whose output reaches another conv only after a revisited node is found to be read by it in every
    channel, not called an output conv (conv_chain_34: stopping the search at the first revisited node); its
    channels are coupled with the output conv's through the final sum."""
    chain = conv_chain(_Revisit())
    assert [h.name for h in chain.hidden] == ["c1"] and [name for name, _ in chain.outputs] == ["c2"]
    assert chain.readers_of("c1") == [{("c2", n)} for n in range(3)]
    assert chain.coupled("c1", 1) == {("c1", 1), ("c2", 1)}


class _Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x):
        return self.c2(torch.relu(self.c1(torch.relu(self.c1(x)))))


class _Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3, groups=2)

    def forward(self, x):
        return self.c2(torch.relu(self.c1(x)))


def test_conv_chain_refuses_reused_and_grouped_convs():
    """A conv called twice (ambiguous masks, conv_chain_48) and a grouped reading conv (KSE needs groups=1,
    conv_chain_75) are refused."""
    with pytest.raises(ValueError, match="more than once"):
        conv_chain(_Twice())
    with pytest.raises(ValueError, match="groups=1"):
        conv_chain(_Grouped())


def _seq(seed=0, features=6):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, features, 3, padding=1), nn.ReLU(),
        nn.Conv2d(features, features, 3, padding=1), nn.BatchNorm2d(features), nn.ReLU(),
        nn.Conv2d(features, features, 3, padding=1), nn.BatchNorm2d(features), nn.ReLU(),
        nn.Conv2d(features, 1, 3, padding=1),
    )  # fmt: skip


def test_kse_masks_and_drop_redundant_use_the_kse_parameters():
    """kse_masks and drop_redundant flag exactly the channels whose loop-reference KSE score (alpha, k as given;
    defaults alpha=1, k=5) is below the threshold (kse_masks_1/2/23/24, drop_redundant_2/17/18). Eight channels, so
    that k = 5 and k = 6 neighbours differ."""
    net = _seq(features=8)
    readers = {"0": net[2], "2": net[5], "5": net[8]}
    # (2.0, 2) gives masks unlike (1.0, 2) and (2.0, 5) on this network, and (1.0, 5) unlike (1.0, 6)
    for kwargs, (alpha, k) in [({}, (1.0, 5)), ({"alpha": 2.0, "k": 2}, (2.0, 2))]:
        expected = {n: torch.from_numpy(_kse_reference(c.weight.detach().double().numpy(), alpha, k) < 0.5)
                    for n, c in readers.items()}
        masks = kse_masks(net, 0.5, **kwargs)
        assert {n: m.tolist() for n, m in masks.items()} == {n: m.tolist() for n, m in expected.items()}
        pruned, _ = drop_redundant(net, 0.5, **kwargs)
        for n, idx in {"0": 2, "2": 5, "5": 8}.items():
            zeroed = (pruned[idx].weight == 0).flatten(2).all(-1).all(0)
            assert zeroed.tolist() == expected[n].tolist()
    assert set(kse_masks(net, 1.0)) == set(readers)  # threshold 1 is allowed (kse_masks_6)


def test_mask_summary_of_a_network_without_hidden_convs():
    """A network with one conv has nothing to retrain: overall fraction 0.0 (mask_summary_38/40)."""
    assert mask_summary(nn.Sequential(nn.Conv2d(1, 1, 3)), {}) == {"overall": 0.0}


def test_tgd_leaves_user_frozen_parameters_alone():
    """A parameter the user set to requires_grad=False gets no gradient hook (TGD._install_16 raises) and the frozen
    rows stay bit-identical through an SGD step."""
    net = _seq()
    net[0].bias.requires_grad_(False)
    masks = {"0": torch.tensor([True, False] * 3), "2": torch.tensor([False, True] * 3), "5": torch.ones(6, dtype=bool)}
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1, weight_decay=0.1)
    with TGD(net, masks, mode="activation"):
        net(torch.rand(2, 1, 8, 8)).pow(2).mean().backward()
        opt.step()
    frozen = ~masks["0"]
    assert torch.equal(net[0].weight[frozen], before["0.weight"][frozen])
    assert not torch.equal(net[0].weight[~frozen], before["0.weight"][~frozen])


def test_tgd_remove_is_idempotent_and_only_unregisters_itself():
    """remove() twice is harmless and does not unregister a TGD installed later, so a third TGD on the same network
    is still refused (TGD.remove_2)."""
    net = _seq()
    masks = {n: torch.ones(6, dtype=bool) for n in ("0", "2", "5")}
    first = TGD(net, masks)
    first.remove()
    second = TGD(net, masks)
    first.remove()
    with pytest.raises(ValueError, match="already carries a TGD"):
        TGD(net, masks)
    second.remove()


def test_zero_readers_refuses_index_tensors_and_lists():
    """Feature maps must be bool masks: an int64 0/1 tensor of the right length would index channels 0 and 1 instead
    (zero_readers_18), a list must raise ValueError, not AttributeError (zero_readers_19)."""
    net = _seq()
    with pytest.raises(ValueError, match="bool tensor"):
        zero_readers(net, {"0": torch.tensor([0, 0, 0, 1, 1, 1])})
    with pytest.raises(ValueError, match="bool tensor"):
        zero_readers(net, {"0": [True] * 6})


def _budget_net(seed=0):
    torch.manual_seed(seed)
    net = _seq(seed, features=8)
    with torch.no_grad():
        net[-1].weight *= 30  # an output of the size of the changes, as in tests/test_threshold.py
    return net


def test_threshold_for_budget_scores_with_the_given_kse_parameters(monkeypatch):
    """Every KSE score threshold_for_budget uses is computed with the alpha and k it was given
    (threshold_for_budget_23/24)."""
    import monai_tgd.tgd as tgd_module
    import monai_tgd.tgd.masks as masks_module  # where the KSE scores of every reader are computed

    calls = []
    real = masks_module.kse_scores

    def spy(weight, alpha=1.0, k=5):
        calls.append((alpha, k))
        return real(weight, alpha=alpha, k=k)

    monkeypatch.setattr(masks_module, "kse_scores", spy)
    tgd_module.threshold_for_budget(_budget_net(), torch.rand(2, 1, 8, 8), max_change=1e-12, alpha=0.3, k=2)
    assert calls and set(calls) == {(0.3, 2)}


def test_threshold_for_budget_leaves_the_network_in_train_mode():
    """The network itself is not changed, not even its train/eval mode (threshold_for_budget_34: a shallow copy put
    into eval mode switches the network's own BNs to eval)."""
    net = _budget_net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    threshold_for_budget(net, torch.rand(2, 1, 8, 8), max_change=0.05)
    assert all(m.training for m in net.modules())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


def test_threshold_for_budget_when_the_lowest_scores_break_the_budget():
    """If dropping the lowest-scoring channels already breaks the budget, phi is that lowest score (0: KSE is min-max
    normalised) and the change at phi is 0.0, nothing being dropped (threshold_for_budget_59/60)."""
    assert threshold_for_budget(_budget_net(), torch.rand(2, 1, 8, 8), max_change=1e-12) == (0.0, 0.0)


def test_threshold_for_budget_takes_one_dimensional_signals():
    """Calibration batches ``[B, C_in, *spatial]`` with one spatial dimension (Conv1d networks) are accepted
    (_calibration_samples_9/10 require 2 spatial dimensions)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv1d(6, 1, 3, padding=1))
    phi, change = threshold_for_budget(net, torch.rand(2, 1, 16), max_change=0.5)
    assert 0.0 <= phi <= 1.0 and 0.0 <= change <= 0.5


def test_handlers_honour_save_details_false():
    """save_details=False keeps per-study values out of engine.state.metric_details (the handlers' save_details
    mutants drop the argument and fall back to MONAI's default True)."""
    img, ref, body = _rng_images((20, 20))
    t = lambda a: torch.from_numpy(np.asarray(a, np.float64))[None, None]  # noqa: E731
    batch = {"img": torch.cat([t(img), t(ref)], 1), "ref": t(ref), "body": t(body)}
    one = lambda o: (o["img"][:, :1], torch.cat([o["ref"], o["body"]], 1))  # noqa: E731
    def attach(engine):
        EnsembleBiasHandler(output_transform=lambda o: (o["img"], torch.cat([o["ref"], o["body"]], 1)),
                            save_details=False).attach(engine, "bias")
        EnsembleCoVHandler(output_transform=lambda o: (o["img"], o["body"]), save_details=False).attach(engine, "cov")
        ROIRMSEHandler(output_transform=one, save_details=False).attach(engine, "rmse")
        ROIMAEHandler(output_transform=one, save_details=False).attach(engine, "mae")
        BodyPSNRHandler(output_transform=one, save_details=False).attach(engine, "psnr")
        BodySSIMHandler(output_transform=one, save_details=False).attach(engine, "ssim")

    engine = _run_engine([batch], attach)
    names = ["bias", "cov", "rmse", "mae", "psnr", "ssim"]
    assert set(names) <= set(engine.state.metrics)
    assert not set(names) & set(getattr(engine.state, "metric_details", {}) or {})
