"""Canonical orientation, voxel-size policy and exact header geometry (monai_tgd.transforms.geometry).

The claims: a volume stored in any axis order / with flipped axes is denoised along its superior-inferior axis and
written back in its own array order with its own header geometry (bit-identical); without the canonical orientation
an axial-first file is denoised differently; voxel sizes off the trained ones are refused, warned about or resampled
(and resampled back); arguments are checked when the transforms are built.
"""

from __future__ import annotations

import logging
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureTyped, Invertd, LoadImaged, SaveImaged

from monai_tgd.inferers import Slab25DInferer
from monai_tgd.io import AtomicNibabelWriter
from monai_tgd.networks import DnCNN
from monai_tgd.transforms.geometry import (
    CanonicalPETOrientation,
    CanonicalPETOrientationd,
    PETSpacing,
    PETSpacingd,
    RestoreGeometryd,
)

SHAPE = (20, 16, 12)  # x (left-right), y (posterior-anterior), z (inferior-superior)
TRAINED = (4.0, 4.0, 8.0)  # the simulated cohort's voxel size (profile.grid.affine() = diag(4, 4, 8))
ORIGIN = (-38.7, -31.3, -44.1)

# name: (flipped axes of the reference array, then the axis order): the same patient in different storage orders
VARIANTS = {
    "ras": ((), (0, 1, 2)),  # as the simulated cohort
    "axial_first": ((), (2, 0, 1)),  # array [z, x, y]: the superior-inferior axis first
    "flipped": ((1,), (1, 2, 0)),  # posterior-anterior flipped, array [y, z, x]
    "lps": ((0, 1), (0, 1, 2)),  # DICOM-like LPS storage: x and y flipped
}


