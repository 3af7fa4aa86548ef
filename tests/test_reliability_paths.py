"""Nothing is written outside its folder (issue 16, items 3-6 and 9).

Identifiers that become file names (run names, study names, network base names, output postfixes) go through one
check (``monai_tgd.io.check_name``) that every workflow runs first; output paths stay inside their folders; outputs
never replace a file the workflow did not write; simulated cohorts live in folders keyed by profile and seed. Each
item has a regression test on a real run, and property-style tests feed fixed-seed random identifiers to the check
and to real workflow runs, and look at the whole temporary folder after each case.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import unicodedata
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_tgd.io import NAME_FORM, OUTPUT_MARK, OutputLayout, atomic_path, check_name, check_names, output_path

from .conftest import BUNDLE, first_realisations

# ---- helpers -------------------------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root``: relative path -> ("file", size, mtime_ns) or ("dir",)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[str((Path(dirpath) / name).relative_to(root))] = ("dir",)
        for name in filenames:
            st = (Path(dirpath) / name).lstat()
            out[str((Path(dirpath) / name).relative_to(root))] = ("file", st.st_size, st.st_mtime_ns)
    return out


def new_entries(before: dict, after: dict) -> list[str]:
    """Entries created or rewritten since ``before``."""
    return sorted(k for k in after if after[k] != before.get(k))


def error_chain(err: BaseException) -> list[BaseException]:
    chain = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    return chain


def value_error(excinfo) -> ValueError:
    """The ValueError behind a bundle run's failure (MONAI wraps it in RuntimeErrors)."""
    errors = [e for e in error_chain(excinfo.value) if type(e) is ValueError]
    assert errors, f"no ValueError in {[repr(e) for e in error_chain(excinfo.value)]}"
    return errors[0]


def is_inside(path: Path, folder: Path) -> bool:
    p, f = os.path.normpath(os.path.abspath(path)), os.path.normpath(os.path.abspath(folder))
    return p != f and os.path.commonpath([p, f]) == f


def random_identifiers(seed: int, count: int, config_chars: bool = True) -> list[object]:
    """Fixed-seed random identifiers: fixed edge cases first, then random concatenations of pieces that include
    separators, dots, spaces, unicode (accents, CJK, emoji, combining marks), control characters and lone surrogates.

    ``config_chars=False`` drops values with ``$``, ``@``, ``%`` or ``#``: in a MONAI config value these start an
    expression, a reference or a macro, or are an id separator (``monai.bundle`` turns every ``#`` of a string value
    into ``::``): the config language's meaning, not a file name's."""
    rng = random.Random(seed)
    edge = ["", ".", "..", "/", "\\", "/abs/path", "../x", "..\\x", "a/b", "a\\b", "../../../../outside",
            "x/..", " ", " x", "x ", "a b", "a.b", "..a", "a..", ".hidden", "é", "名前", "😀", "e\u0301", "a\x00b",
            "a\nb", "a\tb", "\x7f", "\ud800", "x" * 128, "x" * 129, "é" * 64, "é" * 65, "C:\\x", "~", "~/x", "-x",
            "a:b"]  # fmt: skip
    pieces = ["a", "b", "Z", "0", "7", "_", "-", ".", "..", "/", "\\", " ", "é", "名", "😀", "\u0301", "ß", "Ω",
              "\x00", "\n", "\t", "\x7f", "\ud800", ":", "*", "?", "~", "#", "=", "(", "'", '"', "+", ",",
              ";"]  # fmt: skip
    weights = [8 if p.isalnum() or p in "_-" else 1 for p in pieces]
    values: list[object] = list(edge)
    while len(values) < count:
        n = rng.randint(0, 8)
        value = "".join(rng.choices(pieces, weights, k=n))
        if rng.random() < 0.05:
            value = value * rng.randint(20, 40)  # long names
        values.append(value)
    values = values[:count]
    if not config_chars:
        values = [v for v in values if not (isinstance(v, str) and set(v) & set("$@%#"))]
    return values


