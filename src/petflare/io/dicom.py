"""DICOM PET series to body-weight SUV, and RTSTRUCT contours to a mask on the PET grid.

The SUV conversion follows the QIBA vendor-neutral pseudo-code ("SUV vendor-neutral
calculation", QIBA FDG-PET/CT profile wiki): Units BQML, Corrected Image with ATTN and DECY,
Decay Correction START, the injected dose decay-corrected from the radiopharmaceutical start
time to the scan reference time (SeriesDate/SeriesTime unless they are after the earliest
AcquisitionDate/AcquisitionTime, as happens for post-processed series, in which case the
earliest acquisition time), and the patient weight in grams.

Geometry: DICOM patient coordinates are LPS, NIfTI world coordinates are RAS; the returned
array is indexed ``[column i, row j, slice k]`` with slices sorted along the slice normal, and
the affine maps every voxel centre to its RAS position in mm.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from petflare.constants import F18_HALF_LIFE_S
from petflare.errors import PetflareInputError
from petflare.io.study import Study, StudyMeta

#: LPS (DICOM patient) <-> RAS (NIfTI world): negate x and y. The matrix is its own inverse.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Slice positions may deviate from a uniform grid by this fraction of the slice spacing
#: (scanners write positions rounded to ~0.01 mm; bed-position joins jitter by ~1 %).
DEFAULT_SPACING_TOLERANCE = 0.05

#: Relative tolerance on RadionuclideHalfLife for F-18 (DOMAIN.md: 6586-6588 s).
_F18_HALF_LIFE_RTOL = 0.01

#: Below this total dose (Bq) the header most likely holds MBq, not the Bq DICOM requires.
_MIN_PLAUSIBLE_DOSE_BQ = 1e6

#: A decay time longer than this many half-lives means a wrong date or time in the header.
_MAX_DECAY_HALF_LIVES = 10.0

#: Plausible patient weight (kg); outside it the unit is probably wrong (grams, pounds).
_WEIGHT_RANGE_KG = (1.0, 400.0)

#: Elements larger than this (pixel data) are read from the file only when accessed.
_DEFER_SIZE = "4 KB"

_PET_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.128",  # PET Image Storage
    "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET Image Storage
    "1.2.840.10008.5.1.4.1.1.128.1",  # Legacy Converted Enhanced PET Image Storage
}
_RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"

#: SUV routes recorded in the provenance.
ROUTE_HEADER = "header (QIBA vendor-neutral: weight, dose, injection and scan-start times)"
ROUTE_PHILIPS = "Philips SUV Scale Factor (7053,1000)"

#: The header and Philips SUV routes may differ by this fraction before the provenance warns.
SUV_ROUTE_TOLERANCE = 0.02

#: Philips private group holding the PET scale factors, and the element offsets in its block.
_PHILIPS_CREATOR = "Philips PET Private Group"
_PHILIPS_GROUP = 0x7053
_PHILIPS_SUV_FACTOR = 0x00  # (7053,1000) SUV Scale Factor: stored x slope x factor = SUVbw
_PHILIPS_ACTIVITY_FACTOR = 0x09  # (7053,1009) Activity Concentration Scale Factor -> Bq/mL

#: GE private scan start, (0009,100D) "Scan DateTime" in the GEMS_PETD_01 block.
_GE_PET_CREATOR = "GEMS_PETD_01"
_GE_SCAN_DATETIME = 0x0D

#: Units whose values are activity concentrations (CNTS only with the Philips factor) or SUV.
_QUANTITATIVE_UNITS = ("BQML", "CNTS", "GML")

#: Series descriptions that mark a non-attenuation-corrected reconstruction.
_NAC_DESCRIPTION = re.compile(
    r"(\bNAC\b|NON[-_ ]?AC\b|NO[-_ ]?AC\b|UNCORR|NOT? ATTN|\bNOAC\b)", re.I
)


@dataclass(frozen=True)
class SuvConversion:
    """How body-weight SUV was obtained from the stored activity concentration.

    ``suv = activity_bq_per_ml * scale_factor`` (for Units GML the factor is 1; for Philips
    CNTS the activity is ``stored x RescaleSlope x (7053,1009)`` first).

    ``route`` names where ``scale_factor`` came from: the header (QIBA vendor-neutral: weight,
    dose, injection and scan-start times) or the Philips SUV Scale Factor (7053,1000). When both
    are available, ``header_scale_factor`` and ``vendor_scale_factor`` hold both and
    ``route_check`` says how far they agree.
    """

    scale_factor: float
    units: str
    decay_correction: str
    weight_kg: float
    injected_dose_bq: float | None = None
    half_life_s: float | None = None
    injection_time: dt.datetime | None = None
    reference_time: dt.datetime | None = None
    reference_time_source: str = ""
    decay_time_s: float = 0.0
    route: str = ROUTE_HEADER
    header_scale_factor: float | None = None
    vendor_scale_factor: float | None = None
    route_check: str = ""
    scan_start_note: str = ""

    @property
    def route_disagreement(self) -> float | None:
        """Header route / vendor route - 1, or None when only one route was available."""
        if self.header_scale_factor is None or self.vendor_scale_factor is None:
            return None
        return self.header_scale_factor / self.vendor_scale_factor - 1.0

    def describe(self) -> str:
        """One line for logs and CLI output."""
        if self.units == "GML":
            return "Units GML: values are already SUV (body weight); scale factor 1"
        if self.route == ROUTE_PHILIPS:
            text = (
                f"SUVbw = Bq/mL x {self.scale_factor:.6g} from the Philips SUV Scale Factor "
                "(7053,1000) / Activity Concentration Scale Factor (7053,1009)"
            )
            return f"{text}; {self.route_check}" if self.route_check else text
        text = (
            f"SUVbw = Bq/mL x {self.scale_factor:.6g} (weight {self.weight_kg:g} kg, dose "
            f"{self.injected_dose_bq:.6g} Bq decayed over {self.decay_time_s:.0f} s to "
            f"{self.reference_time_source}, half-life {self.half_life_s:g} s)"
        )
        return f"{text}; {self.route_check}" if self.route_check else text


@dataclass(frozen=True)
class PetSeriesInfo:
    """One PET series found in a folder (``headers``: its datasets, pixel data deferred)."""

    series_uid: str
    description: str
    n_files: int
    files: tuple[Path, ...]
    headers: tuple[Dataset, ...] = field(default=(), repr=False, compare=False)

    @property
    def units(self) -> str:
        """Units of the first image (BQML, CNTS, GML, PROPCNTS, ...), upper case."""
        return str(self.headers[0].get("Units", "") if self.headers else "").strip().upper()

    def quantitative_problem(self) -> str | None:
        """Why this series cannot be converted to SUV, or None when it can (by its header).

        Quantitative means attenuation-corrected activity: Units BQML, GML (already SUV) or
        Philips CNTS with its Activity Concentration Scale Factor. The series description is
        checked too, since some scanners keep ATTN in CorrectedImage of a NAC series.
        """
        if not self.headers:
            return "no images"
        ds = self.headers[0]
        units = self.units or "(missing)"
        if units not in _QUANTITATIVE_UNITS:
            return f"Units {units} are not an activity concentration (not quantitative)"
        if units == "CNTS" and _philips_factor(ds, _PHILIPS_ACTIVITY_FACTOR) is None:
            return "Units CNTS without the Philips Activity Concentration Scale Factor (7053,1009)"
        corrected = {str(v).strip().upper() for v in _as_list(ds.get("CorrectedImage", []))}
        if "ATTN" not in corrected:
            return "not attenuation-corrected (CorrectedImage lacks ATTN)"
        if _NAC_DESCRIPTION.search(self.description):
            return (
                f"series description '{self.description}' marks a non-attenuation-corrected series"
            )
        return None

    def label(self) -> str:
        """Short description for messages: description, units, UID and file count."""
        units = self.units or "?"
        return f"PT '{self.description}' Units {units} {self.series_uid} ({self.n_files} files)"


@dataclass(frozen=True)
class SeriesSelection:
    """The PET series chosen in a folder, and why (recorded in the conversion's provenance)."""

    series: PetSeriesInfo
    reason: str


# --------------------------------------------------------------------------------------------
# Reading the folder
# --------------------------------------------------------------------------------------------


def _read_header(path: Path) -> Dataset | None:
    """A DICOM file with its pixel data deferred (read on access), or None when not DICOM.

    Deferring instead of stopping before the pixels lets the reader parse every file once.
    """
    try:
        return pydicom.dcmread(path, defer_size=_DEFER_SIZE)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError):
        return None