def pet_volume(shape=SHAPE) -> np.ndarray:
    """An asymmetric PET-like volume: body ellipsoid with a gradient in every axis, a hot sphere off-centre."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    vol = np.where(x**2 / 0.8 + y**2 / 0.6 + z**2 / 1.2 <= 1.0, 1.0 + 0.3 * x + 0.2 * y**2 + 0.5 * z, 0.1)
    vol[(x - 0.4) ** 2 + (y + 0.3) ** 2 + (z - 0.35) ** 2 <= 0.12] += 6.0
    return vol.astype(np.float32)


def ras_affine(spacing=TRAINED, origin=ORIGIN, rotation_deg: float = 0.0) -> np.ndarray:
    """RAS affine with voxel sizes ``spacing`` (mm), rotated by ``rotation_deg`` about the superior axis."""
    t = math.radians(rotation_deg)
    rot = np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def to_storage(array: np.ndarray, affine: np.ndarray, flips, order):
    """The reference ``array`` / ``affine`` stored with ``flips`` flipped, then the axes in ``order``."""
    a = affine.astype(np.float64).copy()
    for axis in flips:
        n = array.shape[axis]
        array = np.flip(array, axis)
        a[:3, 3] = a[:3, 3] + a[:3, axis] * (n - 1)  # new index i' = n - 1 - i
        a[:3, axis] = -a[:3, axis]
    array = np.ascontiguousarray(np.transpose(array, order))
    a[:, :3] = a[:, list(order)]
    return array, a


def from_storage(array: np.ndarray, flips, order) -> np.ndarray:
    """Undo :func:`to_storage` on an array: back to the reference axis order."""
    array = np.transpose(array, np.argsort(order))
    for axis in flips:
        array = np.flip(array, axis)
    return np.ascontiguousarray(array)


def save_nifti(path, array, affine) -> str:
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, 1)  # as monai_tgd.simulate.cohort writes its volumes
    img.set_sform(affine, 1)
    nib.save(img, str(path))
    return str(path)


@pytest.fixture
def pet_files(tmp_path):
    """``{variant: path}``: the same volume at 4 x 4 x 8 mm in every storage order of :data:`VARIANTS`."""
    vol, affine = pet_volume(), ras_affine()
    return {
        name: save_nifti(tmp_path / f"{name}.nii.gz", *to_storage(vol, affine, flips, order))
        for name, (flips, order) in VARIANTS.items()
    }


def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return DnCNN(spatial_dims=2, in_channels=3, out_channels=1, features=8, num_layers=3).eval()


def denoise(files, out_dir, orient=True, spacing_policy=None, restore=True, trained=TRAINED):
    """LoadImaged -> [CanonicalPETOrientationd] -> [PETSpacingd] -> Slab25DInferer(slab=3, axis=-1) -> Invertd ->
    [RestoreGeometryd] -> SaveImaged(AtomicNibabelWriter). Returns ``({file: output path}, {file: inverted pred})``."""
    pre = [LoadImaged("image", ensure_channel_first=True, image_only=True), EnsureTyped("image", dtype=torch.float32)]
    if orient:
        pre.append(CanonicalPETOrientationd("image"))
    if spacing_policy is not None:
        pre.append(PETSpacingd("image", trained_spacing=trained, policy=spacing_policy))
    pre = Compose(pre)
    post = [Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False)]
    if restore:
        post.append(RestoreGeometryd("pred", source_key="image"))
    post.append(
        SaveImaged("pred", output_dir=str(out_dir), output_postfix="den", resample=False, separate_folder=False,
                   output_dtype=torch.float32, writer=AtomicNibabelWriter, print_log=False)  # fmt: skip
    )
    post = Compose(post)
    net, inferer = network(), Slab25DInferer(slab=3, axis=-1)
    outputs, preds = {}, {}
    for f in files:
        d = pre({"image": f})
        with torch.no_grad():
            d["pred"] = inferer(d["image"][None], net)[0]
        d = post(d)
        preds[f] = d["pred"]
        outputs[f] = str(out_dir / f"{f.rsplit('/', 1)[1][: -len('.nii.gz')]}_den.nii.gz")
    return outputs, preds


def assert_same_geometry(path, reference_path):
    """Header geometry of ``path`` bit-identical to ``reference_path``'s: shape, affine, qform, sform, pixdim."""
    out, ref = nib.load(path), nib.load(reference_path)
    assert out.shape == ref.shape, f"{path}: shape {out.shape} != input's {ref.shape}"
    assert np.array_equal(out.affine, ref.affine), f"{path}: affine\n{out.affine}\n!= input's\n{ref.affine}"
    for name in ("get_qform", "get_sform"):
        got, want = getattr(out, name)(coded=True), getattr(ref, name)(coded=True)
        assert np.array_equal(got[0], want[0]) and got[1] == want[1], f"{path}: {name} {got} != input's {want}"
    assert np.array_equal(out.header["pixdim"], ref.header["pixdim"]), (
        f"{path}: pixdim {out.header['pixdim']} != input's {ref.header['pixdim']}"
    )
    assert np.array_equal(out.header["dim"], ref.header["dim"])


def reference_order(path, name) -> np.ndarray:
    flips, order = VARIANTS[name]
    return from_storage(np.asarray(nib.load(path).dataobj), flips, order)


# ---------------------------------------------------------------------------------------------- orientation, end to end


def test_every_axis_order_denoised_alike_and_written_in_its_own_geometry(pet_files, tmp_path):
    outputs, _ = denoise(list(pet_files.values()), tmp_path / "out")
    results = {}
    for name, src in pet_files.items():
        assert_same_geometry(outputs[src], src)
        results[name] = reference_order(outputs[src], name)
    ref = results["ras"]
    assert ref.shape == SHAPE
    for name, result in results.items():
        np.testing.assert_allclose(result, ref, rtol=0, atol=1e-6, err_msg=f"{name} denoised differently from ras")
    # the network did something (else equal results would prove nothing about the slab axis)
    assert np.abs(ref - pet_volume()).max() > 1e-3


