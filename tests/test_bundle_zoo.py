"""The MONAI model zoo's submission checks, run offline against ``bundles/pet_tgd_denoising``.

The model zoo (github.com/Project-MONAI/model-zoo) checks a bundle submission with ``ci/verify_bundle.py`` (files,
version and changelog, metadata schema, network input/output, TorchScript export, workflow properties), its
``.pre-commit-config.yaml`` (JSON style: ``pretty-format-json --autofix --no-sort-keys --indent=4``, trailing
whitespace, end of file, mixed line endings, files of at most 1024 kB, shebangs of executables) and the rules of its
CONTRIBUTING.md (config keys, ``docs/README.md`` model card, licence). Each rule is one test here, named after it, so
a failure says which rule the bundle breaks. These tests are the project's own: they read the bundle, never write
into it, and never reach the network (sockets are blocked); the metadata is validated against the project's own
schema ``tests/data/bundle_metadata_schema.json``, written from the public MONAI Bundle Specification, and against the
zoo's original schema only where a copy is named by ``MONAI_ZOO_META_SCHEMA`` (see tests/data/README.md).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
import tempfile
import urllib.parse
import warnings
from pathlib import Path

import pytest

from ._offline import BUNDLE, copy_bundle, no_network, restored_process_state, write_pet_volume

CONFIGS = BUNDLE / "configs"
META = CONFIGS / "metadata.json"
INFERENCE = CONFIGS / "inference.json"
TRAIN = CONFIGS / "train.json"
MODEL = BUNDLE / "models" / "model.pt"
MODEL_CARD = BUNDLE / "docs" / "README.md"
#: The project's own JSON schema of configs/metadata.json, written from the MONAI Bundle Specification
#: (https://docs.monai.io/en/latest/mb_specification.html); see tests/data/README.md.
PROJECT_SCHEMA = Path(__file__).resolve().parent / "data" / "bundle_metadata_schema.json"
#: Environment variable naming a local copy of the model zoo's original schema (the file metadata.json's ``schema``
#: field names), for the optional check against it.
ZOO_SCHEMA_ENV = "MONAI_ZOO_META_SCHEMA"

#: Sections of a model zoo model card, in order: the layout of the zoo's bundles (spleen_ct_segmentation,
#: brats_mri_segmentation, lung_nodule_ct_detection, pancreas_ct_dints_segmentation, swin_unetr_btcv_segmentation,
#: pathology_*, endoscopic_* ...): (heading level, title), titles compared without case.
MODEL_CARD_SECTIONS = [
    (1, "Model Overview"),
    (2, "Data"),
    (2, "Training configuration"),
    (2, "Performance"),
    (2, "MONAI Bundle Commands"),
    (1, "References"),
    (1, "License"),
]

#: Semantic version 2.0.0 (semver.org), the versions the zoo's changelogs use.
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)


@pytest.fixture(autouse=True)
def offline():
    """No test here may open a network connection."""
    with no_network():
        yield


def _metadata() -> dict:
    return json.loads(META.read_text(encoding="utf-8"))


def _bundle_files() -> list[Path]:
    """The bundle's files as the model zoo would hold them (the distributed parts; no runs/, data/, caches)."""
    from ._offline import load_packer

    return [path for _, path in load_packer().bundle_files(BUNDLE)]


def _is_text(path: Path) -> bool:
    return path.suffix not in (".pt", ".ts", ".pth", ".onnx", ".zip", ".gz") and b"\0" not in path.read_bytes()