def expected_valid(value: object) -> bool | None:
    """An oracle written from the issue's rules, independent of the implementation: False if the value must be
    rejected (not text, empty, a separator, '.'/'..', NUL or another control character, a surrogate, leading or
    trailing whitespace, more than 128 UTF-8 bytes), True if it must be accepted (only letters, digits, marks, '_',
    '-', '.', inner spaces and the usual punctuation), None if the rules leave it open."""
    if not isinstance(value, str) or value in ("", ".", "..") or "/" in value or "\\" in value:
        return False
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in value) or value != value.strip():
        return False
    if len(value.encode("utf-8")) > 128:
        return False
    if all(c.isalnum() or unicodedata.category(c).startswith(("M", "S")) or c in "_-. :*?~#=(',+;\"" for c in value):
        return True
    return None


def write_nifti(path: Path, like: str) -> Path:
    src = nib.load(like)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj, dtype=np.float32), src.affine), path)
    return path


# ---- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture
def sandbox(tmp_path):
    """Output folders nested 4 levels below ``tmp_path``, so that a name escaping its folder (``../../..``) still lands
    in ``tmp_path`` where the tests look: ``{"root", "runs", "models", "base"}``; ``base`` holds a tiny random DnCNN
    checkpoint ``model_v1.pt`` (the pipelines, not the training, are tested here)."""
    from monai_tgd.networks import DnCNN

    from .conftest import TINY_OVERRIDES

    deep = tmp_path / "w" / "x" / "y" / "z"
    base = tmp_path / "base"
    base.mkdir()
    torch.manual_seed(0)
    net = DnCNN(features=TINY_OVERRIDES["features"], num_layers=TINY_OVERRIDES["num_layers"])
    torch.save(net.state_dict(), base / "model_v1.pt")
    return {"root": tmp_path, "runs": deep / "runs", "models": deep / "models", "base": base}


@pytest.fixture
def bundle(run_bundle, sandbox):
    """``run_bundle`` with the sandbox's output folders and base checkpoint."""

    def _run(workflow, **overrides):
        settings = {"output_dir": str(sandbox["runs"]), "ckpt_dir": str(sandbox["models"]),
                    "model_dir": str(sandbox["models"]),
                    "init_checkpoint": str(sandbox["base"] / "model_v1.pt"),
                    "inference_checkpoint": str(sandbox["base"] / "model_v1.pt"), "epochs": 1, "n2n_epochs": 1,
                    "samples_per_volume": 2}  # fmt: skip
        if workflow == "online_n2n":
            settings["epochs"] = "@n2n_epochs"
        return run_bundle(workflow, **{**settings, **overrides})

    return _run


def renamed_ood_datalist(tiny_cohort: Path, folder: Path, study: str) -> Path:
    """A copy of the tiny cohort's datalist (absolute paths) whose v2 bladder study is called ``study``."""
    content = json.loads(Path(tiny_cohort).read_text())
    root = Path(tiny_cohort).parent
    for section in ("pretrain_v1", "train_v2", "finetune_v2", "validation", "test", "ood"):
        for record in content[section]:
            for key, value in record.items():
                if isinstance(value, str) and value.endswith(".nii.gz"):
                    record[key] = str(root / value)
                elif isinstance(value, list) and all(isinstance(v, str) and v.endswith(".nii.gz") for v in value):
                    record[key] = [str(root / v) for v in value]
            if section == "ood" and record["study"] == "ood_bladder" and record["recon"] == "v2":
                record["study"] = study
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "datalist.json"
    path.write_text(json.dumps(content))
    return path


# ---- the one name check --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, reason",
    [("", "it is empty"), ("a/b", "path separator"), ("a\\b", "path separator"), ("/abs", "path separator"),
     ("../x", "path separator"), (".", "folder reference"), ("..", "folder reference"), ("a\x00b", "control character"),
     ("a\nb", "control character"), (" x", "whitespace"), ("x ", "whitespace"), ("é" * 65, "130 bytes long"),
     ("\ud800", "lone surrogate"), (5, "it is int, not text"), (None, "it is NoneType, not text")],
)  # fmt: skip
def test_check_name_rejects_with_field_value_reason_and_form(value, reason):
    with pytest.raises(ValueError) as err:
        check_name(value, "run_name")
    assert str(err.value).startswith(f"run_name {value!r} cannot be used as a file name: ")
    assert reason in str(err.value) and str(err.value).endswith(f"Expected {NAME_FORM}.")