def _is_pet(ds: Dataset) -> bool:
    return ds.get("Modality", "") == "PT" or str(ds.get("SOPClassUID", "")) in _PET_SOP_CLASSES


def _scan_folder(folder: Path) -> tuple[list[PetSeriesInfo], list[str]]:
    """PET series of ``folder`` (recursively) and one-line labels of every other series."""
    if not folder.is_dir():
        raise PetflareInputError(folder, "DICOM folder not found (expected a folder of .dcm files)")
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    others: dict[str, list[Any]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name.startswith(".") or path.name.upper() == "DICOMDIR":
            continue
        ds = _read_header(path)
        if ds is None:
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        if _is_pet(ds):
            groups.setdefault(uid, []).append((path, ds))
        elif "SOPClassUID" in ds or "Modality" in ds:
            entry = others.setdefault(
                uid, [str(ds.get("Modality", "?")), str(ds.get("SeriesDescription", "")), 0]
            )
            entry[2] += 1
    pet = [
        PetSeriesInfo(
            series_uid=uid,
            description=str(items[0][1].get("SeriesDescription", "")),
            n_files=len(items),
            files=tuple(p for p, _ in items),
            headers=tuple(ds for _, ds in items),
        )
        for uid, items in groups.items()
    ]
    labels = [f"{m} '{d}' {uid} ({n} files)" for uid, (m, d, n) in others.items()]
    return pet, labels


def list_pet_series(folder: str | Path) -> list[PetSeriesInfo]:
    """Find the PET series (Modality PT) in ``folder`` and its sub-folders.

    Files that are not DICOM, and DICOM objects of other modalities (CT, RTSTRUCT, ...), are
    ignored, so the folder of a whole study can be given.

    Raises:
        PetflareInputError: the folder does not exist.
    """
    return _scan_folder(Path(folder))[0]


def select_pet_series(folder: str | Path, series_uid: str | None = None) -> SeriesSelection:
    """The one attenuation-corrected PET series in activity units of a folder, and why.

    Among the folder's PET series (at any depth; CT, SEG, RTSTRUCT and other files are
    skipped), the candidates are the quantitative ones (:meth:`PetSeriesInfo.quantitative_problem`).
    Exactly one candidate is picked; none, or several that tie, is refused with the list of
    series found, so the user can name one with ``series_uid``.

    Raises:
        PetflareInputError: no PET, no quantitative PET, a tie, or an unknown ``series_uid``.
    """
    folder = Path(folder)
    series, others = _scan_folder(folder)
    found = "; ".join([s.label() for s in series] + others) or "(no DICOM files)"
    if not series:
        raise PetflareInputError(
            folder, f"no PET (Modality PT) DICOM images found in this folder; found: {found}"
        )
    if series_uid is not None:
        chosen = [s for s in series if s.series_uid == series_uid]
        if not chosen:
            raise PetflareInputError(
                folder, f"no PET series with SeriesInstanceUID {series_uid}; found: {found}"
            )
        return SeriesSelection(chosen[0], f"series_uid={series_uid} given")
    problems = {s.series_uid: s.quantitative_problem() for s in series}
    candidates = [s for s in series if problems[s.series_uid] is None]
    if not candidates:
        if len(series) == 1:
            raise PetflareInputError(
                folder,
                f"the only PET series, '{series[0].description}', cannot give SUV: "
                f"{problems[series[0].series_uid]}; export the attenuation-corrected series "
                f"in Bq/mL (found: {found})",
            )
        raise PetflareInputError(
            folder,
            "no quantitative PET series (attenuation-corrected, in BQML, CNTS with the "
            "Philips factors, or GML): "
            + "; ".join(f"{s.label()}: {problems[s.series_uid]}" for s in series),
        )
    if len(candidates) > 1:
        raise PetflareInputError(
            folder,
            f"{len(candidates)} PET series could be quantified and none is preferred; choose one "
            "with series_uid=<SeriesInstanceUID>: " + "; ".join(s.label() for s in candidates),
        )
    pick = candidates[0]
    reason = (
        f"picked '{pick.description}' ({pick.series_uid}, Units {pick.units}, "
        "attenuation-corrected): the only quantitative PET series"
    )
    skipped = [f"'{s.description}' ({problems[s.series_uid]})" for s in series if s is not pick]
    if skipped:
        reason += " of " + str(len(series)) + "; skipped " + "; ".join(skipped)
    return SeriesSelection(pick, reason)


def _select_series(folder: Path, series_uid: str | None) -> PetSeriesInfo:
    """The series :func:`select_pet_series` picks (without the reason)."""
    return select_pet_series(folder, series_uid).series


def _philips_factor(ds: Dataset, offset: int) -> float | None:
    """A Philips PET private scale factor of one image, or None when absent or not positive."""
    value: Any = None
    try:
        value = ds.private_block(_PHILIPS_GROUP, _PHILIPS_CREATOR)[offset].value
    except KeyError:
        # Some exports keep the element but not its creator: the usual block 0x10 then.
        tag = (_PHILIPS_GROUP << 16) | (0x1000 + offset)
        if tag in ds:
            value = ds[tag].value
    if isinstance(value, bytes):
        value = value.decode("ascii", "ignore").strip("\x00 ")
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _require(ds: Dataset, keyword: str, folder: Path, where: str = "") -> Any:
    """Value of a needed tag; a missing or empty tag raises an error naming folder and tag."""
    value = ds.get(keyword)
    if value is None or (isinstance(value, str) and not value.strip()) or value == "":
        place = f" in {where}" if where else ""
        raise PetflareInputError(
            folder,
            f"DICOM tag {keyword}{place} is missing or empty; it is needed for the SUV "
            "conversion / geometry",
        )
    return value


# --------------------------------------------------------------------------------------------
# Date and time parsing (DICOM DA / TM / DT value representations)
# --------------------------------------------------------------------------------------------


def _parse_da(value: str, folder: Path, keyword: str) -> dt.date:
    text = str(value).strip().replace("-", "").replace(".", "")
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError as exc:
        raise PetflareInputError(folder, f"DICOM {keyword} '{value}' is not a date") from exc


def _parse_tm(value: str, folder: Path, keyword: str) -> dt.time:
    """Parse TM ``HH[MM[SS[.FFFFFF]]]`` (and the retired ``HH:MM:SS`` form)."""
    text = str(value).strip().replace(":", "")
    main, _, frac = text.partition(".")
    try:
        if len(main) not in (2, 4, 6) or not main.isdigit():
            raise ValueError(value)
        hour = int(main[0:2])
        minute = int(main[2:4]) if len(main) >= 4 else 0
        second = int(main[4:6]) if len(main) >= 6 else 0
        micro = int((frac + "000000")[:6]) if frac else 0
        second = min(second, 59)  # TM allows a leap second 60
        return dt.time(hour, minute, second, micro)
    except ValueError as exc:
        raise PetflareInputError(folder, f"DICOM {keyword} '{value}' is not a time") from exc


def _parse_dt(value: str, folder: Path, keyword: str) -> dt.datetime:
    """Parse DT ``YYYYMMDDHHMMSS.FFFFFF&ZZXX``; a UTC offset is dropped (times are local)."""
    text = str(value).strip()
    for sign in ("+", "-"):
        if sign in text[8:]:
            text = text[: 8 + text[8:].index(sign)]
    if len(text) < 8:
        raise PetflareInputError(folder, f"DICOM {keyword} '{value}' is not a date-time")
    date = _parse_da(text[:8], folder, keyword)
    time = _parse_tm(text[8:], folder, keyword) if len(text) > 8 else dt.time(0, 0)
    return dt.datetime.combine(date, time)


# --------------------------------------------------------------------------------------------
# SUV (QIBA vendor-neutral)
# --------------------------------------------------------------------------------------------


def _is_f18(info: Dataset) -> bool:
    texts = [str(info.get("Radiopharmaceutical", ""))]
    for item in info.get("RadionuclideCodeSequence", []) or []:
        texts.append(str(item.get("CodeMeaning", "")))
    joined = " ".join(texts).upper().replace("^", "").replace(" ", "")
    return any(tag in joined for tag in ("18F", "F-18", "F18", "FLUORINE", "FDG"))


def suv_bw_conversion(headers: Sequence[Dataset], folder: str | Path) -> SuvConversion:
    """Body-weight SUV scale factor of one PET series, following QIBA's vendor-neutral method.

    Units BQML use the header route. Philips CNTS are first turned into Bq/mL with the Activity
    Concentration Scale Factor (7053,1009); the SUV then comes from the scanner's SUV Scale
    Factor (7053,1000) when present, and independently from the header; both are recorded, and
    a disagreement beyond :data:`SUV_ROUTE_TOLERANCE` is stated in ``route_check``.

    Args:
        headers: the headers of every slice of the series (any order).
        folder: the series folder, named in error messages.

    Raises:
        PetflareInputError: a needed tag is missing or holds an unsupported value.
    """
    folder = Path(folder)
    ds = headers[0]
    units = str(_require(ds, "Units", folder)).strip().upper()
    corrected = {str(v).strip().upper() for v in _as_list(_require(ds, "CorrectedImage", folder))}
    missing_corr = {"ATTN", "DECY"} - corrected
    if missing_corr:
        raise PetflareInputError(
            folder,
            f"CorrectedImage {sorted(corrected)} lacks {sorted(missing_corr)}: SUV needs an "
            "attenuation- and decay-corrected series",
        )
    weight_kg = float(_require(ds, "PatientWeight", folder))
    if not _WEIGHT_RANGE_KG[0] <= weight_kg <= _WEIGHT_RANGE_KG[1]:
        raise PetflareInputError(
            folder, f"PatientWeight {weight_kg:g} kg is implausible (DICOM stores kilograms)"
        )
    if units == "GML":
        # QIBA: GML is taken as body-weight SUV already (g/ml); no dose or time is needed.
        return SuvConversion(1.0, units, str(ds.get("DecayCorrection", "")), weight_kg)
    if units not in ("BQML", "CNTS"):
        raise PetflareInputError(
            folder,
            f"Units '{units}' are not supported (not quantitative); expected BQML (Bq/mL), "
            "Philips CNTS with its scale factors, or GML (SUVbw)",
        )
    if units == "BQML":
        return _header_route(headers, folder, units, weight_kg)

    # Philips CNTS: stored x slope x (7053,1009) = Bq/mL; stored x slope x (7053,1000) = SUVbw.
    activity = [_philips_factor(h, _PHILIPS_ACTIVITY_FACTOR) for h in headers]
    if any(f is None for f in activity):
        raise PetflareInputError(
            folder,
            "Units CNTS (Philips counts) need the private Activity Concentration Scale Factor "
            "(7053,1009) on every image; it is missing (anonymised away?): export in Bq/mL",
        )
    suv_factors = [_philips_factor(h, _PHILIPS_SUV_FACTOR) for h in headers]
    vendor: float | None = None
    if all(f is not None for f in suv_factors):
        ratios = np.array([sf / af for sf, af in zip(suv_factors, activity, strict=True)])  # type: ignore[operator]
        if np.ptp(ratios) > 1e-3 * float(np.median(ratios)):
            raise PetflareInputError(
                folder,
                "the Philips SUV and activity scale factors change from image to image "
                f"(SUV per Bq/mL {ratios.min():.6g} to {ratios.max():.6g})",
            )
        vendor = float(np.median(ratios))
    try:
        header = _header_route(headers, folder, units, weight_kg)
    except PetflareInputError as exc:
        if vendor is None:
            raise
        return SuvConversion(
            vendor,
            units,
            str(ds.get("DecayCorrection", "")),
            weight_kg,
            route=ROUTE_PHILIPS,
            vendor_scale_factor=vendor,
            route_check=f"header route not available ({exc.problem})",
        )
    if vendor is None:
        return header
    difference = header.scale_factor / vendor - 1.0
    agreement = "agrees with" if abs(difference) <= SUV_ROUTE_TOLERANCE else "DISAGREES with"
    check = (
        f"header route ({header.reference_time_source}) gives {header.scale_factor:.6g}, "
        f"{difference:+.2%}: {agreement} the Philips SUV Scale Factor "
        f"(tolerance {SUV_ROUTE_TOLERANCE:.0%})"
    )
    return dataclasses.replace(
        header,
        scale_factor=vendor,
        route=ROUTE_PHILIPS,
        header_scale_factor=header.scale_factor,
        vendor_scale_factor=vendor,
        route_check=check,
    )


def _header_route(
    headers: Sequence[Dataset], folder: Path, units: str, weight_kg: float
) -> SuvConversion:
    """SUVbw per Bq/mL from weight, dose, half-life, injection and scan-start times (QIBA)."""
    ds = headers[0]
    decay_correction = str(_require(ds, "DecayCorrection", folder)).strip().upper()
    if decay_correction not in ("START", "ADMIN"):
        raise PetflareInputError(
            folder,
            f"DecayCorrection '{decay_correction}' is not supported; SUV needs images decay-"
            "corrected to the scan start (START) or to the administration time (ADMIN)",
        )
    seq = _require(ds, "RadiopharmaceuticalInformationSequence", folder)
    if len(seq) == 0:
        raise PetflareInputError(
            folder, "DICOM tag RadiopharmaceuticalInformationSequence is empty"
        )
    info = seq[0]
    where = "RadiopharmaceuticalInformationSequence"
    dose_bq = float(_require(info, "RadionuclideTotalDose", folder, where))
    if dose_bq < _MIN_PLAUSIBLE_DOSE_BQ:
        raise PetflareInputError(
            folder,
            f"RadionuclideTotalDose {dose_bq:g} is implausibly small for Bq (MBq written?)",
        )
    half_life_s = float(_require(info, "RadionuclideHalfLife", folder, where))
    if half_life_s <= 0:
        raise PetflareInputError(folder, f"RadionuclideHalfLife {half_life_s:g} s is not positive")
    if _is_f18(info) and abs(half_life_s / F18_HALF_LIFE_S - 1) > _F18_HALF_LIFE_RTOL:
        raise PetflareInputError(
            folder,
            f"RadionuclideHalfLife {half_life_s:g} s does not match F-18 ({F18_HALF_LIFE_S:g} s)",
        )

    if decay_correction == "ADMIN":
        # Pixels are decay-corrected to the administration time: the dose needs no decay.
        scale = weight_kg * 1000.0 / dose_bq
        return SuvConversion(
            scale,
            units,
            decay_correction,
            weight_kg,
            dose_bq,
            half_life_s,
            reference_time_source="administration (DecayCorrection ADMIN)",
            header_scale_factor=scale,
        )

    reference, source, note = _scan_reference_time(headers, folder)
    injection = _injection_time(info, reference, folder)
    decay_time_s = (reference - injection).total_seconds()
    if decay_time_s < 0:
        raise PetflareInputError(
            folder,
            f"radiopharmaceutical start {injection.isoformat()} is after the scan reference "
            f"time {reference.isoformat()}",
        )
    if decay_time_s > _MAX_DECAY_HALF_LIVES * half_life_s:
        raise PetflareInputError(
            folder,
            f"radiopharmaceutical start {injection.isoformat()} is {decay_time_s / 3600:.1f} h "
            f"before the scan reference time {reference.isoformat()} ({source}): implausible, "
            "check RadiopharmaceuticalStartTime/DateTime and SeriesDate/SeriesTime",
        )
    decayed_dose_bq = dose_bq * 2.0 ** (-decay_time_s / half_life_s)
    scale = weight_kg * 1000.0 / decayed_dose_bq
    return SuvConversion(
        scale,
        units,
        decay_correction,
        weight_kg,
        dose_bq,
        half_life_s,
        injection,
        reference,
        source,
        decay_time_s,
        header_scale_factor=scale,
        scan_start_note=note,
    )


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]


