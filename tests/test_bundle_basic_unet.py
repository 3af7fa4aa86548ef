"""Issue 12: the bundle's network is one config switch. ``configs/basic_unet.json`` swaps DnCNN for a 2.5D MONAI
BasicUNet; pretrain, finetune_tgd (TGD through its skips and concatenations), online_n2n and inference run with it
on the tiny cohort (40 x 40 slices: not a multiple of 16, which BasicUNet pads itself)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import torch
from monai.networks.nets import BasicUNet

from .conftest import BUNDLE, first_realisations

FEATURES = [4, 4, 8, 8, 8, 4]


def test_override_is_a_basic_unet_with_slab_input_channels():
    config = json.loads((BUNDLE / "configs" / "basic_unet.json").read_text())
    net = config["network_def"]
    assert net["_target_"] == "monai.networks.nets.BasicUNet" and net["in_channels"] == "@slab"
    assert net["spatial_dims"] == 2 and net["out_channels"] == 1


def test_basic_unet_pretrain_finetune_tgd_online_n2n_and_inference(run_bundle, tmp_path, tiny_cohort):
    from monai_tgd.tgd import frozen_rows

    run_bundle(["pretrain", "basic_unet"], unet_features=FEATURES)
    models = tmp_path / "models"
    pretrained = sorted(models.glob("*.pt"))
    assert pretrained, "pretrain wrote no checkpoint"
    run_bundle(["finetune_tgd", "basic_unet"], unet_features=FEATURES)
    masks_files = sorted((tmp_path / "runs").rglob("tgd_masks.pt"))
    assert masks_files, "finetune_tgd wrote no TGD masks"
    masks = torch.load(masks_files[0], weights_only=True)
    assert any(name.startswith("upcat_") for name in masks)  # decoder convs reading concatenations are masked
    net = BasicUNet(spatial_dims=2, in_channels=3, out_channels=1, features=FEATURES)
    assert frozen_rows(net, masks)  # the masks fit a plain BasicUNet of the override
    run_bundle(["online_n2n", "basic_unet"], unet_features=FEATURES, init_checkpoint=str(models / "model_tgd.pt"),
               epochs="@n2n_epochs", n2n_epochs=2)
    assert sorted((tmp_path / "runs").rglob("tgd_masks.pt")) != masks_files  # online N2N installed its own TGD
    tuned = models / "model_tgd.pt"
    net.load_state_dict(torch.load(tuned, map_location="cpu", weights_only=True))  # a plain BasicUNet checkpoint
    src = first_realisations(tiny_cohort)[0]
    run_bundle(["inference", "basic_unet"], unet_features=FEATURES, inference_checkpoint=str(tuned), input_files=[src])
    (out,) = (tmp_path / "runs" / "inference").rglob("*_denoised.nii.gz")
    a, b = nib.load(src), nib.load(out)
    assert b.shape == a.shape and np.array_equal(b.affine, a.affine) and a.shape[0] % 16 != 0
    assert np.isfinite(np.asarray(b.dataobj)).all()