def _parser(*files: Path, **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(f=[str(f) for f in files])
    parser.read_meta(f=str(META))
    parser.update(overrides)
    return parser


def _semver_key(version: str) -> tuple:
    """Precedence key of a semantic version (semver.org section 11)."""
    m = SEMVER.match(version)
    assert m, f"{version!r} is not a semantic version MAJOR.MINOR.PATCH"
    major, minor, patch, pre, _ = m.groups()
    if pre is None:
        return (int(major), int(minor), int(patch), 1, ())
    ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (int(major), int(minor), int(patch), 0, ids)


# --------------------------------------------------------------------------------------------------------------------
# directory (verify_bundle.verify_bundle_directory)
# --------------------------------------------------------------------------------------------------------------------


def test_directory_has_metadata_json():
    assert META.is_file(), "necessary file configs/metadata.json is missing"


def test_directory_has_license():
    assert (BUNDLE / "LICENSE").is_file(), "necessary file LICENSE (exactly this name) is missing in the bundle root"
    assert (BUNDLE / "LICENSE").read_text(encoding="utf-8").strip(), "LICENSE is empty"


def test_directory_has_model_pt():
    assert MODEL.is_file(), "preferred file models/model.pt is missing"


def test_directory_has_inference_json():
    assert INFERENCE.is_file(), "preferred file configs/inference.json is missing"


def test_directory_has_train_json_for_the_main_training_workflow():
    """``['configs/inference.json', 'configs/train.json']`` is the main training workflow (the zoo's layout: train.json
    holds the training on top of the inference definitions)."""
    assert TRAIN.is_file(), "configs/train.json (the main training workflow) is missing"
    parser = _parser(INFERENCE, TRAIN)
    assert "run" in parser, "inference.json + train.json has no 'run' expression"
    run = json.dumps(parser["run"])
    assert "train#trainer" in run, f"the run of inference.json + train.json does not run train#trainer: {run}"


def test_directory_has_no_large_files_to_download():
    """Large files listed in ``large_files.yml/.yaml/.json`` are downloaded by the zoo's CI; every listed file must
    already be in the bundle, so nothing needs the network."""
    from monai.bundle import ConfigParser

    for name in ("large_files.yml", "large_files.yaml", "large_files.json"):
        path = BUNDLE / name
        if path.exists():
            entries = ConfigParser.load_config_file(str(path)).get("large_files", [])
            missing = [e.get("path") for e in entries if not (BUNDLE / str(e.get("path"))).is_file()]
            assert not missing, f"{name} lists files that must be downloaded: {missing}"


# --------------------------------------------------------------------------------------------------------------------
# version and changelog (verify_bundle.verify_version_changes)
# --------------------------------------------------------------------------------------------------------------------


def test_version_and_changelog_present():
    meta = _metadata()
    assert "version" in meta, "'version' is missing in configs/metadata.json"
    assert isinstance(meta.get("changelog"), dict) and meta["changelog"], "'changelog' is missing or empty"
    assert meta["version"] in meta["changelog"], f"version {meta['version']} is not a key of 'changelog'"


def test_version_is_semantic():
    version = _metadata()["version"]
    assert isinstance(version, str) and SEMVER.match(version), f"version {version!r} is not MAJOR.MINOR.PATCH"


def test_changelog_keys_descending_and_version_is_newest():
    meta = _metadata()
    keys = list(meta["changelog"])
    bad = [k for k in keys if not SEMVER.match(k)]
    assert not bad, f"changelog keys that are not semantic versions: {bad}"
    for newer, older in zip(keys, keys[1:]):
        assert _semver_key(newer) > _semver_key(older), (
            f"changelog not in descending version order: {newer} before {older}"
        )
    assert keys[0] == meta["version"], (
        f"the newest changelog entry {keys[0]} is not the bundle's version {meta['version']}"
    )


# --------------------------------------------------------------------------------------------------------------------
# metadata (verify_bundle.verify_metadata_format)
# --------------------------------------------------------------------------------------------------------------------


def _verify_metadata(meta: dict | Path, schema: Path, tmp_path: Path) -> None:
    """``monai.bundle.verify_metadata`` of ``meta`` (a file, or a dict written to one) against the local ``schema``,
    copied to where verify_metadata would download the metadata's ``schema`` URL (a file already at ``filepath`` is
    used as it is: nothing is downloaded). Raises ``ValueError`` naming the failed rule."""
    from monai.bundle import verify_metadata

    work = Path(tempfile.mkdtemp(dir=tmp_path))
    if isinstance(meta, dict):
        meta_file = work / "metadata.json"
        meta_file.write_text(json.dumps(meta), encoding="utf-8")
    else:
        meta_file = meta
    target = work / "eval" / "schema.json"
    target.parent.mkdir()
    shutil.copyfile(schema, target)
    with warnings.catch_warnings():  # the local copy has no hash to check: MONAI warns, and uses it
        warnings.filterwarnings("ignore", message="No hash value provided", category=UserWarning)
        verify_metadata(meta_file=str(meta_file), filepath=str(target))


def test_metadata_matches_the_project_schema(tmp_path):
    """``monai.bundle.verify_metadata`` of configs/metadata.json against tests/data/bundle_metadata_schema.json."""
    assert PROJECT_SCHEMA.is_file(), f"the project's metadata schema {PROJECT_SCHEMA} is missing"
    _verify_metadata(META, PROJECT_SCHEMA, tmp_path)


def test_project_schema_follows_the_bundle_specification():
    """The project schema is a valid JSON Schema and holds the MONAI Bundle Specification's mandatory keys and tensor
    format specifier keys (docs.monai.io/en/latest/mb_specification.html, "metadata.json File")."""
    from jsonschema.validators import validator_for

    schema = json.loads(PROJECT_SCHEMA.read_text(encoding="utf-8"))
    validator_for(schema).check_schema(schema)
    assert {"version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version", "task",
            "description", "authors", "copyright", "network_data_format"} <= set(schema["required"])
    assert "schema" in schema["required"], "monai.bundle.verify_metadata needs the 'schema' URL"
    assert schema.get("additionalProperties", True) is not False, "user-specified top-level keys must be allowed"
    tensor = set(schema["$defs"]["tensor_format"]["required"])
    assert {"type", "format", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data",
            "channel_def"} <= tensor


def _drop(path: str):
    def change(meta):
        *parents, key = path.split("#")
        node = meta
        for p in parents:
            node = node[p]
        del node[key]

    return change


def _set(path: str, value):
    def change(meta):
        *parents, key = path.split("#")
        node = meta
        for p in parents:
            node = node[p]
        node[key] = value

    return change


_IMAGE = "network_data_format#inputs#image"
_PRED = "network_data_format#outputs#pred"

#: Broken metadata the project schema must reject: (id, change of a copy of metadata.json, a word of the error).
BROKEN_METADATA = [
    ("no_authors", _drop("authors"), "authors"),
    ("input_without_dtype", _drop(f"{_IMAGE}#dtype"), "dtype"),
    ("version_0.5", _set("version", "0.5"), "0.5"),
    ("network_data_format_without_outputs", _drop("network_data_format#outputs"), "outputs"),
    ("no_schema_url", _drop("schema"), "'schema' is a required property"),
    ("no_monai_version", _drop("monai_version"), "monai_version"),
    ("no_required_packages_version", _drop("required_packages_version"), "required_packages_version"),
    ("no_copyright", _drop("copyright"), "copyright"),
    ("no_inputs", _drop("network_data_format#inputs"), "inputs"),
    ("empty_outputs", _set("network_data_format#outputs", {}), "outputs"),
    ("output_without_num_channels", _drop(f"{_PRED}#num_channels"), "num_channels"),
    ("input_without_spatial_shape", _drop(f"{_IMAGE}#spatial_shape"), "spatial_shape"),
    ("input_without_value_range", _drop(f"{_IMAGE}#value_range"), "value_range"),
    ("input_without_is_patch_data", _drop(f"{_IMAGE}#is_patch_data"), "is_patch_data"),
    ("output_without_channel_def", _drop(f"{_PRED}#channel_def"), "channel_def"),
    ("num_channels_a_string", _set(f"{_IMAGE}#num_channels", "3"), "3"),
    ("dtype_unknown", _set(f"{_PRED}#dtype", "float"), "float"),
    ("value_range_one_number", _set(f"{_IMAGE}#value_range", [0]), "value_range"),
    ("is_patch_data_a_string", _set(f"{_IMAGE}#is_patch_data", "true"), "true"),
    ("changelog_a_list", _set("changelog", ["0.5.0"]), "changelog"),
    ("version_v_prefix", _set("version", "v0.5.0"), "v0.5.0"),
]


@pytest.mark.parametrize("change, word", [b[1:] for b in BROKEN_METADATA], ids=[b[0] for b in BROKEN_METADATA])
def test_project_schema_rejects_broken_metadata(change, word, tmp_path):
    """The project schema is not vacuous: each broken copy of the metadata fails verify_metadata, for the rule meant
    (``word`` is in a validation error's message or location)."""
    from jsonschema.validators import validator_for

    meta = _metadata()
    change(meta)
    with pytest.raises(ValueError, match="Failed validating|schema"):
        _verify_metadata(meta, PROJECT_SCHEMA, tmp_path)
    schema = json.loads(PROJECT_SCHEMA.read_text(encoding="utf-8"))
    errors = [f"{e.json_path}: {e.message}" for e in validator_for(schema)(schema).iter_errors(meta)]
    assert any(word in e for e in errors), f"no error about {word!r}: {errors}"


def test_project_schema_allows_the_bundles_extra_keys(tmp_path):
    """User-specified keys (the bundle's ``trained_spacing_mm``, any other) pass: the specification allows them."""
    meta = _metadata()
    assert "trained_spacing_mm" in meta
    meta["some_future_key"] = {"any": ["value"]}
    _verify_metadata(meta, PROJECT_SCHEMA, tmp_path)


def test_metadata_matches_the_zoo_schema(tmp_path):
    """Optional: ``verify_metadata`` against the model zoo's original schema (the file metadata.json's ``schema`` URL
    names), where a local copy is named by ``MONAI_ZOO_META_SCHEMA``; nothing is downloaded here."""
    url = _metadata()["schema"]
    value = os.environ.get(ZOO_SCHEMA_ENV, "").strip()
    if not value:
        pytest.skip(
            f"{ZOO_SCHEMA_ENV} is not set: no local copy of the zoo's schema {url} "
            "(download it and point the variable at it to run this check; see tests/data/README.md)"
        )
    zoo = Path(value).expanduser()
    assert zoo.is_file(), f"{ZOO_SCHEMA_ENV}={value} is not a file (expected a copy of {url})"
    _verify_metadata(META, zoo, tmp_path)


def test_metadata_eval_metrics_are_numbers():
    metrics = _metadata().get("eval_metrics", {})
    assert isinstance(metrics, dict), "eval_metrics must be a dictionary"
    bad = {k: v for k, v in metrics.items() if isinstance(v, bool) or not isinstance(v, (int, float))
           or not math.isfinite(v)}
    assert not bad, f"eval_metrics values must be finite numbers (the achieved scores): {bad}"


# --------------------------------------------------------------------------------------------------------------------
# network (verify_bundle.verify_data_shape, verify_torchscript)
# --------------------------------------------------------------------------------------------------------------------


def test_data_shape_verify_net_in_out():
    """``verify_net_in_out`` with ``configs/inference.json`` alone, as the zoo runs it."""
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def", meta_file=str(META), config_file=str(INFERENCE), bundle_root=str(BUNDLE), device="cpu"
    )


