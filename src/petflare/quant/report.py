"""Typed report objects for one scan and for a baseline/follow-up pair, with JSON and CSV output.

Every number carries its unit in its name (``_ml``, ``_mm``, ``_pct``, ``_hu``); world
coordinates are NIfTI RAS+ millimetres. The JSON layout is documented in ``docs/report.md``
and versioned by :data:`SCHEMA_VERSION`; :func:`pair_report_from_json` reads it back.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from petflare.io.atomic import atomic_write_text

#: Version of the JSON layout; bump the major part on any incompatible change.
SCHEMA_VERSION = "1.2"

T = TypeVar("T")


@dataclass
class FocalHotspot:
    """The hottest compact sub-region of a lesion (a ball of fixed radius intersected with it).

    ``ratio`` compares the hotspot with the rest of the same lesion: about 1 for uniform uptake,
    well above 1 when the uptake is concentrated in a nodule.
    """

    radius_mm: float
    centre_mm: list[float]
    hotspot_volume_ml: float
    hotspot_suv_mean: float
    rest_volume_ml: float
    rest_suv_mean: float | None
    ratio: float | None


@dataclass
class LesionMetrics:
    """Per-lesion quantities on one scan, in physical units."""

    lesion_id: int
    n_voxels: int
    volume_ml: float
    suv_max: float
    suv_peak: float
    suv_mean: float
    suv_sd: float
    tlg: float
    heterogeneity_cov: float
    centroid_mm: list[float]
    peak_centre_mm: list[float]
    extent_mm: list[float]
    longest_diameter_mm: float
    hu_mean: float | None = None
    sul_max: float | None = None
    sul_peak: float | None = None
    sul_mean: float | None = None
    focality: FocalHotspot | None = None
    #: organ the lesion lies in, from an anatomy-aware network's organ output
    #: (``petflare.constants.ORGANS`` or "other"); None when the network has none
    site: str | None = None


@dataclass
class LiverReference:
    """Liver background uptake (PERCIST reference) or the reason it could not be measured."""

    found: bool
    method: str
    reason: str
    radius_mm: float
    suv_mean: float | None = None
    suv_sd: float | None = None
    centre_mm: list[float] | None = None
    n_voxels: int = 0


@dataclass
class ScanReport:
    """Everything measured on one scan."""

    patient_id: str
    study_id: str
    shape: list[int]
    spacing_mm: list[float]
    orientation: str
    voxel_volume_ml: float
    connectivity: int
    has_ct: bool
    peak_sphere_volume_ml: float
    n_lesions: int
    total_mtv_ml: float
    total_tlg: float
    hottest_lesion_id: int | None
    hottest_suv_peak: float | None
    sul_factor: float | None
    sul_reason: str
    liver: LiverReference
    lesions: list[LesionMetrics] = field(default_factory=list)
    uptake_time_min: float | None = None
    #: predicted lesions removed by the physiology filter (brain, myocardium, kidney, bladder)
    dropped_physiological: dict[str, int] = field(default_factory=dict)
    #: in a pair: what was segmented at physiological sites and left out of the comparison,
    #: per site (components, volume_ml, suv_max, suv_mean; petflare.inference.physiology)
    physiological_uptake: dict[str, dict[str, float]] = field(default_factory=dict)
    schema_version: str = SCHEMA_VERSION

    def lesion(self, lesion_id: int) -> LesionMetrics:
        """Return the lesion with this id."""
        for les in self.lesions:
            if les.lesion_id == lesion_id:
                return les
        raise KeyError(lesion_id)

    @property
    def uses_sul(self) -> bool:
        """True when lean-body-mass (SUL) values are available."""
        return self.sul_factor is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly nested dict."""
        return _to_jsonable(dataclasses.asdict(self))

    def to_json(self, indent: int | None = 2) -> str:
        """Serialise to JSON text."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


@dataclass
class RegistrationResult:
    """Follow-up to baseline alignment: the transform and how well it worked.

    ``matrix_ras`` maps a point in baseline world coordinates (RAS mm) to the corresponding
    point in follow-up world coordinates; its inverse brings follow-up findings to baseline.
    """

    method: str
    modality: str
    matrix_ras: list[list[float]]
    rotation_deg: list[float]
    translation_mm: list[float]
    final_metric: float | None
    ncc_before: float | None
    ncc_after: float | None
    iterations: int
    stop_condition: str


@dataclass
class LesionMatch:
    """Status of one lesion across time points (``persisting`` / ``new`` / ``resolved``).

    For a ``new`` follow-up lesion the ``baseline_site_*`` fields describe the same site on the
    baseline (footprint mapped through the registration) against a 3-12 mm shell around it:
    SUV mean, SUV ratio site/shell and HU difference site - shell. A clear contrast means a
    structure (e.g. a non-avid responding mass) was already there: a reactivated site rather
    than disease at a previously uninvolved site. ``followup_shell_hu_mean`` is the follow-up
    CT in a 3-12 mm shell around the new lesion: a hypodense shell (water-like, 0-30 HU) means
    the focus lies inside a hypodense (responding) mass.
    """

    timepoint: str
    lesion_id: int
    status: str
    matched_ids: list[int]
    overlap_voxels: int
    distance_mm: float | None
    baseline_site_suv_mean: float | None = None
    baseline_site_suv_contrast: float | None = None
    baseline_site_hu_contrast: float | None = None
    followup_shell_hu_mean: float | None = None


@dataclass
class LesionChange:
    """Change of one persisting follow-up lesion against its matched baseline lesion(s).

    Baseline values aggregate all matched baseline lesions (max of SUVmax/SUVpeak, sums of
    volume and TLG, volume-weighted means), so a merge or split is handled consistently.
    Percent changes are ``100 * (followup - baseline) / baseline`` (None if baseline is 0).
    The *mass* is the follow-up lesion plus its matched baseline footprint; focality, the
    hotspot and the rest are measured over it (``rest_change_pct`` compares the follow-up rest
    with the baseline mean over the same mass).
    """

    followup_id: int
    baseline_ids: list[int]
    suv_max_baseline: float
    suv_max_followup: float
    suv_max_change_pct: float | None
    suv_peak_baseline: float
    suv_peak_followup: float
    suv_peak_change_pct: float | None
    suv_mean_baseline: float
    suv_mean_followup: float
    suv_mean_change_pct: float | None
    volume_ml_baseline: float
    volume_ml_followup: float
    volume_change_pct: float | None
    tlg_baseline: float
    tlg_followup: float
    tlg_change_pct: float | None
    longest_diameter_mm_baseline: float
    longest_diameter_mm_followup: float
    hu_mean_baseline: float | None
    hu_mean_followup: float | None
    hu_change_pct: float | None
    mass_volume_ml_followup: float
    lesion_fraction_of_mass: float | None
    focal_ratio_baseline: float | None
    focal_ratio_followup: float | None
    hotspot_centre_mm: list[float] | None
    hotspot_volume_ml: float | None
    hotspot_suv_mean_followup: float | None
    hotspot_suv_mean_baseline_same_site: float | None
    hotspot_change_pct: float | None
    rest_suv_mean_followup: float | None
    rest_change_pct: float | None
    uptake_rose: bool
    hu_difference_hu: float | None = None


@dataclass
class DiseaseChange:
    """Whole-disease change between the two scans."""

    n_baseline_lesions: int
    n_followup_lesions: int
    n_persisting_baseline: int
    n_resolved: int
    n_new: int
    new_volume_ml: float
    new_tlg: float
    new_max_suv_peak: float | None
    rise_threshold_pct: float
    n_baseline_rose: int
    fraction_baseline_rose: float | None
    rise_spread_mm: float
    total_mtv_ml_baseline: float
    total_mtv_ml_followup: float
    total_tlg_baseline: float
    total_tlg_followup: float
    total_tlg_change_pct: float | None


@dataclass
class PercistResult:
    """PERCIST 1.0 (Wahl et al. 2009) on the hottest lesion of each scan.

    Every value is in ``unit`` (``SUL`` when both scans have a lean-body-mass factor, else
    ``SUV``); ``category`` is ``NE`` (not assessable) with ``not_assessable_reason`` when the
    standard's preconditions fail. ``drivers`` names the lesions behind the category.
    """

    category: str
    unit: str
    baseline_peak: float | None
    followup_peak: float | None
    change_pct: float | None
    change_abs: float | None
    tlg_change_pct: float | None
    measurability_threshold: float | None
    measurable_baseline: bool | None
    new_lesions: int
    notes: list[str] = field(default_factory=list)
    normalisation: str = ""
    sul_factor_baseline: float | None = None
    sul_factor_followup: float | None = None
    liver_mean_baseline: float | None = None
    liver_sd_baseline: float | None = None
    liver_mean_followup: float | None = None
    uptake_time_min_baseline: float | None = None
    uptake_time_min_followup: float | None = None
    uptake_time_difference_min: float | None = None
    baseline_lesion_id: int | None = None
    followup_lesion_id: int | None = None
    new_lesion_ids: list[int] = field(default_factory=list)
    not_assessable_reason: str | None = None
    drivers: list[str] = field(default_factory=list)


@dataclass
class EortcResult:
    """EORTC 1999 PET response on the hottest lesion's SUVmax (body-weight SUV)."""

    category: str
    baseline_suv_max: float | None
    followup_suv_max: float | None
    change_pct: float | None
    longest_diameter_change_pct: float | None
    after_one_cycle: bool
    new_lesions: int
    notes: list[str] = field(default_factory=list)
    unit: str = "SUV"
    baseline_lesion_id: int | None = None
    followup_lesion_id: int | None = None
    longest_diameter_lesion_id: int | None = None
    uptake_time_difference_min: float | None = None
    new_lesion_ids: list[int] = field(default_factory=list)
    not_assessable_reason: str | None = None
    drivers: list[str] = field(default_factory=list)


