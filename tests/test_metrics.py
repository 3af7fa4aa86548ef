"""Tests for the PET image-quality metrics (monai_tgd.metrics)."""

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.metrics import SSIMMetric

from monai_tgd.metrics import (
    BodyPSNRMetric,
    BodySSIMMetric,
    EnsembleBiasHandler,
    EnsembleBiasMetric,
    EnsembleCoVHandler,
    EnsembleCoVMetric,
    ROIMAEMetric,
    ROIRMSEHandler,
    ROIRMSEMetric,
    body_psnr,
    body_ssim,
    ensemble_bias,
    ensemble_cov,
    roi_bias,
    roi_cov,
    roi_mae,
    roi_rmse,
)

# Two realisations of a 4-voxel image; ROI = first two voxels.
R = np.array([[1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 5.0, 6.0]])
REF = np.array([2.0, 2.0, 4.0, 4.0])
ROI = np.array([True, True, False, False])


def test_ensemble_bias_hand_computed():
    # realisation ROI means 1.5 and 3.5 -> ensemble 2.5; reference ROI mean 2 -> 100 * 0.5 / 2 = 25 %
    assert ensemble_bias(R, REF, ROI) == pytest.approx(25.0)
    assert isinstance(ensemble_bias(R, REF, ROI), float)
    # torch inputs, 0/1 ROI, R = 3, 2D: ROI means 1, 2, 6 -> 3; truth 4 -> -25 %
    r = torch.tensor([[[1.0, 9.0], [1.0, 9.0]], [[2.0, 9.0], [2.0, 9.0]], [[6.0, 9.0], [6.0, 9.0]]])
    assert ensemble_bias(r, torch.full((2, 2), 4.0), torch.tensor([[1, 0], [1, 0]])) == pytest.approx(-25.0)


def test_ensemble_cov_hand_computed():
    # voxel std over (1, 3) and (2, 4): sqrt(2) each (ddof=1); ensemble-mean ROI mean (2 + 3) / 2 = 2.5
    assert ensemble_cov(R, ROI) == pytest.approx(100 * math.sqrt(2) / 2.5)
    assert ensemble_cov(R, ROI, ddof=0) == pytest.approx(100 * 1.0 / 2.5)
    assert ensemble_cov(torch.tensor(R, dtype=torch.float32), torch.tensor(ROI)) == pytest.approx(56.568542, rel=1e-6)


def test_roi_errors_hand_computed():
    image, ref, roi = np.array([1.0, 2.0, 3.0, 100.0]), np.array([1.0, 4.0, 3.0, 0.0]), np.array([1, 1, 1, 0], bool)
    assert roi_rmse(image, ref, roi) == pytest.approx(math.sqrt(4 / 3))
    assert roi_mae(image, ref, roi) == pytest.approx(2 / 3)
    assert roi_rmse(torch.tensor(image), torch.tensor(ref), torch.tensor(roi)) == pytest.approx(math.sqrt(4 / 3))


def test_roi_bias_and_cov_hand_computed():
    image, ref, roi = np.array([1.0, 2.0, 3.0, 100.0]), np.array([1.0, 4.0, 3.0, 0.0]), np.array([1, 1, 1, 0], bool)
    # ROI means: image 2, reference 8/3 -> 100 * (2 - 8/3) / (8/3) = -25 %; the voxel outside (100 vs 0) is ignored
    assert roi_bias(image, ref, roi) == pytest.approx(-25.0)
    assert isinstance(roi_bias(image, ref, roi), float)
    # image ROI values 1, 2, 3: std 1 (ddof 1) or sqrt(2/3) (ddof 0), mean 2
    assert roi_cov(image, roi) == pytest.approx(50.0)
    assert roi_cov(image, roi, ddof=0) == pytest.approx(100 * math.sqrt(2 / 3) / 2)
    assert isinstance(roi_cov(image, roi), float)
    assert roi_cov(np.array([5.0, 1.0]), np.array([1, 0]), ddof=0) == 0.0  # one voxel is enough without ddof


