"""TGD under DistributedDataParallel (2 CPU processes, gloo) and under CPU autocast + GradScaler.

What must hold in both settings, after EVERY optimizer step (checked there, before ``TGD.remove()`` copies the frozen
rows back once more): the frozen rows of every hidden conv (weight, bias), of its BN (weight, bias and, with
``bn_stats="freeze"``, running mean/var), and the whole output conv are bit-identical to their values at install. By
the end every retrained row moved, and under DDP both ranks hold identical parameters although each rank sees
different data.
"""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from monai_tgd.networks import DnCNN
from monai_tgd.tgd import TGD, conv_chain

from .conftest import assert_frozen_rows_kept, tgd_frozen_rows

WORLD_SIZE = 2
FEATURES, LAYERS = 8, 4
STEPS = 3
SPAWN_TIMEOUT = 120  # seconds for the whole group of processes; a hang fails the test instead of blocking CI

# (name, factory, bn_stats): weight decay and momentum move frozen rows unless TGD restores them after the step.
OPTIMIZERS = (
    ("adam", lambda p: torch.optim.Adam(p, lr=1e-2), "update"),
    ("adamw", lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1), "freeze"),
    ("sgd", lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, weight_decay=1e-2), "update"),
)


def _net(seed: int = 0) -> DnCNN:
    torch.manual_seed(seed)
    return DnCNN(spatial_dims=2, in_channels=3, out_channels=1, features=FEATURES, num_layers=LAYERS)