def _ge_scan_start(ds: Dataset, folder: Path) -> dt.datetime | None:
    """GE's private scan start (0009,100D) "Scan DateTime" in the GEMS_PETD_01 block, if any."""
    try:
        value = ds.private_block(0x0009, _GE_PET_CREATOR)[_GE_SCAN_DATETIME].value
    except KeyError:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "ignore").strip("\x00 ")
    text = str(value or "").strip()
    if len(text) < 12:
        return None
    try:
        return _parse_dt(text, folder, "GE private Scan DateTime (0009,100D)")
    except PetflareInputError:
        return None


def _scan_reference_time(headers: Sequence[Dataset], folder: Path) -> tuple[dt.datetime, str, str]:
    """QIBA scan start: SeriesDate/Time unless after the earliest acquisition.

    When SeriesDate/Time is later than the earliest AcquisitionDate/Time of the series (a
    post-processed series, or a time rewritten by an anonymiser), the GE private scan start is
    used where present, else the earliest acquisition time.

    Returns:
        The reference time, the rule used (for the provenance) and a note naming a SeriesTime
        that was not used ("" when SeriesDate/Time was used).
    """
    first = headers[0]
    series_date = _parse_da(_require(first, "SeriesDate", folder), folder, "SeriesDate")
    series = dt.datetime.combine(
        series_date, _parse_tm(_require(first, "SeriesTime", folder), folder, "SeriesTime")
    )
    acquisitions = []
    for ds in headers:
        acq_time = _parse_tm(_require(ds, "AcquisitionTime", folder), folder, "AcquisitionTime")
        raw_date = ds.get("AcquisitionDate")
        acq_date = _parse_da(raw_date, folder, "AcquisitionDate") if raw_date else series_date
        acquisitions.append(dt.datetime.combine(acq_date, acq_time))
    earliest = min(acquisitions)
    if series <= earliest:
        return series, "SeriesDate/SeriesTime (QIBA: not after the earliest acquisition)", ""
    note = (
        f"SeriesDate/SeriesTime {series.isoformat()} is {(series - earliest).total_seconds():.0f}"
        f" s after the earliest AcquisitionDate/AcquisitionTime {earliest.isoformat()} "
        "(rewritten or post-processing time): not used as the scan start"
    )
    ge_start = _ge_scan_start(first, folder)
    if ge_start is not None and ge_start <= series:
        return ge_start, "GE private scan start (0009,100D) (QIBA: SeriesTime is later)", note
    return (
        earliest,
        "earliest AcquisitionDate/AcquisitionTime (QIBA: SeriesTime is later)",
        note,
    )


