"""Benchmark: CPU time of a training step and of inference with and without flushing denormal floats to zero.

Run: ``python benchmarks/bench_denormal.py [--checkpoint PATH] [--repeats 7]`` (about 1-2 minutes on 2 CPU cores).

Why: a DnCNN pretrained with weight decay for long carries near-dead channels whose activations and gradients
become denormal (subnormal) floats, which x86 CPUs process tens of times slower than normal ones. The bundle's
fine-tuning, evaluation and inference workflows therefore call ``torch.set_flush_denormal(True)`` in
``initialize``. This script measures what that buys on a given checkpoint (default: the shipped v1-net), in one
process: the baseline (flush off), an A/A control (flush off again, timed the same way: its ratio shows the machine's
noise) and flush on, in a rotating order over ``--repeats`` rounds; it prints the median time per call and the ratio
to the baseline.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from monai_tgd.networks import DnCNN

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "pet_tgd_denoising"


def _network(checkpoint: Path) -> DnCNN:
    net = DnCNN(spatial_dims=2, in_channels=3, out_channels=1, features=32, num_layers=8)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    net.load_state_dict(state.get("network", state))
    return net


def _train_step(net: DnCNN, state: dict, x: torch.Tensor, y: torch.Tensor) -> None:
    net.load_state_dict(state)  # every timed step starts from the same weights
    net.train()
    opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=1e-3)
    opt.zero_grad()
    torch.nn.functional.mse_loss(net(x), y).backward()
    opt.step()


@torch.no_grad()
def _inference(net: DnCNN, state: dict, x: torch.Tensor, y: torch.Tensor) -> None:
    net.eval()
    net(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=BUNDLE / "models" / "model_v1.pt")
    parser.add_argument("--repeats", type=int, default=7, help="rounds; each times every variant once")
    parser.add_argument("--batch", type=int, default=16, help="slabs of 64 x 64 per training step")
    args = parser.parse_args()
    torch.manual_seed(0)
    net = _network(args.checkpoint)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.rand(args.batch, 3, 64, 64) * 3, torch.rand(args.batch, 1, 64, 64) * 3
    big = torch.rand(4, 3, 128, 128) * 3  # inference: 4 whole 128 x 128 slabs
    variants = [("flush off (baseline)", False), ("flush off (A/A control)", False), ("flush on", True)]
    for task, fn, inputs in (("training step", _train_step, (x, y)), ("inference", _inference, (big, None))):
        times: dict[str, list[float]] = {name: [] for name, _ in variants}
        for r in range(args.repeats):
            for name, flush in variants[r % 3 :] + variants[: r % 3]:  # rotating order spreads machine drift
                torch.set_flush_denormal(flush)
                fn(net, state, *inputs)  # warm-up of this setting
                start = time.perf_counter()
                fn(net, state, *inputs)
                times[name].append(time.perf_counter() - start)
        torch.set_flush_denormal(False)
        base = statistics.median(times[variants[0][0]])
        print(f"\n{task} ({args.checkpoint.name}, torch {torch.__version__}, {torch.get_num_threads()} threads)")
        print("| variant | median s | ratio to baseline |\n|---|---|---|")
        for name, _ in variants:
            med = statistics.median(times[name])
            print(f"| {name} | {med:.4f} | {med / base:.2f} |")


if __name__ == "__main__":
    main()
