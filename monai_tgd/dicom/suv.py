"""The body-weight SUV factor of a DICOM PET series from its header, every attribute checked.

    SUVbw = activity [Bq/ml] * factor,   factor = patient weight [g] / decay-corrected injected dose [Bq]

:func:`suv_factor_from_dataset` (a pydicom ``Dataset``, e.g. the series' first slice), :func:`suv_factor_from_meta`
(a MetaTensor's ``meta`` as ``LoadImage(reader="PydicomReader")`` leaves it), :func:`suv_factor_explicit` (a weight
and a dose). The rules (reference time, decay correction, units) are in :mod:`monai_tgd.transforms.suv`, whose
transforms use these functions; the ``meta`` keys they write are the constants below.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
from collections.abc import Mapping, Sized
from dataclasses import asdict, dataclass

import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from .series import read_pet_header, tag_label

FACTOR_KEY = "suv_factor"
UNITS_KEY = "pet_units"
SOURCE_UNITS_KEY = "pet_units_source"
HEADER_KEY = "pet_header"
DETAILS_KEY = "suv_details"

#: The DICOM attributes the SUV factor is computed from (stored in ``meta["pet_header"]``).
SUV_KEYWORDS = (
    "Modality", "Units", "SUVType", "DecayCorrection", "CorrectedImage", "PatientWeight", "SeriesDate",
    "SeriesTime", "AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime", "TimezoneOffsetFromUTC",
    "RadiopharmaceuticalInformationSequence",
)  # fmt: skip

#: A weight above this (kg) is taken for a weight in the wrong unit (grams, pounds x 10...) and refused.
MAX_WEIGHT_KG = 1000.0


@dataclass(frozen=True)
class SUVFactor:
    """The SUVbw factor and what it was computed from.

    Attributes:
        factor: SUV per unit of the input (``weight_g / decayed_dose_bq`` for Bq/ml; 1.0 for an input already SUV).
        source_units: the input's units as a DICOM code, ``"BQML"`` or ``"GML"``.
        weight_kg, injected_dose_bq, half_life_s: as read (None where not used).
        decayed_dose_bq: the dose at the decay-correction reference time.
        uptake_s: injection to reference time, seconds (None for ADMIN, explicit, or SUV input).
        decay_correction: ``DecayCorrection`` (START, ADMIN) or how the explicit factor was given.
        reference: the reference time used, as text.
    """

    factor: float
    source_units: str
    weight_kg: float | None = None
    injected_dose_bq: float | None = None
    decayed_dose_bq: float | None = None
    half_life_s: float | None = None
    uptake_s: float | None = None
    decay_correction: str | None = None
    reference: str | None = None

    def describe(self) -> str:
        """The factor's inputs as one JSON text (for ``meta["suv_details"]``)."""
        return json.dumps(asdict(self))


def _where(source: str | None) -> str:
    return f" in {source}" if source else ""


def _value(ds: Dataset, keyword: str):
    """The value of ``keyword`` in ``ds``, None if absent or empty."""
    if keyword not in ds:
        return None
    value = ds[keyword].value
    if value is None or (isinstance(value, Sized) and len(value) == 0):
        return None
    return value


def _number(ds: Dataset, keyword: str, expected: str, source: str | None) -> float:
    value = _value(ds, keyword)
    if value is None:
        raise ValueError(f"{tag_label(keyword)} is missing or empty{_where(source)}; expected {expected}.")
    if isinstance(value, (list, MultiValue)):
        value = value[0] if len(value) == 1 else value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{tag_label(keyword)} is {value!r}{_where(source)}; expected {expected}.") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{tag_label(keyword)} is {value!r}{_where(source)}; expected {expected}.")
    return number


def _text(ds: Dataset, keyword: str) -> str | None:
    value = _value(ds, keyword)
    return None if value is None else str(value).strip().upper()


def _parse(ds: Dataset, keyword: str, kind: type, expected: str, source: str | None):
    value = _value(ds, keyword)
    if value is None:
        return None
    text = str(value).strip()
    # a date-time must give the time to the minute at least (DT allows "2024" alone, useless for decay)
    if kind is pydicom.valuerep.DT and not re.match(r"^(\d{12}|\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2})", text):
        raise ValueError(f"{tag_label(keyword)} is {text!r}{_where(source)}; expected {expected}.")
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise ValueError(f"{tag_label(keyword)} is {text!r}{_where(source)}; expected {expected}.") from None


