"""Kernel Sparsity and Entropy (KSE) scores of a convolution's input channels (Li et al., CVPR 2019).

For a conv weight ``W`` of shape ``(N_out, C_in, *kernel)`` and input channel ``c``:

- sparsity ``s_c = sum_n |W[n, c]|_1``;
- density ``dm(W[i, c])`` = sum of Euclidean distances from kernel ``W[i, c]`` to its ``min(k, N_out - 1)`` nearest
  other kernels of the same input channel; ``p_i = dm_i / sum_j dm_j``; entropy ``e_c = -sum_i p_i log2 p_i``
  (0 when ``N_out == 1`` or every ``dm`` is 0);
- ``s`` and ``e`` are min-max normalised over the input channels, ``KSE = sqrt(s / (1 + alpha e))``, and KSE is
  min-max normalised again.

A low score marks input feature map ``c`` as carrying little information to this layer (Chen et al., Eq. 1-3).

This follows the paper. The public KSE code (yuchaoli/KSE, ``utils/utils.py``) reshapes an already transposed
array before the entropy, so for square layers it scores output filters instead of input channels.
"""

from __future__ import annotations

import torch

__all__ = ["kse_scores"]


def _min_max(x: torch.Tensor, constant_value: float) -> torch.Tensor:
    """Scale to [0, 1]; a constant vector (nothing stands out) becomes ``constant_value``."""
    span = x.max() - x.min()
    if span == 0:
        return torch.full_like(x, constant_value)
    return (x - x.min()) / span


def kse_scores(weight: torch.Tensor, alpha: float = 1.0, k: int = 5) -> torch.Tensor:
    """KSE score of every input channel of a convolution.

    Args:
        weight: conv weight ``(N_out, C_in, *kernel)`` (any number of spatial kernel dims, ``groups=1``).
        alpha: weight of the entropy term (1 in the paper).
        k: nearest neighbours per kernel in the density metric (5 as in Li et al.).

    Returns:
        float64 tensor ``[C_in]`` with values in [0, 1]; 0 = most redundant input channel. All ones when every
        channel scores the same.
    """
    if weight.dim() < 3:
        raise ValueError(f"kse_scores: weight must have shape (N_out, C_in, *kernel), got {tuple(weight.shape)}.")
    if not torch.isfinite(weight).all():
        raise ValueError("kse_scores: weight contains NaN or inf values.")
    if k < 1 or alpha < 0:
        raise ValueError(f"kse_scores: need k >= 1 and alpha >= 0, got k={k}, alpha={alpha}.")
    n_out, c_in = weight.shape[:2]
    # [C_in, N_out, K]: the N_out kernels of each input channel as points in R^K.
    kernels = weight.detach().to(torch.float64).reshape(n_out, c_in, -1).transpose(0, 1)
    sparsity = kernels.abs().sum(dim=(1, 2))

    neighbours = min(k, n_out - 1)
    if neighbours == 0:
        entropy = torch.zeros_like(sparsity)
    else:
        # Exact distances from differences: the |a|^2 + |b|^2 - 2ab shortcut gives identical kernels a non-zero
        # distance and so a wrong entropy.
        dist = torch.cdist(kernels, kernels, compute_mode="donot_use_mm_for_euclid_dist")
        dist.diagonal(dim1=1, dim2=2).fill_(float("inf"))
        density = dist.topk(neighbours, dim=2, largest=False).values.sum(dim=2)  # [C_in, N_out]
        total = density.sum(dim=1, keepdim=True)
        p = torch.where(total > 0, density / total.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
        entropy = -torch.xlogy(p, p).sum(dim=1) / torch.log(torch.tensor(2.0, dtype=torch.float64))

    s = _min_max(sparsity, 0.0)
    e = _min_max(entropy, 0.0)
    return _min_max(torch.sqrt(s / (1 + alpha * e)), 1.0)