def test_roi_bias_and_cov_match_numpy_on_random_volumes():
    """3D volumes, numpy and float32 torch inputs (CPU), 0/1 and boolean ROIs against plain numpy in float64."""
    rng = np.random.default_rng(0)
    image = rng.uniform(0.5, 3.0, (6, 5, 4)).astype(np.float32)
    ref = rng.uniform(0.5, 3.0, (6, 5, 4)).astype(np.float32)
    roi = rng.random((6, 5, 4)) < 0.3
    x, r = image.astype(np.float64)[roi], ref.astype(np.float64)[roi]
    bias = 100 * (x.mean() - r.mean()) / r.mean()
    cov = 100 * x.std(ddof=1) / x.mean()
    assert roi_bias(image, ref, roi) == pytest.approx(bias, rel=1e-12)
    assert roi_cov(image, roi) == pytest.approx(cov, rel=1e-12)
    t_image, t_ref, t_roi = torch.from_numpy(image), torch.from_numpy(ref), torch.from_numpy(roi.astype(np.uint8))
    assert roi_bias(t_image, t_ref, t_roi) == pytest.approx(bias, rel=1e-12)
    assert roi_cov(t_image, t_roi) == pytest.approx(cov, rel=1e-12)
    assert roi_cov(t_image[None], torch.from_numpy(roi)[None], ddof=0) == pytest.approx(
        100 * x.std() / x.mean(), rel=1e-12
    )  # [1, H, W, D] works too


def test_body_psnr():
    ref = torch.zeros(6, 6, 6)
    body = torch.zeros(6, 6, 6, dtype=torch.bool)
    body[1:5, 1:5, 1:5] = True
    ref[body] = 1.0
    image = ref + 0.1
    image[~body] = 50.0  # outside the body: ignored
    assert body_psnr(image, ref, body) == pytest.approx(20.0)  # 20 log10(1) - 10 log10(0.01)
    assert body_psnr(image, ref, body, max_val=10.0) == pytest.approx(40.0)
    assert body_psnr(ref, ref, body) == math.inf


def test_body_ssim_matches_monai_on_full_mask_and_identity():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(16, 16, 16, generator=g)
    image = ref + 0.1 * torch.rand(16, 16, 16, generator=g)
    full = torch.ones(16, 16, 16, dtype=torch.bool)
    expected = SSIMMetric(spatial_dims=3, data_range=1.0, win_size=7)(image[None, None], ref[None, None]).item()
    assert body_ssim(image, ref, full, data_range=1.0, win_size=7) == pytest.approx(expected, rel=1e-6)
    assert body_ssim(ref[0], ref[0], full[0], win_size=5) == pytest.approx(1.0)


# ---------------------------------------------------------------- the slides' formulas, where the shortcuts differ
# The hand-computed cases above have a reference that is uniform in the ROI and one std at every voxel, where the
# slides' formulas coincide with plausible wrong ones (CoV from the mean variance, bias as the mean voxelwise relative
# error). Below: a reference varying across the ROI and realisations whose std varies ~40-fold between voxels, against
# the formulas written out with plain loops.


def slides_bias(realizations, reference, roi):
    """BIAS = 100 ((1/R) sum_r mu_r - T) / T, mu_r the ROI mean of realisation r, T the reference's ROI mean."""
    inside = [i for i, v in enumerate(np.asarray(roi).ravel()) if v]
    flat = [np.asarray(x, dtype=np.float64).ravel() for x in realizations]
    mu = [sum(float(x[i]) for i in inside) / len(inside) for x in flat]
    ref = np.asarray(reference, dtype=np.float64).ravel()
    truth = sum(float(ref[i]) for i in inside) / len(inside)
    return 100 * (sum(mu) / len(mu) - truth) / truth