def test_torchscript_export_of_model_pt(tmp_path):
    """``ckpt_export`` of ``models/model.pt`` with ``configs/inference.json`` alone (into tmp, not the bundle); the
    TorchScript module loads, carries the metadata, and on the metadata's input shape gives the metadata's output
    shape, equal to the eager network with the checkpoint's weights."""
    import torch
    from monai.bundle import ckpt_export
    from monai.data import load_net_with_metadata

    ts_path = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts_path),
        ckpt_file=str(MODEL),
        meta_file=str(META),
        config_file=str(INFERENCE),
        bundle_root=str(BUNDLE),
    )
    scripted = torch.jit.load(str(ts_path), map_location="cpu").eval()
    _, meta, extra = load_net_with_metadata(str(ts_path), more_extra_files=("inference.json",))
    assert meta["version"] == _metadata()["version"]
    assert "network_def" in json.loads(extra["inference.json"])

    fmt = _metadata()["network_data_format"]
    image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]
    x = torch.rand(2, image["num_channels"], *image["spatial_shape"], generator=torch.Generator().manual_seed(0))
    eager = _parser(INFERENCE, bundle_root=str(BUNDLE)).get_parsed_content("network_def")
    eager.load_state_dict(torch.load(MODEL, map_location="cpu", weights_only=True), strict=True)
    eager.eval()
    with torch.no_grad():
        got, expected = scripted(x), eager(x)
    assert tuple(got.shape) == (2, pred["num_channels"], *pred["spatial_shape"])
    assert got.dtype == getattr(torch, pred["dtype"])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# config keys (CONTRIBUTING "Preferred Files and Keys") and workflow properties (verify_bundle_properties)
