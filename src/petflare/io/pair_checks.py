"""Checks on a baseline / follow-up pair: the mistakes a clinic makes when it picks two scans.

- Different patients (PatientID, PatientName or BirthDate differ): refused unless
  ``allow_patient_mismatch``; the comparison would be meaningless.
- The follow-up acquired before the baseline: refused, or the two swapped when asked
  (``swap_reversed_pair``); response criteria read a change in the wrong direction otherwise.
- A tracer other than FDG: warned and recorded (petflare's models and thresholds are FDG's).
- Uptake times (injection to scan start) that differ by more than PERCIST's 15 minutes: recorded
  in the report and warned (Wahl et al., J Nucl Med 2009: SUV rises with uptake time, so the
  follow-up should be scanned within 15 min of the baseline's uptake time).

Unknown values (an anonymised name, a NIfTI without metadata) are never a mismatch: the check
records that it could not be made.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from petflare.errors import PetflareInputError
from petflare.io.study import StudyMeta

#: PERCIST 1.0: the follow-up's uptake time within 15 min of the baseline's.
PERCIST_UPTAKE_TOLERANCE_S = 15 * 60

#: The tracer petflare is built for (StudyMeta.tracer's normalised name).
EXPECTED_TRACER = "FDG"

#: Key of ``StudyMeta.source`` holding the patient ID of the scan itself (its DICOM header, or
#: what the user gave), kept when a manifest's patient_id replaces ``StudyMeta.patient_id``.
HEADER_PATIENT_ID = "header_patient_id"

#: Metadata a user may give for a NIfTI scan (``baseline_meta={...}``), and the StudyMeta field
#: each fills.
USER_META_KEYS = {
    "patient_id": "patient_id",
    "patient_name": "patient_name",
    "birth_date": "birth_date",
    "acquisition": "acquisition_datetime",
    "tracer": "tracer",
    "uptake_min": "uptake_time_s",
    # for SUL (lean body mass, Janmahasatian), which PERCIST uses
    "sex": "sex",
    "height_m": "height_m",
    "weight_kg": "weight_kg",
}

#: Plausible ranges of the body measures given for SUL.
_BODY_RANGES = {"height_m": (0.5, 2.6), "weight_kg": (1.0, 400.0)}


def apply_user_meta(
    meta: StudyMeta, given: Mapping[str, object] | None, path: str | Path | None
) -> StudyMeta:
    """Fill ``meta`` with what the user gave, where the scan itself has nothing.

    Values the scan already carries (a DICOM header's) win; a NIfTI has none besides the
    default tracer "FDG", which a given ``tracer`` replaces.

    Raises:
        PetflareInputError: an unknown key, or a date / number that cannot be read.
    """
    if not given:
        return meta
    unknown = sorted(set(given) - set(USER_META_KEYS))
    if unknown:
        raise PetflareInputError(
            path,
            f"unknown metadata key(s) {', '.join(unknown)}; expected " + ", ".join(USER_META_KEYS),
        )
    changes: dict[str, object] = {}
    for key, value in given.items():
        if value is None or str(value).strip() == "":
            continue
        name = USER_META_KEYS[key]
        if key == "uptake_min":
            try:
                parsed: object = float(str(value)) * 60.0
            except ValueError:
                raise PetflareInputError(path, f"uptake_min={value} is not a number") from None
        elif key in ("acquisition", "birth_date"):
            try:
                parsed = dt.datetime.fromisoformat(str(value).strip()).isoformat()
            except ValueError:
                raise PetflareInputError(
                    path, f"{key}={value} is not an ISO date (YYYY-MM-DD[THH:MM[:SS]])"
                ) from None
            if key == "birth_date":
                parsed = str(parsed)[:10]
        elif key == "tracer":
            parsed = _normalised_tracer(str(value))
        elif key == "sex":
            parsed = str(value).strip().upper()[:1]
            if str(value).strip().upper() not in ("M", "F", "MALE", "FEMALE"):
                raise PetflareInputError(path, f"sex={value} must be M or F (for SUL)")
        elif key in _BODY_RANGES:
            low, high = _BODY_RANGES[key]
            try:
                parsed = float(str(value))
            except ValueError:
                raise PetflareInputError(path, f"{key}={value} is not a number") from None
            if not low <= float(parsed) <= high:  # type: ignore[arg-type]
                raise PetflareInputError(path, f"{key}={value} is outside {low:g}-{high:g}")
        else:
            parsed = str(value).strip()
        current = getattr(meta, name)
        if current in ("", None) or (name == "tracer" and meta.source.get("format") != "DICOM"):
            changes[name] = parsed
    given_id = str(given.get("patient_id") or "").strip()
    if given_id and HEADER_PATIENT_ID not in meta.source:  # compared by the pair checks
        changes["source"] = {**meta.source, HEADER_PATIENT_ID: given_id}
    return dataclasses.replace(meta, **changes)  # type: ignore[arg-type]


@dataclass
class PairCheckResult:
    """What the pair checks found; ``to_dict`` is report.json's ``pair_checks`` section.

    Attributes:
        same_patient: True/False when an identity field could be compared, None when none could.
        compared_fields: the identity fields known on both scans and compared.
        patient_mismatch_allowed: the scans differ and ``allow_patient_mismatch`` let them pass.
        order: ``"as given"``, ``"swapped"`` (follow-up was earlier; swapped on request) or
            ``"unknown"`` (no acquisition date on one of the scans).
        interval_days: follow-up minus baseline acquisition, in days (after any swap).
        tracers: the normalised tracer of each scan.
        uptake_time_min: injection to scan start of each scan, minutes (None: unknown).
        uptake_difference_min: follow-up minus baseline uptake time, minutes.
        uptake_within_percist: |difference| <= 15 min, or None when unknown.
        warnings: one line per finding a reader must see (also printed by the CLI).
    """

    same_patient: bool | None = None
    compared_fields: list[str] = field(default_factory=list)
    patient_mismatch_allowed: bool = False
    order: str = "unknown"
    interval_days: float | None = None
    tracers: dict[str, str] = field(default_factory=dict)
    uptake_time_min: dict[str, float | None] = field(default_factory=dict)
    uptake_difference_min: float | None = None
    uptake_within_percist: bool | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def swapped(self) -> bool:
        """True when the scans were given in the wrong order and swapped."""
        return self.order == "swapped"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "same_patient": self.same_patient,
            "compared_fields": list(self.compared_fields),
            "patient_mismatch_allowed": self.patient_mismatch_allowed,
            "order": self.order,
            "interval_days": None if self.interval_days is None else round(self.interval_days, 3),
            "tracers": dict(self.tracers),
            "uptake_time_min": {
                k: None if v is None else round(v, 2) for k, v in self.uptake_time_min.items()
            },
            "uptake_difference_min": None
            if self.uptake_difference_min is None
            else round(self.uptake_difference_min, 2),
            "uptake_tolerance_min": PERCIST_UPTAKE_TOLERANCE_S / 60,
            "uptake_within_percist": self.uptake_within_percist,
            "warnings": list(self.warnings),
        }


def check_pair(
    baseline: StudyMeta,
    followup: StudyMeta,
    *,
    followup_path: str | Path | None = None,
    allow_patient_mismatch: bool = False,
    swap_reversed_pair: bool = False,
) -> PairCheckResult:
    """Check that two studies can be compared as baseline and follow-up.

    Args:
        baseline: the baseline's metadata (DICOM headers or what the user gave).
        followup: the follow-up's metadata.
        followup_path: the follow-up file or folder, named in a refusal.
        allow_patient_mismatch: let scans of different patients through (recorded).
        swap_reversed_pair: when the follow-up is earlier than the baseline, report the swap
            (``result.swapped``; the caller exchanges the scans) instead of refusing.

    Raises:
        PetflareInputError: different patients without ``allow_patient_mismatch``; a follow-up
            acquired before its baseline without ``swap_reversed_pair``.
    """
    result = PairCheckResult()
    _check_identity(baseline, followup, followup_path, allow_patient_mismatch, result)
    _check_order(baseline, followup, followup_path, swap_reversed_pair, result)
    if result.swapped:
        baseline, followup = followup, baseline
    _check_tracers(baseline, followup, result)
    _check_uptake(baseline, followup, result)
    return result


def _normalised_tracer(name: str) -> str:
    """``FDG`` for any spelling of fluorodeoxyglucose (as the DICOM reader does), else as is."""
    upper = name.upper().replace("-", "").replace(" ", "")
    if "FDG" in upper or "FLUORODEOXYGLUCOSE" in upper:
        return EXPECTED_TRACER
    return name.strip() or "unknown"


def _identity(meta: StudyMeta) -> dict[str, str]:
    """Identity fields, normalised: names compare case-, space- and caret-insensitively."""
    patient_id = meta.source.get(HEADER_PATIENT_ID, "") if meta.source else ""
    name = re.sub(r"[\s^]+", " ", meta.patient_name).strip().upper()
    return {
        "PatientID": str(patient_id or meta.patient_id).strip(),
        "PatientName": name,
        "BirthDate": meta.birth_date.strip(),
    }


def _check_identity(
    baseline: StudyMeta,
    followup: StudyMeta,
    path: str | Path | None,
    allow: bool,
    result: PairCheckResult,
) -> None:
    base, follow = _identity(baseline), _identity(followup)
    result.compared_fields = [k for k in base if base[k] and follow[k]]
    differ = [k for k in result.compared_fields if base[k] != follow[k]]
    result.same_patient = None if not result.compared_fields else not differ
    if not differ:
        return
    detail = ", ".join(f"{k} {base[k]!r} vs {follow[k]!r}" for k in differ)
    if not allow:
        raise PetflareInputError(
            path,
            f"baseline and follow-up are from different patients ({detail}); pass "
            "allow_patient_mismatch=true only if they are the same person (e.g. re-registered)",
        )
    result.patient_mismatch_allowed = True
    result.warnings.append(
        f"baseline and follow-up identities differ ({detail}); compared because "
        "allow_patient_mismatch=true"
    )


def _when(meta: StudyMeta) -> dt.datetime | None:
    """Acquisition date-time, else the study date at midnight, else None."""
    for text in (meta.acquisition_datetime, meta.study_date):
        if text:
            try:
                return dt.datetime.fromisoformat(text.strip())
            except ValueError:
                continue
    return None


def _check_order(
    baseline: StudyMeta,
    followup: StudyMeta,
    path: str | Path | None,
    swap: bool,
    result: PairCheckResult,
) -> None:
    base_when, follow_when = _when(baseline), _when(followup)
    if base_when is None or follow_when is None:
        return
    if follow_when < base_when:
        if not swap:
            raise PetflareInputError(
                path,
                f"the follow-up was acquired ({follow_when.isoformat()}) before the baseline "
                f"({base_when.isoformat()}); exchange baseline_* and followup_*, or pass "
                "swap_reversed_pair=true to let petflare swap them",
            )
        result.order = "swapped"
        result.warnings.append(
            f"follow-up ({follow_when.isoformat()}) was earlier than baseline "
            f"({base_when.isoformat()}): swapped because swap_reversed_pair=true"
        )
        base_when, follow_when = follow_when, base_when
    else:
        result.order = "as given"
    result.interval_days = (follow_when - base_when).total_seconds() / 86400.0


def _check_tracers(baseline: StudyMeta, followup: StudyMeta, result: PairCheckResult) -> None:
    result.tracers = {"baseline": baseline.tracer, "followup": followup.tracer}
    for name, meta in (("baseline", baseline), ("followup", followup)):
        if meta.tracer != EXPECTED_TRACER:
            shown = meta.radiopharmaceutical or meta.tracer
            result.warnings.append(
                f"{name} tracer is {shown!r}, not {EXPECTED_TRACER}: petflare's models, SUV "
                "thresholds and response criteria are for FDG"
            )


def _check_uptake(baseline: StudyMeta, followup: StudyMeta, result: PairCheckResult) -> None:
    base_s, follow_s = baseline.uptake_time_s, followup.uptake_time_s
    result.uptake_time_min = {
        "baseline": None if base_s is None else base_s / 60.0,
        "followup": None if follow_s is None else follow_s / 60.0,
    }
    if base_s is None or follow_s is None:
        return
    difference_s = follow_s - base_s
    result.uptake_difference_min = difference_s / 60.0
    result.uptake_within_percist = abs(difference_s) <= PERCIST_UPTAKE_TOLERANCE_S
    if not result.uptake_within_percist:
        result.warnings.append(
            f"uptake times differ by {difference_s / 60:+.0f} min (baseline {base_s / 60:.0f}, "
            f"follow-up {follow_s / 60:.0f} min), more than PERCIST's 15 min: SUV changes "
            "partly reflect the uptake time"
        )