def slides_cov(realizations, roi, ddof=1):
    """CoV = 100 ((1/N) sum_{i in B} sigma_i) / mean_B, sigma_i = sqrt(sum_r (x_ri - m_i)^2 / (R - ddof)), m_i the
    ensemble mean at voxel i, mean_B the ROI mean of the ensemble-mean image."""
    inside = [i for i, v in enumerate(np.asarray(roi).ravel()) if v]
    flat = [np.asarray(x, dtype=np.float64).ravel() for x in realizations]
    n_real = len(flat)
    sigmas, means = [], []
    for i in inside:
        values = [float(x[i]) for x in flat]
        m = sum(values) / n_real
        sigmas.append(math.sqrt(sum((v - m) ** 2 for v in values) / (n_real - ddof)))
        means.append(m)
    return 100 * (sum(sigmas) / len(sigmas)) / (sum(means) / len(means))


def heteroscedastic_study(seed, shape=(6, 5, 4), n_real=5):
    """float32 ``realizations [R, *shape]``, ``reference``, lesion and liver masks: the reference ramps 1..9 across the
    volume (non-uniform inside both ROIs), every voxel has an offset of 0.5 +- 0.3 in image units (so the relative
    error is larger where the reference is low), and the noise std of voxel i is ``reference_i * s_i`` with s_i
    spread over 0.01..0.6, so the per-voxel std varies strongly across each ROI."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    reference = np.linspace(1.0, 9.0, size).reshape(shape)
    scale = np.geomspace(0.01, 0.6, size)[rng.permutation(size)].reshape(shape)
    offset = 0.5 + 0.3 * rng.standard_normal(shape)
    realizations = (reference + offset + reference * scale * rng.standard_normal((n_real, *shape))).astype(np.float32)
    lesion = rng.random(shape) < 0.3
    liver = rng.random(shape) < 0.5
    return realizations, reference.astype(np.float32), lesion, liver


def test_study_data_tell_the_slides_formulas_from_the_shortcuts():
    """Guard of the tests below: on these data the wrong formulas differ from the slides' by far more than the
    tolerances used."""
    for seed in (0, 1):
        x, ref, lesion, liver = heteroscedastic_study(seed)
        x64, r = x.astype(np.float64), ref.astype(np.float64)
        voxelwise_bias = 100 * np.mean((x64[:, lesion] - r[lesion]) / r[lesion])
        assert abs(voxelwise_bias - slides_bias(x, ref, lesion)) > 1.0  # percentage points
        pooled_cov = 100 * np.sqrt(np.mean(x64[:, liver].var(axis=0, ddof=1))) / x64[:, liver].mean()
        assert abs(pooled_cov / slides_cov(x, liver) - 1) > 0.05
        assert abs(slides_cov(x, liver, ddof=0) / slides_cov(x, liver) - 1) > 0.05


@pytest.mark.parametrize("seed", [0, 1])
def test_ensemble_functions_follow_the_slides(seed):
    x, ref, lesion, liver = heteroscedastic_study(seed)
    for convert in (lambda a: a, torch.from_numpy):  # numpy and float32 torch inputs
        assert ensemble_bias(convert(x), convert(ref), convert(lesion)) == pytest.approx(
            slides_bias(x, ref, lesion), rel=1e-12, abs=1e-12
        )
        for ddof in (0, 1, 2):
            assert ensemble_cov(convert(x), convert(liver), ddof=ddof) == pytest.approx(
                slides_cov(x, liver, ddof), rel=1e-12
            )
    assert ensemble_cov(x, liver) == pytest.approx(slides_cov(x, liver, 1), rel=1e-12)  # default ddof=1


def test_ensemble_cumulative_metrics_and_handlers_follow_the_slides():
    """Two studies through the MONAI Cumulative metrics (both y layouts) and the Ignite handlers: per-study values
    and their mean are the slides' formulas."""
    studies = [heteroscedastic_study(seed) for seed in (0, 1)]
    y_pred = torch.from_numpy(np.stack([s[0] for s in studies]))  # [2, R, *spatial]
    ref = torch.from_numpy(np.stack([s[1] for s in studies]))[:, None]
    lesion = torch.from_numpy(np.stack([s[2] for s in studies]))[:, None]
    liver = torch.from_numpy(np.stack([s[3] for s in studies]))[:, None]
    biases = [slides_bias(x, r, m) for x, r, m, _ in studies]
    covs = {ddof: [slides_cov(x, m, ddof) for x, _, _, m in studies] for ddof in (0, 1)}

    bias = EnsembleBiasMetric()
    bias(y_pred, torch.cat([ref, lesion.float()], dim=1))
    bias(y_pred[1:], ref[1:], roi=lesion[1:])
    assert bias.aggregate("none").flatten().tolist() == pytest.approx(biases + biases[1:], rel=1e-12)
    # aggregate(): MONAI's do_metric_reduction averages in float32
    assert bias.aggregate().item() == pytest.approx((biases[0] + 2 * biases[1]) / 3, rel=1e-6)
    for ddof in (0, 1):
        cov = EnsembleCoVMetric(ddof=ddof)
        cov(y_pred, liver.float())
        cov(y_pred[:1], roi=liver[:1])
        assert cov.aggregate("none").flatten().tolist() == pytest.approx(covs[ddof] + covs[ddof][:1], rel=1e-12)
        assert cov.aggregate().item() == pytest.approx((2 * covs[ddof][0] + covs[ddof][1]) / 3, rel=1e-6)

    def step(engine, i):
        return {"x": y_pred[i : i + 1], "ref": ref[i : i + 1], "lesion": lesion[i : i + 1].float(),
                "liver": liver[i : i + 1].float()}  # fmt: skip

    engine = Engine(step)
    EnsembleBiasHandler(output_transform=lambda o: (o["x"], torch.cat([o["ref"], o["lesion"]], 1))).attach(
        engine, "lesion_bias"
    )
    EnsembleCoVHandler(output_transform=lambda o: (o["x"], o["liver"])).attach(engine, "liver_cov")
    EnsembleCoVHandler(ddof=0, output_transform=lambda o: (o["x"], o["liver"])).attach(engine, "liver_cov_ddof0")
    engine.run([0, 1], max_epochs=1)
    assert engine.state.metric_details["lesion_bias"].flatten().tolist() == pytest.approx(biases, rel=1e-12)
    assert engine.state.metrics["lesion_bias"] == pytest.approx(sum(biases) / 2, rel=1e-6)
    assert engine.state.metric_details["liver_cov"].flatten().tolist() == pytest.approx(covs[1], rel=1e-12)
    assert engine.state.metrics["liver_cov"] == pytest.approx(sum(covs[1]) / 2, rel=1e-6)
    assert engine.state.metrics["liver_cov_ddof0"] == pytest.approx(sum(covs[0]) / 2, rel=1e-6)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ensemble_bias(R[:1], REF, ROI), r"need at least 2 realisations .* got shape \(1, 4\)"),
        (lambda: ensemble_cov(R[:1], ROI), r"need at least 2 realisations .* got shape \(1, 4\)"),
        (lambda: ensemble_bias(R, REF[:3], ROI), r"shape mismatch: realizations\[0\] \(4,\), reference \(3,\), roi \(4,\)"),
        (lambda: ensemble_bias(R, REF, ROI[:2]), r"shape mismatch: realizations\[0\] \(4,\), reference \(4,\), roi \(2,\)"),
        (lambda: ensemble_cov(R, ROI[None]), r"shape mismatch: realizations\[0\] \(4,\), roi \(1, 4\)"),
        (lambda: ensemble_bias(R, REF, np.zeros(4, bool)), r"roi is empty \(no voxel inside, shape \(4,\)\)"),
        (lambda: ensemble_cov(R, np.zeros(4, bool)), r"roi is empty"),
        (lambda: ensemble_bias(R, REF, np.array([0, 2, 0, 0])), r"roi must be a boolean mask \(or hold only 0/1 values\)"),
        (lambda: ensemble_bias(R, np.zeros(4), ROI), r"the reference mean in the ROI is 0"),
        (lambda: ensemble_cov(np.zeros((2, 4)), ROI), r"the ensemble mean in the ROI is 0"),
        (lambda: roi_rmse(REF, REF[:3], ROI), r"shape mismatch: image \(4,\), reference \(3,\), roi \(4,\)"),
        (lambda: roi_mae(REF, REF, np.zeros(4, bool)), r"roi is empty"),
        (lambda: roi_bias(REF, REF[:3], ROI), r"shape mismatch: image \(4,\), reference \(3,\), roi \(4,\)"),
        (lambda: roi_cov(REF, ROI[:2]), r"shape mismatch: image \(4,\), roi \(2,\)"),
        (lambda: roi_bias(REF, REF, np.zeros(4, bool)), r"roi is empty"),
        (lambda: roi_cov(REF, np.zeros(4, bool)), r"roi is empty"),
        (lambda: roi_bias(REF, np.array([-1.0, 1.0, 5.0, 5.0]), ROI), r"the reference mean in the ROI is 0"),
        (lambda: roi_cov(np.array([-1.0, 1.0, 5.0, 5.0]), ROI), r"the image mean in the ROI is 0"),
        (lambda: roi_cov(REF, np.array([1, 0, 0, 0])), r"the ROI has 1 voxel\(s\); a standard deviation with ddof=1"),
        (lambda: roi_cov(REF, ROI, ddof=2), r"the ROI has 2 voxel\(s\); a standard deviation with ddof=2"),
        (lambda: body_psnr(REF, REF, ROI, max_val=0), r"max_val must be finite and > 0, got 0.0"),
        (lambda: body_ssim(REF, REF, ROI), r"body_ssim needs 2D or 3D images \[\*spatial\], got shape \(4,\)"),
        (lambda: body_ssim(np.ones((4, 4)), np.ones((4, 4)), np.ones((4, 4), bool)), r"win_size \(11, 11\) is larger than the image shape \(4, 4\)"),
        (lambda: body_ssim(np.ones((8, 8)), np.ones((8, 8)), np.ones((8, 8), bool), win_size=3), r"data_range must be finite and > 0, got 0.0"),
    ],
)
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_body_ssim_body_only_at_border():
    body = np.zeros((8, 8), bool)
    body[0, 0] = True
    with pytest.raises(ValueError, match=r"body has no voxel at least win_size // 2 = \[1, 1\] from the border"):
        body_ssim(np.random.rand(8, 8), np.random.rand(8, 8), body, data_range=1.0, win_size=3)


