"""PET activity concentration (Bq/ml) to body-weight SUV and back, as invertible MONAI transforms.

The denoising networks were trained on SUV-like values (soft tissue ~1). Clinical PET arrives as DICOM in Bq/ml
(``Units`` (0054,1001) ``BQML``); fed as is, a network would "denoise" values it never saw. These transforms put the
image in SUVbw before the network and the prediction back in the input's units after it:

    SUVbw = activity [Bq/ml] * factor,   factor = patient weight [g] / decay-corrected injected dose [Bq]

(1 ml of tissue taken as 1 g, so SUVbw is in g/ml; DICOM ``Units`` ``GML``).

* :func:`suv_factor_from_dataset`: the factor from a DICOM PET header (a pydicom ``Dataset``, e.g. the first
  slice of the series), every attribute checked; :func:`suv_factor_from_meta`: from a MetaTensor's ``meta`` as
  ``LoadImage(reader="PydicomReader")`` leaves it; :func:`suv_factor_explicit`: from a weight and a dose.
* :class:`ToSUV` / :class:`ToSUVd`: the conversion, invertible (``Invertd`` undoes it; the factor travels in the
  transform's trace and in ``meta``); ``units`` "dicom" (factor from the DICOM header), "SUV" (already SUV:
  identity) or "Bq/ml" (``patient_weight_kg`` and ``injected_dose_bq`` given, e.g. for NIfTI input).
* :class:`FromSUV` / :class:`FromSUVd`: SUV back to the input's units with the factor the forward transform stored,
  e.g. ``FromSUVd(keys="pred", factor_key="image")`` in a bundle's postprocessing.

Metadata written into ``meta`` by :class:`ToSUV` (the keys are module constants):

* ``suv_factor`` (:data:`FACTOR_KEY`): the factor (float; SUV per unit of the input);
* ``pet_units`` (:data:`UNITS_KEY`): the units the values are in now, DICOM codes: ``"GML"`` after :class:`ToSUV`,
  the input's (``"BQML"``) after :class:`FromSUV` or the inverse;
* ``pet_units_source`` (:data:`SOURCE_UNITS_KEY`): the input's units (``"BQML"``, or ``"GML"`` if it was SUV);
* ``pet_header`` (:data:`HEADER_KEY`): when the factor came from DICOM, the attributes used, as a DICOM JSON text
  (``pydicom.Dataset.from_json`` reads it back), so the factor can be recomputed and audited;
* ``suv_details`` (:data:`DETAILS_KEY`): the factor's inputs as text (weight, dose, half-life, uptake time, ...).

Which header MONAI keeps: ``PydicomReader`` keeps, by default (``prune_metadata=True``), only the geometry tags of
the first slice (``00200032``, ``00200037``, ``00280030``) plus ``filename_or_obj`` (the series folder): not the tags
SUV needs. With ``prune_metadata=False`` it keeps the whole first-slice header as DICOM JSON (keys ``"00101030"``,
values ``{"vr": "DS", "Value": [75.0]}``, sequences nested as lists of such dicts). :func:`suv_factor_from_meta`
uses, in order: ``meta["pet_header"]``; the DICOM JSON tags if present; else it reads the header of the first slice
(lowest InstanceNumber, the one MONAI keeps) of the folder or file named by ``meta["filename_or_obj"]`` with pydicom
(pixel data not read). So plain ``LoadImaged(reader="PydicomReader")`` is enough.

Decay-correction reference time (``DecayCorrection`` (0054,1102)): ``START`` images are decay corrected to the
acquisition start, which the PET Series module records as ``SeriesDate``/``SeriesTime`` (0008,0021/0031) (the same
for every slice, unlike ``AcquisitionTime``, which some scanners set per bed position); the dose is decayed from
``RadiopharmaceuticalStartDateTime`` (0018,1078) (or ``RadiopharmaceuticalStartTime`` (0018,1072) on the series
date) to it: dose * 2^(-t / half-life). ``ADMIN`` images are corrected to the administration time: no dose
correction. ``NONE`` is refused (uncorrected images have no single SUV factor). If the first slice's
``AcquisitionDate/Time`` is *earlier* than the series time, the series time was reset after the scan (e.g. the series
was re-created) and is no longer the acquisition start: refused, unless ``reference_time="acquisition"`` is chosen
(then the first slice's ``AcquisitionDateTime``, or ``AcquisitionDate/Time``, is the reference). A date-time with a
UTC offset is compared with the series time in ``TimezoneOffsetFromUTC`` (0008,0201) if present, else taken as local
time. An injection time without a date is taken on the reference date (a scan past midnight needs
``RadiopharmaceuticalStartDateTime``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import InvertibleTransform, MapTransform, Transform
from monai.utils import TraceKeys, TransformBackends
from monai.utils.type_conversion import convert_to_tensor
from pydicom.dataset import Dataset

from monai_tgd.dicom.suv import (
    DETAILS_KEY,
    FACTOR_KEY,
    HEADER_KEY,
    SOURCE_UNITS_KEY,
    SUV_KEYWORDS,
    UNITS_KEY,
    SUVFactor,
    _scalar_or_text,
    pet_header_json,
    suv_factor_explicit,
    suv_factor_from_dataset,
    suv_factor_from_meta,
)

__all__ = [
    "SUVFactor",
    "suv_factor_from_dataset",
    "suv_factor_from_meta",
    "suv_factor_explicit",
    "pet_header_json",
    "ToSUV",
    "ToSUVd",
    "FromSUV",
    "FromSUVd",
    "FACTOR_KEY",
    "UNITS_KEY",
    "SOURCE_UNITS_KEY",
    "HEADER_KEY",
    "DETAILS_KEY",
    "SUV_KEYWORDS",
]

_UNITS_ALIASES = {
    "AUTO": "auto",
    "DICOM": "dicom",
    "SUV": "GML",
    "GML": "GML",
    "G/ML": "GML",
    "SUVBW": "GML",
    "BQ/ML": "BQML",
    "BQML": "BQML",
}


def _check_units(units: str) -> str:
    key = str(units).strip().upper().replace(" ", "")
    if key not in _UNITS_ALIASES:
        raise ValueError(
            f"units {units!r}: expected 'auto' (DICOM: from the header; other input: SUV), 'dicom' (factor from the "
            "DICOM PET header), 'SUV' (input already SUVbw: no change) or 'Bq/ml' (with patient_weight_kg and "
            "injected_dose_bq)."
        )
    return _UNITS_ALIASES[key]


#: ``meta`` keys by which an image read from DICOM is recognised: ImagePositionPatient (0020,0032), which MONAI's
#: ``PydicomReader`` always keeps (``0020|0032`` with ITK's reader), Units (0054,1001) of a kept header, or this
#: module's own header field
_DICOM_MARKERS = ("00200032", "0020|0032", "00541001", HEADER_KEY)


def _read_from_dicom(img) -> bool:
    """Whether ``img`` is a MetaTensor read from DICOM: its ``meta`` has one of :data:`_DICOM_MARKERS`, or it was read
    from a folder or a ``.dcm`` file (whichever reader MONAI picked), so a Bq/ml series is never taken for SUV."""
    if not isinstance(img, MetaTensor):
        return False
    source = _scalar_or_text(img.meta.get("filename_or_obj"))
    from_dicom_path = isinstance(source, str) and (os.path.isdir(source) or source.lower().endswith(".dcm"))
    return from_dicom_path or any(key in img.meta for key in _DICOM_MARKERS)


def _float_dtype(img: torch.Tensor) -> torch.dtype:
    return img.dtype if img.is_floating_point() and img.dtype.itemsize >= 4 else torch.float32


class ToSUV(InvertibleTransform):
    """Convert a PET image from activity concentration (Bq/ml) to body-weight SUV (g/ml); invertible.

    Input: ``[C, *spatial]`` (e.g. ``[1, H, W, D]`` after ``LoadImage(ensure_channel_first=True)``), a MetaTensor
    (needed for ``units="dicom"``), tensor or numpy array, in Bq/ml (or SUV for ``units="SUV"``). Output: a
    MetaTensor (when metadata tracking is on, MONAI's default) of the same shape, float (float32 unless the input
    is float64), in SUVbw: ``output = input * factor``. The factor and units are written into ``meta`` (module
    docstring) and the transform's trace, so :meth:`inverse` (and ``Invertd``) or :class:`FromSUV` undo it.

    Args:
        units: "dicom" (default): the factor from the DICOM PET header of the image (:func:`suv_factor_from_meta`;
            a header in Units GML gives 1.0); "auto": "dicom" for an image read from DICOM (its ``meta`` holds DICOM
            tags or a DICOM header, as ``PydicomReader`` leaves it), "SUV" for any other (NIfTI) image; "SUV" (or "GML"): the input is already SUVbw, factor 1.0; "Bq/ml" (or
            "BQML"): factor from ``patient_weight_kg`` and ``injected_dose_bq`` (:func:`suv_factor_explicit`).
        patient_weight_kg, injected_dose_bq, decay_factor: for ``units="Bq/ml"`` (checked when constructed).
        reference_time: for "dicom": "series" (default) or "acquisition" (see the module docstring).

    Raises:
        ValueError: missing or inconsistent header attributes (named with their tags), missing explicit values, or
            an image whose metadata says it is SUV already (``pet_units`` GML) converted again from DICOM.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        units: str = "dicom",
        patient_weight_kg: float | None = None,
        injected_dose_bq: float | None = None,
        decay_factor: float = 1.0,
        reference_time: str = "series",
    ) -> None:
        self.units = _check_units(units)
        if reference_time not in ("series", "acquisition"):
            raise ValueError(f"reference_time {reference_time!r}: expected 'series' or 'acquisition'.")
        self.reference_time = reference_time
        self.explicit = (
            suv_factor_explicit(patient_weight_kg, injected_dose_bq, decay_factor) if self.units == "BQML" else None
        )

    def factor_for(self, img) -> tuple[SUVFactor, Dataset | None]:
        """The factor of ``img`` (and the DICOM header it came from, if any)."""
        if self.units == "GML":
            return SUVFactor(1.0, "GML", reference="given as SUV"), None
        if self.units == "BQML":
            return self.explicit, None  # type: ignore[return-value]
        if self.units == "auto" and not _read_from_dicom(img):
            return SUVFactor(1.0, "GML", reference="not DICOM: taken as SUV (units 'auto')"), None
        if not isinstance(img, MetaTensor):
            raise ValueError(
                "ToSUV(units='dicom') needs a MetaTensor with the DICOM metadata LoadImage(reader='PydicomReader') "
                f"gives; got {type(img).__name__}. For other input set units='SUV' or units='Bq/ml'."
            )
        if str(_scalar_or_text(img.meta.get(UNITS_KEY, ""))).upper() == "GML":
            raise ValueError(
                f"{_scalar_or_text(img.meta.get('filename_or_obj')) or 'image'} is already in SUV (meta "
                f"'{UNITS_KEY}' GML); ToSUV was applied twice?"
            )
        return suv_factor_from_meta(img.meta, self.reference_time)

    def __call__(self, img, factor: SUVFactor | None = None):
        """``img`` in SUVbw; ``factor`` overrides the one the settings give."""
        header = None
        if factor is None:
            factor, header = self.factor_for(img)
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        out = img_t.to(_float_dtype(img_t)) * factor.factor
        if isinstance(out, MetaTensor):
            out.meta[FACTOR_KEY] = factor.factor
            out.meta[UNITS_KEY] = "GML"
            out.meta[SOURCE_UNITS_KEY] = factor.source_units
            out.meta[DETAILS_KEY] = factor.describe()
            if header is not None:
                out.meta[HEADER_KEY] = pet_header_json(header)
            self.push_transform(out, extra_info={"factor": factor.factor, "source_units": factor.source_units})
        return out

    def inverse(self, data):
        """SUV back to the input's units with the factor of the most recent :class:`ToSUV` in ``data``'s trace."""
        transform = self.pop_transform(data)
        info = transform[TraceKeys.EXTRA_INFO]
        return _from_suv(data, float(info["factor"]), str(info["source_units"]))