def _masks(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Deterministic masks retraining every other channel (shifted per layer), so half the channels are frozen."""
    return {h.name: (torch.arange(h.conv.out_channels) + i) % 2 == 0 for i, h in enumerate(conv_chain(net).hidden)}


def _batch(gen: torch.Generator, batch: int = 4, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(batch, 3, size, size, generator=gen)
    return x, x[:, 1:2] * 0.5 + 0.1 * torch.randn(batch, 1, size, size, generator=gen)


def _check_retrained_moved(current: dict[str, torch.Tensor], initial: dict[str, torch.Tensor],
                           masks: dict[str, torch.Tensor], bn_stats: str, where: str) -> None:  # fmt: skip
    """Every retrained row of every masked tensor (BN running stats too with ``bn_stats="freeze"``) changed."""
    for name, frozen in tgd_frozen_rows(initial, masks, bn_stats).items():
        if name not in current:  # the DDP ranks save parameters only
            continue
        retrain = ~frozen
        moved = (current[name][retrain] != initial[name][retrain]).reshape(int(retrain.sum()), -1).any(dim=1)
        assert moved.all(), f"{where}: retrained rows {retrain.nonzero().flatten()[~moved].tolist()} of {name} did not change"


# ------------------------------------------------------------------------------------------------------------ DDP
def _ddp_worker(rank: int, init_method: str, mode: str, out_dir: str) -> None:
    """One rank: for each optimizer, train a DDP-wrapped DnCNN under TGD on rank-specific data, check, save."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=init_method, rank=rank, world_size=WORLD_SIZE, timeout=datetime.timedelta(seconds=60)
    )
    try:
        for opt_name, make_opt, bn_stats in OPTIMIZERS:
            where = f"rank {rank}, mode={mode}, {opt_name}, bn_stats={bn_stats}"
            net = _net(seed=0)  # the same initial weights on every rank
            initial = {k: v.detach().clone() for k, v in net.state_dict().items()}
            masks = _masks(net)
            ddp = DistributedDataParallel(net)
            tgd = TGD(ddp, masks, mode=mode, bn_stats=bn_stats)
            try:
                opt = make_opt(ddp.parameters())
                gen = torch.Generator().manual_seed(1000 + rank)  # different data per rank
                for step in range(STEPS):
                    x, y = _batch(gen)
                    opt.zero_grad()
                    F.mse_loss(ddp(x), y).backward()
                    opt.step()
                    # The guarantee right after the step, on this rank, while TGD is installed.
                    assert_frozen_rows_kept(initial, net.state_dict(), masks, bn_stats, where=f"{where}, step {step}")
                _check_retrained_moved(net.state_dict(), initial, masks, bn_stats, where)
            finally:
                tgd.remove()

            # Both ranks must hold the same parameters (DDP averages the masked gradients; TGD restores the same rows).
            flat = torch.cat([p.detach().flatten() for p in net.parameters()])
            gathered = [torch.empty_like(flat) for _ in range(WORLD_SIZE)]
            dist.all_gather(gathered, flat)
            assert all(torch.equal(gathered[0], g) for g in gathered[1:]), (
                f"{where}: parameters differ across ranks, max abs diff "
                f"{max((gathered[0] - g).abs().max().item() for g in gathered[1:]):.3e}"
            )
            params = {n: p.detach().clone() for n, p in net.named_parameters()}
            torch.save(params, Path(out_dir) / f"{opt_name}_rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Every check passed: leave without interpreter finalization, where gloo's worker threads can still release
    # tensors and abort the process (seen here once as SIGABRT, "terminate called without an active exception").
    os._exit(0)


def _spawn(fn, args: tuple, timeout: float = SPAWN_TIMEOUT) -> None:
    """Run ``fn(rank, *args)`` on WORLD_SIZE processes; any child failure or a hang fails the test readably."""
    ctx = mp.start_processes(fn, args=args, nprocs=WORLD_SIZE, join=False, start_method="spawn")
    deadline, failure = time.monotonic() + timeout, None
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                failure = f"DDP workers did not finish within {timeout:.0f} s (hang in a collective?)"
                break
    except mp.ProcessRaisedException as e:  # carries the child's traceback
        failure = f"DDP worker failed:\n{e}"
    except mp.ProcessExitedException as e:
        failure = f"DDP worker died: {e}"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
            p.join(timeout=10)
    if failure is not None:
        pytest.fail(failure, pytrace=False)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
@pytest.mark.parametrize("mode", ["activation", "parameter"])
def test_tgd_ddp_two_ranks(tmp_path, mode):
    init_file = tmp_path / "dist_init"  # must not exist yet; unique per test through tmp_path
    _spawn(_ddp_worker, (f"file://{init_file}", mode, str(tmp_path)))

    reference = _net(seed=0)
    initial = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    masks = _masks(reference)
    for opt_name, _, _ in OPTIMIZERS:
        saved = [torch.load(tmp_path / f"{opt_name}_rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
        assert saved[0].keys() == saved[1].keys() == dict(reference.named_parameters()).keys()
        for name in saved[0]:
            assert torch.equal(saved[0][name], saved[1][name]), f"{opt_name}: {name} differs between ranks"
        # The same checks in the parent, on the parameters the ranks saved, against weights built independently here.
        where = f"parent, mode={mode}, {opt_name}"
        assert_frozen_rows_kept(initial, saved[0], masks, "update", where=where)
        _check_retrained_moved(saved[0], initial, masks, "update", where)


# ------------------------------------------------------------------------------------------------------------ AMP
def _cpu_grad_scaler():
    try:
        return torch.amp.GradScaler("cpu", init_scale=2.0**8)
    except (AttributeError, RuntimeError, TypeError, ValueError) as e:
        pytest.skip(f"torch.amp.GradScaler('cpu') unavailable: {e}")


@pytest.mark.parametrize("mode", ["activation", "parameter"])
def test_tgd_cpu_autocast_bf16_grad_scaler(mode):
    if not torch.amp.is_autocast_available("cpu"):
        pytest.skip("CPU autocast unavailable")
    scaler = _cpu_grad_scaler()
    net = _net(seed=0).train()
    initial = {k: v.detach().clone() for k, v in net.state_dict().items()}
    masks = _masks(net)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
    gen = torch.Generator().manual_seed(7)
    conv_out_dtypes = set()  # autocast must really run the convs (and so the TGD hooks' gradients) in bf16
    with TGD(net, masks, mode=mode, bn_stats="freeze"):
        # after install: TGD's channel trace runs the network once in float32, outside the training steps
        handles = [m.register_forward_hook(lambda m, i, o: conv_out_dtypes.add(o.dtype))
                   for m in net.modules() if isinstance(m, torch.nn.Conv2d)]  # fmt: skip
        for step in range(STEPS):
            x, y = _batch(gen)
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.mse_loss(net(x).float(), y)
            scaler.scale(loss).backward()
            for n, p in net.named_parameters():
                assert p.grad is None or p.grad.dtype == p.dtype, f"{n}: grad dtype {p.grad.dtype} != {p.dtype}"
            scaler.step(opt)
            scaler.update()
            assert scaler.get_scale() >= 2.0**8, f"GradScaler found inf/NaN gradients and skipped step {step}"
            # The guarantee right after the (scaled) step, while TGD is installed.
            where = f"autocast bf16, mode={mode}, step {step}"
            assert_frozen_rows_kept(initial, net.state_dict(), masks, "freeze", where=where)
        _check_retrained_moved(net.state_dict(), initial, masks, "freeze", f"autocast bf16, mode={mode}")
    for h in handles:
        h.remove()
    assert conv_out_dtypes == {torch.bfloat16}, f"autocast not active: conv outputs {conv_out_dtypes}"
    assert all(p.dtype == torch.float32 for p in net.parameters())