def _injection_time(info: Dataset, reference: dt.datetime, folder: Path) -> dt.datetime:
    """Radiopharmaceutical start as a date-time; without a date, the day before midnight rolls."""
    start_dt = info.get("RadiopharmaceuticalStartDateTime")
    if start_dt:
        return _parse_dt(start_dt, folder, "RadiopharmaceuticalStartDateTime")
    where = "RadiopharmaceuticalInformationSequence"
    start = _parse_tm(
        _require(info, "RadiopharmaceuticalStartTime", folder, where),
        folder,
        "RadiopharmaceuticalStartTime",
    )
    injection = dt.datetime.combine(reference.date(), start)
    if injection > reference:  # injected before midnight, scanned after it
        injection -= dt.timedelta(days=1)
    return injection


# --------------------------------------------------------------------------------------------
# Geometry and pixels
# --------------------------------------------------------------------------------------------


def _slice_geometry(
    headers: Sequence[Dataset], folder: Path, spacing_tolerance: float
) -> tuple[list[int], np.ndarray, tuple[int, int]]:
    """Sort slices along the normal and build the LPS affine of the (column, row, slice) array.

    Returns:
        The slice order (indices into ``headers``), the 4x4 LPS voxel-to-world affine, and
        (rows, columns).
    """
    first = headers[0]
    iop = np.array([float(v) for v in _require(first, "ImageOrientationPatient", folder)])
    spacing = [float(v) for v in _require(first, "PixelSpacing", folder)]
    shape = (int(_require(first, "Rows", folder)), int(_require(first, "Columns", folder)))
    for ds in headers:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise PetflareInputError(
                folder,
                "multi-frame (enhanced) PET objects are not supported; export single "
                "slices (PET Image Storage)",
            )
        other_iop = np.array([float(v) for v in _require(ds, "ImageOrientationPatient", folder)])
        if not np.allclose(other_iop, iop, atol=1e-4):
            raise PetflareInputError(folder, "slices have different ImageOrientationPatient")
        if [float(v) for v in _require(ds, "PixelSpacing", folder)] != spacing:
            raise PetflareInputError(folder, "slices have different PixelSpacing")
        if (int(ds.Rows), int(ds.Columns)) != shape:
            raise PetflareInputError(folder, "slices have different Rows/Columns")
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    positions = np.array(
        [[float(v) for v in _require(ds, "ImagePositionPatient", folder)] for ds in headers]
    )
    along = positions @ normal
    order = [int(i) for i in np.argsort(along, kind="stable")]
    positions = positions[order]
    n = len(order)
    if n > 1:
        gaps = np.diff(along[order])
        if np.min(gaps) < 1e-3:
            raise PetflareInputError(
                folder,
                "several images share one slice position (a dynamic or gated series?); "
                "give a folder with one static frame",
            )
        step = (positions[-1] - positions[0]) / (n - 1)
        step_mm = float(np.linalg.norm(step))
        ideal = positions[0] + np.arange(n)[:, None] * step
        deviation_mm = np.linalg.norm(positions - ideal, axis=1)
        bad_gap = np.abs(gaps - step_mm) > spacing_tolerance * step_mm
        if deviation_mm.max() > spacing_tolerance * step_mm or bad_gap.any():
            raise PetflareInputError(
                folder,
                f"slices are not uniformly spaced (gaps from {gaps.min():.3f} to "
                f"{gaps.max():.3f} mm, mean {step_mm:.3f} mm): missing slices or several bed "
                "positions of different spacing",
            )
    else:
        thickness = float(first.get("SliceThickness") or 1.0)
        step = normal * thickness
    affine = np.eye(4)
    affine[:3, 0] = row_cos * spacing[1]  # column index i moves along the row direction
    affine[:3, 1] = col_cos * spacing[0]  # row index j moves along the column direction
    affine[:3, 2] = step
    affine[:3, 3] = positions[0]
    return order, affine, shape


