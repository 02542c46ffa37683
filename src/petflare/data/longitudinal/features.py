"""Lesion units of a pair and their named change features (the head's inputs besides the images)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from petflare.constants import PATTERNS
from petflare.quant.change import NoduleCriteria, nodule_evidence, pct_change
from petflare.quant.rules import RuleThresholds, counts_as_new

#: Version of the cached per-pair feature layout; bump when features change.
FEATURE_VERSION = "9"
#: Version of the cached quantification (reports, predicted masks); independent of the features.
REPORT_VERSION = "3"  # 3: registration blocks per scan and axis (petflare.quant.registration)


class HeadKeys:
    """Batch keys of the change-pattern head's data."""

    LESION_POOLED = "lesion_pooled"
    LESION_FEATURES = "lesion_features"
    LESION_VALID = "lesion_valid"
    GLOBAL_POOLED = "global_pooled"
    PAIR_FEATURES = "pair_features"
    LABEL = "label"


#: Per-lesion-unit CT correlate (all 0 without a CT; see ``PairSampleDataset.ct_dropout``).
CT_FEATURE_NAMES = (
    "has_ct",
    "hu_followup",  # lesion HU / 100 on the follow-up CT (fat density: brown fat)
    "hu_change",  # persisting: Choi's HU change as a fraction (responding GIST: hypodense)
    "followup_shell_hu",  # unmatched: follow-up HU / 100 in a 3-12 mm shell around it
    "baseline_site_hu_contrast",  # unmatched: baseline HU site - shell, / 100
)

#: Per-lesion-unit quantitative change features (log1p of SUVs and volumes keeps scales tame).
LESION_FEATURE_NAMES = (
    "present_baseline",
    "present_followup",
    "log_volume_ml_baseline",
    "log_volume_ml_followup",
    "log_suv_max_baseline",
    "log_suv_max_followup",
    "log_suv_max_ratio",
    "log_suv_peak_ratio",
    "log_suv_mean_ratio",
    "log_volume_ratio",
    "focal_ratio_baseline",
    "focal_ratio_followup",
    "hotspot_change",
    "rest_change",
    "uptake_rose",
    "suv_peak_followup_over_liver",
    "suv_peak_baseline_over_liver",
    "nodule_evidence",  # quant's intratumoural-nodule criteria met (Choi PD / rule R2)
    "real_new_lesion",  # unmatched, above the rules' size/uptake floor, uptake new at its site
    "new_site_uptake_ratio",  # unmatched: baseline SUVmean at the site / the lesion's SUVmean
    "log_n_fragments",  # follow-up lesions sharing this unit's baseline lesion(s) (split mass)
    "fragment_volume_share",  # this follow-up lesion's share of those fragments' volume
    *CT_FEATURE_NAMES,
)
#: Position of every lesion feature in ``LesionUnit.features`` (read them by name).
LESION_FEATURE_INDEX = {name: i for i, name in enumerate(LESION_FEATURE_NAMES)}

#: Scaled PET (network input units) inside each unit's region, appended to the lesion features:
#: the baseline uptake at a "new" site tells a re-activated known site from a really new one.
#: The voxelwise ones compare both scans on the same (registered) voxels, so they see a focal
#: rise inside a mass whose follow-up mask missed it, or a rise spread through a whole lesion,
#: without depending on how the segmentation cut the follow-up (see :func:`region_change_stats`).
REGION_PET_FEATURE_NAMES = (
    "pet_mean_baseline_in_region",
    "pet_mean_followup_in_region",
    "pet_max_baseline_in_region",
    "pet_max_followup_in_region",
    "peak_contrast_baseline",  # peak (1 ml ball mean) - median, log1p(SUV) units
    "peak_contrast_followup",
    "rise_at_followup_peak",  # follow-up - baseline peak-filtered value at the follow-up peak
    "relative_rise_at_followup_peak",  # the same minus the region's median change
    "contrast_gain",  # peak contrast follow-up - baseline: a focus emerging from its host
    "max_local_rise",  # largest voxelwise rise of the peak-filtered images in the region
    "rise_fraction",  # share of the region whose uptake rose by more than RISE_LOG
    "fall_fraction",  # share of the region whose uptake fell by more than RISE_LOG
    "hot_fraction_followup",  # share of the region at >= 50% of the follow-up peak SUV
    "shell_contrast_baseline",  # region peak - median of a shell around the region, baseline
    "shell_contrast_followup",  # the same at follow-up: a focus vs a hot organ around it
    "shell_rise",  # median follow-up - baseline change in the shell: the neighbourhood lit up
    "log_hot_extent",  # log(volume hot with the focus / region volume): a lesion vs an organ
)