@pytest.mark.parametrize("value", ["v1", "n2n_ood_bladder_v2", "a.b", "..a", "a..b", ".hidden", "séance 1", "名前",
                                   "😀", "x" * 128, "é" * 64, "a:b", "-x"])  # fmt: skip
def test_check_name_accepts(value):
    assert check_name(value, "run_name") is value


def test_check_name_property_random_identifiers(tmp_path):
    """500 fixed-seed random identifiers: each is rejected with a clear error, or accepted and then creates exactly
    one file of that name inside the folder (atomically) and nothing elsewhere; the issue's rules decide the
    clear-cut cases."""
    folder = tmp_path / "sandbox" / "inner"
    folder.mkdir(parents=True)
    before = snapshot(tmp_path)
    accepted = rejected = 0
    for value in random_identifiers(seed=16, count=500):
        oracle = expected_valid(value)
        try:
            check_name(value, "study")
        except ValueError as err:
            rejected += 1
            assert oracle is not True, f"{value!r} rejected: {err}"
            assert str(err).startswith(f"study {value!r} cannot be used as a file name: "), str(err)
            assert str(err).endswith(f"Expected {NAME_FORM}."), str(err)
            continue
        accepted += 1
        assert oracle is not False, f"{value!r} accepted"
        for path in (os.path.join(folder, value), output_path(folder, value, "study", prefix="model_", suffix=".pt")):
            assert is_inside(Path(path), folder) and os.path.dirname(path) == str(folder), path
            with atomic_path(path) as tmp:
                tmp.write_text("x")
            assert os.listdir(folder) == [os.path.basename(path)], (value, os.listdir(folder))
            os.unlink(path)
        assert snapshot(tmp_path) == before, value
    assert accepted > 50 and rejected > 50, (accepted, rejected)  # both branches exercised


def test_output_path_property_random_names(tmp_path):
    """``output_path`` (run folders, ``model_<run_name>.pt``): a clear error, or a path directly in its folder named
    ``<prefix><name><suffix>``; nothing created."""
    folder = tmp_path / "a" / "models"
    before = snapshot(tmp_path)
    for value in random_identifiers(seed=7, count=300):
        try:
            path = output_path(str(folder), value, "run_name", prefix="model_", suffix=".pt")
        except ValueError as err:
            assert expected_valid(value) is not True, f"{value!r} rejected: {err}"
            assert str(err).startswith(f"run_name {value!r} cannot be used as a file name: "), str(err)
            continue
        assert expected_valid(value) is not False, f"{value!r} accepted as {path}"
        assert path == os.path.join(folder, f"model_{value}.pt") and is_inside(Path(path), folder)
    assert snapshot(tmp_path) == before
    with pytest.raises(ValueError, match="the output folder of run_name '' is not a path"):
        output_path("", "v1", "run_name")


def test_check_names_lists_every_invalid_name():
    with pytest.raises(ValueError) as err:
        check_names({"n2n_study": "../x", "n2n_base_name": "v2", "run_name": "n2n_../x_v2"})
    message = str(err.value)
    assert "n2n_study '../x': it contains a path separator" in message
    assert "run_name 'n2n_../x_v2': it contains a path separator" in message and "n2n_base_name" not in message
    assert check_names({"run_name": "v1"}) == {"run_name": "v1"}


# ---- output layout of the denoising workflows -----------------------------------------------------------------------