def read_dicom_pet(
    folder: str | Path,
    *,
    series_uid: str | None = None,
    spacing_tolerance: float = DEFAULT_SPACING_TOLERANCE,
) -> Study:
    """Read a DICOM PET series into a :class:`Study` in body-weight SUV with a RAS affine.

    Args:
        folder: folder (searched recursively) holding the PET series; other files are ignored.
        series_uid: SeriesInstanceUID to convert when the folder holds several PET series.
        spacing_tolerance: allowed deviation of slice positions from a uniform grid, as a
            fraction of the slice spacing.

    Returns:
        Study with ``pet`` float32 SUVbw indexed ``[column, row, slice]`` and ``meta.source``
        holding the folder, the series UID, the frame of reference and the SUV derivation.

    Raises:
        PetflareInputError: missing folder, no or several PET series, a missing needed tag,
            unsupported units or decay correction, non-uniform slice spacing.
    """
    folder = Path(folder)
    selection = select_pet_series(folder, series_uid)
    series = selection.series
    headers = list(series.headers)
    order, affine_lps, (rows, cols) = _slice_geometry(headers, folder, spacing_tolerance)
    suv = suv_bw_conversion(headers, folder)

    volume = np.empty((cols, rows, len(order)), dtype=np.float32)
    for k, index in enumerate(order):
        path, ds = series.files[index], headers[index]
        slope = float(_require(ds, "RescaleSlope", folder))
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        # Philips CNTS: the private Activity Concentration Scale Factor turns counts into Bq/mL.
        to_bq_ml = (
            (_philips_factor(ds, _PHILIPS_ACTIVITY_FACTOR) or 1.0) if suv.units == "CNTS" else 1.0
        )
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # pydicom raises several types for undecodable pixel data
            raise PetflareInputError(
                path,
                f"pixel data cannot be decoded ({exc}); install the matching pydicom "
                "pixel handler or export uncompressed",
            ) from exc
        activity = (pixels.astype(np.float64) * slope + intercept) * to_bq_ml
        # pixel_array is [row j, column i]; the volume is [column i, row j, slice k].
        volume[:, :, k] = (activity * suv.scale_factor).T.astype(np.float32)

    first = headers[order[0]]
    scan_start, uptake_time_s = _scan_timing(headers, suv, folder)
    sex = _patient_sex(first.get("PatientSex"))
    height_m = _optional_float(first.get("PatientSize"))
    source = {
        "pet": str(folder),
        "format": "DICOM",
        "series_instance_uid": series.series_uid,
        "series_description": series.description,
        "series_selection": selection.reason,
        "manufacturer": str(first.get("Manufacturer", "")),
        "units_in_file": suv.units,
        "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")),
        "suv_conversion": suv.describe(),
        "suv_route": suv.route,
        "suv_scale_factor": repr(suv.scale_factor),
        "suv_reference_time": suv.reference_time.isoformat() if suv.reference_time else "",
        "scan_start_rule": suv.reference_time_source,
    }
    if suv.scan_start_note:
        source["scan_start_note"] = suv.scan_start_note
    if suv.header_scale_factor is not None:
        source["suv_scale_factor_header"] = repr(suv.header_scale_factor)
    if suv.vendor_scale_factor is not None:
        source["suv_scale_factor_philips"] = repr(suv.vendor_scale_factor)
    if suv.route_check:
        source["suv_route_check"] = suv.route_check
    source.update(sul_provenance(sex, height_m, suv.weight_kg))
    meta = StudyMeta(
        patient_id=str(first.get("PatientID", "")),
        patient_name=str(first.get("PatientName", "") or "").strip(),
        birth_date=_iso_date(first.get("PatientBirthDate", "")),
        acquisition_datetime=scan_start.isoformat() if scan_start else "",
        radiopharmaceutical=_radiopharmaceutical(first),
        uptake_time_s=uptake_time_s,
        study_id=str(first.get("StudyID", "") or first.get("StudyInstanceUID", "")),
        study_date=_iso_date(first.get("StudyDate", "")),
        tracer=_tracer_name(first),
        units="SUVbw",
        sex=sex,
        height_m=height_m,
        weight_kg=suv.weight_kg,
        source=source,
    )
    return Study(pet=volume, affine=LPS_TO_RAS @ affine_lps, meta=meta)