HOT_EXTENT = REGION_PET_FEATURE_NAMES.index("log_hot_extent")

#: Thickness (mm) of the shell around a unit region whose uptake is the unit's surroundings.
SHELL_MM = 12.0

#: Voxelwise change (log1p SUV) counted as a rise or a fall: about +-35% of SUV + 1.
RISE_LOG = 0.3

#: Every per-lesion input of the head, in order (quantitative, then region PET).
HEAD_LESION_FEATURE_NAMES = (*LESION_FEATURE_NAMES, *REGION_PET_FEATURE_NAMES)

#: Per-pair quantitative change features.
PAIR_FEATURE_NAMES = (
    "log_n_baseline",
    "log_n_followup",
    "log_n_new",
    "log_n_resolved",
    "fraction_baseline_rose",
    "log_new_volume_ml",
    "log_new_max_suv_peak",
    "total_tlg_change",
    "rise_spread_cm",
    "max_focal_ratio_followup",
    "max_hotspot_change",
    "median_suv_peak_change",
    "fraction_units_rose",
    "liver_ratio_followup_baseline",
    *(f"rules_say_{p}" for p in PATTERNS),  # the rule-based call, one-hot (stacking)
)


def _f(value: float | None, default: float = 0.0) -> float:
    return default if value is None or not math.isfinite(float(value)) else float(value)


def _pct(value: float | None, clip: float = 5.0) -> float:
    """Percent change as a clipped fraction (``+30 %`` -> ``0.3``)."""
    return float(np.clip(_f(value) / 100.0, -clip, clip))


# ----------------------------------------------------------------------------- lesion units