def test_without_canonical_orientation_axial_first_is_denoised_along_the_wrong_axis(pet_files, tmp_path):
    files = [pet_files["ras"], pet_files["axial_first"]]
    with_orient, _ = denoise(files, tmp_path / "with")
    without, _ = denoise(files, tmp_path / "without", orient=False)
    ref = reference_order(with_orient[pet_files["ras"]], "ras")
    # an input already in the canonical orientation is unaffected by the transform ...
    np.testing.assert_array_equal(reference_order(without[pet_files["ras"]], "ras"), ref)
    # ... the axial-first one is denoised differently without it (slabs along x instead of z)
    wrong = reference_order(without[pet_files["axial_first"]], "axial_first")
    assert np.abs(wrong - ref).max() > 1e-2, "the axial-first file gave the same result without the orientation step"
    right = reference_order(with_orient[pet_files["axial_first"]], "axial_first")
    np.testing.assert_allclose(right, ref, rtol=0, atol=1e-6)


def test_canonical_orientation_puts_superior_inferior_last_and_inverts_exactly():
    vol = pet_volume()
    for name, (flips, order) in VARIANTS.items():
        array, affine = to_storage(vol, ras_affine(), flips, order)
        img = MetaTensor(torch.as_tensor(array)[None], affine=torch.as_tensor(affine))
        t = CanonicalPETOrientation()
        out = t(img)
        assert tuple(out.shape) == (1, *SHAPE), name
        np.testing.assert_array_equal(out.as_tensor()[0].numpy(), vol, err_msg=name)  # voxels copied, RAS order
        np.testing.assert_allclose(out.affine.numpy(), ras_affine(), atol=1e-12, err_msg=name)
        back = t.inverse(out)
        assert back.applied_operations == []
        np.testing.assert_array_equal(back.as_tensor()[0].numpy(), array, err_msg=name)
        np.testing.assert_allclose(back.affine.numpy(), affine, atol=1e-12, err_msg=name)


def test_canonical_orientation_other_axcodes_keep_superior_inferior_last():
    img = MetaTensor(torch.as_tensor(pet_volume())[None], affine=torch.as_tensor(ras_affine()))
    out = CanonicalPETOrientation("LPS")(img)
    np.testing.assert_array_equal(out.as_tensor()[0].numpy(), pet_volume()[::-1, ::-1, :])
    np.testing.assert_allclose(np.diag(out.affine.numpy())[:3], [-4.0, -4.0, 8.0])


def test_canonical_orientation_accepts_oblique_within_tolerance():
    vol = pet_volume()
    array, affine = to_storage(vol, ras_affine(rotation_deg=10.0), (), (2, 0, 1))
    img = MetaTensor(torch.as_tensor(array)[None], affine=torch.as_tensor(affine))
    out = CanonicalPETOrientation(max_obliquity_deg=15)(img)
    np.testing.assert_array_equal(out.as_tensor()[0].numpy(), vol)  # permuted back, not resampled
    np.testing.assert_allclose(out.affine.numpy(), ras_affine(rotation_deg=10.0), atol=1e-12)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: torch.zeros(1, 4, 4, 4), r"image 'image' has no affine \(Tensor"),
        (lambda: np.zeros((1, 4, 4, 4), np.float32), r"image 'image' has no affine \(ndarray"),
        (lambda: MetaTensor(torch.zeros(1, 4, 4)), r"image 'image' has shape \[1, 4, 4\]; expected a channel-first 3D"),
        (
            lambda: MetaTensor(torch.zeros(1, 4, 4, 4), affine=torch.as_tensor(ras_affine(rotation_deg=30.0))),
            r"image 'image': cannot assign .*array axis 0 is 30\.00 degrees from its nearest world axis \(left-right\)"
            r".*max_obliquity_deg=20.*Expected a channel-first 3D volume \[C, H, W, D\]",
        ),
        (
            lambda: MetaTensor(torch.zeros(1, 4, 4, 4), affine=torch.as_tensor(
                [[4.0, 4.0, 0, 0], [0, 0.5, 0, 0], [0, 0, 8.0, 0], [0, 0, 0, 1]])),  # fmt: skip
            r"array axes share world axes",
        ),
        (
            lambda: MetaTensor(torch.zeros(1, 4, 4, 4), affine=torch.as_tensor(np.diag([4.0, 0.0, 8.0, 1.0]))),
            r"array axis 1 has zero length",
        ),
        (
            lambda: MetaTensor(torch.zeros(1, 4, 4, 4), affine=torch.as_tensor(np.diag([4.0, np.nan, 8.0, 1.0]))),
            r"is not a finite 4x4 matrix",
        ),
    ],
)
def test_canonical_orientation_refuses_images_it_cannot_orient(make, match):
    with pytest.raises(ValueError, match=match):
        CanonicalPETOrientationd("image")({"image": make()})