def _scan_timing(
    headers: Sequence[Dataset], suv: SuvConversion, folder: Path
) -> tuple[dt.datetime | None, float | None]:
    """Scan start and uptake time (s since injection) for the pair checks; None when unknown.

    With DecayCorrection START they are the SUV conversion's own reference and decay times; for
    ADMIN or GML series (which need no times for SUV) they are read if the header has them.
    """
    if suv.reference_time is not None and suv.injection_time is not None:
        return suv.reference_time, suv.decay_time_s
    try:
        reference, _, _ = _scan_reference_time(headers, folder)
    except PetflareInputError:
        return None, None
    seq = headers[0].get("RadiopharmaceuticalInformationSequence") or []
    try:
        injection = _injection_time(seq[0], reference, folder) if len(seq) else None
    except PetflareInputError:
        injection = None
    uptake_s = None if injection is None else (reference - injection).total_seconds()
    return reference, uptake_s


def _radiopharmaceutical(ds: Dataset) -> str:
    seq = ds.get("RadiopharmaceuticalInformationSequence") or []
    return str(seq[0].get("Radiopharmaceutical", "") or "").strip() if len(seq) else ""


def sul_provenance(
    sex: str | None, height_m: float | None, weight_kg: float | None
) -> dict[str, str]:
    """Provenance entries of the SUL factor (LBM / weight, Janmahasatian), or why there is none.

    ``sul_factor`` is written only when sex, height and weight are all known and plausible.
    """
    from petflare.quant.metrics import sul_factor  # import at use: io does not need quant

    factor, how = sul_factor(sex, height_m, weight_kg)
    entries = {"sul": how}
    if factor is not None:
        entries["sul_factor"] = repr(factor)
    return entries


