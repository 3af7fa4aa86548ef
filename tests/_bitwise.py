"""Bit-for-bit comparisons of two training runs, made explicit per device.

The bundle trains on ``cuda:0`` when there is one and on the CPU otherwise (``device`` in inference.json). On the CPU,
two runs with the same seeds, data and thread count give the same bits, and the tests compare them with
``torch.equal``. On CUDA that holds only with deterministic kernels: the bundle's ``set_determinism`` makes cuDNN
deterministic but does not call ``torch.use_deterministic_algorithms``, so other kernels may reduce in a different
order from run to run. The ``exact_kernels`` fixture switches deterministic algorithms on for the bundle runs a test
makes in its own process (a kernel without a deterministic version then raises, naming itself, instead of
silently breaking the comparison). Runs in child processes (the study's stages) cannot be switched from here: for
them :data:`CHILD_RUNS_EXACT` is False on CUDA, and :func:`assert_same_weights` compares within float tolerance.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import pytest
import torch

#: the bundle's device is CUDA (inference.json: ``cuda:0`` if available)
ON_CUDA = torch.cuda.is_available()
#: whether two runs made in child processes (the study's stages) can be required to agree bit for bit
CHILD_RUNS_EXACT = not ON_CUDA
CHILD_RUNS_REASON = (
    "CUDA: the study's stages run in child processes without torch.use_deterministic_algorithms, so two runs may "
    "differ in the last bits; compared within float tolerance"
)


@pytest.fixture
def exact_kernels(monkeypatch):
    """Deterministic kernels for bundle runs made in the test's process (CUDA only; a no-op on the CPU)."""
    if not ON_CUDA:
        yield
        return
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", os.environ.get("CUBLAS_WORKSPACE_CONFIG", ":4096:8"))
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def assert_same_weights(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], exact: bool = True) -> None:
    """Same keys and, per tensor, the same bits (``exact``) or values within float tolerance (runs that cannot be
    made deterministic: see :data:`CHILD_RUNS_REASON`)."""
    assert list(a) == list(b)
    for key in a:
        if exact:
            assert torch.equal(a[key], b[key]), f"{key} differs"
        else:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")
