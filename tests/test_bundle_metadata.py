"""configs/metadata.json carries the fields the MONAI model zoo requires, consistent with the network.

``python -m monai.bundle verify_metadata`` would check the file against the schema named in its ``"schema"`` field,
but it downloads that schema from GitHub, which is not possible offline (CI here has no internet); this test checks
the required fields (MONAI bundle specification / model-zoo schema) and their types by hand instead. Run
``verify_metadata --meta_file configs/metadata.json --filepath <tmp>/schema.json`` where the internet is available.
"""

from __future__ import annotations

import inspect
import json

import pytest
from packaging.version import Version

from monai_tgd.networks import DnCNN

from .conftest import BUNDLE

META = json.loads((BUNDLE / "configs" / "metadata.json").read_text())

REQUIRED_STRINGS = ("version", "monai_version", "pytorch_version", "numpy_version", "task", "description", "authors",
                    "copyright", "data_source", "intended_use")  # fmt: skip
TENSOR_FIELDS = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data", "channel_def")


@pytest.mark.parametrize("field", REQUIRED_STRINGS)
def test_required_fields_are_non_empty_strings(field):
    assert isinstance(META.get(field), str) and META[field].strip(), f"metadata.json: '{field}' missing or empty"


def test_versions_and_changelog():
    for field in ("version", "monai_version", "pytorch_version", "numpy_version"):
        Version(META[field])  # raises InvalidVersion
    assert META["schema"].startswith("https://") and META["schema"].endswith(".json")
    assert isinstance(META["changelog"], dict) and META["version"] in META["changelog"], "changelog lacks the version"
    assert all(isinstance(v, str) and v for v in META["changelog"].values())
    packages = META["required_packages_version"]
    assert isinstance(packages, dict) and {"monai-tgd", "pytorch-ignite"} <= set(packages)
    for version in packages.values():
        Version(version)


def test_intended_use_is_research_only():
    assert "research only" in META["intended_use"].lower()


@pytest.mark.parametrize("side, key", [("inputs", "image"), ("outputs", "pred")])
def test_network_data_format_fields(side, key):
    tensor = META["network_data_format"][side][key]
    missing = [f for f in TENSOR_FIELDS if f not in tensor]
    assert not missing, f"network_data_format.{side}.{key} lacks {missing}"
    assert tensor["type"] == "image" and tensor["dtype"] == "float32"
    assert isinstance(tensor["spatial_shape"], list) and len(tensor["spatial_shape"]) == 2  # 2.5D: slices as channels
    assert len(tensor["value_range"]) == 2 and tensor["value_range"][0] < tensor["value_range"][1]
    assert sorted(tensor["channel_def"], key=int) == [str(c) for c in range(tensor["num_channels"])]


def test_network_data_format_matches_dncnn_defaults():
    """3 consecutive slices in, the denoised centre slice out: DnCNN's and inference.json's network_def defaults."""
    defaults = {k: p.default for k, p in inspect.signature(DnCNN).parameters.items()}
    config = json.loads((BUNDLE / "configs" / "inference.json").read_text())
    common = config["network_def"]
    fmt = META["network_data_format"]
    assert common["in_channels"] == "@slab"  # the slab width setting
    assert fmt["inputs"]["image"]["num_channels"] == defaults["in_channels"] == config["slab"] == 3
    assert fmt["outputs"]["pred"]["num_channels"] == defaults["out_channels"] == common["out_channels"] == 1
    assert common["spatial_dims"] == 2