_DA = "a date YYYYMMDD"
_TM = "a time HHMMSS[.FFFFFF] (HH, HHMM also accepted)"
_DT = "a date-time YYYYMMDDHHMM[SS[.FFFFFF]][&ZZXX]"


def _date_time(ds: Dataset, date_kw: str, time_kw: str, source: str | None) -> datetime.datetime | None:
    day = _parse(ds, date_kw, pydicom.valuerep.DA, _DA, source)
    clock = _parse(ds, time_kw, pydicom.valuerep.TM, _TM, source)
    if day is None or clock is None:
        return None
    return datetime.datetime.combine(day, datetime.time(clock.hour, clock.minute, clock.second, clock.microsecond))


def _reference_datetime(ds: Dataset, reference_time: str, source: str | None) -> tuple[datetime.datetime, str]:
    acquisition = _parse(ds, "AcquisitionDateTime", pydicom.valuerep.DT, _DT, source)
    if acquisition is not None:
        acquisition = datetime.datetime(*acquisition.timetuple()[:6], acquisition.microsecond, acquisition.tzinfo)
    else:
        acquisition = _date_time(ds, "AcquisitionDate", "AcquisitionTime", source)
    if reference_time == "acquisition":
        if acquisition is None:
            raise ValueError(
                f"{tag_label('AcquisitionDateTime')}, or {tag_label('AcquisitionDate')} and "
                f"{tag_label('AcquisitionTime')}, are missing{_where(source)}; reference_time='acquisition' needs "
                f"{_DT} (or {_DA} and {_TM})."
            )
        return acquisition, f"AcquisitionDateTime {acquisition.isoformat()}"
    series = _date_time(ds, "SeriesDate", "SeriesTime", source)
    if series is None:
        missing = [tag_label(k) for k in ("SeriesDate", "SeriesTime") if _value(ds, k) is None]
        raise ValueError(
            f"{' and '.join(missing)} missing or empty{_where(source)}; expected {_DA} and {_TM}: the acquisition "
            "start that DecayCorrection START refers to (or pass reference_time='acquisition')."
        )
    if acquisition is not None and acquisition.tzinfo is None and acquisition < series - datetime.timedelta(seconds=1):
        raise ValueError(
            f"{tag_label('SeriesTime')} {series.isoformat()} is later than {tag_label('AcquisitionTime')} "
            f"{acquisition.isoformat()}{_where(source)}: the series time was reset after the scan (series re-created?) "
            "and no longer marks the acquisition start the images are decay corrected to. Expected SeriesDate/"
            "SeriesTime at or before the acquisition; check the data, or pass reference_time='acquisition'."
        )
    return series, f"SeriesDate/SeriesTime {series.isoformat()}"


def _injection_datetime(item: Dataset, ds: Dataset, reference: datetime.datetime, source: str | None):
    inj = _parse(item, "RadiopharmaceuticalStartDateTime", pydicom.valuerep.DT, _DT, source)
    if inj is not None:
        inj = datetime.datetime(*inj.timetuple()[:6], inj.microsecond, inj.tzinfo)
        label = "RadiopharmaceuticalStartDateTime"
    else:
        clock = _parse(item, "RadiopharmaceuticalStartTime", pydicom.valuerep.TM, _TM, source)
        if clock is None:
            raise ValueError(
                f"{tag_label('RadiopharmaceuticalStartDateTime')} and {tag_label('RadiopharmaceuticalStartTime')} "
                f"are both missing from the RadiopharmaceuticalInformationSequence item{_where(source)}; expected "
                f"the injection time, {_DT} or {_TM}."
            )
        inj = datetime.datetime.combine(reference.date(), datetime.time(clock.hour, clock.minute, clock.second,
                                                                        clock.microsecond))  # fmt: skip
        label = "RadiopharmaceuticalStartTime"
    if inj.tzinfo is not None and reference.tzinfo is None:
        offset = _value(ds, "TimezoneOffsetFromUTC")
        if offset is not None:
            try:
                tz = pydicom.valuerep.DT(f"19700101000000{str(offset).strip()}").tzinfo
            except ValueError:
                tz = None
            if tz is None:
                raise ValueError(f"{tag_label('TimezoneOffsetFromUTC')} is {str(offset)!r}{_where(source)}; "
                                 "expected an offset &ZZXX, e.g. '+0100'.")  # fmt: skip
            reference = reference.replace(tzinfo=tz)
        else:
            inj = inj.replace(tzinfo=None)  # no zone given for the series: take both as local time
    elif inj.tzinfo is None and reference.tzinfo is not None:
        reference = reference.replace(tzinfo=None)
    return inj, label, reference