@dataclass
class ChoiResult:
    """Choi criteria for GIST (CT size and density); ``applicable`` is False without CT.

    Size and density are measured on the same target lesions at both visits: up to
    ``CHOI_MAX_TARGETS`` measurable baseline lesions and the follow-up lesions matched to them.
    ``density_assessable`` is False (with ``density_reason``) when the CT gives no meaningful
    baseline attenuation; ``category_basis`` then says the category comes from size alone.
    """

    applicable: bool
    category: str | None
    size_baseline_mm: float | None
    size_followup_mm: float | None
    size_change_pct: float | None
    density_baseline_hu: float | None
    density_followup_hu: float | None
    density_change_pct: float | None
    new_lesions: int
    new_intratumoural_nodules: int
    notes: list[str] = field(default_factory=list)
    ct_contrast: str = "unknown"
    density_assessable: bool | None = None
    density_reason: str = ""
    category_basis: str = ""
    target_lesion_ids: list[int] = field(default_factory=list)
    followup_target_ids: list[int] = field(default_factory=list)
    density_lesion_ids: list[int] = field(default_factory=list)
    new_lesion_ids: list[int] = field(default_factory=list)
    nodule_lesion_ids: list[int] = field(default_factory=list)
    not_assessable_reason: str | None = None
    drivers: list[str] = field(default_factory=list)