def test_canonical_orientation_error_names_the_file(pet_files, tmp_path):
    vol = pet_volume()
    path = save_nifti(tmp_path / "oblique.nii.gz", vol, ras_affine(rotation_deg=35.0))
    loaded = LoadImaged("image", ensure_channel_first=True, image_only=True)({"image": path})
    with pytest.raises(ValueError, match=rf"image 'image' \(file {path}\).*35\.00 degrees"):
        CanonicalPETOrientationd("image")(loaded)


# ------------------------------------------------------------------------------------------------------------ spacing


def fine_image(spacing=(2.0, 2.0, 4.0), rotation_deg=0.0) -> MetaTensor:
    affine = ras_affine(spacing, ORIGIN, rotation_deg)
    return MetaTensor(torch.as_tensor(pet_volume())[None], affine=torch.as_tensor(affine))


def test_spacing_refuse_names_key_both_spacings_and_the_option():
    with pytest.raises(ValueError) as err:
        PETSpacingd("image", TRAINED, policy="refuse")({"image": fine_image()})
    msg = str(err.value)
    for part in ("image 'image'", "[2.0, 2.0, 4.0] mm", "[4.0, 4.0, 8.0] mm", "input_spacing_policy", "'resample'"):
        assert part in msg, f"{part!r} not in {msg!r}"


def test_spacing_warn_logs_both_spacings_and_keeps_the_image(caplog):
    img = fine_image()
    values, affine = img.as_tensor().clone(), img.affine.clone()
    t = PETSpacingd("image", TRAINED, policy="warn")
    with caplog.at_level(logging.WARNING, logger="monai_tgd.transforms.geometry"):
        out = t({"image": img})["image"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert "[2.0, 2.0, 4.0] mm" in warnings[0].getMessage() and "[4.0, 4.0, 8.0] mm" in warnings[0].getMessage()
    assert torch.equal(out.as_tensor(), values) and torch.equal(out.affine, affine)
    back = t.inverse({"image": out})["image"]
    assert torch.equal(back.as_tensor(), values) and torch.equal(back.affine, affine) and back.applied_operations == []


@pytest.mark.parametrize("policy", ["resample", "warn", "refuse"])
def test_spacing_within_tolerance_changes_nothing(policy, caplog):
    img = fine_image(spacing=(4.05, 3.95, 8.08))
    values, affine = img.as_tensor().clone(), img.affine.clone()
    with caplog.at_level(logging.DEBUG, logger="monai_tgd.transforms.geometry"):
        out = PETSpacingd("image", TRAINED, tolerance_mm=0.1, policy=policy)({"image": img})["image"]
    assert caplog.records == []
    assert torch.equal(out.as_tensor(), values) and torch.equal(out.affine, affine)
    # just outside the tolerance it is acted on
    with pytest.raises(ValueError, match="voxel size"):
        refuse = PETSpacingd("image", TRAINED, tolerance_mm=0.07, policy="refuse")
        refuse({"image": fine_image(spacing=(4.05, 3.95, 8.08))})


def test_spacing_resample_gives_trained_spacing_and_inverts_to_the_input_grid(caplog):
    img = fine_image(rotation_deg=3.0)
    affine = img.affine.clone()
    pre = Compose([CanonicalPETOrientationd("image"), PETSpacingd("image", TRAINED, policy="resample")])
    with caplog.at_level(logging.INFO, logger="monai_tgd.transforms.geometry"):
        d = pre({"image": img})
    assert "resampling it to the trained voxel size" in caplog.text  # said, never silent
    out = d["image"]
    np.testing.assert_allclose(np.linalg.norm(out.affine.numpy()[:3, :3], axis=0), TRAINED, rtol=1e-12)
    np.testing.assert_allclose(out.affine.numpy()[:3, 3], ORIGIN, atol=1e-9)  # same first voxel centre
    assert tuple(out.shape) == (1, 10, 8, 6)  # the same field of view at twice the voxel size
    assert out.dtype == torch.float32
    d["pred"] = out * 2.0
    inv = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False)(d)["pred"]
    assert tuple(inv.shape) == (1, *SHAPE)
    np.testing.assert_allclose(inv.affine.numpy(), affine.numpy(), rtol=0, atol=1e-9)
    # resampled back with trilinear interpolation: close to twice the input inside the (smooth) body
    body = (pet_volume() > 0.5) & (pet_volume() < 3)
    assert np.median(np.abs(inv.as_tensor()[0].numpy() - 2 * pet_volume())[body]) < 0.1