def suv_factor_from_dataset(ds: Dataset, reference_time: str = "series", source: str | None = None) -> SUVFactor:
    """The SUVbw factor of a PET image from its DICOM header (e.g. the first slice of the series).

    Rules (every violation a ``ValueError`` naming the attribute as ``Keyword (gggg,eeee)`` and the expected form):

    * ``Modality`` (0008,0060), if present, ``PT``;
    * ``Units`` (0054,1001) ``BQML`` (Bq/ml): converted; ``GML`` (already SUV, g/ml) with ``SUVType`` (0054,1006)
      absent or ``BW``: factor 1.0, nothing else needed; any other (``CNTS``, ``PROPCNTS``...) refused;
    * ``DecayCorrection`` (0054,1102) ``START`` or ``ADMIN``, and ``CorrectedImage`` (0028,0051) containing
      ``DECY``;
    * ``PatientWeight`` (0010,1030) in kg, 0 < weight <= 1000;
    * ``RadiopharmaceuticalInformationSequence`` (0054,0016) with exactly one item holding
      ``RadionuclideTotalDose`` (0018,1074) > 0 (Bq, at injection) and ``RadionuclideHalfLife`` (0018,1075) > 0 (s);
    * for START: the reference time (module docstring; ``reference_time`` "series" (default) or "acquisition") and
      the injection time ``RadiopharmaceuticalStartDateTime`` (0018,1078) or ``RadiopharmaceuticalStartTime``
      (0018,1072), the injection not after the reference.

    factor = weight_kg * 1000 / (dose * 2 ** (-uptake_s / half_life_s)) for START, weight_kg * 1000 / dose for ADMIN.

    Args:
        ds: the header; only the attributes in :data:`SUV_KEYWORDS` are read.
        reference_time: "series" or "acquisition".
        source: where ``ds`` comes from (a file or folder), for messages.
    """
    if reference_time not in ("series", "acquisition"):
        raise ValueError(f"reference_time {reference_time!r}: expected 'series' or 'acquisition'.")
    modality = _text(ds, "Modality")
    if modality is not None and modality != "PT":
        raise ValueError(f"{tag_label('Modality')} is {modality!r}{_where(source)}; expected 'PT' (a PET image).")
    units = _text(ds, "Units")
    if units is None:
        raise ValueError(
            f"{tag_label('Units')} is missing or empty{_where(source)}; expected 'BQML' (activity concentration, "
            "Bq/ml) or 'GML' (SUVbw, g/ml)."
        )
    if units == "GML":
        suv_type = _text(ds, "SUVType")
        if suv_type not in (None, "BW"):
            raise ValueError(
                f"{tag_label('SUVType')} is {suv_type!r}{_where(source)} for Units GML; expected 'BW' (body-weight "
                "SUV, what the networks were trained on) or absent."
            )
        return SUVFactor(1.0, "GML", decay_correction=_text(ds, "DecayCorrection"), reference="already SUVbw (GML)")
    if units != "BQML":
        raise ValueError(
            f"{tag_label('Units')} is {units!r}{_where(source)}; expected 'BQML' (activity concentration, Bq/ml) or "
            f"'GML' (SUVbw): {units} values cannot be converted to SUV."
        )
    decay = _text(ds, "DecayCorrection")
    if decay is None:
        raise ValueError(
            f"{tag_label('DecayCorrection')} is missing or empty{_where(source)}; expected 'START' or 'ADMIN' (the "
            "time the images are decay corrected to)."
        )
    if decay not in ("START", "ADMIN"):
        raise ValueError(
            f"{tag_label('DecayCorrection')} is {decay!r}{_where(source)}; expected 'START' or 'ADMIN' (images not "
            "decay corrected to one time have no single SUV factor)."
        )
    corrected = _value(ds, "CorrectedImage")
    if corrected is None:
        raise ValueError(
            f"{tag_label('CorrectedImage')} is missing or empty{_where(source)}; expected the applied corrections, "
            "including 'DECY' (decay corrected)."
        )
    corrections = [str(v).strip().upper() for v in (corrected if isinstance(corrected, (list, MultiValue)) else
                                                    [corrected])]  # fmt: skip
    if "DECY" not in corrections:
        raise ValueError(
            f"{tag_label('CorrectedImage')} is {corrections}{_where(source)}, without 'DECY', while "
            f"{tag_label('DecayCorrection')} is {decay}; expected 'DECY' among the corrections of a decay-corrected "
            "image."
        )
    weight = _number(ds, "PatientWeight", "the patient's weight in kg, a number > 0", source)
    if weight > MAX_WEIGHT_KG:
        raise ValueError(
            f"{tag_label('PatientWeight')} is {weight:g}{_where(source)}; expected the weight in kg "
            f"(0 < weight <= {MAX_WEIGHT_KG:g}): grams or another unit?"
        )
    seq_label = tag_label("RadiopharmaceuticalInformationSequence")
    seq = _value(ds, "RadiopharmaceuticalInformationSequence")
    if seq is None:
        raise ValueError(
            f"{seq_label} is missing or empty{_where(source)}; expected one item with RadionuclideTotalDose "
            "(0018,1074), RadionuclideHalfLife (0018,1075) and the injection time."
        )
    if len(seq) != 1:
        raise ValueError(
            f"{seq_label} has {len(seq)} items{_where(source)}; expected exactly one (one radiopharmaceutical)."
        )
    item = seq[0]
    dose = _number(item, "RadionuclideTotalDose", "the injected activity in Bq, a number > 0", source)
    half_life = _number(item, "RadionuclideHalfLife", "the radionuclide half-life in s, a number > 0", source)
    if decay == "ADMIN":
        return SUVFactor(weight * 1000.0 / dose, "BQML", weight, dose, dose, half_life, None, "ADMIN",
                         "administration time (DecayCorrection ADMIN)")  # fmt: skip
    reference, ref_label = _reference_datetime(ds, reference_time, source)
    injection, inj_label, reference = _injection_datetime(item, ds, reference, source)
    uptake = (reference - injection).total_seconds()
    if uptake < 0:
        raise ValueError(
            f"{tag_label(inj_label)} {injection.isoformat()} is after the acquisition ({ref_label}){_where(source)}: "
            f"injection {-uptake:.0f} s after the scan started. Expected the injection before the acquisition (a scan "
            "past midnight needs RadiopharmaceuticalStartDateTime (0018,1078) with its date)."
        )
    decayed = dose * 2.0 ** (-uptake / half_life)
    return SUVFactor(weight * 1000.0 / decayed, "BQML", weight, dose, decayed, half_life, uptake, "START", ref_label)