# --------------------------------------------------------------------------------------------------------------------


def test_inference_json_alone_has_the_zoo_keys():
    parser = _parser(INFERENCE)
    missing = [k for k in ("bundle_root", "device", "network_def", "inferer", "output_dir") if k not in parser]
    assert not missing, f"configs/inference.json (alone) lacks the zoo's inference keys {missing}"


def test_inference_checkpoint_is_models_model_pt():
    parser = _parser(INFERENCE, bundle_root=str(BUNDLE))
    ckpt = Path(parser.get_parsed_content("inference_checkpoint"))
    assert ckpt.resolve() == MODEL.resolve(), f"inference_checkpoint is {ckpt}, not models/model.pt"


def test_train_json_has_the_zoo_keys():
    parser = _parser(INFERENCE, TRAIN)
    keys = ["bundle_root", "device", "dataset_dir", "output_dir", "train#trainer", "train#trainer#max_epochs",
            "train#dataset", "train#dataset#data", "train#handlers"]
    if "validate" in parser:
        keys += ["validate#evaluator", "validate#handlers", "validate#dataset", "validate#dataset#data"]
    if "ValidationHandler" in json.dumps(parser.get()):
        keys.append("val_interval")
    missing = [k for k in keys if k not in parser]
    assert not missing, f"inference.json + train.json lack the zoo's training keys {missing}"


