"""Benchmark KSE scoring and the TGD training-step overhead against baselines, side by side in one process.

Run: ``python benchmarks/bench_tgd.py`` (about 1-2 minutes on 2 CPU cores with the defaults); ``--help`` for sizes.

1. KSE: :func:`monai_tgd.kse.kse_scores` vs a straightforward per-kernel k-NN loop in numpy (the BASELINE below,
   the way the public KSE code, yuchaoli/KSE ``utils/utils.py``, loops over kernels), on the paper's 64x64x3x3 layer
   and on every conv of a paper-size DnCNN. The max abs difference of the scores is printed as a sanity check.
2. Training step: a plain Adam/MSE step vs a TGD step on the same paper-size DnCNN and the same batch, for
   ``mode="activation"``, ``mode="parameter"`` and ``mode="activation", bn_stats="freeze"``. Plain and TGD blocks
   are interleaved in a rotating order to spread the drift of a shared machine over all variants; the median time
   per step and the ratio TGD/plain (target <= 1.05) are reported, plus a second plain network timed the same way
   (A/A control) whose ratio shows how much of a TGD ratio is machine noise.

TGD registers a *global* optimizer step post-hook, so while a TGD is installed every optimizer step in the process
(the plain one included) would pay for its restore. Each TGD variant is therefore installed only for its own timed
block and removed afterwards (outside the timing); installing and removing are not part of the step time.
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from monai_tgd.kse import kse_scores
from monai_tgd.networks import DnCNN
from monai_tgd.tgd import TGD, conv_chain, kse_masks, mask_summary


# --------------------------------------------------------------------------------------------------- KSE baseline
def baseline_kse_scores(weight: torch.Tensor, alpha: float = 1.0, k: int = 5) -> np.ndarray:
    """BASELINE: KSE of every INPUT channel with a per-kernel nearest-neighbour loop in numpy.

    Like the public KSE code (yuchaoli/KSE ``density_entropy``): for each input channel, for each of its ``N_out``
    kernels, the distances to all other kernels of that channel, sorted, the ``k`` nearest summed. Unlike that code
    it scores input channels for every layer shape (the public code's reshape scores output filters of square layers),
    and it uses the same conventions as ``kse_scores`` for the degenerate cases (``min(k, N_out - 1)`` neighbours,
    0 * log 0 = 0, constant vectors after min-max).
    """
    w = weight.detach().cpu().to(torch.float64).numpy()
    n_out, c_in = w.shape[:2]
    x = w.reshape(n_out, c_in, -1)
    neighbours = min(k, n_out - 1)
    sparsity = np.zeros(c_in)
    entropy = np.zeros(c_in)
    for c in range(c_in):
        kernels = x[:, c, :]  # the N_out kernels reading input channel c
        sparsity[c] = np.abs(kernels).sum()
        if neighbours == 0:
            continue
        dms = np.zeros(n_out)
        for i in range(n_out):
            dist = np.sqrt(((kernels - kernels[i]) ** 2).sum(axis=1))
            dist = np.sort(np.delete(dist, i))
            dms[i] = dist[:neighbours].sum()
        total = dms.sum()
        if total > 0:
            p = dms / total
            p = p[p > 0]
            entropy[c] = -(p * np.log2(p)).sum()

    def min_max(v: np.ndarray, constant: float) -> np.ndarray:
        span = v.max() - v.min()
        return np.full_like(v, constant) if span == 0 else (v - v.min()) / span

    s, e = min_max(sparsity, 0.0), min_max(entropy, 0.0)
    return min_max(np.sqrt(s / (1 + alpha * e)), 1.0)


def _time(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_kse(args: argparse.Namespace) -> None:
    print("\n[1] KSE scores: kse_scores vs BASELINE per-kernel numpy k-NN loop (median wall time)")
    gen = torch.Generator().manual_seed(0)
    layer = torch.randn(args.features, args.features, 3, 3, generator=gen)
    net = _damped_dncnn(args)
    rows = [(f"layer {tuple(layer.shape)}", [layer])]
    convs = [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    rows.append((f"DnCNN, all {len(convs)} convs", convs))
    print(f"  {'case':<28}{'kse_scores':>12}{'baseline':>12}{'speed-up':>10}{'max|diff|':>11}")
    for name, weights in rows:
        t_new = _time(lambda: [kse_scores(w) for w in weights], args.kse_repeats)
        t_base = _time(lambda: [baseline_kse_scores(w) for w in weights], max(1, args.kse_repeats // 5))
        diff = max(float(np.abs(kse_scores(w).numpy() - baseline_kse_scores(w)).max()) for w in weights)
        print(f"  {name:<28}{_ms(t_new):>12}{_ms(t_base):>12}{t_base / t_new:>9.1f}x{diff:>11.1e}")
        if diff > 1e-9:
            print(f"  !! kse_scores and the baseline disagree on '{name}' (max abs diff {diff:.3e})")


# ----------------------------------------------------------------------------------------------- training step
def _damped_dncnn(args: argparse.Namespace) -> DnCNN:
    """Paper-size DnCNN whose every conv fed by a hidden conv reads ~half its input channels with tiny weights.

    That mimics a trained network with near-dead feature maps, so ``kse_masks(net, 0.3)`` retrains ~50 %.
    """
    torch.manual_seed(args.seed)
    net = DnCNN(spatial_dims=2, in_channels=3, out_channels=1, features=args.features, num_layers=args.layers)
    gen = torch.Generator().manual_seed(args.seed + 1)
    with torch.no_grad():
        for h in conv_chain(net).hidden:
            c_in = h.consumer.weight.shape[1]
            dead = torch.randperm(c_in, generator=gen)[: c_in // 2]
            h.consumer.weight[:, dead] *= args.damp
    return net


def bench_steps(args: argparse.Namespace) -> None:
    base = _damped_dncnn(args)
    masks = kse_masks(base, args.threshold)
    summary = mask_summary(base, masks)
    channels = float(torch.cat(list(masks.values())).float().mean())
    print(
        f"\n[2] training step, DnCNN features={args.features} layers={args.layers}, batch {args.batch}x3x{args.size}x"
        f"{args.size}, Adam lr={args.lr}, MSE"
    )
    print(
        f"  masks: kse_masks(net, {args.threshold}) retrains {100 * channels:.1f}% of hidden channels, "
        f"{100 * summary['overall']:.1f}% of hidden conv+BN parameters (output conv frozen)"
    )

    gen = torch.Generator().manual_seed(args.seed + 2)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=gen)
    y = x[:, 1:2] + 0.05 * torch.randn(args.batch, 1, args.size, args.size, generator=gen)

    variants = {
        "plain": None,
        "plain again (A/A)": None,  # a second plain network: its ratio shows the noise floor of this run
        "TGD activation": dict(mode="activation"),
        "TGD parameter": dict(mode="parameter"),
        "TGD act+bn freeze": dict(mode="activation", bn_stats="freeze"),
    }
    state = {}
    for name, kwargs in variants.items():
        net = copy.deepcopy(base).train()
        state[name] = (net, torch.optim.Adam(net.parameters(), lr=args.lr), kwargs)

    def run(name: str, steps: int) -> list[float]:
        net, opt, kwargs = state[name]
        gc.collect()  # for every variant alike, so installing TGD (an fx trace) leaves no garbage to the timed steps
        tgd = TGD(net, masks, **kwargs) if kwargs is not None else None  # installed for this block only
        times = []
        try:
            for _ in range(steps):
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                loss = F.mse_loss(net(x), y)
                loss.backward()
                opt.step()
                times.append(time.perf_counter() - t0)
        finally:
            if tgd is not None:
                tgd.remove()
        return times

    names = list(variants)
    for name in names:
        run(name, args.warmup)
    per_step = {name: [] for name in names}
    block_mean = {name: [] for name in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
        if r % 2:
            order.reverse()
        for name in order:
            t = run(name, args.steps)
            per_step[name] += t
            block_mean[name].append(statistics.fmean(t))

    plain = statistics.median(per_step["plain"])
    print(
        f"  {args.rounds} rounds x {args.steps} steps per variant, rotating order, after {args.warmup} warm-up steps"
    )
    print(f"  {'variant':<20}{'median/step':>12}{'TGD/plain':>11}{'paired':>9}  {'(paired = median over rounds of block ratios)'}")
    for name in names:
        med = statistics.median(per_step[name])
        ratio = med / plain
        paired = statistics.median(a / b for a, b in zip(block_mean[name], block_mean["plain"]))
        flag = "" if not name.startswith("TGD") else ("  ok" if ratio <= 1.05 else "  > 1.05")
        print(f"  {name:<20}{_ms(med):>12}{ratio:>10.3f}x{paired:>8.3f}x{flag}")


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--features", type=int, default=64, help="DnCNN feature maps (64 in the paper)")
    p.add_argument("--layers", type=int, default=8, help="DnCNN conv layers (8 in the paper)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=64, help="patch height = width")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threshold", type=float, default=0.3, help="KSE threshold phi")
    p.add_argument("--damp", type=float, default=0.05, help="scale of the near-dead input channels' weights")
    p.add_argument("--warmup", type=int, default=1, help="warm-up steps per variant")
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds (each times every variant)")
    p.add_argument("--steps", type=int, default=1, help="timed steps per variant per round")
    p.add_argument("--kse-repeats", type=int, default=10, help="timed repeats of kse_scores (baseline: 1/5 of it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-kse", action="store_true")
    p.add_argument("--skip-steps", action="store_true")
    args = p.parse_args()

    print(
        f"bench_tgd: torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} threads "
        f"(interop {torch.get_num_interop_threads()})"
    )
    if not args.skip_kse:
        bench_kse(args)
    if not args.skip_steps:
        bench_steps(args)


if __name__ == "__main__":
    main()