def _patient_sex(value: Any) -> str | None:
    """DICOM PatientSex as 'M' or 'F' (the sexes the LBM formula knows), else None."""
    text = str(value or "").strip().upper()[:1]
    return text if text in ("M", "F") else None


def _iso_date(value: Any) -> str:
    text = str(value or "").strip()
    if len(text) == 8 and text.isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return text


def _optional_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _tracer_name(ds: Dataset) -> str:
    seq = ds.get("RadiopharmaceuticalInformationSequence") or []
    name = str(seq[0].get("Radiopharmaceutical", "")) if len(seq) else ""
    upper = name.upper()
    if "FDG" in upper or "FLUORODEOXYGLUCOSE" in upper:
        return "FDG"
    return name.strip() or "unknown"


# --------------------------------------------------------------------------------------------
# RTSTRUCT
# --------------------------------------------------------------------------------------------


def rtstruct_roi_names(rtstruct_path: str | Path) -> list[str]:
    """Names of the ROIs in an RTSTRUCT file."""
    ds = _read_rtstruct(Path(rtstruct_path))
    return [str(r.ROIName) for r in ds.get("StructureSetROISequence", [])]


def _read_rtstruct(path: Path) -> Dataset:
    if not path.is_file():
        raise PetflareInputError(path, "RTSTRUCT file not found")
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise PetflareInputError(path, f"cannot be read as DICOM ({exc})") from exc
    if ds.get("Modality") != "RTSTRUCT" and str(ds.get("SOPClassUID", "")) != _RTSTRUCT_SOP_CLASS:
        raise PetflareInputError(path, f"is not an RTSTRUCT (Modality {ds.get('Modality')})")
    return ds