def test_training_final_model_is_not_written_into_models(tmp_path):
    """The shipped ``models/`` stays as distributed: a training run's final model goes elsewhere by default."""
    root = tmp_path / "bundle"
    parser = _parser(INFERENCE, TRAIN, bundle_root=str(root))
    final = Path(parser.get_parsed_content("final_model")).resolve()
    assert root.resolve() / "models" not in final.parents, f"final_model defaults into the bundle's models/: {final}"


@pytest.fixture(scope="module")
def bundle_copy(tmp_path_factory):
    """A scratch copy of the bundle's distributed parts, and a tiny PET volume beside it."""
    root = tmp_path_factory.mktemp("zoo")
    copy = copy_bundle(root / "pet_tgd_denoising")
    volume = write_pet_volume(root / "inputs" / "pet.nii.gz")
    return copy, volume


def test_config_workflow_inference_properties(bundle_copy, tmp_path, monkeypatch):
    """``ConfigWorkflow(workflow_type="inference", config_file=configs/inference.json)`` initialises from the bundle
    folder (the working folder, ``bundle_root`` ".") and has MONAI's required inference properties
    (``check_properties()`` parses each of them)."""
    from monai.bundle import ConfigWorkflow

    copy, volume = bundle_copy
    with restored_process_state():
        monkeypatch.chdir(copy)
        workflow = ConfigWorkflow(
            workflow_type="inference",
            config_file="configs/inference.json",
            meta_file="configs/metadata.json",
            logging_file=False,
            input_files=[str(volume)],
            inference_output_dir=str(tmp_path / "out"),
        )
        workflow.initialize()
        absent = [
            f"{name} (id {prop['id'].replace('::', '#')})"
            for name, prop in workflow.properties.items()
            if prop.get("required") and prop["id"].replace("::", "#") not in workflow.parser
        ]
        assert not absent, f"inference.json lacks MONAI's required inference properties: {absent}"
        missing = workflow.check_properties()  # parses every required property
        network = workflow.network_def
        version = workflow.version
    assert missing == [], f"inference workflow lacks required (or misnamed optional) properties: {missing}"
    assert isinstance(network, __import__("torch").nn.Module)
    assert version == _metadata()["version"]


def test_monai_bundle_load_from_the_bundle_folder(tmp_path):
    """``monai.bundle.load(name, bundle_dir=...)`` finds ``models/model.pt`` locally (no download), builds
    ``network_def`` from ``configs/inference.json`` and loads every weight of the checkpoint into it."""
    import torch
    from monai.bundle import load

    with restored_process_state():
        net = load(
            name=BUNDLE.name, bundle_dir=str(BUNDLE.parent), workflow_type="inference", device="cpu", progress=False
        )
    assert isinstance(net, torch.nn.Module), f"load returned {type(net)} instead of the bundle's network"
    ckpt = torch.load(MODEL, map_location="cpu", weights_only=True)
    state = net.state_dict()
    assert set(state) == set(ckpt), "models/model.pt does not hold exactly network_def's weights"
    for key, value in ckpt.items():
        assert torch.equal(state[key].cpu(), value), f"weight {key} was not loaded from models/model.pt"


# --------------------------------------------------------------------------------------------------------------------
# pre-commit hooks of the zoo (.pre-commit-config.yaml, pre-commit-hooks v4.6.0)
# --------------------------------------------------------------------------------------------------------------------

CONFIG_JSONS = sorted(CONFIGS.glob("*.json"))