def pet_header_json(ds: Dataset) -> str:
    """The attributes of :data:`SUV_KEYWORDS` present in ``ds``, as DICOM JSON text (``Dataset.from_json``)."""
    subset = Dataset()
    for keyword in SUV_KEYWORDS:
        if keyword in ds:
            subset[keyword] = ds[keyword]
    return subset.to_json(suppress_invalid_tags=True)


def _json_tags() -> set[str]:
    return {f"{pydicom.datadict.tag_for_keyword(k):08X}" for k in SUV_KEYWORDS}


def _header_from_meta(meta: Mapping) -> tuple[Dataset, str]:
    """The DICOM header the factor of an image with ``meta`` is computed from, and where it comes from."""
    name = _scalar_or_text(meta.get("filename_or_obj"))
    if meta.get(HEADER_KEY):
        return Dataset.from_json(_scalar_or_text(meta[HEADER_KEY])), f"meta['{HEADER_KEY}'] of {name or 'the image'}"
    tags = {k: meta[k] for k in _json_tags() if k in meta}
    if "00541001" in tags:  # Units: PydicomReader(prune_metadata=False) kept the header as DICOM JSON
        return Dataset.from_json(tags), f"{name or 'the image'} (DICOM JSON metadata)"
    if name and os.path.exists(os.path.expanduser(str(name))):
        path = os.path.expanduser(str(name))
        try:
            return read_pet_header(path), str(path)
        except ValueError as e:
            raise ValueError(
                f"{e} The SUV factor needs the DICOM PET header; for a NIfTI input set units='SUV' (already SUV) or "
                "units='Bq/ml' with patient_weight_kg and injected_dose_bq."
            ) from None
    raise ValueError(
        f"no DICOM PET header for {name or 'the image'}: its metadata has neither '{HEADER_KEY}', nor DICOM tags, "
        "nor a 'filename_or_obj' naming a DICOM series folder or file. Load DICOM with "
        "LoadImaged(reader='PydicomReader'), or set units='SUV' (input already SUV) or units='Bq/ml' with "
        "patient_weight_kg and injected_dose_bq."
    )