def test_resample_end_to_end_restores_the_header_geometry_bit_identically(tmp_path):
    # axial-first, left-right flipped, 7 degrees oblique, at 2 x 2 x 4 mm: resampled to 4 x 4 x 8 mm and back
    vol, affine = pet_volume(), ras_affine((2.0, 2.0, 4.0), (-19.37, -15.11, -22.73), rotation_deg=7.0)
    src = save_nifti(tmp_path / "fine.nii.gz", *to_storage(vol, affine, (0,), (2, 0, 1)))
    # precondition: without the restore, Invertd gives this input's affine only up to round-off (if a MONAI version
    # inverts it exactly, choose another affine: the test must show what RestoreGeometryd adds)
    _, preds = denoise([src], tmp_path / "plain", spacing_policy="resample", restore=False)
    plain = preds[src].affine.numpy()
    assert not np.array_equal(plain, nib.load(src).affine), "precondition: Invertd alone was already bit-exact"
    assert np.allclose(plain, nib.load(src).affine, rtol=0, atol=1e-9)
    outputs, preds = denoise([src], tmp_path / "out", spacing_policy="resample")
    assert np.array_equal(preds[src].affine.numpy(), nib.load(src).affine)
    assert_same_geometry(outputs[src], src)


def test_spacing_requires_the_canonical_orientation():
    array, affine = to_storage(pet_volume(), ras_affine(), (), (2, 0, 1))
    img = MetaTensor(torch.as_tensor(array)[None], affine=torch.as_tensor(affine))
    with pytest.raises(ValueError, match=r"image 'image'.*apply CanonicalPETOrientation\(d\) first"):
        PETSpacingd("image", TRAINED, policy="resample")({"image": img})
    with pytest.raises(ValueError, match=r"image 'image' has no affine"):
        PETSpacingd("image", TRAINED)({"image": torch.zeros(1, 4, 4, 4)})


# ---------------------------------------------------------------------------------------------------------- restore


def loaded_pair(tmp_path):
    src = save_nifti(tmp_path / "x.nii.gz", pet_volume(), ras_affine())
    d = LoadImaged("image", ensure_channel_first=True, image_only=True)({"image": src})
    return d, d["image"].clone()


def test_restore_geometry_sets_the_original_affine_without_touching_data_or_input(tmp_path):
    d, pred = loaded_pair(tmp_path)
    original = np.asarray(d["image"].meta["original_affine"], dtype=np.float64)
    pred.affine = torch.as_tensor(original) + 1e-7
    before = pred.affine.clone()
    out = RestoreGeometryd("pred", source_key="image")({**d, "pred": pred})["pred"]
    assert np.array_equal(out.affine.numpy(), original)
    assert torch.equal(out.as_tensor(), pred.as_tensor())
    assert torch.equal(pred.affine, before), "the input prediction's metadata was modified"


