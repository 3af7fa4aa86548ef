"""2.5D slab sampling: a slice ``z`` with its neighbours ``z-1, z+1`` stacked as channels.

The TGD denoiser is a 2D network that "takes three consecutive 2D image slices as its input" (Chen et al.,
MICCAI 2021, Section 2). This module turns channel-first volumes ``[C, H, W, D]`` into such slabs:

* :func:`extract_slabs`: the one place where slabs are built; shared with
  :class:`monai_tgd.inferers.Slab25DInferer`.
* :class:`Slab25D` / :class:`Slab25Dd`: deterministic, every slab of a volume (evaluation).
* :class:`RandSlab25Dd`: random slabs for training, the same location in every key, an optional in-plane crop and
  optional weighting towards the body.
* Held-out slices: ``RandSlab25Dd(..., exclude_slices=s)`` never centres a sample on the slices ``s`` and
  ``Slab25Dd(..., slices=s)`` returns only the slabs centred on them, e.g. ``s = slice(2, None, 5)`` (every 5th
  slice) for a validation loss on slices training never used as targets (their neighbours still appear as input
  channels of training slabs). ``s`` is a ``slice``, an int or a sequence of ints (negative ones count from the end),
  resolved against the volume's length along ``axis`` by :func:`select_slices`.

Conventions:

* ``axis`` is a *spatial* axis: ``0, 1, 2`` or ``-3, -2, -1`` (default ``-1``, the last one, ``D``), counted in
  the spatial dimensions after the channel dimension. For ``[C, H, W, D]`` and ``axis=-1`` a slab of size ``s``
  is ``[C * s, H, W]``; channel ``c * s + j`` holds channel ``c`` of slice ``z - s // 2 + j``.
* Slices beyond the volume replicate the border: with ``s = 3`` the slab of ``z = 0`` is slices ``0, 0, 1``.
* A slab of size 1 is the centre slice alone (use it for targets and labels).
* MetaTensor outputs follow MONAI's crop-then-``SqueezeDim`` convention: the 4x4 affine is first translated to the
  slab's first voxel (slice ``z`` and the in-plane crop start), then the row and column of ``axis`` are dropped,
  giving the 3x3 affine of the 2D slice (pixel indices to the two in-plane world coordinates, in the units of the
  input affine, usually mm). The slice index ``z`` and the spatial axis are recorded in ``meta["slice_index"]``
  and ``meta["slice_axis"]``; other metadata (``filename_or_obj``, ...) is kept. ``meta["patch_index"]`` gives
  the sample's position in the returned list, as in MONAI's multi-sample transforms.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from copy import deepcopy

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, Randomizable, Transform
from monai.utils import convert_to_tensor, ensure_tuple_rep

__all__ = ["extract_slabs", "select_slices", "Slab25D", "Slab25Dd", "RandSlab25Dd", "SLICE_INDEX_KEY", "SLICE_AXIS_KEY"]

SLICE_INDEX_KEY = "slice_index"
"""MetaTensor ``meta`` key holding the index of a slab's centre slice along the slab axis."""
SLICE_AXIS_KEY = "slice_axis"
"""MetaTensor ``meta`` key holding the spatial axis (0, 1 or 2) the slabs were taken along."""
PATCH_INDEX_KEY = "patch_index"

Image = np.ndarray | torch.Tensor
Slices = slice | int | Sequence[int]


def select_slices(slices: Slices, length: int) -> np.ndarray:
    """Sorted, unique indices in ``[0, length)`` selected by ``slices``: a ``slice`` (e.g. ``slice(2, None, 5)``),
    an int or a sequence of ints (negative ones count from the end). Out-of-range ints raise ``ValueError``."""
    if isinstance(slices, slice):
        return np.arange(length)[slices]
    index = np.asarray([slices] if isinstance(slices, (int, np.integer)) else list(slices))
    if index.size == 0:
        return index.astype(int)
    if not np.issubdtype(index.dtype, np.integer) or index.ndim != 1:
        raise ValueError(f"slices must be a slice, an int or a sequence of ints, got {slices!r}.")
    if index.min() < -length or index.max() >= length:
        raise ValueError(f"slice indices must lie in [{-length}, {length}) for {length} slices, got {index.tolist()}.")
    return np.unique(index % length)