def pretty_format_json(text: str) -> str:
    """What ``pretty-format-json --autofix --no-sort-keys --indent=4`` (pre-commit-hooks v4.6.0) writes: keys in
    their order (a duplicated key keeps its last value), 4-space indent, ``', '``/``': '`` separators, non-ASCII as
    ``\\uXXXX`` (no ``--no-ensure-ascii``), one final newline."""
    return json.dumps(json.loads(text), indent=4, ensure_ascii=True) + "\n"


@pytest.mark.parametrize("path", CONFIG_JSONS, ids=[p.name for p in CONFIG_JSONS])
def test_json_style_pretty_format_json(path):
    with open(path, encoding="utf-8") as f:  # text mode, as the hook reads it
        text = f.read()
    expected = pretty_format_json(text)
    if text != expected:
        import difflib

        lines = difflib.unified_diff(text.splitlines(True), expected.splitlines(True), "found", "expected")
        diff = "".join(list(lines)[:40])
        pytest.fail(f"configs/{path.name} is not formatted as pretty-format-json --no-sort-keys --indent=4:\n{diff}")


def test_no_trailing_whitespace():
    bad = []
    for path in _bundle_files():
        if not _is_text(path):
            continue
        for n, line in enumerate(path.read_bytes().splitlines(), 1):
            if line != line.rstrip():
                bad.append(f"{path.relative_to(BUNDLE)}:{n}")
    assert not bad, f"trailing whitespace: {bad[:20]}"


def test_end_of_file_single_newline():
    bad = []
    for path in _bundle_files():
        data = path.read_bytes()
        if not data or not _is_text(path):
            continue
        body = data.rstrip(b"\r\n")
        if not body or data[len(body):] not in (b"\n", b"\r\n", b"\r"):
            bad.append(str(path.relative_to(BUNDLE)))
    assert not bad, f"files not ending with exactly one newline: {bad}"


def test_no_mixed_line_endings():
    bad = []
    for path in _bundle_files():
        if not _is_text(path):
            continue
        data = path.read_bytes()
        crlf = data.count(b"\r\n")
        kinds = {"crlf": crlf, "lf": data.count(b"\n") - crlf, "cr": data.count(b"\r") - crlf}
        if sum(1 for v in kinds.values() if v) > 1:
            bad.append(str(path.relative_to(BUNDLE)))
    assert not bad, f"mixed line endings: {bad}"


def test_no_file_over_1024_kb():
    big = {
        str(p.relative_to(BUNDLE)): p.stat().st_size // 1024 for p in _bundle_files() if p.stat().st_size > 1024 * 1024
    }
    assert not big, f"files over the zoo's 1024 kB limit (check-added-large-files --maxkb=1024): {big}"


def test_executables_have_shebangs():
    bad = [str(p.relative_to(BUNDLE)) for p in _bundle_files()
           if p.stat().st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH) and not p.read_bytes().startswith(b"#!")]
    assert not bad, f"executable files without a shebang: {bad}"


# --------------------------------------------------------------------------------------------------------------------
# model card (CONTRIBUTING "Readme Format"; docs/README.md)
# --------------------------------------------------------------------------------------------------------------------

_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")


def _markdown_prose(text: str, blank_code: bool = True) -> list[tuple[int, str]]:
    """``[(line number, line)]`` outside fenced code blocks, with inline code spans blanked (``blank_code``)."""
    lines, fence = [], None
    for n, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line)
        if fence is not None:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            continue
        if m:
            fence = m.group(1)
            continue
        if blank_code:
            line = re.sub(r"(`+)(?:(?!\1).)+\1", lambda s: " " * len(s.group(0)), line)
        lines.append((n, line))
    return lines