# ---------------------------------------------------------------- Cumulative metrics


def batch():
    """Two studies: study 0 is the hand-computed example, study 1 has bias 0 and CoV 0 (identical realisations)."""
    y_pred = torch.tensor(np.stack([R, np.stack([REF, REF])]))  # [B=2, R=2, 4]
    ref = torch.tensor(np.stack([REF, REF]))[:, None]  # [2, 1, 4]
    roi = torch.tensor(np.stack([ROI, ROI]))[:, None]  # [2, 1, 4]
    return y_pred, ref, roi


def test_ensemble_metrics_cumulative():
    y_pred, ref, roi = batch()
    bias = EnsembleBiasMetric()
    bias(y_pred, torch.cat([ref, roi.double()], dim=1))  # ROI packed as the last channel of y
    bias(y_pred[:1], ref[:1], roi=roi[:1])  # or passed as roi=
    assert bias.get_buffer().shape == (3, 1)
    assert bias.aggregate().item() == pytest.approx((25.0 + 0.0 + 25.0) / 3)
    assert bias.aggregate("none").flatten().tolist() == pytest.approx([25.0, 0.0, 25.0])
    bias.reset()
    bias(y_pred[1:], torch.cat([ref, roi.double()], dim=1)[1:])
    assert bias.aggregate().item() == pytest.approx(0.0)

    cov = EnsembleCoVMetric(get_not_nans=True)
    cov(y_pred, roi.float())
    cov(y_pred, roi=roi)
    value, not_nans = cov.aggregate()
    assert value.item() == pytest.approx(100 * math.sqrt(2) / 2.5 / 2) and not_nans.item() == 4
    assert EnsembleCoVMetric(ddof=0)(y_pred[:1], roi[:1]).item() == pytest.approx(40.0)


