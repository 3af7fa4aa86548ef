"""The bundle as a model zoo distributes it: ``scripts/pack_bundle.py`` packs ``bundles/pet_tgd_denoising`` into a zip,
``monai.bundle.download(name=..., url="file://...")`` fetches and extracts that archive as it would a zoo URL, and the
extracted bundle runs ``python -m monai.bundle run --config_file configs/inference.json`` on a tiny NIfTI volume —
all without network access and without writing into the extracted bundle (except, at most, its ``runs/``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ._offline import BUNDLE, PACKER, REPO, load_packer, offline_env, tree_state, write_pet_volume

NAME = BUNDLE.name
ALLOWED_TOP = {"configs", "models", "docs", "LICENSE", "scripts"}


def run_packer(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(PACKER), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


# --------------------------------------------------------------------------------------------------------------------
# the packer
# --------------------------------------------------------------------------------------------------------------------


def test_pack_real_bundle_layout(tmp_path):
    out = tmp_path / "dist" / f"{NAME}.zip"
    result = run_packer("--bundle", str(BUNDLE), "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(out.resolve()), "the packer prints the archive's path"
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name], "no temporary file is left next to the archive"
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
    assert all(n.startswith(f"{NAME}/") for n in names), "one root folder named after the bundle"
    inner = [n[len(NAME) + 1 :] for n in names]
    assert {n.split("/")[0] for n in inner} <= ALLOWED_TOP
    for required in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "LICENSE", "docs/README.md"):
        assert required in inner, f"{required} is not in the archive"
    assert not [n for n in inner if "__pycache__" in n or n.endswith((".ts", ".pyc"))]
    assert not [n for n in inner if n.split("/")[0] in ("runs", "data")]
    # every distributed file of the bundle is in it, byte for byte
    with zipfile.ZipFile(out) as zf:
        for name in ("configs", "models", "docs"):
            for path in sorted((BUNDLE / name).rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".ts":
                    rel = path.relative_to(BUNDLE).as_posix()
                    assert zf.read(f"{NAME}/{rel}") == path.read_bytes(), f"{rel} differs in the archive"


def _scratch_bundle(root: Path) -> Path:
    """A small bundle with everything the packer must leave out."""
    b = root / "my_bundle"
    files = {
        "configs/metadata.json": '{"version": "0.1.0"}\n',
        "configs/inference.json": "{}\n",
        "configs/__pycache__/x.cpython-311.pyc": "junk",
        "models/model.pt": "weights",
        "models/model.ts": "torchscript export",
        "docs/README.md": "# Model Overview\n",
        "docs/notes.secret": "git-ignored",
        "docs/figures/plot.png": "png",
        "LICENSE": "licence text\n",
        "scripts/run.sh": "#!/bin/sh\necho hi\n",
        "runs/inference/out.nii.gz": "output",
        "data/simulated_quick/datalist.json": "{}",
        "eval/schema.json": "{}",
        "notes.txt": "top-level file outside the distributed parts",
        ".gitignore": "*.secret\n/docs/figures/\n!keep.secret\n",
        "configs/keep.secret": "re-included by the negated pattern",
    }
    for rel, text in files.items():
        (b / rel).parent.mkdir(parents=True, exist_ok=True)
        (b / rel).write_text(text)
    (b / "scripts" / "run.sh").chmod(0o755)
    return b


def test_pack_excludes_runs_data_caches_exports_and_ignored(tmp_path):
    bundle = _scratch_bundle(tmp_path)
    out = tmp_path / "out" / "b.zip"
    result = run_packer("--bundle", str(bundle), "--output", str(out))
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(out) as zf:
        names = sorted(zf.namelist())
        mode = zf.getinfo("my_bundle/scripts/run.sh").external_attr >> 16
        stamps = {zf.getinfo(n).date_time for n in names}
    assert names == [
        "my_bundle/LICENSE",
        "my_bundle/configs/inference.json",
        "my_bundle/configs/keep.secret",
        "my_bundle/configs/metadata.json",
        "my_bundle/docs/README.md",
        "my_bundle/models/model.pt",
        "my_bundle/scripts/run.sh",
    ]
    assert mode & 0o111, "the executable bit of scripts is kept"
    assert len(stamps) == 1, "one fixed timestamp: reproducible archives"


def test_pack_is_reproducible_and_replaces_only_its_own_archive(tmp_path):
    bundle = _scratch_bundle(tmp_path)
    out = tmp_path / "b.zip"
    assert run_packer("--bundle", str(bundle), "--output", str(out)).returncode == 0
    first = out.read_bytes()
    again = run_packer("--bundle", str(bundle), "--output", str(out))
    assert again.returncode == 0, again.stderr
    assert out.read_bytes() == first, "packing the same bundle twice gives the same bytes"

    foreign = tmp_path / "foreign.zip"
    foreign.write_bytes(b"somebody else's file")
    refused = run_packer("--bundle", str(bundle), "--output", str(foreign))
    assert refused.returncode != 0 and "refusing to overwrite" in refused.stderr
    assert foreign.read_bytes() == b"somebody else's file"

    other_zip = tmp_path / "other.zip"
    with zipfile.ZipFile(other_zip, "w") as zf:
        zf.writestr("x", "a zip not written by the packer")
    before = other_zip.read_bytes()
    assert run_packer("--bundle", str(bundle), "--output", str(other_zip)).returncode != 0
    assert other_zip.read_bytes() == before

    inside = run_packer("--bundle", str(bundle), "--output", str(bundle / "models" / "b.zip"))
    assert inside.returncode != 0 and not (bundle / "models" / "b.zip").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.zip", "foreign.zip", "my_bundle", "other.zip"]


def test_pack_refuses_a_folder_without_metadata(tmp_path):
    (tmp_path / "nobundle" / "configs").mkdir(parents=True)
    result = run_packer("--bundle", str(tmp_path / "nobundle"), "--output", str(tmp_path / "x.zip"))
    assert result.returncode != 0 and "metadata.json" in result.stderr
    assert not (tmp_path / "x.zip").exists()


def test_gitignore_matching(tmp_path):
    packer = load_packer()
    (tmp_path / ".gitignore").write_text("# comment\n__pycache__/\n*.egg-info/\nbuild/\n/top.txt\nbundles/*/data/\n"
                                         "a/**/deep.txt\n*.log\n!keep.log\n")
    rules = packer.GitIgnore()
    rules.add_file(tmp_path / ".gitignore")
    cases = {
        ("x/__pycache__", True): True,
        ("x/__pycache__", False): False,  # a file of that name: dir-only pattern
        ("pkg.egg-info", True): True,
        ("top.txt", False): True,
        ("sub/top.txt", False): False,  # anchored
        ("bundles/b/data", True): True,
        ("bundles/b/c/data", True): False,
        ("a/deep.txt", False): True,
        ("a/x/y/deep.txt", False): True,
        ("run.log", False): True,
        ("keep.log", False): False,
        ("docs/README.md", False): False,
    }
    for (rel, is_dir), expected in cases.items():
        assert rules.ignored(tmp_path.resolve() / rel, is_dir) is expected, rel


# --------------------------------------------------------------------------------------------------------------------
# the archive, fetched and run as a zoo user would
# --------------------------------------------------------------------------------------------------------------------

_DOWNLOAD_AND_LOAD = r"""
import json, sys, torch
import monai.bundle
name, url, bundle_dir = sys.argv[1:4]
monai.bundle.download(name=name, url=url, bundle_dir=bundle_dir, progress=False)
net = monai.bundle.load(name=name, bundle_dir=bundle_dir, workflow_type="inference", device="cpu", progress=False)
ckpt = torch.load(f"{bundle_dir}/{name}/models/model.pt", map_location="cpu", weights_only=True)
state = net.state_dict() if isinstance(net, torch.nn.Module) else {}
print(json.dumps({
    "is_module": isinstance(net, torch.nn.Module),
    "same_keys": set(state) == set(ckpt),
    "loaded": all(k in state and torch.equal(state[k], v) for k, v in ckpt.items()),
}))
"""


def test_archive_downloads_and_runs_inference_offline(tmp_path):
    out = tmp_path / "dist" / f"{NAME}.zip"
    packed = run_packer("--bundle", str(BUNDLE), "--output", str(out))
    assert packed.returncode == 0, packed.stderr
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    env = offline_env(tmp_path)

    # 1. monai.bundle.download from a file:// URL (as from a zoo URL), then monai.bundle.load: models/model.pt into
    #    network_def of configs/inference.json. The working folder is the extracted bundle (bundle_root ".").
    loaded = subprocess.run(
        [sys.executable, "-c", _DOWNLOAD_AND_LOAD, NAME, out.resolve().as_uri(), str(zoo)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr[-4000:]
    assert json.loads(loaded.stdout.strip().splitlines()[-1]) == {"is_module": True, "same_keys": True, "loaded": True}
    extracted = zoo / NAME
    assert (extracted / "configs" / "metadata.json").is_file(), "the archive extracts to <bundle_dir>/<name>/"
    assert sorted(p.name for p in zoo.iterdir()) == [NAME, f"{NAME}.zip"]

    # 2. inference from the extracted bundle on a tiny volume, with the CLI a user runs
    volume = write_pet_volume(tmp_path / "inputs" / "study.nii.gz")
    pred_dir = tmp_path / "pred"
    before = tree_state(extracted)
    run = subprocess.run(
        [
            sys.executable, "-m", "monai.bundle", "run",
            "--config_file", "configs/inference.json",
            "--input_files", json.dumps([str(volume)]),
            "--inference_output_dir", str(pred_dir),
        ],
        cwd=extracted, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-4000:])
    outputs = sorted(pred_dir.rglob("*.nii*"))
    assert len(outputs) == 1, f"expected one denoised volume in {pred_dir}, found {outputs}"
    import nibabel as nib
    import numpy as np

    src, pred = nib.load(str(volume)), nib.load(str(outputs[0]))
    assert pred.shape == src.shape
    assert np.allclose(pred.affine, src.affine)
    assert np.isfinite(np.asarray(pred.dataobj)).all()

    after = tree_state(extracted)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k) and not k.startswith("runs/"))
    assert not changed, f"the inference run wrote into the extracted bundle: {changed}"
