"""Input geometry for the 2.5D denoiser: one canonical orientation, the voxel size the network was trained at, and
the input's exact header geometry back on the output.

The 2.5D inferer (:class:`monai_tgd.inferers.Slab25DInferer`, ``axis=-1``) slides slabs along the *last* array axis
and the network was trained at one voxel size (the simulated cohort: 4 x 4 x 8 mm, affine ``diag(4, 4, 8)``). A
NIfTI may store its axes in any order and at another voxel size; these transforms bring it to the trained geometry
before the network and take the prediction back to the input's own grid afterwards:

* :class:`CanonicalPETOrientation` / :class:`CanonicalPETOrientationd`: MONAI's ``Orientation`` to ``"RAS"`` (last
  spatial axis superior-inferior), after checking the affine's axes can be assigned to the world axes.
* :class:`PETSpacing` / :class:`PETSpacingd`: compare the voxel size with the trained one; resample (MONAI's
  ``Spacing``), warn or refuse.
* :class:`RestoreGeometryd`: after ``Invertd``, set the prediction's affine bit-identically to the input's original
  one (``Invertd`` reproduces it only up to float round-off).

Conventions: images are channel-first ``[C, H, W, D]`` MetaTensors (``LoadImaged(ensure_channel_first=True)``), their
affine maps voxel indices to world coordinates in mm (MONAI's RAS world). Use them in this order::

    LoadImaged -> ... -> CanonicalPETOrientationd -> PETSpacingd -> network (Slab25DInferer, axis=-1)
        -> Invertd(nearest_interp=False) -> RestoreGeometryd -> SaveImaged

Both geometry-changing transforms are invertible (``Invertd`` with the preprocessing ``Compose``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform, Orientation, Spacing
from monai.utils import TraceKeys

from .validate import check_choice

__all__ = [
    "CanonicalPETOrientation",
    "CanonicalPETOrientationd",
    "PETSpacing",
    "PETSpacingd",
    "RestoreGeometryd",
    "SPACING_POLICIES",
]

logger = logging.getLogger(__name__)

#: World axes of MONAI's RAS affine, in order (for messages).
WORLD_AXES = ("left-right", "posterior-anterior", "inferior-superior")
#: ``policy`` values of :class:`PETSpacing`.
SPACING_POLICIES = ("resample", "warn", "refuse")
INTERP_MODES = ("bilinear", "nearest", "bicubic")
PADDING_MODES = ("border", "zeros", "reflection")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_number(value: object, field: str, low: float, high: float = math.inf, high_open: bool = False) -> float:
    """``float(value)`` if it is a finite number in ``[low, high]`` (``[low, high)`` with ``high_open``)."""
    ok = _is_number(value) and math.isfinite(value) and low <= value and (value < high if high_open else value <= high)
    if not ok:
        bound = f"< {high}" if high_open else (f"<= {high}" if math.isfinite(high) else "")
        raise ValueError(f"{field} must be a finite number >= {low}{' and ' + bound if bound else ''}, got {value!r}.")
    return float(value)


def _describe(img: Any, key: Hashable | None) -> str:
    """``image 'image' (file /x.nii.gz)`` for messages."""
    parts = [f"image {key!r}" if key is not None else "image"]
    filename = img.meta.get("filename_or_obj") if isinstance(img, MetaTensor) else None
    if filename:
        parts.append(f"(file {filename})")
    return " ".join(parts)


def _affine_3d(img: Any, key: Hashable | None, form: str) -> np.ndarray:
    """The 4x4 float64 affine of a channel-first 3D MetaTensor, or ``ValueError`` naming ``key`` and ``form``."""
    name = _describe(img, key)
    if not isinstance(img, MetaTensor) or "affine" not in img.meta:
        raise ValueError(
            f"{name} has no affine ({type(img).__name__} without meta['affine']); expected {form}. Load it with "
            "LoadImaged(ensure_channel_first=True) so it is a MetaTensor carrying its affine."
        )
    if img.ndim != 4:
        raise ValueError(f"{name} has shape {list(img.shape)}; expected {form}.")
    affine = np.asarray(img.affine.detach().cpu().numpy(), dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"{name}: affine {affine.tolist()} is not a finite 4x4 matrix; expected {form}.")
    return affine


def _axis_assignment(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each array axis (affine column): voxel size (mm), nearest world axis, and angle to it (degrees)."""
    columns = affine[:3, :3]
    sizes = np.linalg.norm(columns, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosines = np.abs(columns) / sizes
    nearest = np.argmax(np.nan_to_num(cosines, nan=0.0), axis=0)
    angles = np.degrees(np.arccos(np.clip(cosines[nearest, range(3)], 0.0, 1.0)))
    return sizes, nearest, np.nan_to_num(angles, nan=90.0)


class CanonicalPETOrientation(InvertibleTransform):
    """Reorient a 3D PET volume ``[C, H, W, D]`` so that its last spatial axis is superior-inferior.

    MONAI's ``Orientation(axcodes)`` does the reorientation (flips and axis permutations of the array, affine updated,
    no interpolation; voxel values are copied exactly); it is inverted by ``inverse`` / MONAI's ``Invertd``, which
    restores the input's own array order and affine. Before it, the affine is checked: every array axis must lie
    within ``max_obliquity_deg`` of a world axis (left-right, posterior-anterior, inferior-superior), each world axis
    taken by exactly one array axis, so the assignment Orientation makes is unambiguous. An oblique volume within the
    tolerance is permuted/flipped, not resampled: its affine stays oblique.

    Args:
        axcodes: target orientation: ``L`` or ``R``, then ``P`` or ``A``, then ``I`` or ``S`` (array axes along the
            world axes in order; default ``"RAS"``: ``H`` left->right, ``W`` posterior->anterior, ``D``
            inferior->superior).
        max_obliquity_deg: largest accepted angle in degrees between an array axis and its nearest world axis,
            in ``[0, 45)`` (default 20; 0 accepts only axis-aligned affines up to round-off).

    Call: ``transform(img, name=None)`` with ``img`` a MetaTensor ``[C, H, W, D]`` (affine in mm); returns the
    reoriented MetaTensor ``[C, H', W', D']`` (the same voxels, spatial axes permuted/flipped). Raises ``ValueError``
    naming ``name`` (and the file) for a plain array / tensor (no affine), a non-3D image, or an affine whose axes
    cannot be assigned.
    """

    form = (
        "a channel-first 3D volume [C, H, W, D] (MetaTensor) whose affine's three array axes each lie within "
        "{tol:g} degrees of a distinct world axis (left-right, posterior-anterior, inferior-superior)"
    )

    def __init__(self, axcodes: str = "RAS", max_obliquity_deg: float = 20.0) -> None:
        codes = axcodes.upper() if isinstance(axcodes, str) else ""
        if len(codes) != 3 or any(c not in pair for c, pair in zip(codes, ("LR", "PA", "IS"))):
            raise ValueError(
                "axcodes must be 3 letters: L or R, then P or A, then I or S (array axes along the world axes in "
                f"order, superior-inferior last, e.g. 'RAS'), got {axcodes!r}."
            )
        self.max_obliquity_deg = _check_number(max_obliquity_deg, "max_obliquity_deg", 0.0, 45.0, high_open=True)
        self.axcodes = codes
        self.orientation = Orientation(axcodes=self.axcodes, labels=None)  # labels from meta["space"] (RAS or LPS)

    def check(self, img: Any, name: Hashable | None = None) -> None:
        """Raise ``ValueError`` if ``img`` has no affine or its axes cannot be assigned to world axes."""
        form = self.form.format(tol=self.max_obliquity_deg)
        affine = _affine_3d(img, name, form)
        sizes, nearest, angles = _axis_assignment(affine)
        problems = []
        for j in range(3):
            if not sizes[j] > 0:
                problems.append(f"array axis {j} has zero length")
            elif angles[j] > self.max_obliquity_deg + 1e-9:
                problems.append(f"array axis {j} is {angles[j]:.2f} degrees from its nearest world axis "
                                f"({WORLD_AXES[nearest[j]]})")  # fmt: skip
        if not problems and len(set(nearest.tolist())) < 3:
            problems.append(f"array axes share world axes (nearest world axes {[WORLD_AXES[i] for i in nearest]})")
        if problems:
            raise ValueError(
                f"{_describe(img, name)}: cannot assign its affine's axes to world axes: {'; '.join(problems)} "
                f"(affine {np.round(affine, 4).tolist()}; tolerance max_obliquity_deg={self.max_obliquity_deg:g}). "
                f"Expected {form}."
            )

    def __call__(self, img: Any, name: Hashable | None = None) -> MetaTensor:
        self.check(img, name)
        out = self.orientation(img)
        _, nearest, _ = _axis_assignment(np.asarray(out.affine.cpu().numpy(), dtype=np.float64))
        if nearest.tolist() != [0, 1, 2]:  # Orientation and the check above disagree: never hand on a wrong axis
            raise ValueError(
                f"{_describe(img, name)}: reorientation to {self.axcodes} gave axes along world axes "
                f"{[WORLD_AXES[i] for i in nearest]}; expected {self.form.format(tol=self.max_obliquity_deg)}."
            )
        return out

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        return self.orientation.inverse(data)


class CanonicalPETOrientationd(MapTransform, InvertibleTransform):
    """Dictionary version of :class:`CanonicalPETOrientation` (errors name the key).

    Args:
        keys: keys of the images ``[C, H, W, D]`` to reorient (e.g. ``"image"``; give a label map the same
            transform: orientation copies voxels, no interpolation).
        axcodes, max_obliquity_deg: as :class:`CanonicalPETOrientation`.
        allow_missing_keys: skip missing keys instead of raising ``KeyError``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        axcodes: str = "RAS",
        max_obliquity_deg: float = 20.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.orientation = CanonicalPETOrientation(axcodes, max_obliquity_deg)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.orientation(d[key], name=key)
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.orientation.inverse(d[key])
        return d


class PETSpacing(InvertibleTransform):
    """Apply the voxel-size policy: compare a volume's voxel size with the one the network was trained at.

    The voxel size of ``[C, H, W, D]`` is the length (mm) of each array axis's affine column. It is *within
    tolerance* if every axis differs from ``trained_spacing`` by at most ``tolerance_mm``; then nothing changes (the
    same voxels and affine). Otherwise, by ``policy``:

    * ``"resample"``: MONAI's ``Spacing(pixdim=trained_spacing)`` resamples the volume (same field of view, same
      orientation, ``mode`` interpolation: values stay concentrations, e.g. Bq/ml or SUV); ``inverse`` / ``Invertd``
      resamples the prediction back to the input's grid (its shape and affine).
    * ``"warn"``: logs a warning with both voxel sizes and keeps the volume as it is.
    * ``"refuse"``: raises ``ValueError`` naming the image, both voxel sizes and the option to change.

    The voxel sizes are compared per array axis, so the volume must be in the canonical orientation the network was
    trained in (apply :class:`CanonicalPETOrientation` first; an affine whose array axes are not along the world
    axes in order is refused).

    Args:
        trained_spacing: voxel size the network was trained at, 3 numbers in mm in the canonical axis order
            ``(H, W, D)`` (the simulated cohort: ``(4, 4, 8)``).
        tolerance_mm: largest accepted difference per axis in mm (>= 0; default 0.1).
        policy: one of :data:`SPACING_POLICIES` (default ``"resample"``).
        mode: interpolation of ``"resample"`` and of its inverse: ``"bilinear"`` (trilinear in 3D, default),
            ``"nearest"`` or ``"bicubic"``. ``Invertd(nearest_interp=False)`` keeps it for the prediction.
        padding_mode: values outside the input when resampling: ``"border"`` (default), ``"zeros"``,
            ``"reflection"``.

    Call: ``transform(img, name=None)`` with ``img`` a MetaTensor ``[C, H, W, D]``; returns a MetaTensor
    ``[C, H', W', D']`` (``H', W', D'`` differ only when resampled). One trace entry is always recorded (whether it
    resampled, and ``Spacing``'s own entry if so), so ``inverse`` undoes exactly what was done.
    """

    option = "input_spacing_policy"
    """Bundle config id of ``policy``, named in the refusal message."""

    def __init__(
        self,
        trained_spacing: Sequence[float],
        tolerance_mm: float = 0.1,
        policy: str = "resample",
        mode: str = "bilinear",
        padding_mode: str = "border",
    ) -> None:
        if isinstance(trained_spacing, (np.ndarray, torch.Tensor)):
            values = trained_spacing.tolist()
        else:
            values = list(trained_spacing) if isinstance(trained_spacing, Sequence) else None
        if (
            isinstance(trained_spacing, (str, bytes))
            or not isinstance(values, list)
            or len(values) != 3
            or not all(_is_number(v) and math.isfinite(v) and v > 0 for v in values)
        ):
            raise ValueError(
                "trained_spacing must be 3 finite voxel sizes > 0 in mm, in the canonical axis order (H, W, D), e.g. "
                f"[4.0, 4.0, 8.0]; got {trained_spacing!r}."
            )
        self.trained_spacing = tuple(float(v) for v in values)
        self.tolerance_mm = _check_number(tolerance_mm, "tolerance_mm", 0.0)
        self.policy = check_choice(policy, "policy", SPACING_POLICIES)
        self.mode = check_choice(mode, "mode", INTERP_MODES)
        self.padding_mode = check_choice(padding_mode, "padding_mode", PADDING_MODES)
        self.spacing = Spacing(pixdim=self.trained_spacing, mode=self.mode, padding_mode=self.padding_mode)

    def input_spacing(self, img: Any, name: Hashable | None = None) -> tuple[float, float, float]:
        """Voxel size of ``img`` in mm per array axis; ``ValueError`` if it has no affine or is not canonical."""
        form = "a channel-first 3D volume [C, H, W, D] (MetaTensor) in the canonical orientation"
        affine = _affine_3d(img, name, form)
        sizes, nearest, _ = _axis_assignment(affine)
        if nearest.tolist() != [0, 1, 2]:
            raise ValueError(
                f"{_describe(img, name)}: its array axes run along world axes {[WORLD_AXES[i] for i in nearest]}, so "
                f"its voxel sizes cannot be compared with trained_spacing {list(self.trained_spacing)} (H, W, D). "
                f"Expected {form}: apply CanonicalPETOrientation(d) first."
            )
        return tuple(float(s) for s in sizes)  # type: ignore[return-value]

    def __call__(self, img: Any, name: Hashable | None = None) -> MetaTensor:
        spacing = self.input_spacing(img, name)
        within = all(abs(s - t) <= self.tolerance_mm for s, t in zip(spacing, self.trained_spacing))
        resample = not within and self.policy == "resample"
        if not within:
            found = (
                f"{_describe(img, name)} has voxel size {[round(s, 4) for s in spacing]} mm; the network was trained "
                f"at {list(self.trained_spacing)} mm (tolerance {self.tolerance_mm:g} mm per axis)"
            )
            if self.policy == "refuse":
                raise ValueError(
                    f"{found}. Resample it to the trained voxel size, or change {self.option} (now 'refuse') to "
                    "'resample' (resample to the trained voxel size and back) or 'warn' (denoise at its own voxel "
                    "size)."
                )
            if self.policy == "warn":
                logger.warning(f"{found}; denoising it at its own voxel size ({self.option}='warn').")
            else:  # resample: said too, never done silently
                logger.info(f"{found}; resampling it to the trained voxel size for the network, and the result back "
                            f"to its own grid ({self.option}='resample').")  # fmt: skip
        out = self.spacing(img) if resample else img
        inner = self.pop_transform(out, check=False) if resample else {}
        self.push_transform(out, extra_info={"spacing": inner, TraceKeys.DO_TRANSFORM: resample})
        return out

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        trace = self.pop_transform(data)
        extra = trace[TraceKeys.EXTRA_INFO]
        if not extra[TraceKeys.DO_TRANSFORM]:
            return data
        data.applied_operations.append(extra["spacing"])
        return self.spacing.inverse(data)


class PETSpacingd(MapTransform, InvertibleTransform):
    """Dictionary version of :class:`PETSpacing` (messages name the key).

    Args:
        keys: keys of the PET images ``[C, H, W, D]`` (e.g. ``"image"``).
        trained_spacing, tolerance_mm, policy, mode, padding_mode: as :class:`PETSpacing`.
        allow_missing_keys: skip missing keys instead of raising ``KeyError``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        trained_spacing: Sequence[float],
        tolerance_mm: float = 0.1,
        policy: str = "resample",
        mode: str = "bilinear",
        padding_mode: str = "border",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spacing = PETSpacing(trained_spacing, tolerance_mm, policy, mode, padding_mode)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.spacing(d[key], name=key)
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.spacing.inverse(d[key])
        return d


class RestoreGeometryd(MapTransform):
    """Give an inverted prediction the input's original affine exactly (bit-identical), after checking it.

    After ``Invertd``, a prediction ``[C, H, W, D]`` is back on the input's grid, but its affine equals the input's
    only up to float round-off (reorientation and resampling compose affines), so the saved NIfTI's qform, sform and
    pixdim could differ in the last bits from the input's. This transform checks that the prediction's spatial
    shape equals the input's original one (``meta["spatial_shape"]``) and its affine agrees with the input's
    original affine (``meta["original_affine"]``, kept by MONAI's ``LoadImage``) within ``atol_mm``, then sets that
    affine (a copy, float64) on the prediction. Data are not changed; the prediction is a new MetaTensor sharing them.

    Args:
        keys: keys of the inverted predictions (e.g. ``"pred"``).
        source_key: key of the preprocessed input image whose metadata holds the original geometry (``"image"``);
            a MetaTensor, or a plain tensor with ``<source_key>_meta_dict``.
        atol_mm: largest accepted difference of any affine entry, in mm (>= 0; default 1e-3).
        affine_key: meta key of the original affine (default ``"original_affine"``).
        allow_missing_keys: skip missing keys instead of raising ``KeyError``.

    Raises:
        ValueError: naming the key, when the source or its original affine / spatial shape is missing, the prediction
            is not a MetaTensor, its spatial shape differs, or its affine differs by more than ``atol_mm`` (e.g. it
            was not inverted with ``Invertd``).
    """

    def __init__(
        self,
        keys: KeysCollection,
        source_key: str = "image",
        atol_mm: float = 1e-3,
        affine_key: str = "original_affine",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        for field, value in (("source_key", source_key), ("affine_key", affine_key)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{field} must be a non-empty string (a dictionary / meta key), got {value!r}.")
        self.source_key = source_key
        self.affine_key = affine_key
        self.atol_mm = _check_number(atol_mm, "atol_mm", 0.0)

    def _source_geometry(self, d: Mapping[Hashable, Any]) -> tuple[np.ndarray, tuple[int, ...]]:
        source = d.get(self.source_key)
        meta = source.meta if isinstance(source, MetaTensor) else d.get(f"{self.source_key}_meta_dict")
        missing = [k for k in (self.affine_key, "spatial_shape") if meta is None or k not in meta]
        if missing:
            raise ValueError(
                f"RestoreGeometryd: source {self.source_key!r} has no {' / '.join(missing)} in its metadata; expected "
                f"the input image as loaded by LoadImaged (a MetaTensor whose meta holds '{self.affine_key}' and "
                "'spatial_shape'), under source_key."
            )
        affine = np.asarray(torch.as_tensor(meta[self.affine_key]).cpu().numpy(), dtype=np.float64)
        shape = tuple(int(s) for s in torch.as_tensor(meta["spatial_shape"]).reshape(-1).tolist())
        if affine.shape != (4, 4):
            raise ValueError(f"RestoreGeometryd: {self.source_key!r} meta['{self.affine_key}'] is not a 4x4 affine: "
                             f"{affine.tolist()}.")  # fmt: skip
        return affine, shape

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        affine, shape = self._source_geometry(d)
        for key in self.key_iterator(d):
            pred = d[key]
            if not isinstance(pred, MetaTensor):
                raise ValueError(f"RestoreGeometryd: {key!r} is a {type(pred).__name__}; expected a MetaTensor "
                                 "[C, H, W, D] inverted with Invertd.")  # fmt: skip
            if tuple(pred.shape[1:]) != shape:
                raise ValueError(
                    f"RestoreGeometryd: {key!r} has spatial shape {list(pred.shape[1:])}, the input "
                    f"{self.source_key!r} had {list(shape)}; invert the preprocessing (Invertd) before restoring the "
                    "geometry."
                )
            have = np.asarray(pred.affine.detach().cpu().numpy(), dtype=np.float64)
            diff = float(np.max(np.abs(have - affine))) if have.shape == affine.shape else math.inf
            if not diff <= self.atol_mm:
                raise ValueError(
                    f"RestoreGeometryd: the affine of {key!r} differs from the original affine of {self.source_key!r} "
                    f"by up to {diff:.3g} mm (tolerance atol_mm={self.atol_mm:g}): {np.round(have, 4).tolist()} vs "
                    f"{np.round(affine, 4).tolist()}; invert the preprocessing (Invertd) before restoring the geometry."
                )
            out = MetaTensor(pred.as_tensor(), meta=dict(pred.meta), applied_operations=list(pred.applied_operations))
            out.affine = torch.as_tensor(affine.copy(), dtype=torch.float64)
            d[key] = out
        return d