def check_slab(slab: int) -> int:
    """Return ``slab`` as an int after checking it is a positive odd integer."""
    if isinstance(slab, bool) or not isinstance(slab, (int, np.integer)) or slab < 1 or slab % 2 == 0:
        raise ValueError(f"slab must be a positive odd integer (1, 3, 5, ...), got {slab!r}.")
    return int(slab)


def spatial_axis(axis: int, spatial_ndim: int) -> int:
    """Normalise a spatial ``axis`` (negative counts from the last spatial dimension) to ``0 .. spatial_ndim - 1``."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -spatial_ndim <= axis < spatial_ndim:
        raise ValueError(
            f"axis must be a spatial axis in [{-spatial_ndim}, {spatial_ndim - 1}] for {spatial_ndim} spatial "
            f"dimensions, got {axis!r}."
        )
    return int(axis) % spatial_ndim


def extract_slabs(
    volume: torch.Tensor, centres: torch.Tensor | Sequence[int], slab: int = 3, axis: int = -1
) -> torch.Tensor:
    """Slabs of ``slab`` consecutive slices around each of ``centres``, neighbours stacked as channels.

    Args:
        volume: channel-first tensor ``[C, *spatial]`` (e.g. ``[C, H, W, D]``); not modified.
        centres: indices of the centre slices along ``axis``, ``N`` of them, each in ``[0, L)``.
        slab: odd number of slices per slab.
        axis: spatial axis (``-1`` = last spatial dimension).

    Returns:
        ``[N, C * slab, *spatial without axis]`` (e.g. ``[N, C * slab, H, W]``), a new tensor of the volume's
        dtype and device; channel ``c * slab + j`` holds channel ``c`` of slice ``centre - slab // 2 + j``,
        indices clamped to ``[0, L - 1]`` (replicated border). Only the ``N`` slabs are materialised.
    """
    slab = check_slab(slab)
    dim = 1 + spatial_axis(axis, volume.ndim - 1)
    length = volume.shape[dim]
    centres = torch.as_tensor(centres, dtype=torch.long, device=volume.device).reshape(-1)
    if centres.numel() and (centres.min() < 0 or centres.max() >= length):
        raise ValueError(f"slab centres must lie in [0, {length}) along axis {dim - 1}, got {centres.tolist()}.")
    offsets = torch.arange(-(slab // 2), slab // 2 + 1, device=volume.device)
    index = (centres[:, None] + offsets[None, :]).clamp_(0, length - 1).reshape(-1)
    slices = volume.index_select(dim, index).movedim(dim, 0)  # [N * slab, C, *rest]
    n, c, rest = centres.numel(), volume.shape[0], slices.shape[2:]
    return slices.reshape(n, slab, c, *rest).transpose(1, 2).reshape(n, c * slab, *rest)


def _slice_affine(affine: torch.Tensor, start: Sequence[int], axis: int) -> torch.Tensor:
    """Affine of the 2D slice whose first voxel is ``start`` in the volume: translate, then drop ``axis``."""
    affine = affine.to(torch.float64)
    out = affine.clone()
    out[:-1, -1] += affine[:-1, :-1] @ torch.as_tensor(start, dtype=torch.float64, device=affine.device)
    keep = [i for i in range(affine.shape[0]) if i != axis]
    return out[keep][:, keep]


def _wrap(slabs: torch.Tensor, img: Image, axis: int, starts: Sequence[Sequence[int]]) -> list:
    """Split ``slabs`` [N, ...] into N outputs of ``img``'s type; MetaTensors get slice affines and slice metadata."""
    if isinstance(img, np.ndarray):
        return list(slabs.numpy())
    if not (isinstance(img, MetaTensor) and get_track_meta()):
        return list(slabs.unbind(0))
    meta = {k: v for k, v in img.meta.items() if k != "affine"}
    outputs = []
    for x, start in zip(slabs.unbind(0), starts):
        extra = {SLICE_INDEX_KEY: int(start[axis]), SLICE_AXIS_KEY: axis}
        outputs.append(
            MetaTensor(
                x,
                affine=_slice_affine(img.affine, start, axis),
                meta={**meta, **extra},
                applied_operations=list(img.applied_operations),
            )
        )
    return outputs


