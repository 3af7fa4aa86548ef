"""Benchmark Slab25DInferer against a naive all-slabs-at-once 2.5D inference, in one process.

A small DnCNN-like 2D network (3 input channels = slices z-1, z, z+1) is run over a whole-body sized volume
[1, 1, 192, 192, 600] both ways; the script prints wall time and peak resident memory above the baseline for each,
and their ratios. Peak memory is sampled from /proc/self/statm by a background thread every millisecond, so it is
the process high-water mark during the run (Linux only), not an allocator count. Not a test.

    python benchmarks/bench_inferer.py [--depth 600] [--sw-batch-size 16] [--size 192]
"""

from __future__ import annotations

import argparse
import gc
import os
import threading
import time

import torch
from torch import nn

from monai_tgd.inferers import Slab25DInferer
from monai_tgd.transforms import extract_slabs

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """Context manager sampling the resident set size; ``peak`` is the maximum above the entry value, in bytes."""

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.base = self.peak_abs = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.001):
            self.peak_abs = max(self.peak_abs, rss_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_abs = max(self.peak_abs, rss_bytes())
        self.peak = self.peak_abs - self.base


def dncnn(features: int = 16, layers: int = 5) -> nn.Module:
    """DnCNN-like residual 2D denoiser: 3 slices in, centre-slice correction out."""
    body = [nn.Conv2d(3, features, 3, padding=1), nn.ReLU(inplace=True)]
    for _ in range(layers - 2):
        body += [nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True)]
    body.append(nn.Conv2d(features, 1, 3, padding=1))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(*body)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, 1:2] - self.body(x)

    return Net().eval()


def naive(volume: torch.Tensor, net: nn.Module) -> torch.Tensor:
    """All slabs at once: [D, 3, H, W] through the network in one batch."""
    slabs = extract_slabs(volume[0], torch.arange(volume.shape[-1]))
    return net(slabs).permute(1, 2, 3, 0)[None]


def measure(fn):
    with PeakRSS() as mem:
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
    return out, seconds, mem.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=192, help="in-plane size H = W")
    parser.add_argument("--depth", type=int, default=600, help="number of slices D")
    parser.add_argument("--sw-batch-size", type=int, default=16)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()

    torch.manual_seed(0)
    volume = torch.rand(1, 1, args.size, args.size, args.depth)
    net = dncnn(args.features, args.layers)
    inferer = Slab25DInferer(sw_batch_size=args.sw_batch_size)
    print(f"volume {tuple(volume.shape)} float32 ({volume.numel() * 4 / 2**20:.0f} MiB), "
          f"DnCNN-like {args.layers} layers x {args.features} features, torch threads {torch.get_num_threads()}")
    with torch.no_grad():
        net(torch.rand(2, 3, args.size, args.size))  # warm-up
        ours, t_ours, m_ours = measure(lambda: inferer(volume, net))
        base, t_base, m_base = measure(lambda: naive(volume, net))
    mib = 2**20
    print(f"{'':28s}{'time [s]':>10s}{'peak RSS above baseline [MiB]':>32s}")
    print(f"{'Slab25DInferer (sw=' + str(args.sw_batch_size) + ')':28s}{t_ours:10.2f}{m_ours / mib:32.0f}")
    print(f"{'naive all slabs at once':28s}{t_base:10.2f}{m_base / mib:32.0f}")
    print(f"{'ratio inferer / naive':28s}{t_ours / t_base:10.2f}{m_ours / max(m_base, 1):32.3f}")
    print(f"max |difference| between the two outputs: {(ours - base).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