def read_rtstruct_mask(
    rtstruct_path: str | Path,
    study_or_reference: Study | tuple[Sequence[int], np.ndarray],
    roi_name: str,
) -> np.ndarray:
    """Rasterise one RTSTRUCT ROI onto a PET grid.

    Contour points (LPS mm) are mapped to continuous voxel indices with the inverse affine;
    each planar contour is filled on its slice (voxel centres inside the polygon), and the
    contours of one slice are combined by XOR, the even-odd rule that turns inner contours into
    holes.

    Args:
        rtstruct_path: the RTSTRUCT file.
        study_or_reference: the :class:`Study` the mask belongs to, or ``(shape, ras_affine)``.
        roi_name: the ROI's name (exact, else case-insensitive).

    Returns:
        uint8 mask (0/1) of the grid's shape.

    Raises:
        PetflareInputError: unreadable file, unknown ROI (the message lists the available
            names), another frame of reference, or contours not in the grid's slice planes.
    """
    from matplotlib.path import Path as PolygonPath

    path = Path(rtstruct_path)
    ds = _read_rtstruct(path)
    if isinstance(study_or_reference, Study):
        shape = study_or_reference.shape
        affine_ras = study_or_reference.affine
        frame_uid = study_or_reference.meta.source.get("frame_of_reference_uid", "")
    else:
        shape = tuple(int(s) for s in study_or_reference[0])  # type: ignore[assignment]
        affine_ras = np.asarray(study_or_reference[1], dtype=np.float64)
        frame_uid = ""

    rois = {int(r.ROINumber): r for r in ds.get("StructureSetROISequence", [])}
    names = [str(r.ROIName) for r in rois.values()]
    matches = [n for n, r in rois.items() if str(r.ROIName) == roi_name] or [
        n for n, r in rois.items() if str(r.ROIName).lower() == roi_name.lower()
    ]
    if len(matches) != 1:
        raise PetflareInputError(
            path, f"ROI '{roi_name}' not found; available ROIs: {', '.join(names) or '(none)'}"
        )
    roi_number = matches[0]
    roi_frame = str(rois[roi_number].get("ReferencedFrameOfReferenceUID", ""))
    if frame_uid and roi_frame and roi_frame != frame_uid:
        raise PetflareInputError(
            path,
            f"ROI '{roi_name}' is in frame of reference {roi_frame}, the PET series in {frame_uid}",
        )
    contours = []
    for item in ds.get("ROIContourSequence", []):
        if int(item.get("ReferencedROINumber", -1)) == roi_number:
            contours = [
                c
                for c in item.get("ContourSequence", []) or []
                if str(c.get("ContourGeometricType", "CLOSED_PLANAR")) == "CLOSED_PLANAR"
            ]
    if not contours:
        raise PetflareInputError(path, f"ROI '{roi_name}' has no closed planar contours")

    world_to_voxel = np.linalg.inv(LPS_TO_RAS @ affine_ras)  # LPS mm -> voxel (i, j, k)
    mask = np.zeros(shape, dtype=bool)
    for contour in contours:
        points_lps = np.asarray([float(v) for v in contour.ContourData]).reshape(-1, 3)
        ijk = points_lps @ world_to_voxel[:3, :3].T + world_to_voxel[:3, 3]
        k_values = ijk[:, 2]
        k = int(np.round(k_values.mean()))
        if np.ptp(k_values) > 0.1 or abs(k_values.mean() - k) > 0.25:
            raise PetflareInputError(
                path,
                f"a contour of ROI '{roi_name}' does not lie in a slice plane of the PET grid "
                f"(slice index {k_values.min():.2f}-{k_values.max():.2f})",
            )
        if not 0 <= k < shape[2]:
            continue  # outside the PET field of view along the slice axis
        polygon = PolygonPath(ijk[:, :2])
        i0, j0 = np.floor(ijk[:, :2].min(axis=0)).astype(int)
        i1, j1 = np.ceil(ijk[:, :2].max(axis=0)).astype(int)
        i0, j0 = max(i0, 0), max(j0, 0)
        i1, j1 = min(i1, shape[0] - 1), min(j1, shape[1] - 1)
        if i1 < i0 or j1 < j0:
            continue
        ii, jj = np.meshgrid(np.arange(i0, i1 + 1), np.arange(j0, j1 + 1), indexing="ij")
        inside = polygon.contains_points(np.column_stack([ii.ravel(), jj.ravel()]))
        mask[i0 : i1 + 1, j0 : j1 + 1, k] ^= inside.reshape(ii.shape)
    return mask.astype(np.uint8)
