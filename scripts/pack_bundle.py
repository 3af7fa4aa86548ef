#!/usr/bin/env python3
"""Pack a MONAI bundle folder into the zip archive a model zoo distributes.

    python scripts/pack_bundle.py [--bundle bundles/pet_tgd_denoising] [--output dist/<name>_v<version>.zip]

The archive has one root folder named after the bundle folder (``<name>/configs/...``), the layout
``monai.bundle.download(name=<name>, url=...)`` extracts to ``<bundle_dir>/<name>/``. It holds only the parts of a
bundle a user needs: ``configs/``, ``models/``, ``docs/``, ``LICENSE`` and ``scripts/`` when present. Never packed:
``runs/`` and ``data/`` (outside those parts anyway), ``__pycache__`` folders, ``*.pyc`` files, TorchScript exports
(``*.ts``), symbolic links leaving the bundle (an error) and anything the repository's ``.gitignore`` files ignore.

The archive is reproducible: members in sorted order, a fixed timestamp (the one the MONAI model zoo's packer
stamps), no folder entries, permission bits kept. It is written to a temporary file next to the output and moved
into place only when complete, so no reader sees a partial archive. An existing output is replaced only if it is an
archive this script wrote (recognised by its zip comment); any other existing file is left alone and the script
exits with status 2. On success the archive's absolute path is printed on stdout.

Only the standard library is used, so the script runs without the project installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import sys
import tempfile
import zipfile
from pathlib import Path

#: Top-level entries of a bundle folder that go into the archive (when present).
INCLUDED = ("configs", "models", "docs", "LICENSE", "scripts")
#: Names never packed, wherever they are.
EXCLUDED_DIRS = frozenset({"__pycache__", "runs", "data", ".git", ".ipynb_checkpoints"})
EXCLUDED_SUFFIXES = (".ts", ".pyc", ".pyo")
EXCLUDED_FILES = frozenset({".gitignore", ".gitattributes", ".DS_Store"})
#: Zip comment marking an archive written by this script: only such a file is ever overwritten.
MARKER = b"monai-tgd pack_bundle archive v1"
#: Fixed member timestamp (2022-05-30 00:00, as the model zoo's packer stamps its archives).
DATE_TIME = (2022, 5, 30, 0, 0, 0)


class PackError(Exception):
    """A bundle or an output path the packer refuses; the message says why."""


# --------------------------------------------------------------------------------------------------------------------
# .gitignore matching (enough of gitignore(5) for a repository's ignore files, with no git command run)
# --------------------------------------------------------------------------------------------------------------------


def _glob_to_regex(glob: str) -> str:
    out, i, n = [], 0, len(glob)
    while i < n:
        c = glob[i]
        if c == "*":
            if glob[i : i + 3] == "**/":
                out.append("(?:.*/)?")
                i += 3
                continue
            if glob[i : i + 2] == "**":
                out.append(".*")
                i += 2
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = glob.find("]", i + 2 if glob[i + 1 : i + 2] in ("!", "]") else i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = glob[i + 1 : j]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(glob[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


class GitIgnore:
    """The patterns of the ``.gitignore`` files from a repository root down to a folder, matched like git does:
    the last matching pattern decides (``!`` re-includes), ``dir/`` patterns match folders only, patterns with a
    slash are anchored to their ``.gitignore``'s folder, others match a name at any depth."""

    def __init__(self) -> None:
        self.rules: list[tuple[Path, re.Pattern, bool, bool]] = []  # (base, regex, negated, dir_only)

    def add_file(self, path: Path) -> None:
        base = path.parent.resolve()
        for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
            line = raw.rstrip("\n")
            if not line.endswith("\\ "):
                line = line.rstrip(" ")
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            if negated:
                line = line[1:]
            elif line.startswith("\\"):
                line = line[1:]
            dir_only = line.endswith("/")
            line = line.rstrip("/")
            if not line:
                continue
            anchored = "/" in line
            body = _glob_to_regex(line.lstrip("/"))
            regex = re.compile(("" if anchored else "(?:.*/)?") + body + "$")
            self.rules.append((base, regex, negated, dir_only))

    def ignored(self, path: Path, is_dir: bool) -> bool:
        """Whether ``path`` (absolute, below resolved folders) is ignored."""
        result = False
        for base, regex, negated, dir_only in self.rules:
            if dir_only and not is_dir:
                continue
            try:
                rel = path.relative_to(base).as_posix()
            except ValueError:
                continue
            if rel and rel != "." and regex.match(rel):
                result = not negated
        return result