def test_restore_geometry_refuses_a_prediction_that_was_not_inverted(tmp_path):
    d, pred = loaded_pair(tmp_path)
    restore = RestoreGeometryd("pred", source_key="image")
    shape_msg = r"'pred' has spatial shape \[20, 16, 11\], the input 'image' had \[20, 16, 12\]; invert"
    with pytest.raises(ValueError, match=shape_msg):
        restore({**d, "pred": pred[..., :11]})
    moved = pred.clone()
    moved.affine = moved.affine + torch.as_tensor(np.pad(np.full((3, 1), 0.01), ((0, 1), (3, 0))))
    affine_msg = r"affine of 'pred' differs from the original affine of 'image' by up to 0\.01 mm.*atol_mm=0\.001\)"
    with pytest.raises(ValueError, match=affine_msg):
        restore({**d, "pred": moved})
    with pytest.raises(ValueError, match=r"'pred' is a Tensor; expected a MetaTensor"):
        restore({**d, "pred": pred.as_tensor()})
    with pytest.raises(ValueError, match=r"source 'image' has no original_affine / spatial_shape"):
        restore({"image": MetaTensor(torch.zeros(1, 20, 16, 12)), "pred": pred})
    with pytest.raises(ValueError, match=r"source 'image' has no original_affine / spatial_shape"):
        restore({"pred": pred})


# ------------------------------------------------------------------------------------------------- bundle snippet


BUNDLE_SNIPPET = {
    "trained_spacing": [4.0, 4.0, 8.0],
    "spacing_tolerance_mm": 0.1,
    "input_spacing_policy": "resample",
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": "image", "ensure_channel_first": True, "image_only": True},
            {"_target_": "monai_tgd.transforms.ValidatePETd", "keys": "image"},
            {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
            {"_target_": "monai_tgd.transforms.geometry.CanonicalPETOrientationd", "keys": "image"},
            {
                "_target_": "monai_tgd.transforms.geometry.PETSpacingd",
                "keys": "image",
                "trained_spacing": "@trained_spacing",
                "tolerance_mm": "@spacing_tolerance_mm",
                "policy": "@input_spacing_policy",
            },
        ],
    },
    "postprocessing": {
        "_target_": "Compose",
        "transforms": [
            {
                "_target_": "Invertd",
                "keys": "pred",
                "transform": "@preprocessing",
                "orig_keys": "image",
                "nearest_interp": False,
                "to_tensor": True,
            },
            {"_target_": "monai_tgd.transforms.geometry.RestoreGeometryd", "keys": "pred", "source_key": "image"},
            {
                "_target_": "SaveImaged",
                "keys": "pred",
                "output_dir": "@out_dir",
                "output_postfix": "den",
                "separate_folder": False,
                "output_ext": ".nii.gz",
                "output_dtype": "$torch.float32",
                "resample": False,
                "writer": "monai_tgd.io.AtomicNibabelWriter",
                "print_log": False,
            },
        ],
    },
}


def test_bundle_snippet_in_a_supervised_evaluator(pet_files, tmp_path):
    """The config entries handed to the bundle, run as the bundle runs them (DataLoader, collate, decollate)."""
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator

    fine = save_nifti(tmp_path / "fine.nii.gz", *to_storage(pet_volume(), ras_affine((2.0, 2.0, 4.0)), (), (2, 0, 1)))
    files = [pet_files["ras"], pet_files["axial_first"], pet_files["lps"], fine]
    parser = ConfigParser({**BUNDLE_SNIPPET, "out_dir": str(tmp_path / "out")})
    pre, post = parser.get_parsed_content("preprocessing"), parser.get_parsed_content("postprocessing")
    loader = DataLoader(Dataset([{"image": f} for f in files], transform=pre), batch_size=1, num_workers=0)
    SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=loader, network=network(),
        inferer=Slab25DInferer(slab=3, axis=-1), postprocessing=post,
    ).run()  # fmt: skip
    expected, _ = denoise([pet_files["ras"]], tmp_path / "ref")
    ref = reference_order(expected[pet_files["ras"]], "ras")
    for name in ("ras", "axial_first", "lps"):
        out = str(tmp_path / "out" / f"{name}_den.nii.gz")
        assert_same_geometry(out, pet_files[name])
        np.testing.assert_allclose(reference_order(out, name), ref, rtol=0, atol=1e-6, err_msg=name)
    assert_same_geometry(str(tmp_path / "out" / "fine_den.nii.gz"), fine)


