"""The project as a package: ``python -m build`` makes an sdist and a wheel of ``monai-tgd``; the wheel installs into a
fresh virtual environment, and from there ``python -m monai.bundle run --config_file configs/inference.json`` runs the
bundle (a copy) on a tiny NIfTI volume, importing ``monai_tgd`` from the wheel, not from this working tree.

The build runs on a copy of the working tree as a fresh checkout would have it (git-ignored files left out), with
``--no-isolation`` (the build backend, setuptools, from this environment: nothing downloaded, and nothing written into
the working tree). The fresh environment sees torch and monai through a ``.pth`` line naming this environment's
site-packages, added after the wheel is installed: a plain path line, so this environment's own ``.pth`` files (the
editable install of ``monai_tgd``) are not run there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from ._offline import BUNDLE, REPO, copy_bundle, load_packer, offline_env, write_pet_volume

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import pip._vendor.tomli as tomllib

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
DIST = PROJECT["name"].replace("-", "_")  # file-name form: monai_tgd
VERSION = PROJECT["version"]
LICENSE_NAMES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "COPYING")


def _copy_checkout(dest: Path) -> Path:
    """The working tree without .git and git-ignored files (no .venv, build/, dist/, *.egg-info, caches, runs)."""
    rules = load_packer().GitIgnore()
    root = REPO.resolve()

    def visit(folder: Path) -> None:
        if (folder / ".gitignore").is_file():
            rules.add_file(folder / ".gitignore")
        for path in sorted(folder.iterdir()):
            if path.name == ".git" or path.is_symlink():
                continue
            is_dir = path.is_dir()
            if rules.ignored(path, is_dir) or (is_dir and path.name == "__pycache__"):
                continue
            target = dest / path.relative_to(root)
            if is_dir:
                target.mkdir(parents=True, exist_ok=True)
                visit(path)
            elif path.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(path.read_bytes())

    dest.mkdir(parents=True)
    visit(root)
    return dest


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kwargs)
    command = " ".join(map(str, cmd))
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """``(sdist, wheel, source copy)`` built by ``python -m build`` from a copy of the working tree."""
    root = tmp_path_factory.mktemp("packaging")
    src = _copy_checkout(root / "src")
    out = root / "dist"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, src], cwd=root, env=env)
    sdists, wheels = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    assert [p.name for p in sdists] == [f"{DIST}-{VERSION}.tar.gz"], sdists
    assert len(wheels) == 1 and wheels[0].name.startswith(f"{DIST}-{VERSION}-"), wheels
    return sdists[0], wheels[0], src


def _package_files(src: Path) -> list[str]:
    return sorted(
        p.relative_to(src).as_posix()
        for p in (src / "monai_tgd").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith((".pyc", ".pyo"))
    )


def test_sdist_holds_the_package_readme_and_license(built):
    sdist, _, src = built
    with tarfile.open(sdist) as tf:
        names = {m.name for m in tf.getmembers() if m.isfile()}
    prefix = f"{DIST}-{VERSION}/"
    assert all(n.startswith(prefix) for n in names)
    inner = {n[len(prefix) :] for n in names}
    missing = [f for f in _package_files(src) if f not in inner]
    assert not missing, f"package files missing from the sdist: {missing}"
    for required in ("pyproject.toml", "PKG-INFO", PROJECT.get("readme", "README.md")):
        assert required in inner, f"{required} is not in the sdist"
    licenses = [n for n in LICENSE_NAMES if (REPO / n).is_file()]
    assert licenses, f"the project has no licence file ({' / '.join(LICENSE_NAMES)}) at its root to ship"
    assert all(n in inner for n in licenses), f"licence file(s) {licenses} not in the sdist"


def test_wheel_holds_the_package_and_metadata(built):
    _, wheel, src = built
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(meta_name).decode("utf-8")
    missing = [f for f in _package_files(src) if f not in names]
    assert not missing, f"package files missing from the wheel: {missing}"
    assert not [n for n in names if n.startswith(("tests/", "bundles/", "study/", "benchmarks/"))]
    assert f"Name: {PROJECT['name']}" in metadata and f"Version: {VERSION}" in metadata
    for requirement in ("torch", "monai", "nibabel"):
        assert any(line.startswith(f"Requires-Dist: {requirement}") for line in metadata.splitlines()), requirement


def test_wheel_installs_in_a_fresh_venv_and_runs_the_bundle(built, tmp_path):
    _, wheel, _ = built
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv])
    python = venv / "bin" / "python"
    env = offline_env(tmp_path)
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--no-cache-dir",
          "--disable-pip-version-check", wheel], env=env)
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env)
                .stdout.strip())
    assert (site / "monai_tgd" / "__init__.py").is_file(), "the wheel did not install into the fresh venv"
    # torch, monai and the other dependencies: this environment's site-packages, as a plain sys.path entry
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_monai_tgd_test_deps.pth").write_text("".join(f"{p}\n" for p in sorted(here)))

    probe = _run(
        [python, "-c", "import json, monai_tgd, monai, torch; "
         "print(json.dumps({'monai_tgd': monai_tgd.__file__, 'monai': monai.__version__}))"],
        env=env, cwd=tmp_path,
    )
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    assert Path(found["monai_tgd"]).resolve().is_relative_to(site.resolve()), (
        f"monai_tgd imported from {found['monai_tgd']}, not from the wheel in {site}"
    )

    bundle = copy_bundle(tmp_path / "bundle" / BUNDLE.name)
    volume = write_pet_volume(tmp_path / "inputs" / "study.nii.gz", shape=(18, 14, 4))
    pred = tmp_path / "pred"
    _run(
        [python, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
         "--input_files", json.dumps([str(volume)]), "--inference_output_dir", pred],
        env=env, cwd=bundle,
    )
    outputs = sorted(pred.rglob("*.nii*"))
    assert len(outputs) == 1, outputs
    import nibabel as nib

    assert nib.load(str(outputs[0])).shape == nib.load(str(volume)).shape
