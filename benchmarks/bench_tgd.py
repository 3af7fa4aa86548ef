"""Benchmark KSE scoring and the TGD training-step overhead against baselines, side by side in one process.

Run: ``python benchmarks/bench_tgd.py`` (about 3-5 minutes on 2 CPU cores with the defaults); ``--help`` for sizes.

1. KSE: :func:`monai_tgd.kse.kse_scores` vs a straightforward per-kernel k-NN loop in numpy (the BASELINE below,
   the way the public KSE code, yuchaoli/KSE ``utils/utils.py``, loops over kernels), on the paper's 64x64x3x3 layer
   and on every conv of a paper-size DnCNN. The max abs difference of the scores is printed as a sanity check.
2. Training step, for the paper-size DnCNN and a 2.5D MONAI ``BasicUNet`` (the bundle's ``configs/basic_unet.json``
   network at its default features): a plain AdamW/MSE step against TGD steps (``mode="activation"``, the default,
   and ``mode="parameter"``), on the same batch, with masks retraining about half of the channels. A second plain
   copy of the network, timed exactly like the others, is the A/A control: its ratio to the first plain copy is the
   noise floor of the run and should sit within 3 % of 1.00; the target for TGD is within 5 % of plain.

   Timing: every variant first runs ``--warmup`` untimed steps; then ``--rounds`` rounds, each timing ``--steps``
   consecutive steps of every variant in a rotating (and every other round reversed) order, so that the drift of a
   shared machine falls on all variants alike. A variant's time in a round is the median of its steps; the ratio
   reported is the median over rounds of (variant / plain) in the same round (paired), next to the ratio of the
   overall medians.

Denormal floats are flushed to zero, as in the bundle's fine-tuning and online workflows (``--keep-denormals``: not):
the variants train apart, and near-dead channels of one variant going denormal would otherwise time the CPU's slow
denormal path, not TGD (measured on BasicUNet, activation mode: 1.12x plain with denormals kept, 1.07x flushed).

TGD registers a *global* optimizer step post-hook, so while a TGD is installed every optimizer step in the process
(the plain one included) would pay for its check. Each TGD variant is therefore installed only for its own timed
block and removed afterwards (outside the timing, with the traced graph reused); installing and removing are not
part of the step time.
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
def _damped(net: torch.nn.Module, args: argparse.Namespace) -> torch.nn.Module:
    """Damp ~half of the input channels of every conv reading hidden maps, as a trained network with near-dead
    feature maps, so that ``kse_masks(net, 0.3)`` retrains a good part of the channels."""
    gen = torch.Generator().manual_seed(args.seed + 1)
    with torch.no_grad():
        for r in conv_chain(net).readers:
            w = r.conv.weight if not r.conv.transposed else r.conv.weight.transpose(0, 1)
            dead = torch.randperm(w.shape[1], generator=gen)[: w.shape[1] // 2]
            w[:, dead] *= args.damp
    return net


def _damped_dncnn(args: argparse.Namespace) -> DnCNN:
    torch.manual_seed(args.seed)
    return _damped(DnCNN(spatial_dims=2, in_channels=3, out_channels=1, features=args.features,
                         num_layers=args.layers), args)


def _damped_basic_unet(args: argparse.Namespace) -> torch.nn.Module:
    from monai.networks.nets import BasicUNet

    torch.manual_seed(args.seed)
    return _damped(BasicUNet(spatial_dims=2, in_channels=3, out_channels=1, features=tuple(args.unet_features)), args)


def bench_steps(args: argparse.Namespace, label: str, base: torch.nn.Module) -> None:
    chain = conv_chain(base)
    masks = kse_masks(base, args.threshold, chain=chain)
    summary = mask_summary(base, masks, chain=chain)
    channels = float(torch.cat(list(masks.values())).float().mean())
    print(f"\n[2] training step, {label}, batch {args.batch}x3x{args.size}x{args.size}, AdamW lr={args.lr}, MSE")
    print(f"  masks: kse_masks(net, {args.threshold}) retrains {100 * channels:.1f}% of hidden channels, "
          f"{100 * summary['overall']:.1f}% of hidden conv+norm parameters (output conv frozen)")
    gen = torch.Generator().manual_seed(args.seed + 2)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=gen)
    y = x[:, 1:2] + 0.05 * torch.randn(args.batch, 1, args.size, args.size, generator=gen)
    variants = {
        "plain": None,
        "plain again (A/A)": None,  # a second plain network: its ratio shows the noise floor of this run
        "TGD activation": dict(mode="activation"),
        "TGD parameter": dict(mode="parameter"),
    }
    state = {}
    for name, kwargs in variants.items():
        net = copy.deepcopy(base).train()
        state[name] = (net, torch.optim.AdamW(net.parameters(), lr=args.lr), kwargs, conv_chain(net))

    def run(name: str, steps: int) -> list[float]:
        net, opt, kwargs, net_chain = state[name]
        gc.collect()  # for every variant alike
        tgd = TGD(net, masks, chain=net_chain, **kwargs) if kwargs is not None else None  # for this block only
        times = []
        try:
            for _ in range(steps):
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                F.mse_loss(net(x), y).backward()
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
    block = {name: [] for name in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
        if r % 2:
            order.reverse()
        for name in order:
            t = run(name, args.steps)
            per_step[name] += t
            block[name].append(statistics.median(t))
    plain = statistics.median(per_step["plain"])
    print(f"  {args.rounds} rounds x {args.steps} steps per variant, rotating order, after {args.warmup} warm-up steps")
    print(f"  {'variant':<20}{'median/step':>12}{'ratio':>9}{'paired':>9}  (paired: median over rounds of the "
          "round's ratio to plain)")
    for name in names:
        med = statistics.median(per_step[name])
        paired = statistics.median(a / b for a, b in zip(block[name], block["plain"]))
        if name == "plain":
            flag = ""
        elif name.startswith("plain"):
            flag = "  control ok" if abs(paired - 1) <= 0.03 else "  control off by > 3 %: the machine is noisy"
        else:
            flag = "  ok" if paired <= 1.05 else "  > 1.05"
        print(f"  {name:<20}{_ms(med):>12}{med / plain:>8.3f}x{paired:>8.3f}x{flag}")


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--features", type=int, default=64, help="DnCNN feature maps (64 in the paper)")
    p.add_argument("--layers", type=int, default=8, help="DnCNN conv layers (8 in the paper)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=64, help="patch height = width")
    p.add_argument("--unet-features", type=int, nargs=6, default=[32, 32, 64, 128, 256, 32],
                   help="BasicUNet features (MONAI's default)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threshold", type=float, default=0.3, help="KSE threshold phi")
    p.add_argument("--damp", type=float, default=0.05, help="scale of the near-dead input channels' weights")
    p.add_argument("--warmup", type=int, default=3, help="warm-up steps per variant")
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds (each times every variant)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    p.add_argument("--nets", nargs="+", default=["dncnn", "basic_unet"], choices=["dncnn", "basic_unet"])
    p.add_argument("--kse-repeats", type=int, default=10, help="timed repeats of kse_scores (baseline: 1/5 of it)")
    p.add_argument("--keep-denormals", action="store_true", help="do not flush denormal floats to zero (the "
                   "bundle's TGD workflows flush them: torch.set_flush_denormal(True) in their initialize)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default); 1 (default) is steadier on a "
                   "machine shared with other jobs, where OpenMP threads wait for each other on busy cores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-kse", action="store_true")
    p.add_argument("--skip-steps", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    flushed = not args.keep_denormals and torch.set_flush_denormal(True)

    print(
        f"bench_tgd: torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} threads "
        f"(interop {torch.get_num_interop_threads()}), denormals {'flushed' if flushed else 'kept'}"
    )
    if not args.skip_kse:
        bench_kse(args)
    if not args.skip_steps:
        if "dncnn" in args.nets:
            bench_steps(args, f"DnCNN features={args.features} layers={args.layers}", _damped_dncnn(args))
        if "basic_unet" in args.nets:
            bench_steps(args, f"2.5D BasicUNet features={tuple(args.unet_features)}", _damped_basic_unet(args))


if __name__ == "__main__":
    main()
