"""Helpers of the model-zoo tests (test_bundle_zoo, test_bundle_archive, test_packaging): no network, a tiny PET volume,
process-wide state saved and restored around in-process bundle workflows, a scratch copy of the bundle."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import random
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "pet_tgd_denoising"
PACKER = REPO / "scripts" / "pack_bundle.py"


class NetworkBlocked(OSError):
    """Raised by any attempt to open a network connection while the network is blocked."""


_SITECUSTOMIZE = '''\
"""Written by the monai-tgd tests: this interpreter may not reach the network (unix sockets stay allowed)."""
import socket as _socket


class NetworkBlocked(OSError):
    pass


def _refuse(*args, **kwargs):
    raise NetworkBlocked("network access attempted in an offline test: " + repr(args)[:200])


_connect, _connect_ex = _socket.socket.connect, _socket.socket.connect_ex


def _guard(orig):
    def guarded(self, *args, **kwargs):
        if self.family == getattr(_socket, "AF_UNIX", None):
            return orig(self, *args, **kwargs)
        return _refuse(self, *args)

    return guarded


_socket.socket.connect = _guard(_connect)
_socket.socket.connect_ex = _guard(_connect_ex)
_socket.getaddrinfo = _refuse
_socket.create_connection = _refuse
'''


@contextmanager
def no_network():
    """In this process: every TCP/UDP connection and every name look-up raises :class:`NetworkBlocked`."""

    def refuse(*args, **kwargs):
        raise NetworkBlocked(f"network access attempted in an offline test: {repr(args)[:200]}")

    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex
    getaddrinfo, create_connection = socket.getaddrinfo, socket.create_connection

    def guard(orig):
        def guarded(self, *args, **kwargs):
            if self.family == getattr(socket, "AF_UNIX", None):
                return orig(self, *args, **kwargs)
            return refuse(self, *args)

        return guarded

    socket.socket.connect, socket.socket.connect_ex = guard(connect), guard(connect_ex)
    socket.getaddrinfo = socket.create_connection = refuse
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
        socket.getaddrinfo, socket.create_connection = getaddrinfo, create_connection


def offline_env(tmp_path: Path, **extra: str) -> dict:
    """Environment for a child Python that cannot reach the network (a ``sitecustomize`` blocking sockets, first on
    ``PYTHONPATH``), ignores the user site and any inherited ``PYTHONPATH``, and does not write bytecode."""
    guard_dir = tmp_path / "offline_site"
    guard_dir.mkdir(exist_ok=True)
    (guard_dir / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "BUNDLE_DOWNLOAD"))}
    env.update(
        PYTHONPATH=str(guard_dir),
        PYTHONNOUSERSITE="1",
        PYTHONDONTWRITEBYTECODE="1",
        NO_PROXY="*",
        MONAI_DEBUG="0",
        **extra,
    )
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(proxy, None)
    return env


def write_pet_volume(path: Path, shape=(20, 16, 5), seed: int = 0) -> Path:
    """A tiny PET-like NIfTI volume (float32, non-negative, 2x2x3 mm voxels) at ``path``."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(seed)
    data = (1.0 + rng.gamma(2.0, 0.5, size=shape)).astype(np.float32)
    data[shape[0] // 3 : shape[0] // 2, shape[1] // 3 : shape[1] // 2, :] *= 4.0  # a hot spot
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def load_packer():
    """``scripts/pack_bundle.py`` as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("pack_bundle", PACKER)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("pack_bundle", module)
    spec.loader.exec_module(module)
    return module


def copy_bundle(dest: Path, bundle: Path = BUNDLE) -> Path:
    """Copy the files a distributed archive of ``bundle`` holds (configs, models, docs, LICENSE, scripts; no runs/,
    data/, caches or git-ignored files) to the folder ``dest``; return ``dest``."""
    for inner, src in load_packer().bundle_files(bundle):
        target = dest / inner
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(src.read_bytes())
        target.chmod(src.stat().st_mode & 0o777)
    return dest


def tree_state(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file below ``root`` (to show what a run wrote)."""
    state = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            state[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def _flushes_denormals() -> bool:
    import torch

    tiny = torch.tensor([1e-40], dtype=torch.float32)  # a float32 denormal
    return bool((tiny * 1.0).item() == 0.0)


@contextmanager
def restored_process_state():
    """Undo what an in-process bundle workflow changes for the whole test process: the logging configuration
    (``configs/logging.conf``), the random generators (``set_determinism``), denormal flushing, the working folder and
    ``sys.path`` (``ConfigWorkflow.run`` prepends the bundle root)."""
    import numpy as np
    import torch

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    flush = _flushes_denormals()
    cwd, path = os.getcwd(), list(sys.path)
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                root.removeHandler(handler)
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)
        random.setstate(rng[0]), np.random.set_state(rng[1]), torch.set_rng_state(rng[2])
        torch.set_flush_denormal(flush)
        os.chdir(cwd)
        sys.path[:] = path