# ------------------------------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"axcodes": "RSA"}, r"axcodes must be 3 letters: L or R, then P or A, then I or S .*got 'RSA'"),
        ({"axcodes": "ARS"}, r"axcodes must be 3 letters: L or R, then P or A, then I or S"),
        ({"axcodes": "RRS"}, r"axcodes must be 3 letters: L or R"),
        ({"axcodes": "RASX"}, r"axcodes must be 3 letters"),
        ({"axcodes": "RA"}, r"axcodes must be 3 letters"),
        ({"axcodes": 3}, r"axcodes must be 3 letters"),
        ({"max_obliquity_deg": 45}, r"max_obliquity_deg must be a finite number >= 0.0 and < 45.0, got 45"),
        ({"max_obliquity_deg": -1}, r"max_obliquity_deg must be a finite number >= 0.0"),
        ({"max_obliquity_deg": float("nan")}, r"max_obliquity_deg must be a finite number"),
        ({"max_obliquity_deg": "10"}, r"max_obliquity_deg must be a finite number"),
        ({"max_obliquity_deg": True}, r"max_obliquity_deg must be a finite number"),
    ],
)
def test_orientation_arguments_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CanonicalPETOrientationd("image", **kwargs)
    with pytest.raises(ValueError, match=match):
        CanonicalPETOrientation(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"trained_spacing": [4.0, 4.0]}, r"trained_spacing must be 3 finite voxel sizes > 0 in mm.*got \[4.0, 4.0\]"),
        ({"trained_spacing": [4.0, 0.0, 8.0]}, r"trained_spacing must be 3 finite voxel sizes > 0"),
        ({"trained_spacing": [4.0, -4.0, 8.0]}, r"trained_spacing must be 3 finite voxel sizes > 0"),
        ({"trained_spacing": [4.0, float("inf"), 8.0]}, r"trained_spacing must be 3 finite voxel sizes > 0"),
        ({"trained_spacing": 4.0}, r"trained_spacing must be 3 finite voxel sizes > 0"),
        ({"trained_spacing": "448"}, r"trained_spacing must be 3 finite voxel sizes > 0"),
        ({"trained_spacing": [4.0, True, 8.0]}, r"trained_spacing must be 3 finite voxel sizes > 0"),
        ({"tolerance_mm": -0.1}, r"tolerance_mm must be a finite number >= 0.0, got -0.1"),
        ({"tolerance_mm": None}, r"tolerance_mm must be a finite number"),
        ({"policy": "ignore"}, r"policy must be one of \['resample', 'warn', 'refuse'\], got 'ignore'"),
        ({"mode": "linear"}, r"mode must be one of \['bilinear', 'nearest', 'bicubic'\], got 'linear'"),
        ({"padding_mode": "edge"}, r"padding_mode must be one of \['border', 'zeros', 'reflection'\], got 'edge'"),
    ],
)
def test_spacing_arguments_checked(kwargs, match):
    kwargs = {"trained_spacing": TRAINED, **kwargs}
    with pytest.raises(ValueError, match=match):
        PETSpacingd("image", **kwargs)
    with pytest.raises(ValueError, match=match):
        PETSpacing(**kwargs)


def test_spacing_accepts_arrays_and_ints():
    assert PETSpacing(np.array([4, 4, 8])).trained_spacing == (4.0, 4.0, 8.0)
    assert PETSpacing((4, 4, 8), tolerance_mm=0).tolerance_mm == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"source_key": ""}, r"source_key must be a non-empty string"),
        ({"source_key": 3}, r"source_key must be a non-empty string"),
        ({"affine_key": None}, r"affine_key must be a non-empty string"),
        ({"atol_mm": -1e-3}, r"atol_mm must be a finite number >= 0.0"),
        ({"atol_mm": float("inf")}, r"atol_mm must be a finite number"),
    ],
)
def test_restore_arguments_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RestoreGeometryd("pred", **kwargs)