def test_output_layout_collisions_and_foreign_files(tmp_path):
    data = tmp_path / "data"
    (data / "series_x").mkdir(parents=True)
    out = tmp_path / "out"
    cases = [
        ("several inputs would be written to one output", [data / "x.nii", data / "x.nii.gz"]),
        ("several inputs would be written to one output", [data / "series_x", data / "series_x.nii.gz"]),  # DICOM
        ("given more than once", [data / "x.nii.gz", data / ".." / "data" / "x.nii.gz"]),
    ]
    for message, inputs in cases:
        with pytest.raises(ValueError, match=message):
            OutputLayout([str(p) for p in inputs], out, "denoised", input_field="input_files")
    # the output of a.nii.gz in its own folder would be the input a_denoised.nii.gz
    with pytest.raises(ValueError, match="would replace the input .*a_denoised.nii.gz"):
        OutputLayout([str(data / "a.nii.gz"), str(data / "a_denoised.nii.gz")], data, "denoised")
    # a user's file at the output path is never replaced; a monai-tgd output is
    user = out / "x_denoised.nii.gz"
    user.parent.mkdir()
    user.write_bytes(b"the user's own file")
    with pytest.raises(ValueError, match="would replace .*x_denoised.nii.gz, an existing file monai-tgd did not write"):
        OutputLayout([str(data / "x.nii.gz")], out)
    assert user.read_bytes() == b"the user's own file"
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    img.header["descrip"] = OUTPUT_MARK.encode()
    nib.save(img, user)
    assert OutputLayout([str(data / "x.nii.gz")], out).outputs == {str(data / "x.nii.gz"): str(user)}
    # names keep the inputs' folders below their common folder, and a name per input replaces the stem
    layout = OutputLayout([str(data / "a" / "x.nii.gz"), str(data / "b" / "x.nii")], out, "dn")
    assert layout.filename(str(data / "b" / ".." / "b" / "x.nii")) == str(out / "b" / "x_dn.nii.gz")
    assert OutputLayout([str(data / "x.nii.gz")], out, names=["study 1"]).outputs[str(data / "x.nii.gz")] == str(
        out / "study 1_denoised.nii.gz"
    )
    for bad in ("", [""], [" "], [], None, [str(data / "x.nii.gz"), 3]):
        with pytest.raises(ValueError, match="input_files: "):
            OutputLayout(bad, out, input_field="input_files")


def test_output_layout_property_random_names(tmp_path):
    """Random postfixes and output names: a clear error, or every planned output strictly inside the output folder
    with the expected file name; planning creates nothing."""
    out = tmp_path / "deep" / "er" / "out"
    src = str(tmp_path / "in" / "img.nii.gz")
    before = snapshot(tmp_path)
    for value in random_identifiers(seed=61, count=300):
        for kwargs, field, name in (({"postfix": value}, "output postfix", f"img_{value}.nii.gz"),
                                    ({"names": [value]}, "output name", f"{value}_denoised.nii.gz")):  # fmt: skip
            try:
                layout = OutputLayout([src], out, **kwargs)
            except ValueError as err:
                assert expected_valid(value) is not True, f"{value!r} rejected: {err}"
                assert f"{value!r}" in str(err) and field in str(err), str(err)
                continue
            assert expected_valid(value) is not False, f"{value!r} accepted"
            (planned,) = layout.outputs.values()
            assert is_inside(Path(planned), out) and planned == str(out / name), (value, planned)
        assert snapshot(tmp_path) == before


# ---- item 3: online_n2n names --------------------------------------------------------------------------------------


def test_online_n2n_study_outside_its_folders_writes_nothing(bundle, tiny_cohort, sandbox):
    """Regression: an ``ood`` record whose study is ``../../../../outside`` made the run create
    ``<outside>_v2/``, ``<outside>_v2.pt`` and a denoised NIfTI outside every output folder."""
    study = "../../../../outside"
    datalist = renamed_ood_datalist(tiny_cohort, sandbox["root"] / "dl", study)
    before = snapshot(sandbox["root"])
    with pytest.raises(Exception) as excinfo:
        bundle("online_n2n", datalist=str(datalist), n2n_study=study)
    message = str(value_error(excinfo))
    assert f"n2n_study {study!r}: it contains a path separator" in message and "Expected a single file-name" in message
    assert snapshot(sandbox["root"]) == before  # no run folder, no model, no NIfTI: nothing anywhere


def test_online_n2n_unknown_study_is_named(bundle, sandbox):
    before = snapshot(sandbox["root"])
    with pytest.raises(Exception) as excinfo:
        bundle("online_n2n", n2n_study="ood_nowhere")
    assert "n2n_study 'ood_nowhere': no record with that study among" in str(value_error(excinfo))
    assert snapshot(sandbox["root"]) == before


