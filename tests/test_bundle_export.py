"""``verify_net_in_out`` and ``ckpt_export`` (TorchScript) on the bundle, offline.

These call the functions behind ``python -m monai.bundle verify_net_in_out network_def ...`` and
``python -m monai.bundle ckpt_export network_def ...`` in-process (the CLI only dispatches to them through fire);
the CLI commands themselves are listed, and were run by hand, in bundles/pet_tgd_denoising/docs/ddp_export_tracking.md.
"""

from __future__ import annotations

import json

import pytest
import torch
from monai.bundle import ckpt_export, verify_net_in_out
from monai.data import load_net_with_metadata

from monai_tgd.networks import DnCNN

from .conftest import BUNDLE, TINY_OVERRIDES

META = str(BUNDLE / "configs" / "metadata.json")
INFERENCE = str(BUNDLE / "configs" / "inference.json")


def test_verify_net_in_out_default_network():
    """The default DnCNN (64 features, 8 layers) against metadata's network_data_format (3 channels in, 1 out)."""
    verify_net_in_out("network_def", meta_file=META, config_file=INFERENCE, device="cpu")


def test_verify_net_in_out_detects_wrong_output_channels():
    with pytest.raises(ValueError, match="output channel number"):
        verify_net_in_out("network_def", meta_file=META, config_file=INFERENCE, device="cpu", **{"network_def#out_channels": 3})


def test_default_network_keeps_the_metadata_spatial_shape():
    """verify_net_in_out checks channels and dtype only; the denoised slice must also have the input's size."""
    fmt = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["network_data_format"]
    image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]
    net = DnCNN(in_channels=image["num_channels"], out_channels=pred["num_channels"]).eval()
    with torch.no_grad():
        out = net(torch.rand(2, image["num_channels"], *image["spatial_shape"]))
    assert out.shape == (2, pred["num_channels"], *pred["spatial_shape"])


def test_ckpt_export_torchscript_matches_eager(run_bundle, tmp_path):
    run_bundle("pretrain")
    ckpt, ts_path = tmp_path / "models" / "model_v1.pt", tmp_path / "model.ts"
    sizes = {k: TINY_OVERRIDES[k] for k in ("features", "num_layers")}
    ckpt_export(
        "network_def", filepath=str(ts_path), ckpt_file=str(ckpt), meta_file=META, config_file=INFERENCE, **sizes
    )
    scripted, meta, extra = load_net_with_metadata(str(ts_path), more_extra_files=("inference.json",))
    assert meta["version"] == json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]
    assert json.loads(extra["inference.json"])["network_def"]["_target_"] == "monai_tgd.networks.DnCNN"

    eager = DnCNN(**sizes)
    eager.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
    eager.eval(), scripted.eval()
    x = torch.rand(3, 3, 40, 24, generator=torch.Generator().manual_seed(0))  # any size: fully convolutional
    with torch.no_grad():
        expected, got = eager(x), scripted(x)
    assert got.shape == (3, 1, 40, 24)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