@dataclass
class RuleDecision:
    """Output of the rule-based pattern classifier: the label, the rule that fired, evidence."""

    label: str
    rule: str
    evidence: list[str] = field(default_factory=list)


@dataclass
class NewFocalUptake:
    """One focus of new uptake outside the segmented follow-up lesions.

    Attributes:
        centre_mm: its position in the follow-up's world (RAS mm).
        suv_followup: follow-up SUV there (smoothed as searched).
        suv_baseline: baseline SUV at the registered site (highest within the tolerance).
        contrast: follow-up SUV / the follow-up's mean in the surrounding shell (None: the
            shell is empty).
        nearest_lesion_mm: distance to the nearest segmented follow-up lesion (None: none).
        nearest_lesion_id: that lesion's id.
        baseline_liver_ratio: the baseline site / the baseline's liver SUVmean (None without a
            liver): below 1 at a quiet site, well above 1 inside uptake already there.
    """

    centre_mm: list[float]
    suv_followup: float
    suv_baseline: float
    contrast: float | None
    nearest_lesion_mm: float | None = None
    nearest_lesion_id: int | None = None
    baseline_liver_ratio: float | None = None


@dataclass
class PairReport:
    """Baseline vs follow-up: registration, lesion matching, changes, criteria and pattern."""

    baseline: ScanReport
    followup: ScanReport
    registration: RegistrationResult
    matches: list[LesionMatch]
    changes: list[LesionChange]
    disease: DiseaseChange
    percist: PercistResult
    eortc: EortcResult
    choi: ChoiResult
    pattern_rules: RuleDecision | None = None
    new_focal_uptake: list[NewFocalUptake] = field(default_factory=list)
    schema_version: str = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly nested dict."""
        return _to_jsonable(dataclasses.asdict(self))

    def to_json(self, indent: int | None = 2) -> str:
        """Serialise to JSON text (NaN/inf become null)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def write_json(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the JSON report atomically; an existing file is refused unless ``overwrite``."""
        return atomic_write_text(path, self.to_json() + "\n", overwrite=overwrite)

    def write_lesion_csv(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the per-lesion CSV (see :func:`write_lesion_csv`)."""
        return write_lesion_csv(self, path, overwrite=overwrite)

    @classmethod
    def from_json(cls, text: str) -> PairReport:
        """Read a report written by :meth:`to_json`."""
        return pair_report_from_json(text)


# --------------------------------------------------------------------------- serialisation


def _to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays and non-finite floats into plain JSON values."""
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _to_jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj


def _decode(tp: Any, value: Any) -> Any:
    """Rebuild a value of (resolved) type ``tp`` from its JSON form."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _decode(args[0], value) if len(args) == 1 else value
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_decode(item_tp, v) for v in value]
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _from_dict(tp, value)
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def _from_dict(cls: type[T], data: dict[str, Any]) -> T:
    hints = typing.get_type_hints(cls)
    kwargs = {
        f.name: _decode(hints[f.name], data[f.name])
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.name in data
    }
    return cls(**kwargs)