@pytest.mark.parametrize(
    "workflow, field, value",
    [("pretrain", "run_name", "../outside"), ("finetune", "run_name", "/abs/ft"), ("finetune_tgd", "run_name", ".."),
     ("online_n2n", "n2n_study", "../../../../outside"), ("inference", "output_postfix", "x/../../y"),
     ("inference", "run_name", ""), ("evaluate", "run_name", "../outside"), ("evaluate_ood", "run_name", "a/b"),
     ("kse_sweep", "run_name", "..")],
)  # fmt: skip
def test_names_are_checked_before_any_data_is_read(bundle, sandbox, workflow, field, value):
    """The name check is each workflow's first step: with a datalist that does not exist, the error is still the
    name's (reading the data, or generating a cohort, comes after)."""
    before = snapshot(sandbox["root"])
    with pytest.raises(Exception) as excinfo:
        bundle(workflow, datalist=str(sandbox["root"] / "missing.json"), **{field: value})
    assert not any(isinstance(e, FileNotFoundError) for e in error_chain(excinfo.value)), error_chain(excinfo.value)
    assert f"{field} {value!r}: it " in str(value_error(excinfo))
    assert snapshot(sandbox["root"]) == before


@pytest.mark.parametrize("workflow, field", [("pretrain", "output_dir"), ("inference", "inference_output_dir")])
def test_output_folder_under_a_file_is_an_error_before_work(bundle, tiny_cohort, sandbox, workflow, field):
    blocker = sandbox["root"] / "a_file"
    blocker.write_text("not a folder")
    before = snapshot(sandbox["root"])
    with pytest.raises(Exception) as excinfo:
        bundle(workflow, input_files=first_realisations(tiny_cohort)[:1], **{field: str(blocker / "out")})
    assert f"{blocker} is a file, not a folder" in str(value_error(excinfo))
    assert snapshot(sandbox["root"]) == before


def test_empty_datalist_is_not_the_simulated_cohort(tmp_path):
    from monai_tgd.data import ensure_datalist

    for value in ("", " "):
        with pytest.raises(ValueError, match=f"datalist {value!r} is not a path: give a datalist JSON file, or null"):
            ensure_datalist(value, tmp_path / "cohort", "tiny", 0)
    assert list(tmp_path.iterdir()) == []


# ---- items 4 and 5: cohort folders and the simulator ----------------------------------------------------------------


def test_cohort_dir_is_keyed_by_profile_and_seed():
    from monai.bundle import ConfigParser

    def cohort_dir(**settings):
        p = ConfigParser()
        p.read_config(str(BUNDLE / "configs" / "inference.json"))
        p.update({"bundle_root": "/b", **settings})
        return p.get_parsed_content("cohort_dir")

    assert cohort_dir() == "/b/data/simulated_quick"  # the seed-0 folder keeps its name: existing cohorts reused
    assert cohort_dir(seed=1) == "/b/data/simulated_quick_seed1"
    assert cohort_dir(profile="tiny", seed=12) == "/b/data/simulated_tiny_seed12"
    for bad in ({"seed": -1}, {"seed": 1.5}, {"profile": "../x"}):
        with pytest.raises(Exception) as excinfo:
            cohort_dir(**bad)
        message = str(value_error(excinfo))
        assert "seed must be an integer >= 0, got" in message or "profile '../x' cannot be used" in message, message


def test_seed_never_regenerates_another_seeds_cohort(tiny_cohort, tmp_path, capsys):
    """Regression: ``--seed 1`` regenerated the seed-0 cohort in place ("0 studies reused, 7 to simulate")."""
    from monai.bundle import ConfigParser

    from monai_tgd.data import ensure_datalist
    from monai_tgd.simulate.__main__ import main

    seed0 = tmp_path / "bundle" / "data" / "simulated_tiny"
    shutil.copytree(Path(tiny_cohort).parent, seed0)
    before = snapshot(seed0)

    def datalist_path(seed):
        p = ConfigParser()
        p.read_config(str(BUNDLE / "configs" / "inference.json"))
        p.update({"bundle_root": str(tmp_path / "bundle"), "profile": "tiny", "seed": seed})
        return p.get_parsed_content("datalist_path")

    assert datalist_path(0) == str(seed0 / "datalist.json") and snapshot(seed0) == before  # reused as is
    seed1 = Path(datalist_path(1))  # a new cohort in its own folder; the seed-0 one untouched
    assert seed1 == tmp_path / "bundle" / "data" / "simulated_tiny_seed1" / "datalist.json"
    assert json.loads(seed1.read_text())["seed"] == 1 and snapshot(seed0) == before
    # the seed-0 folder given explicitly with seed 1: refused before anything is written, from the API and the CLI
    with pytest.raises(ValueError, match="holds the simulated cohort of profile 'tiny', seed 0; refusing to replace it "
                                         "with profile 'tiny', seed 1"):  # fmt: skip
        ensure_datalist(None, seed0, "tiny", 1)
    with pytest.raises(SystemExit) as exit_:
        main(["--profile", "tiny", "--out", str(seed0), "--seed", "1", "--no-progress"])
    assert exit_.value.code == 2 and "refusing to replace it with profile 'tiny', seed 1" in capsys.readouterr().err
    assert snapshot(seed0) == before