def suv_factor_from_meta(meta: Mapping, reference_time: str = "series") -> tuple[SUVFactor, Dataset]:
    """The SUVbw factor of a MetaTensor from its ``meta`` (see the module docstring for where the header comes
    from), and the header used. Raises ``ValueError`` as :func:`suv_factor_from_dataset`, naming the source."""
    ds, source = _header_from_meta(meta)
    return suv_factor_from_dataset(ds, reference_time, source), ds


def suv_factor_explicit(
    patient_weight_kg: float | None, injected_dose_bq: float | None, decay_factor: float = 1.0
) -> SUVFactor:
    """The SUVbw factor of a Bq/ml image (e.g. NIfTI) from a weight and a dose given explicitly.

    factor = patient_weight_kg * 1000 / (injected_dose_bq * decay_factor).

    Decay correction is the caller's: ``decay_factor`` is the fraction of the injected activity left at the time
    the image is decay corrected to, ``2 ** (-uptake_s / half_life_s)`` for an image corrected to the scan start,
    1.0 (default) for one corrected to the injection time or when ``injected_dose_bq`` is already decayed to the
    image's reference time.
    """
    problems = []
    for name, value, form in (
        ("patient_weight_kg", patient_weight_kg, f"the weight in kg, 0 < weight <= {MAX_WEIGHT_KG:g}"),
        ("injected_dose_bq", injected_dose_bq, "the injected activity in Bq, > 0 (e.g. 3.5e8 for 350 MBq)"),
        ("decay_factor", decay_factor, "the fraction of the dose left at the image's reference time, 0 < f <= 1"),
    ):
        try:
            number = float(value)  # type: ignore[arg-type]
            ok = math.isfinite(number) and number > 0
        except (TypeError, ValueError):
            ok = False
        if name == "patient_weight_kg" and ok:
            ok = float(value) <= MAX_WEIGHT_KG  # type: ignore[arg-type]
        if name == "decay_factor" and ok:
            ok = float(value) <= 1.0  # type: ignore[arg-type]
        if not ok:
            problems.append(f"{name} is {value!r}; expected {form}")
    if problems:
        raise ValueError(f"units='Bq/ml' needs patient_weight_kg and injected_dose_bq: {'; '.join(problems)}.")
    weight, dose = float(patient_weight_kg), float(injected_dose_bq)  # type: ignore[arg-type]
    decayed = dose * float(decay_factor)
    return SUVFactor(weight * 1000.0 / decayed, "BQML", weight, dose, decayed,
                     decay_correction=f"given (decay_factor {float(decay_factor):g})", reference="given")  # fmt: skip


def _scalar_or_text(value):
    """A metadata value as one scalar: collation makes lists/tensors of length 1 of scalars and strings."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.reshape(-1)[0].item()
    if isinstance(value, np.ndarray) and value.size == 1:
        return value.reshape(-1)[0].item()
    return value