def _check_version(data: dict[str, Any]) -> None:
    version = str(data.get("schema_version", ""))
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise ValueError(
            f"report schema_version {version!r} is not compatible with {SCHEMA_VERSION}"
        )


def pair_report_from_json(text: str) -> PairReport:
    """Parse a :class:`PairReport` from JSON, checking the major schema version."""
    data = json.loads(text)
    _check_version(data)
    return _from_dict(PairReport, data)


def registration_to_json(result: RegistrationResult) -> str:
    """A :class:`RegistrationResult` as JSON (floats written exactly, so it round-trips)."""
    return json.dumps(_to_jsonable(dataclasses.asdict(result)))


def registration_from_json(text: str) -> RegistrationResult:
    """Parse a :class:`RegistrationResult` written by :func:`registration_to_json`."""
    return _from_dict(RegistrationResult, json.loads(text))


def scan_report_from_json(text: str) -> ScanReport:
    """Parse a :class:`ScanReport` from JSON, checking the major schema version."""
    data = json.loads(text)
    _check_version(data)
    return _from_dict(ScanReport, data)


# --------------------------------------------------------------------------- CSV

#: Columns of the per-lesion CSV, in order (one row per lesion per time point).
LESION_CSV_COLUMNS = (
    "patient_id",
    "timepoint",
    "lesion_id",
    "status",
    "matched_ids",
    "volume_ml",
    "suv_max",
    "suv_peak",
    "suv_mean",
    "suv_sd",
    "tlg",
    "sul_peak",
    "sul_factor",
    "hu_mean",
    "heterogeneity_cov",
    "longest_diameter_mm",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "focal_ratio",
    "suv_peak_change_pct",
    "volume_change_pct",
    "tlg_change_pct",
    "hu_change_pct",
    "hu_difference_hu",
    "site",
)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else ""
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    return str(value)


def lesion_csv_text(report: PairReport | ScanReport) -> str:
    """The per-lesion CSV as text (rows for both time points of a pair report)."""
    if isinstance(report, PairReport):
        scans = [("baseline", report.baseline), ("followup", report.followup)]
        match_by = {(m.timepoint, m.lesion_id): m for m in report.matches}
        change_by = {c.followup_id: c for c in report.changes}
    else:
        scans = [(report.study_id or "scan", report)]
        match_by, change_by = {}, {}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LESION_CSV_COLUMNS)
    for timepoint, scan in scans:
        for les in scan.lesions:
            m = match_by.get((timepoint, les.lesion_id))
            c = change_by.get(les.lesion_id) if timepoint == "followup" else None
            row = {
                "patient_id": scan.patient_id,
                "timepoint": timepoint,
                "lesion_id": les.lesion_id,
                "status": m.status if m else "",
                "matched_ids": m.matched_ids if m else None,
                "volume_ml": les.volume_ml,
                "suv_max": les.suv_max,
                "suv_peak": les.suv_peak,
                "suv_mean": les.suv_mean,
                "suv_sd": les.suv_sd,
                "tlg": les.tlg,
                "sul_peak": les.sul_peak,
                "sul_factor": scan.sul_factor,
                "hu_mean": les.hu_mean,
                "heterogeneity_cov": les.heterogeneity_cov,
                "longest_diameter_mm": les.longest_diameter_mm,
                "centroid_x_mm": les.centroid_mm[0],
                "centroid_y_mm": les.centroid_mm[1],
                "centroid_z_mm": les.centroid_mm[2],
                "focal_ratio": les.focality.ratio if les.focality else None,
                "suv_peak_change_pct": c.suv_peak_change_pct if c else None,
                "volume_change_pct": c.volume_change_pct if c else None,
                "tlg_change_pct": c.tlg_change_pct if c else None,
                "hu_change_pct": c.hu_change_pct if c else None,
                "hu_difference_hu": c.hu_difference_hu if c else None,
                "site": les.site,
            }
            writer.writerow([_fmt(row[k]) for k in LESION_CSV_COLUMNS])
    return buf.getvalue()


def write_lesion_csv(
    report: PairReport | ScanReport, path: str | Path, overwrite: bool = False
) -> Path:
    """Write the per-lesion CSV atomically; an existing file is refused unless ``overwrite``."""
    return atomic_write_text(path, lesion_csv_text(report), overwrite=overwrite)