def test_simulator_refuses_a_users_folder_and_an_empty_out(tmp_path, monkeypatch, capsys):
    """Regression: ``--out`` at a folder with the user's ``datalist.json`` replaced it without a word; ``--out ""``
    wrote the cohort into the current folder."""
    from monai_tgd.simulate import generate_cohort
    from monai_tgd.simulate.__main__ import main

    user = tmp_path / "mine"
    user.mkdir()
    (user / "datalist.json").write_text('{"test": [{"study": "mine"}]}')
    (user / "notes.txt").write_text("notes")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "work.txt").write_text("work")
    monkeypatch.chdir(cwd)
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["--profile", "tiny", "--out", str(user), "--no-progress"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert f"refusing to write the cohort into {str(user)!r}: the folder is not empty (2 entries: datalist.json" in err
    for out in ("", "  "):
        with pytest.raises(SystemExit) as exit_:
            main(["--profile", "tiny", "--out", out, "--no-progress"])
        assert exit_.value.code == 2 and f"--out must be a folder path (a new or empty folder), got {out!r}" in (
            capsys.readouterr().err
        )
        with pytest.raises(ValueError, match=f"out {out!r} is not a folder"):
            generate_cohort(out, "tiny", progress=False)
    with pytest.raises(ValueError, match="the folder is not empty"):
        generate_cohort(".", "tiny", progress=False)
    assert snapshot(tmp_path) == before  # not even a lock file


# ---- items 6 and 9: inference ---------------------------------------------------------------------------------------


def test_inference_two_inputs_one_output_is_an_error_before_work(bundle, tiny_cohort, sandbox):
    """Regression: ``x.nii`` and ``x.nii.gz`` of one folder both became ``x_denoised.nii.gz``, exit 0."""
    src = first_realisations(tiny_cohort)[0]
    folder = sandbox["root"] / "inputs"
    a, b = write_nifti(folder / "x.nii", src), write_nifti(folder / "x.nii.gz", src)
    before = snapshot(sandbox["root"])
    with pytest.raises(Exception) as excinfo:
        bundle("inference", input_files=[str(a), str(b)])
    message = str(value_error(excinfo))
    assert f"input_files: several inputs would be written to one output: ['{a}', '{b}'] -> " in message
    assert str(sandbox["runs"] / "inference" / "x_denoised.nii.gz") in message
    assert snapshot(sandbox["root"]) == before


def test_inference_never_replaces_a_users_file_but_replaces_its_own(bundle, tiny_cohort, sandbox):
    src = first_realisations(tiny_cohort)[0]
    out = sandbox["root"] / "out"
    user = write_nifti(out / "realization_00_denoised.nii.gz", src)  # the user's file, named like the output
    before = snapshot(sandbox["root"])
    with pytest.raises(Exception) as excinfo:
        bundle("inference", input_files=[src], inference_output_dir=str(out))
    assert f"would replace {user}, an existing file monai-tgd did not write" in str(value_error(excinfo))
    assert snapshot(sandbox["root"]) == before
    user.unlink()
    bundle("inference", input_files=[src], inference_output_dir=str(out))
    first = nib.load(user).get_fdata()
    bundle("inference", input_files=[src], inference_output_dir=str(out))  # a rerun replaces its own output
    np.testing.assert_array_equal(nib.load(user).get_fdata(), first)
    assert sorted(p.name for p in out.iterdir()) == ["realization_00_denoised.nii.gz"]


@pytest.mark.parametrize("input_files", ["", [""], ["  "]])
def test_inference_empty_input_path_is_named(bundle, sandbox, input_files):
    """Regression: ``--input_files ""`` was read as the bundle folder and reported with a hint to install pydicom."""
    before = snapshot(sandbox["root"])
    with pytest.raises(Exception) as excinfo:
        bundle("inference", input_files=input_files)
    message = str(value_error(excinfo))
    given = input_files if isinstance(input_files, str) else input_files[0]
    assert message.startswith(f"input_files: {given!r} is not a path"), message
    assert not any("pydicom" in str(e) for e in error_chain(excinfo.value))
    assert snapshot(sandbox["root"]) == before


# ---- property: random identifiers through the workflows --------------------------------------------------------------


def _check_run(sandbox, before, allowed: list[Path], expected: list[Path]):
    new = new_entries(before, snapshot(sandbox["root"]))
    outside = [n for n in new if not any(is_inside(sandbox["root"] / n, a) or sandbox["root"] / n == a
                                         or is_inside(a, sandbox["root"] / n) for a in allowed)]  # fmt: skip
    assert not outside, f"written outside {allowed}: {outside}"
    for path in expected:
        assert path.is_file(), f"{path} missing; new: {new}"


WORKFLOW_FIELDS = [("pretrain", "run_name", 10), ("inference", "output_postfix", 12), ("inference", "run_name", 12),
                   ("online_n2n", "n2n_study", 8)]  # fmt: skip


@pytest.mark.parametrize("workflow, field, count", WORKFLOW_FIELDS)
def test_workflows_property_random_identifiers(bundle, tiny_cohort, sandbox, workflow, field, count):
    """Fixed-seed random identifiers as a workflow's name setting, each a real run: a ValueError naming the field and
    value with nothing written anywhere, or a complete run whose every new file is inside its run folder (or is the
    final model), named as documented. Besides four fixed escapes, half the random values are drawn among the valid
    ones so both branches run."""
    values = random_identifiers(seed=zlib.crc32(f"{workflow}/{field}".encode()), count=400, config_chars=False)
    rng = random.Random(3)
    # online_n2n's run name is n2n_<study>_<base>: a study valid alone may make it too long (a clear error too)
    composed = (lambda v: f"n2n_{v}_v1") if workflow == "online_n2n" else (lambda v: v)
    valid = [v for v in values if expected_valid(v) is True and expected_valid(composed(v)) is True]
    invalid = [v for v in values if expected_valid(v) is False]
    adversarial = ["../../../../outside", "/abs/path", "..", "a\\..\\b"]  # always, besides the random ones
    cases = adversarial + rng.sample(valid, count // 2) + rng.sample(invalid, count - count // 2)
    src = first_realisations(tiny_cohort)[0]
    for i, value in enumerate(cases):
        overrides = {field: value}
        if workflow == "inference":
            overrides["input_files"] = [src]
        if workflow == "online_n2n":
            overrides["datalist"] = str(renamed_ood_datalist(tiny_cohort, sandbox["root"] / f"dl{i}", value))
        before = snapshot(sandbox["root"])
        try:
            bundle(workflow, **overrides)
        except Exception as err:  # noqa: BLE001 - the check below says which errors are acceptable
            errors = [e for e in error_chain(err) if type(e) is ValueError]
            assert expected_valid(value) is False and errors, f"{field}={value!r}: {error_chain(err)!r}"
            assert f"{field} {value!r}" in str(errors[0]) and NAME_FORM in str(errors[0]), str(errors[0])
            assert snapshot(sandbox["root"]) == before, f"{field}={value!r} wrote files before failing"
            continue
        assert expected_valid(value) is True, f"{field}={value!r} accepted"
        runs, models = sandbox["runs"], sandbox["models"]
        if workflow == "pretrain":
            _check_run(sandbox, before, [runs / value, models / f"model_{value}.pt"], [models / f"model_{value}.pt"])
        elif workflow == "inference":
            run = runs / (value if field == "run_name" else "inference")
            postfix = value if field == "output_postfix" else "denoised"
            _check_run(sandbox, before, [run], [run / f"realization_00_{postfix}.nii.gz"])
        else:
            run, model = runs / f"n2n_{value}_v1", models / f"model_n2n_{value}_v1.pt"
            _check_run(sandbox, before, [run, model], [model, run / f"{value}_denoised.nii.gz", run / "tgd_masks.pt"])