def _from_suv(img, factor: float, source_units: str):
    img_t = convert_to_tensor(img, track_meta=get_track_meta())
    out = img_t.to(_float_dtype(img_t)) / factor
    if isinstance(out, MetaTensor):
        out.meta[UNITS_KEY] = source_units
        out.meta[FACTOR_KEY] = factor
        out.meta[SOURCE_UNITS_KEY] = source_units
    return out


class ToSUVd(MapTransform, InvertibleTransform):
    """Dictionary version of :class:`ToSUV` (same arguments): ``keys`` (e.g. ``"image"``) converted to SUVbw,
    ``[C, *spatial]`` each; invertible by ``Invertd`` (e.g. ``Invertd(keys="pred", transform=<preprocessing>,
    orig_keys="image")``)."""

    backend = ToSUV.backend

    def __init__(
        self,
        keys: KeysCollection,
        units: str = "dicom",
        patient_weight_kg: float | None = None,
        injected_dose_bq: float | None = None,
        decay_factor: float = 1.0,
        reference_time: str = "series",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ToSUV(units, patient_weight_kg, injected_dose_bq, decay_factor, reference_time)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d

    def inverse(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter.inverse(d[key])
        return d


def _stored_factor(meta: Mapping, name: str) -> tuple[float, str]:
    if FACTOR_KEY not in meta:
        raise ValueError(
            f"no SUV factor in the metadata of {name} (meta '{FACTOR_KEY}'): it is stored by ToSUV(d); put "
            "ToSUVd on the image in the preprocessing, or give the factor."
        )
    factor = float(_scalar_or_text(meta[FACTOR_KEY]))
    if not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"SUV factor {factor!r} in the metadata of {name}; expected a number > 0.")
    return factor, str(_scalar_or_text(meta.get(SOURCE_UNITS_KEY, "BQML")))


class FromSUV(Transform):
    """Convert a body-weight SUV image back to the units it was converted from (Bq/ml): ``output = input / factor``.

    Input ``[C, *spatial]`` in SUVbw (MetaTensor, tensor or numpy); output a MetaTensor of the same shape, float,
    with ``meta["pet_units"]`` the source units. The factor: ``factor`` given here or to the call, else the
    ``meta["suv_factor"]`` :class:`ToSUV` stored (and its ``pet_units_source``). An image whose metadata says it is
    not in SUV (``pet_units`` other than GML) is refused: it was converted back already.
    """

    backend = ToSUV.backend

    def __init__(self, factor: float | None = None, source_units: str = "BQML") -> None:
        self.factor = factor
        self.source_units = source_units

    def __call__(self, img, factor: float | None = None, source_units: str | None = None):
        factor = factor if factor is not None else self.factor
        name = "the image"
        if isinstance(img, MetaTensor):
            name = str(_scalar_or_text(img.meta.get("filename_or_obj")) or name)
            units = _scalar_or_text(img.meta.get(UNITS_KEY))
            if units is not None and str(units).upper() != "GML":
                raise ValueError(
                    f"{name} is in {units} (meta '{UNITS_KEY}'), not SUV: converted back already (FromSUVd and "
                    "Invertd both applied?)."
                )
        if factor is None:
            if not isinstance(img, MetaTensor):
                raise ValueError("FromSUV: no factor given and the input has no metadata holding one.")
            factor, stored_units = _stored_factor(img.meta, name)
            source_units = source_units or stored_units
        return _from_suv(img, float(factor), source_units or self.source_units)


class FromSUVd(MapTransform):
    """Dictionary version of :class:`FromSUV`: ``keys`` (e.g. ``"pred"``) back from SUVbw to the input's units with
    the factor :class:`ToSUVd` stored on ``factor_key`` (e.g. ``"image"``: ``data["image"].meta["suv_factor"]``;
    ``None``: each key's own metadata). ``[C, *spatial]`` each. Use it, or ``Invertd``, not both."""

    backend = ToSUV.backend

    def __init__(self, keys: KeysCollection, factor_key: str | None = "image", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.factor_key = factor_key
        self.converter = FromSUV()

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            holder_key = key if self.factor_key is None else self.factor_key
            if holder_key not in d:
                raise ValueError(f"FromSUVd: key '{holder_key}' holding the SUV factor is not in the data "
                                 f"(keys {list(d)}).")  # fmt: skip
            holder = d[holder_key]
            meta = holder.meta if isinstance(holder, MetaTensor) else d.get(f"{holder_key}_meta_dict")
            if not isinstance(meta, Mapping):
                raise ValueError(f"FromSUVd: '{holder_key}' has no metadata holding the SUV factor; expected a "
                                 "MetaTensor converted by ToSUVd.")  # fmt: skip
            factor, source_units = _stored_factor(meta, f"'{holder_key}'")
            d[key] = self.converter(d[key], factor, source_units)
        return d