def _slabs_at(img: Image, centres: Sequence[int], starts: Sequence[Sequence[int]], size: Sequence[int] | None,
              slab: int, axis: int) -> list:
    """Slabs of ``img`` [C, *spatial] centred on ``centres``, each cropped in-plane at ``starts`` to ``size``.

    ``starts`` are full spatial start indices (the ``axis`` entry equals the centre); ``size`` is the in-plane
    patch size (None: whole plane). All ``starts`` must share their in-plane part when more than one centre is given.
    """
    volume = convert_to_tensor(img, track_meta=False)
    if size is not None:
        inplane = [d for d in range(volume.ndim - 1) if d != axis]
        region = [slice(None)] * volume.ndim
        for d, s in zip(inplane, size):
            region[1 + d] = slice(starts[0][d], starts[0][d] + s)
        volume = volume[tuple(region)]
    return _wrap(extract_slabs(volume, centres, slab, axis), img, axis, starts)


class Slab25D(Transform):
    """All slabs of a volume, for evaluation.

    Args:
        slab: odd number of consecutive slices per slab (3 in the paper; 1 gives plain slices).
        axis: spatial axis to slice along (``-1``: last, e.g. axial ``D`` of ``[C, H, W, D]``).
        slices: only the slabs centred on these slices (see :func:`select_slices`), e.g. a held-out subset;
            None: all.

    Input: channel-first ``[C, H, W, D]`` (numpy, torch or MetaTensor). Output: a list of ``L`` slabs
    ``[C * slab, H, W]`` of the same type (``L`` = size along ``axis``, or the number of ``slices``), slab ``z``
    centred on slice ``z``; see the module docstring for border handling and metadata (``slice_index = z``, 2D affine).
    """

    def __init__(self, slab: int = 3, axis: int = -1, slices: Slices | None = None) -> None:
        self.slab = check_slab(slab)
        self.axis = axis
        self.slices = slices

    def __call__(self, img: Image) -> list[Image]:
        axis = spatial_axis(self.axis, img.ndim - 1)
        length = img.shape[1 + axis]
        centres = np.arange(length) if self.slices is None else select_slices(self.slices, length)
        starts = np.zeros((len(centres), img.ndim - 1), dtype=int)
        starts[:, axis] = centres
        return _slabs_at(img, centres.tolist(), starts.tolist(), None, self.slab, axis)


class Slab25Dd(MapTransform):
    """Dictionary version of :class:`Slab25D`: a list of ``L`` dicts, dict ``z`` holding slab ``z`` of every key.

    Args:
        keys: keys to slice; all must share the same spatial shape.
        slab: slab size, one int or one per key, e.g. ``slab=(3, 1)`` for ``keys=("image", "target")`` gives
            ``image`` as ``[3, H, W]`` and ``target`` as its centre slice ``[1, H, W]``.
        axis: spatial axis to slice along.
        slices: only the slabs centred on these slices (see :func:`select_slices`); None: all.
        allow_missing_keys: don't raise if a key is missing.

    Entries that are not in ``keys`` are shared by reference between the ``L`` dicts (not deep-copied as in MONAI's
    random multi-sample transforms, which would copy them ``L`` times); drop large unused entries beforehand.
    """

    def __init__(self, keys: KeysCollection, slab: int | Sequence[int] = 3, axis: int = -1,
                 allow_missing_keys: bool = False, slices: Slices | None = None) -> None:
        super().__init__(keys, allow_missing_keys)
        slabs = ensure_tuple_rep(slab, len(self.keys))
        self.slicers = {key: Slab25D(s, axis, slices) for key, s in zip(self.keys, slabs)}

    def __call__(self, data: Mapping[Hashable, Image]) -> list[dict[Hashable, Image]]:
        keys = list(self.key_iterator(data))
        _common_spatial_shape(data, keys)
        sliced = {key: self.slicers[key](data[key]) for key in keys}
        length = len(next(iter(sliced.values()))) if sliced else 0
        return [{**data, **{key: slabs[z] for key, slabs in sliced.items()}} for z in range(length)]