def test_roi_metrics_cumulative():
    image = torch.tensor([[[1.0, 2.0, 3.0, 100.0]]])
    y = torch.tensor([[[1.0, 4.0, 3.0, 0.0], [1, 1, 1, 0]]])
    rmse, mae = ROIRMSEMetric(), ROIMAEMetric()
    rmse(image, y)
    mae(image, y)
    assert rmse.aggregate().item() == pytest.approx(math.sqrt(4 / 3)) and mae.aggregate().item() == pytest.approx(2 / 3)
    ref = torch.ones(2, 1, 12, 12)
    body = torch.ones(2, 1, 12, 12)
    psnr = BodyPSNRMetric(max_val=1.0)
    psnr(ref + 0.1, torch.cat([ref, body], 1))
    assert psnr.aggregate().item() == pytest.approx(20.0)
    ssim = BodySSIMMetric(data_range=1.0, win_size=5)
    ssim(ref, torch.cat([ref, body], 1))
    assert ssim.aggregate().item() == pytest.approx(1.0)


def test_cumulative_layout_errors():
    y_pred, ref, roi = batch()
    with pytest.raises(ValueError, match=r"without roi=..., y must be \[B, 2, \*spatial\] .* got y of shape \(2, 1, 4\)"):
        EnsembleBiasMetric()(y_pred, ref)
    with pytest.raises(ValueError, match=r"EnsembleBiasMetric needs the reference image as y"):
        EnsembleBiasMetric()(y_pred, None, roi=roi)
    with pytest.raises(ValueError, match=r"without roi=..., y must be \[B, 1, \*spatial\] .* got y of shape None"):
        EnsembleCoVMetric()(y_pred)
    with pytest.raises(ValueError, match=r"give the ROI mask either as y or as roi, not both"):
        EnsembleCoVMetric()(y_pred, roi, roi=roi)
    with pytest.raises(ValueError, match=r"batch sizes differ: y_pred \(1, 2, 4\), y \(2, 1, 4\), roi \(2, 1, 4\)"):
        EnsembleBiasMetric()(y_pred[:1], ref, roi=roi)
    with pytest.raises(ValueError, match=r"shape mismatch: y \(1, 4\), roi \(1, 3\)"):
        EnsembleBiasMetric()(y_pred, ref, roi=roi[..., :3])
    with pytest.raises(ValueError, match=r"need at least 2 realisations"):
        EnsembleCoVMetric()(y_pred[:, :1], roi)
    with pytest.raises(ValueError, match=r"has no values to aggregate"):
        EnsembleCoVMetric().aggregate()