@dataclass
class LesionUnit:
    """One matched lesion across time points and its quantitative change.

    Attributes:
        kind: ``persisting``, ``new`` or ``resolved``.
        followup_ids: follow-up instance ids (empty for a resolved lesion).
        baseline_ids: baseline instance ids (empty for a new lesion).
        centre_mm: world (RAS mm) position used in explanations: the follow-up hotspot, else
            the follow-up centroid, else the baseline centroid.
        features: vector in ``LESION_FEATURE_NAMES`` order.
        info: readable values for explanations (SUVs, volumes, focal ratios).
    """

    kind: str
    followup_ids: list[int]
    baseline_ids: list[int]
    centre_mm: list[float]
    features: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def feature(self, name: str) -> float:
        """The value of the feature ``name`` (one of ``LESION_FEATURE_NAMES``)."""
        return float(self.features[LESION_FEATURE_INDEX[name]])

    def set_feature(self, name: str, value: float) -> None:
        """Set the feature ``name`` (one of ``LESION_FEATURE_NAMES``)."""
        self.features[LESION_FEATURE_INDEX[name]] = value

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (features omitted; they are stored as arrays)."""
        return {
            "kind": self.kind,
            "followup_ids": self.followup_ids,
            "baseline_ids": self.baseline_ids,
            "centre_mm": [float(c) for c in self.centre_mm],
            "info": self.info,
        }


def lesion_units(report: Any) -> list[LesionUnit]:
    """Lesion units of a :class:`petflare.quant.PairReport` (follow-up lesions, then resolved).

    ``features`` holds the ``LESION_FEATURE_NAMES`` values; :func:`sample_from_features`
    appends the ``REGION_PET_FEATURE_NAMES`` measured on the aligned images.
    """
    liver_b = _f(report.baseline.liver.suv_mean, 0.0) or None
    liver_f = _f(report.followup.liver.suv_mean, 0.0) or None
    changes = {c.followup_id: c for c in report.changes}
    units: list[LesionUnit] = []
    for match in report.matches:
        if match.timepoint == "followup":
            fol = report.followup.lesion(match.lesion_id)
            change = changes.get(match.lesion_id)
            base_ids = list(match.matched_ids)
            bases = [report.baseline.lesion(i) for i in base_ids]
            units.append(
                _unit(
                    "persisting" if bases else "new",
                    [match.lesion_id],
                    base_ids,
                    fol,
                    bases,
                    change,
                    liver_b,
                    liver_f,
                    None if bases else match,
                )
            )
        elif match.status == "resolved":
            base = report.baseline.lesion(match.lesion_id)
            units.append(
                _unit("resolved", [], [match.lesion_id], None, [base], None, liver_b, liver_f)
            )
    _mark_fragments(units)
    return units


def _mark_fragments(units: Sequence[LesionUnit]) -> None:
    """Fill the fragment features of persisting units that share baseline lesions.

    A mass that the follow-up segmentation cut into pieces gives several persisting units
    matched to the same baseline lesion; each piece alone can look like a focus left inside a
    responding mass. Pieces are grouped transitively through shared baseline ids; every piece
    gets log(number of pieces) and its share of the pieces' follow-up volume.
    """
    persisting = [u for u in units if u.kind == "persisting"]
    group = list(range(len(persisting)))

    def root(i: int) -> int:
        while group[i] != i:
            group[i] = group[group[i]]
            i = group[i]
        return i

    owner: dict[int, int] = {}
    for i, unit in enumerate(persisting):
        for b in unit.baseline_ids:
            if b in owner:
                group[root(i)] = root(owner[b])
            else:
                owner[b] = i
    members: dict[int, list[int]] = {}
    for i in range(len(persisting)):
        members.setdefault(root(i), []).append(i)
    for idx in members.values():
        volumes = [float(persisting[i].info["volume_ml_followup"]) for i in idx]
        total = sum(volumes)
        for i, vol in zip(idx, volumes, strict=True):
            persisting[i].set_feature("log_n_fragments", float(np.log(len(idx))))
            share = vol / total if total > 0 else 1.0 / len(idx)
            persisting[i].set_feature("fragment_volume_share", share)
            persisting[i].info["n_fragments"] = len(idx)


def _unit(
    kind: str,
    followup_ids: list[int],
    baseline_ids: list[int],
    fol: Any,
    bases: list[Any],
    change: Any,
    liver_b: float | None,
    liver_f: float | None,
    new_match: Any | None = None,
) -> LesionUnit:
    vol_b = sum(b.volume_ml for b in bases)
    vol_f = fol.volume_ml if fol is not None else 0.0
    max_b = max((b.suv_max for b in bases), default=0.0)
    max_f = fol.suv_max if fol is not None else 0.0
    peak_b = max((b.suv_peak for b in bases), default=0.0)
    peak_f = fol.suv_peak if fol is not None else 0.0
    mean_b = (sum(b.suv_mean * b.volume_ml for b in bases) / vol_b) if vol_b > 0 else 0.0
    mean_f = fol.suv_mean if fol is not None else 0.0
    focal_b = max((_f(b.focality.ratio, 1.0) for b in bases if b.focality), default=1.0)
    focal_f = _f(fol.focality.ratio, 1.0) if fol is not None and fol.focality else 1.0
    hot_change = _pct(change.hotspot_change_pct) if change is not None else 0.0
    rest_change = _pct(change.rest_change_pct) if change is not None else 0.0
    rose = float(bool(change.uptake_rose)) if change is not None else 0.0
    site_ratio = 0.0
    if new_match is not None and new_match.baseline_site_suv_mean is not None and mean_f > 0:
        site_ratio = float(np.clip(new_match.baseline_site_suv_mean / mean_f, 0.0, 3.0))
    is_new = new_match is not None and counts_as_new(new_match, fol, RuleThresholds())
    hu_f = None if fol is None else fol.hu_mean
    has_ct = hu_f is not None or any(b.hu_mean is not None for b in bases)

    def hu(value: float | None) -> float:
        return float(np.clip(_f(value) / 100.0, -10.0, 10.0))

    ct_features = [
        float(has_ct),
        hu(hu_f),
        # the raw HU percent change the shipped heads were trained on (the report's
        # hu_change_pct is null below a 20 HU baseline; this feature is clipped to +-500%)
        _pct(pct_change(change.hu_mean_baseline, change.hu_mean_followup))
        if change is not None
        else 0.0,
        hu(new_match.followup_shell_hu_mean) if new_match is not None else 0.0,
        hu(new_match.baseline_site_hu_contrast) if new_match is not None else 0.0,
    ]
    features = np.array(
        [
            float(bool(bases)),
            float(fol is not None),
            np.log1p(vol_b),
            np.log1p(vol_f),
            np.log1p(max_b),
            np.log1p(max_f),
            np.log1p(max_f) - np.log1p(max_b),
            np.log1p(peak_f) - np.log1p(peak_b),
            np.log1p(mean_f) - np.log1p(mean_b),
            np.log1p(vol_f) - np.log1p(vol_b),
            min(focal_b, 10.0),
            min(focal_f, 10.0),
            hot_change,
            rest_change,
            rose,
            peak_f / liver_f if liver_f else 0.0,
            peak_b / liver_b if liver_b else 0.0,
            float(change is not None and nodule_evidence(change, NoduleCriteria()) is not None),
            float(is_new),
            site_ratio,
            0.0,  # log_n_fragments, set by lesion_units
            1.0,  # fragment_volume_share, set by lesion_units
            *ct_features,
        ],
        dtype=np.float32,
    )
    if fol is not None and fol.focality is not None:
        centre = list(fol.focality.centre_mm)
    elif fol is not None:
        centre = list(fol.centroid_mm)
    else:
        centre = list(bases[0].centroid_mm)
    info = {
        "suv_max_baseline": float(max_b),
        "suv_max_followup": float(max_f),
        "suv_peak_baseline": float(peak_b),
        "suv_peak_followup": float(peak_f),
        "suv_mean_followup": float(mean_f),
        "volume_ml_baseline": float(vol_b),
        "volume_ml_followup": float(vol_f),
        "focal_ratio_followup": float(focal_f),
        "hotspot_suv_mean_followup": None if change is None else change.hotspot_suv_mean_followup,
        "rest_suv_mean_followup": None if change is None else change.rest_suv_mean_followup,
        "suv_peak_change_pct": None if change is None else change.suv_peak_change_pct,
        "uptake_rose": bool(rose),
    }
    if new_match is not None:
        info["baseline_site_uptake_ratio"] = (
            None if new_match.baseline_site_suv_mean is None or mean_f <= 0 else site_ratio
        )
        info["counts_as_new"] = is_new
    return LesionUnit(kind, followup_ids, baseline_ids, centre, features, info)


def pair_feature_vector(report: Any, units: Sequence[LesionUnit]) -> np.ndarray:
    """Whole-pair change features in ``PAIR_FEATURE_NAMES`` order."""
    from petflare.quant import classify_pattern_rules

    rules = report.pattern_rules or classify_pattern_rules(report)
    rule_label = rules.label
    d = report.disease
    persisting = [u for u in units if u.kind == "persisting"]
    peak_changes = [u.feature("log_suv_peak_ratio") for u in persisting]
    liver_b = _f(report.baseline.liver.suv_mean)
    liver_f = _f(report.followup.liver.suv_mean)
    return np.array(
        [
            np.log1p(d.n_baseline_lesions),
            np.log1p(d.n_followup_lesions),
            np.log1p(d.n_new),
            np.log1p(d.n_resolved),
            _f(d.fraction_baseline_rose),
            np.log1p(_f(d.new_volume_ml)),
            np.log1p(_f(d.new_max_suv_peak)),
            _pct(d.total_tlg_change_pct),
            _f(d.rise_spread_mm) / 10.0,
            max(
                (u.feature("focal_ratio_followup") for u in units if u.kind != "resolved"),
                default=1.0,
            ),
            max((u.feature("hotspot_change") for u in persisting), default=0.0),
            float(np.median(peak_changes)) if peak_changes else 0.0,
            float(np.mean([u.feature("uptake_rose") for u in persisting])) if persisting else 0.0,
            np.log(liver_f / liver_b) if liver_b > 0 and liver_f > 0 else 0.0,
            *(float(rule_label == p) for p in PATTERNS),
        ],
        dtype=np.float32,
    )


#: Columns of ``PairSample.lesion_features`` that come from the CT.
CT_FEATURE_COLUMNS = tuple(HEAD_LESION_FEATURE_NAMES.index(n) for n in CT_FEATURE_NAMES)