def _common_spatial_shape(data: Mapping[Hashable, Image], keys: Sequence[Hashable]) -> tuple[int, ...] | None:
    """The spatial shape shared by ``data[key]`` for all ``keys``; ValueError naming the shapes otherwise."""
    shapes = {key: tuple(data[key].shape[1:]) for key in keys}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"all keys must share one spatial shape to be sliced at the same location, got {shapes}.")
    return next(iter(shapes.values()), None)


class RandSlab25Dd(Randomizable, MapTransform):
    """Random 2.5D training samples: ``num_samples`` slabs at the same location in every key.

    For each sample a centre slice ``z`` is drawn (uniformly, or weighted towards the body, see ``weight_key``) and,
    if ``spatial_size`` is given, an in-plane patch; every key is cut at that same location: keys with ``slab=3``
    give ``[3 * C, h, w]`` (slices ``z-1, z, z+1``), keys with ``slab=1`` the centre slice ``[C, h, w]``.

    Args:
        keys: keys to sample; all must share one spatial shape, e.g. ``("image", "target", "label")``.
        slab: slab size, one int or one per key, e.g. ``(3, 1, 1)``: the noisy input as a 3-slice slab, target
            and label as the matching centre slice.
        num_samples: number of samples per input dict.
        axis: spatial axis to slice along (``-1``: last).
        spatial_size: in-plane patch size ``(h, w)`` in pixels; ``None`` or non-positive entries keep the full
            extent. Must not exceed the in-plane shape.
        weight_key: optional key (may also be one of ``keys``, e.g. a body mask ``"label"`` or the ``"target"``
            image) whose voxels ``> weight_threshold`` (in any channel) are foreground. Slices are then drawn with
            probability proportional to their number of foreground voxels, and in-plane patches are centred on a
            random foreground voxel of the slice, so samples fall on the body rather than empty air. If there is
            no foreground at all, sampling is uniform.
        weight_threshold: threshold for ``weight_key`` in its own units (e.g. 0 for a mask, a small activity
            concentration for an image).
        allow_missing_keys: don't raise if a key is missing.
        exclude_slices: slices never used as sample centres (see :func:`select_slices`), e.g. ``slice(2, None, 5)``
            held out for validation; the others are drawn as above (uniformly when none of them has foreground).
            Excluding every slice raises ``ValueError``.

    Returns:
        a list of ``num_samples`` dicts; other entries are deep-copied into each, as in MONAI's
        ``RandSpatialCropSamplesd``. MetaTensor metadata: see the module docstring (``slice_index``, 2D affine
        translated to the patch, ``patch_index``).
    """

    def __init__(
        self,
        keys: KeysCollection,
        slab: int | Sequence[int] = 3,
        num_samples: int = 1,
        axis: int = -1,
        spatial_size: Sequence[int] | int | None = None,
        weight_key: Hashable | None = None,
        weight_threshold: float = 0.0,
        allow_missing_keys: bool = False,
        exclude_slices: Slices | None = None,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.exclude_slices = exclude_slices
        self.slab = {key: check_slab(s) for key, s in zip(self.keys, ensure_tuple_rep(slab, len(self.keys)))}
        if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}.")
        self.num_samples = int(num_samples)
        self.axis = axis
        self.spatial_size = None if spatial_size is None else ensure_tuple_rep(spatial_size, 2)
        self.weight_key = weight_key
        self.weight_threshold = weight_threshold
        self._starts: list[list[int]] = []
        self._size: tuple[int, ...] = ()

    def randomize(  # type: ignore[override]
        self, spatial_shape: Sequence[int], foreground: np.ndarray | None = None
    ) -> None:
        """Draw ``num_samples`` locations in a volume of ``spatial_shape``: full spatial start indices and the patch size.

        Args:
            spatial_shape: spatial shape of the volume.
            foreground: optional boolean ``[*spatial_shape]`` mask of the body to weight the sampling.
        """
        axis = spatial_axis(self.axis, len(spatial_shape))
        inplane = [d for d in range(len(spatial_shape)) if d != axis]
        size = self._size = self._patch_size(spatial_shape, inplane)
        length = spatial_shape[axis]
        allowed = None
        if self.exclude_slices is not None:
            allowed = np.ones(length, dtype=bool)
            allowed[select_slices(self.exclude_slices, length)] = False
            if not allowed.any():
                raise ValueError(f"exclude_slices={self.exclude_slices!r} excludes all {length} slices.")
        weights = None
        if foreground is not None and foreground.any():
            weights = foreground.sum(axis=tuple(inplane), dtype=np.float64)
            if allowed is not None:
                weights *= allowed
            weights = weights / weights.sum() if weights.any() else None
        p = weights if weights is not None or allowed is None else allowed / allowed.sum()
        centres = self.R.choice(length, size=self.num_samples, p=p)
        self._starts = []
        for z in centres:
            start = [0] * len(spatial_shape)
            start[axis] = int(z)
            pixel = None  # with weights: a random foreground pixel of the slice, the patch centred on it
            if weights is not None:
                plane = np.take(foreground, z, axis=axis)
                pixel = np.unravel_index(self.R.choice(np.flatnonzero(plane)), plane.shape)
            for i, (d, s) in enumerate(zip(inplane, size)):
                room = spatial_shape[d] - s
                start[d] = int(self.R.randint(room + 1)) if pixel is None else int(np.clip(pixel[i] - s // 2, 0, room))
            self._starts.append(start)

    def _patch_size(self, spatial_shape: Sequence[int], inplane: Sequence[int]) -> tuple[int, ...]:
        full = tuple(spatial_shape[d] for d in inplane)
        if self.spatial_size is None:
            return full
        size = tuple(f if s is None or s <= 0 else int(s) for s, f in zip(self.spatial_size, full))
        if any(s > f for s, f in zip(size, full)):
            raise ValueError(f"spatial_size {tuple(self.spatial_size)} exceeds the in-plane shape {full}.")
        return size

    def __call__(self, data: Mapping[Hashable, Image]) -> list[dict[Hashable, Image]]:
        keys = list(self.key_iterator(data))
        if self.weight_key is not None and self.weight_key not in data:
            raise KeyError(f"RandSlab25Dd: weight_key {self.weight_key!r} is not in the data (keys: {list(data)}).")
        spatial_shape = _common_spatial_shape(data, keys + ([self.weight_key] if self.weight_key is not None else []))
        if spatial_shape is None:
            return [deepcopy(dict(data)) for _ in range(self.num_samples)]
        foreground = None
        if self.weight_key is not None:
            w = convert_to_tensor(data[self.weight_key], track_meta=False)
            foreground = (w > self.weight_threshold).any(dim=0).cpu().numpy()
        self.randomize(spatial_shape, foreground)
        axis = spatial_axis(self.axis, len(spatial_shape))
        outputs = [{k: deepcopy(v) for k, v in data.items() if k not in keys} for _ in range(self.num_samples)]
        for key in keys:
            for i, start in enumerate(self._starts):
                (outputs[i][key],) = _slabs_at(data[key], [start[axis]], [start], self._size, self.slab[key], axis)
                if isinstance(outputs[i][key], MetaTensor):
                    outputs[i][key].meta[PATCH_INDEX_KEY] = i
        return outputs