def _repo_root(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return None


def gitignore_for(bundle: Path) -> GitIgnore:
    """Rules of every ``.gitignore`` from the bundle's repository root (the nearest folder above holding ``.git``;
    without one, only the bundle folder's own) down to the bundle folder, plus those found inside it while walking."""
    bundle = bundle.resolve()
    root = _repo_root(bundle)
    if root is None:
        chain = [bundle]
    else:
        parts = bundle.relative_to(root).parts
        chain = [root] + [root.joinpath(*parts[:i]) for i in range(1, len(parts) + 1)]
    rules = GitIgnore()
    for folder in chain:
        if (folder / ".gitignore").is_file():
            rules.add_file(folder / ".gitignore")
    return rules


# --------------------------------------------------------------------------------------------------------------------
# what goes into the archive
# --------------------------------------------------------------------------------------------------------------------


def _excluded_name(path: Path, is_dir: bool) -> bool:
    if is_dir:
        return path.name in EXCLUDED_DIRS
    return path.name.endswith(EXCLUDED_SUFFIXES) or path.name in EXCLUDED_FILES


def bundle_files(bundle: str | os.PathLike) -> list[tuple[str, Path]]:
    """``[(path inside the bundle, file)]`` that an archive of ``bundle`` holds, sorted by the inner path.

    Raises:
        PackError: not a bundle folder (no ``configs/metadata.json``), or a symbolic link pointing outside it.
    """
    bundle = Path(bundle).resolve()
    if not (bundle / "configs" / "metadata.json").is_file():
        raise PackError(f"{bundle} is not a bundle folder: configs/metadata.json is missing.")
    rules = gitignore_for(bundle)
    found: list[tuple[str, Path]] = []

    def visit(path: Path) -> None:
        if path.is_symlink():
            target = path.resolve()
            if path.is_dir():
                raise PackError(f"{path} is a symbolic link to a folder; links to folders are not followed.")
            if bundle not in target.parents:
                raise PackError(f"{path} is a symbolic link leaving the bundle folder ({target}).")
        is_dir = path.is_dir()
        if _excluded_name(path, is_dir) or rules.ignored(path, is_dir):
            return
        if is_dir:
            if (path / ".gitignore").is_file():
                rules.add_file(path / ".gitignore")
            for child in sorted(path.iterdir()):
                visit(child)
        elif path.is_file():
            found.append((path.relative_to(bundle).as_posix(), path))

    for name in INCLUDED:
        entry = bundle / name
        if entry.exists() or entry.is_symlink():
            visit(entry)
    return sorted(found)


# --------------------------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------------------------


def _is_own_archive(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.comment == MARKER
    except (zipfile.BadZipFile, OSError):
        return False


def default_output(bundle: Path) -> Path:
    meta = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    version = str(meta.get("version", "0"))
    root = _repo_root(bundle) or Path.cwd()
    return root / "dist" / f"{bundle.name}_v{version}.zip"


def pack(bundle: str | os.PathLike, output: str | os.PathLike | None = None, name: str | None = None) -> Path:
    """Write the archive of ``bundle`` to ``output`` (atomically) and return its absolute path.

    Args:
        bundle: the bundle folder.
        output: the zip file to write; default ``dist/<name>_v<version>.zip`` in the bundle's repository.
        name: the archive's root folder; default the bundle folder's name.

    Raises:
        PackError: not a bundle folder, an output inside the bundle, an existing output this script did not write.
    """
    bundle = Path(bundle).resolve()
    if not bundle.is_dir():
        raise PackError(f"bundle folder {bundle} does not exist.")
    name = name or bundle.name
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise PackError(f"archive root folder name {name!r} is not a folder name.")
    files = bundle_files(bundle)
    out = Path(output) if output is not None else default_output(bundle)
    out = out.parent.resolve() / out.name
    if out == bundle or bundle in out.parents:
        raise PackError(f"refusing to write the archive inside the bundle folder: {out}.")
    if out.exists() or out.is_symlink():
        if out.is_symlink() or not out.is_file() or not _is_own_archive(out):
            raise PackError(f"refusing to overwrite {out}: it exists and is not an archive written by this script.")
    out.parent.mkdir(parents=True, exist_ok=True)

    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.partial-", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
                for inner, path in files:
                    info = zipfile.ZipInfo(f"{name}/{inner}", date_time=DATE_TIME)
                    info.compress_type = zipfile.ZIP_DEFLATED
                    mode = stat.S_IMODE(path.stat().st_mode)
                    info.external_attr = (stat.S_IFREG | (0o755 if mode & 0o111 else 0o644)) << 16
                    info.create_system = 3  # unix, so the permission bits are read back
                    with open(path, "rb") as src, zf.open(info, "w") as dst:
                        while chunk := src.read(1 << 20):
                            dst.write(chunk)
                zf.comment = MARKER
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        if out.exists():
            os.replace(tmp, out)  # checked above: our own earlier archive
        else:
            try:
                os.link(tmp, out)  # fails if someone created `out` meanwhile: never clobbers
            except FileExistsError:
                raise PackError(f"refusing to overwrite {out}: it was created while packing.") from None
            except OSError:  # no hard links on this file system
                if out.exists():
                    raise PackError(f"refusing to overwrite {out}: it was created while packing.") from None
                os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def main(argv: list[str] | None = None) -> int:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(repo / "bundles" / "pet_tgd_denoising"), help="bundle folder")
    parser.add_argument("--output", "-o", default=None, help="zip file to write (default dist/<name>_v<version>.zip)")
    parser.add_argument("--name", default=None, help="archive root folder (default: the bundle folder's name)")
    args = parser.parse_args(argv)
    try:
        path = pack(args.bundle, args.output, args.name)
    except PackError as e:
        print(f"pack_bundle: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
