"""KSE against a straightforward loop over input channels and kernels (the formula as written, numpy, float64)."""

import math

import numpy as np
import pytest
import torch

from monai_tgd.kse import kse_scores


def reference_kse(weight: np.ndarray, alpha: float = 1.0, k: int = 5) -> np.ndarray:
    n_out, c_in = weight.shape[:2]
    w = weight.astype(np.float64).reshape(n_out, c_in, -1)
    s = np.array([sum(np.abs(w[n, c]).sum() for n in range(n_out)) for c in range(c_in)])
    e = np.zeros(c_in)
    for c in range(c_in):
        if n_out == 1:
            continue
        dm = []
        for i in range(n_out):
            d = sorted(math.sqrt(((w[i, c] - w[j, c]) ** 2).sum()) for j in range(n_out) if j != i)
            dm.append(sum(d[: min(k, n_out - 1)]))
        total = sum(dm)
        if total == 0:
            continue
        e[c] = -sum((x / total) * math.log2(x / total) for x in dm if x > 0)

    def norm(v, const):
        return np.full_like(v, const) if v.max() == v.min() else (v - v.min()) / (v.max() - v.min())

    return norm(np.sqrt(norm(s, 0.0) / (1 + alpha * norm(e, 0.0))), 1.0)


@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (5, 4, 3, 3), (3, 6, 3, 3, 3), (64, 64, 3, 3)])
@pytest.mark.parametrize("alpha, k", [(1.0, 5), (0.5, 2)])
def test_matches_reference(shape, alpha, k):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    got = kse_scores(w, alpha=alpha, k=k)
    assert got.shape == (shape[1],) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), reference_kse(w.numpy(), alpha, k), rtol=1e-12, atol=1e-12)
    assert got.min() == 0 and got.max() == 1


def test_dead_and_identical_kernels():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(12, 6, 3, 3, generator=g)
    w[:, 0] = 0  # a dead input channel: no sparsity, no entropy
    w[:, 1] = torch.randn(3, 3, generator=g)  # all kernels identical: dm = 0 exactly -> entropy 0
    w[:, 2] *= 1e-3  # near-dead
    got = kse_scores(w)
    np.testing.assert_allclose(got.numpy(), reference_kse(w.numpy()), rtol=1e-12, atol=1e-12)
    assert got[0] == 0 and got[2] < 0.05
    assert got.argsort()[:2].tolist() == [0, 2]


def test_identical_kernels_have_zero_entropy_exactly():
    # Channel 0: 8 identical kernels (dm = 0 exactly -> e = 0), channel 1: the same values permuted (same sparsity,
    # e > 0), channel 2: dead. Expected KSE = sqrt([1, 1 / (1 + 1), 0]). The |a|^2+|b|^2-2ab shortcut gives identical
    # kernels rounding-noise distances whose normalised entropy is near the maximum, log2(8).
    base = torch.linspace(0.1, 0.9, 9, dtype=torch.float64)
    perms = [base[torch.randperm(9, generator=torch.Generator().manual_seed(n))] for n in range(8)]
    w = torch.stack([torch.stack([base, perm, torch.zeros(9, dtype=torch.float64)]) for perm in perms]).reshape(8, 3, 3, 3)
    np.testing.assert_allclose(kse_scores(w).numpy(), [1.0, math.sqrt(0.5), 0.0], rtol=1e-14)


def test_constant_scores_flag_nothing():
    w = torch.ones(4, 3, 3, 3)  # every channel identical
    assert kse_scores(w).tolist() == [1.0, 1.0, 1.0]
    assert kse_scores(torch.zeros(4, 3, 3, 3)).tolist() == [1.0, 1.0, 1.0]


def test_single_output_kernel_has_no_entropy():
    w = torch.tensor([1.0, 2.0, 4.0]).view(1, 3, 1, 1)
    np.testing.assert_allclose(kse_scores(w).numpy(), np.sqrt([0.0, 1 / 3, 1.0]) / 1.0, rtol=1e-12)


@pytest.mark.parametrize(
    "weight, kwargs, match",
    [
        (torch.ones(3, 3), {}, r"shape \(N_out, C_in, \*kernel\)"),
        (torch.full((2, 2, 3, 3), float("nan")), {}, "NaN or inf"),
        (torch.ones(2, 2, 3, 3), {"k": 0}, "k >= 1"),
        (torch.ones(2, 2, 3, 3), {"alpha": -1.0}, "alpha >= 0"),
    ],
)
def test_errors(weight, kwargs, match):
    with pytest.raises(ValueError, match=match):
        kse_scores(weight, **kwargs)