def _headings(text: str) -> list[tuple[int, str]]:
    out = []
    for _, line in _markdown_prose(text, blank_code=False):
        m = re.match(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if m:
            out.append((len(m.group(1)), m.group(2).replace("*", "").replace("`", "").strip()))
    return out


def test_model_card_has_the_zoo_sections():
    assert MODEL_CARD.is_file(), "docs/README.md (the model card) is missing"
    found = _headings(MODEL_CARD.read_text(encoding="utf-8"))
    position = 0
    for level, title in MODEL_CARD_SECTIONS:
        for i in range(position, len(found)):
            if found[i][0] == level and found[i][1].lower() == title.lower():
                position = i + 1
                break
        else:
            pytest.fail(
                f"docs/README.md lacks the section {'#' * level} {title} (after the previous zoo sections); "
                f"expected, in order: {[('#' * lv) + ' ' + t for lv, t in MODEL_CARD_SECTIONS]}; found: "
                f"{[('#' * lv) + ' ' + t for lv, t in found]}"
            )


_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]"  # [text] or ![alt], one level of nested brackets
    r"\(\s*(<[^>]*>|[^\s()]*(?:\([^\s()]*\)[^\s()]*)*)"  # (target: <...> or balanced parentheses)
    r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)"  # optional "title"
)
_REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
_HTML_LINK = re.compile(r"<(?:a|img|source|link)\b[^>]*?\b(?:href|src)\s*=\s*[\"']([^\"']*)[\"']", re.I)
_AUTOLINK = re.compile(r"<([a-zA-Z][a-zA-Z0-9+.-]{1,31}:[^\s<>]*)>")


def markdown_links(text: str) -> list[tuple[int, str]]:
    """``[(line, target)]`` of every link and image of a markdown text (inline, reference definitions, autolinks,
    HTML ``href``/``src``), outside code."""
    found = []
    for n, line in _markdown_prose(text):
        for regex in (_INLINE_LINK, _REF_DEF, _HTML_LINK, _AUTOLINK):
            for m in regex.finditer(line):
                found.append((n, m.group(1).strip("<>")))
    return found


def link_problem(doc: Path, target: str, root: Path = BUNDLE) -> str | None:
    """Why ``target`` (a link in ``doc``) does not work in the distributed bundle ``root``, or None."""
    parsed = urllib.parse.urlparse(target)
    if parsed.scheme in ("http", "https", "mailto"):
        return None if parsed.scheme == "mailto" or parsed.netloc else "a web link without a host"
    if parsed.scheme or parsed.netloc:
        return f"a {parsed.scheme or '//'} link (only http(s) links and relative links inside the bundle work)"
    path = urllib.parse.unquote(parsed.path)
    if not path:
        return None  # "#anchor" or "?query" in the same document
    if path.startswith("/"):
        return "an absolute path"
    resolved = (doc.parent / path).resolve()
    if resolved != root.resolve() and root.resolve() not in resolved.parents:
        return "a relative link leaving the bundle folder"
    if not resolved.exists():
        return "a relative link to a file that is not in the bundle"
    return None


MARKDOWN = sorted(BUNDLE.glob("docs/**/*.md")) + sorted(BUNDLE.glob("*.md"))


@pytest.mark.parametrize("doc", MARKDOWN, ids=[str(p.relative_to(BUNDLE)) for p in MARKDOWN])
def test_docs_links_stay_inside_the_bundle(doc):
    bad = []
    for line, target in markdown_links(doc.read_text(encoding="utf-8")):
        problem = link_problem(doc, target)
        if problem:
            bad.append(f"line {line}: {target} ({problem})")
    assert not bad, f"{doc.relative_to(BUNDLE)} has links that break in the distributed bundle: {bad}"


def test_link_checker_catches_what_leaves_the_bundle(tmp_path):
    """The link parser and checker themselves, on a scratch bundle."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "inference.json").write_text("{}\n")
    doc = tmp_path / "docs" / "README.md"
    text = (
        "[ok](../configs/inference.json) [web](https://monai.io/x(y)) [a](#data) ![img](<../configs/inference.json>)\n"
        "[up](../../outside.md) [abs](/etc/passwd) [gone](figures/missing.png) [file](file:///tmp/x)\n"
        "<a href=\"../../x.html\">x</a>\n"
        "[ref]: ../../../docs/results.md\n"
        "`[code](../../not-a-link.md)`\n"
        "```\n[fenced](../../not-a-link.md)\n```\n"
    )
    problems = {t: link_problem(doc, t, tmp_path) for _, t in markdown_links(text)}
    assert problems == {
        "../configs/inference.json": None,
        "https://monai.io/x(y)": None,
        "#data": None,
        "../../outside.md": "a relative link leaving the bundle folder",
        "/etc/passwd": "an absolute path",
        "figures/missing.png": "a relative link to a file that is not in the bundle",
        "file:///tmp/x": "a file link (only http(s) links and relative links inside the bundle work)",
        "../../x.html": "a relative link leaving the bundle folder",
        "../../../docs/results.md": "a relative link leaving the bundle folder",
    }