# ---------------------------------------------------------------- Ignite


def test_handlers_in_ignite_engine():
    y_pred, ref, roi = batch()

    def step(engine, i):
        return {"realizations": y_pred[i : i + 1], "ref": ref[i : i + 1], "roi": roi[i : i + 1].double()}

    engine = Engine(step)
    EnsembleCoVHandler(output_transform=lambda o: (o["realizations"], o["roi"])).attach(engine, "liver_cov")
    EnsembleBiasHandler(output_transform=lambda o: (o["realizations"], torch.cat([o["ref"], o["roi"]], 1))).attach(
        engine, "lesion_bias"
    )
    ROIRMSEHandler(output_transform=lambda o: (o["realizations"][:, :1], torch.cat([o["ref"], o["roi"]], 1))).attach(
        engine, "rmse"
    )
    engine.run([0, 1], max_epochs=1)
    assert engine.state.metrics["liver_cov"] == pytest.approx(100 * math.sqrt(2) / 2.5 / 2)
    assert engine.state.metrics["lesion_bias"] == pytest.approx(12.5)
    assert engine.state.metrics["rmse"] == pytest.approx((math.sqrt(0.5) + 0.0) / 2)
    assert engine.state.metric_details["lesion_bias"].flatten().tolist() == pytest.approx([25.0, 0.0])
