"""Response criteria: PERCIST 1.0, EORTC 1999 and Choi (GIST, CT).

- PERCIST 1.0 (Wahl et al., J Nucl Med 2009;50:122S-150S): hottest lesion's SULpeak on each
  scan (need not be the same lesion); measurable if > 1.5 x liver SULmean + 2 SD (baseline
  liver). CMR: uptake gone to background (no lesion left, or hottest <= liver mean);
  PMR: decrease >= 30% and >= 0.8 units; PMD: increase > 30% and > 0.8 units, or total TLG
  up > 75%, or new lesions; SMD otherwise. SUL (lean body mass) when both scans have sex,
  height and weight, else body-weight SUV (said so). Not assessable (NE): no lesion at baseline,
  no liver reference, the baseline hottest lesion not measurable, or uptake times (when both
  are known) more than 15 min apart.
- EORTC 1999 (Young et al., Eur J Cancer 1999;35:1773-82): hottest lesion SUVmax;
  PMR decrease >= 15% after one cycle, > 25% later; PMD increase > 25%, longest dimension
  up > 20%, or new lesions; CMR when no uptake is left; SMD otherwise. NE without a baseline
  lesion or with uptake times more than 15 min apart (EORTC asks for the same uptake period
  without a number; PERCIST's tolerance is used).
- Choi (J Clin Oncol 2007;25:1753-9): sum of longest diameters and mean density (HU) of the
  same target lesions at both visits (up to 10 measurable baseline lesions, RECIST 1.0).
  PR: size down >= 10% or density down >= 15%, no new lesions or new intratumoural nodules;
  PD: size up >= 10% without PR by density, new lesions, or new intratumoural nodules;
  CR: all lesions gone; SD otherwise. Needs CT on both scans; density only where the baseline
  is a meaningful attenuation (not declared non-contrast, mean >= 20 HU), else size only.

New lesions make PERCIST and EORTC PMD and Choi PD whatever else is (not) assessable: a new
lesion is a qualitative finding that needs no quantitative comparison of the two scans.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from petflare.constants import PATTERNS
from petflare.quant.change import MIN_BASELINE_HU_FOR_PCT, pct_change
from petflare.quant.matching import NEW
from petflare.quant.report import (
    ChoiResult,
    EortcResult,
    LesionChange,
    LesionMetrics,
    PairReport,
    PercistResult,
    ScanReport,
)

#: Tolerance for the ">=" boundaries (percent and SUL units), against float round-off.
_EPS = 1e-9

#: PERCIST 1.0: the follow-up's uptake time within 15 min of the baseline's.
UPTAKE_TOLERANCE_MIN = 15.0

#: PERCIST 1.0: the liver reference should be reproducible within 20% between the scans.
LIVER_REPRODUCIBILITY_PCT = 20.0

#: Choi used RECIST 1.0 target lesions: up to 10 (5 per organ), measurable >= 10 mm on spiral CT.
#: Lesions carry no organ here, so the per-organ limit is not applied.
CHOI_MAX_TARGETS = 10
CHOI_MIN_TARGET_MM = 10.0

#: What the user can say about the CT (``ct_contrast``): ``portal_venous`` (contrast-enhanced
#: portal-venous CT, Choi's), ``none`` (non-contrast, e.g. the low-dose CT of a PET/CT: no Choi
#: density) or ``unknown`` (density used only when the baseline mean is >= 20 HU).
CT_CONTRAST_CHOICES = ("unknown", "none", "portal_venous")

_PROGRESSION = ("PMD", "PD")

CONTROLLED, DIFFUSE_FLARE, NODULE_WITHIN_MASS, NEW_LESIONS = PATTERNS


def _ids(ids: Iterable[int]) -> str:
    return ", ".join(str(i) for i in ids)


def _uptake_difference(baseline: ScanReport, followup: ScanReport) -> float | None:
    b, f = baseline.uptake_time_min, followup.uptake_time_min
    return None if b is None or f is None else f - b


def _uptake_reason(diff: float | None) -> str | None:
    if diff is None or abs(diff) <= UPTAKE_TOLERANCE_MIN + _EPS:
        return None
    return (
        f"uptake times differ by {abs(diff):.0f} min (> {UPTAKE_TOLERANCE_MIN:.0f} min "
        "tolerance): SUVs of the two scans are not comparable"
    )


def _peak(les: LesionMetrics, use_sul: bool) -> float | None:
    return les.sul_peak if use_sul else les.suv_peak


def _hottest(scan: ScanReport, use_sul: bool) -> LesionMetrics | None:
    candidates = [les for les in scan.lesions if _peak(les, use_sul) is not None]
    return max(candidates, key=lambda les: _peak(les, use_sul) or 0.0, default=None)


def percist(
    baseline: ScanReport,
    followup: ScanReport,
    n_new_lesions: int,
    *,
    new_lesion_ids: Sequence[int] = (),
) -> PercistResult:
    """PERCIST 1.0 category from two scan reports and the new follow-up lesions.

    Args:
        baseline, followup: the scan reports (lesions, liver reference, SUL factor, uptake time).
        n_new_lesions: follow-up lesions matched to no baseline lesion.
        new_lesion_ids: their ids (named in ``drivers``).
    """
    notes: list[str] = []
    use_sul = baseline.uses_sul and followup.uses_sul
    unit = "SUL" if use_sul else "SUV"
    f_b = baseline.sul_factor if use_sul else 1.0
    f_f = followup.sul_factor if use_sul else 1.0
    assert f_b is not None and f_f is not None
    if use_sul:
        normalisation = (
            f"SUL: SUVbw x lean body mass / weight (Janmahasatian), factor "
            f"{f_b:.3f} baseline, {f_f:.3f} follow-up"
        )
    else:
        missing = [
            name
            for name, scan in (("baseline", baseline), ("follow-up", followup))
            if not scan.uses_sul
        ]
        normalisation = f"SUVbw (SUL unavailable on {' and '.join(missing)})"
        notes.append(
            "SUL unavailable (sex/height/weight unknown on the "
            f"{' and '.join(missing)}): SUVbw used, 0.8 cut-off applied to SUV"
        )
    b_les, f_les = _hottest(baseline, use_sul), _hottest(followup, use_sul)
    b_peak = None if b_les is None else _peak(b_les, use_sul)
    f_peak = None if f_les is None else _peak(f_les, use_sul)
    tlg_pct = pct_change(baseline.total_tlg, followup.total_tlg)

    liver_b, liver_f = baseline.liver, followup.liver
    threshold = liver_mean = liver_sd = None
    measurable: bool | None = None
    if liver_b.found and liver_b.suv_mean is not None and liver_b.suv_sd is not None:
        liver_mean, liver_sd = liver_b.suv_mean * f_b, liver_b.suv_sd * f_b
        threshold = 1.5 * liver_mean + 2.0 * liver_sd
        measurable = b_peak is not None and b_peak > threshold
    liver_mean_f = (
        liver_f.suv_mean * f_f if liver_f.found and liver_f.suv_mean is not None else None
    )
    if liver_mean is not None and liver_mean_f is not None and liver_mean > 0:
        drift = pct_change(liver_mean, liver_mean_f)
        if drift is not None and abs(drift) > LIVER_REPRODUCIBILITY_PCT:
            notes.append(
                f"liver {unit}mean {liver_mean:.2f} -> {liver_mean_f:.2f} ({drift:+.0f}%): "
                f"beyond PERCIST's {LIVER_REPRODUCIBILITY_PCT:.0f}% reproducibility"
            )
    diff = _uptake_difference(baseline, followup)

    change_pct = pct_change(b_peak, f_peak if f_peak is not None else 0.0)
    change_abs = None if b_peak is None else (f_peak or 0.0) - b_peak
    drivers: list[str] = []

    def result(category: str, reason: str | None = None) -> PercistResult:
        if reason:
            notes.append(f"not assessable: {reason}")
        return PercistResult(
            category=category,
            unit=unit,
            baseline_peak=b_peak,
            followup_peak=f_peak,
            change_pct=change_pct,
            change_abs=change_abs,
            tlg_change_pct=tlg_pct,
            measurability_threshold=threshold,
            measurable_baseline=measurable,
            new_lesions=n_new_lesions,
            notes=notes,
            normalisation=normalisation,
            sul_factor_baseline=baseline.sul_factor,
            sul_factor_followup=followup.sul_factor,
            liver_mean_baseline=liver_mean,
            liver_sd_baseline=liver_sd,
            liver_mean_followup=liver_mean_f,
            uptake_time_min_baseline=baseline.uptake_time_min,
            uptake_time_min_followup=followup.uptake_time_min,
            uptake_time_difference_min=diff,
            baseline_lesion_id=None if b_les is None else b_les.lesion_id,
            followup_lesion_id=None if f_les is None else f_les.lesion_id,
            new_lesion_ids=list(new_lesion_ids),
            not_assessable_reason=reason,
            drivers=drivers,
        )

    peaks = (
        f"hottest baseline lesion {b_les.lesion_id if b_les else '-'} ({unit}peak "
        f"{_fmt(b_peak)}) vs hottest follow-up lesion {f_les.lesion_id if f_les else '-'} "
        f"({unit}peak {_fmt(f_peak)})"
    )
    if n_new_lesions > 0:
        notes.append(f"{n_new_lesions} new lesion(s)")
        drivers.append(_new_lesions_text(followup, new_lesion_ids, n_new_lesions, use_sul))
        uptake = _uptake_reason(diff)
        if uptake:
            notes.append(f"quantitative comparison not assessable: {uptake}")
        return result("PMD")
    if b_peak is None:
        return result("NE", "no lesion at baseline")
    if not liver_b.found or threshold is None:
        return result(
            "NE",
            f"baseline liver reference not found ({liver_b.reason}): the measurability "
            f"threshold 1.5 x liver mean + 2 SD cannot be applied",
        )
    if measurable is False:
        return result(
            "NE",
            f"no measurable lesion at baseline: hottest {unit}peak {b_peak:.2f} (lesion "
            f"{b_les.lesion_id if b_les else '-'}) <= 1.5 x {liver_mean:.2f} + 2 x "
            f"{liver_sd:.2f} = {threshold:.2f}",
        )
    reason = _uptake_reason(diff)
    if reason:
        return result("NE", reason)
    cmr_level = liver_mean_f if liver_mean_f is not None else liver_mean
    if f_peak is None:
        drivers.append(f"no lesion left at follow-up (baseline hottest lesion {peaks})")
        return result("CMR")
    if cmr_level is not None and f_peak <= cmr_level:
        drivers.append(f"{peaks}: follow-up hottest <= liver {unit}mean {cmr_level:.2f}")
        return result("CMR")
    assert change_pct is not None and change_abs is not None
    change_txt = f"{peaks}: {change_pct:+.0f}%, {change_abs:+.2f} {unit}"
    if change_pct <= -30.0 + _EPS and change_abs <= -0.8 + _EPS:
        drivers.append(change_txt)
        return result("PMR")
    if change_pct > 30.0 + _EPS and change_abs > 0.8 + _EPS:
        drivers.append(change_txt)
        return result("PMD")
    if tlg_pct is not None and tlg_pct > 75.0 + _EPS:
        notes.append(f"total TLG up {tlg_pct:.0f}%")
        drivers.append(
            f"total TLG {baseline.total_tlg:.1f} -> {followup.total_tlg:.1f} ({tlg_pct:+.0f}%)"
        )
        return result("PMD")
    drivers.append(change_txt)
    return result("SMD")


def _fmt(value: float | None, fmt: str = ".2f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _new_lesions_text(
    followup: ScanReport, ids: Sequence[int], n_new: int, use_sul: bool, key: str = "peak"
) -> str:
    if not ids:
        return f"{n_new} new follow-up lesion(s)"
    unit = "SUL" if use_sul else "SUV"
    parts = []
    for i in ids:
        try:
            les = followup.lesion(i)
        except KeyError:
            parts.append(str(i))
            continue
        if key == "max":
            parts.append(f"{i} (SUVmax {les.suv_max:.2f}, {les.volume_ml:.1f} ml)")
        else:
            parts.append(f"{i} ({unit}peak {_fmt(_peak(les, use_sul))}, {les.volume_ml:.1f} ml)")
    return "new follow-up lesion(s) " + ", ".join(parts)


def eortc(
    baseline: ScanReport,
    followup: ScanReport,
    changes: list[LesionChange],
    n_new_lesions: int,
    after_one_cycle: bool = False,
    *,
    new_lesion_ids: Sequence[int] = (),
) -> EortcResult:
    """EORTC 1999 category on the hottest lesion's SUVmax and the per-lesion extent change."""
    notes: list[str] = []
    b_les = max(baseline.lesions, key=lambda les: les.suv_max, default=None)
    f_les = max(followup.lesions, key=lambda les: les.suv_max, default=None)
    b_max = None if b_les is None else b_les.suv_max
    f_max = None if f_les is None else f_les.suv_max
    change = pct_change(b_max, f_max if f_max is not None else 0.0)
    ld_by_lesion = [
        (v, c.followup_id)
        for c in changes
        if (v := pct_change(c.longest_diameter_mm_baseline, c.longest_diameter_mm_followup))
        is not None
    ]
    ld, ld_id = max(ld_by_lesion, default=(None, None))
    diff = _uptake_difference(baseline, followup)
    drivers: list[str] = []

    def result(category: str, reason: str | None = None) -> EortcResult:
        if reason:
            notes.append(f"not assessable: {reason}")
        return EortcResult(
            category=category,
            baseline_suv_max=b_max,
            followup_suv_max=f_max,
            change_pct=change,
            longest_diameter_change_pct=ld,
            after_one_cycle=after_one_cycle,
            new_lesions=n_new_lesions,
            notes=notes,
            unit="SUV",
            baseline_lesion_id=None if b_les is None else b_les.lesion_id,
            followup_lesion_id=None if f_les is None else f_les.lesion_id,
            longest_diameter_lesion_id=ld_id,
            uptake_time_difference_min=diff,
            new_lesion_ids=list(new_lesion_ids),
            not_assessable_reason=reason,
            drivers=drivers,
        )

    maxes = (
        f"hottest baseline lesion {b_les.lesion_id if b_les else '-'} (SUVmax {_fmt(b_max)}) "
        f"vs hottest follow-up lesion {f_les.lesion_id if f_les else '-'} (SUVmax {_fmt(f_max)})"
    )
    if n_new_lesions > 0:
        notes.append(f"{n_new_lesions} new lesion(s)")
        drivers.append(_new_lesions_text(followup, new_lesion_ids, n_new_lesions, False, key="max"))
        return result("PMD")
    if b_max is None:
        return result("NE", "no lesion at baseline")
    reason = _uptake_reason(diff)
    if reason:
        return result("NE", reason)
    if f_max is None:
        drivers.append("no lesion left at follow-up")
        return result("CMR")
    assert change is not None
    change_txt = f"{maxes}: {change:+.0f}%"
    if change > 25.0 + _EPS:
        drivers.append(change_txt)
        return result("PMD")
    if ld is not None and ld > 20.0 + _EPS:
        notes.append(f"longest dimension up {ld:.0f}%")
        drivers.append(f"follow-up lesion {ld_id}: longest diameter {ld:+.0f}%")
        return result("PMD")
    drivers.append(change_txt)
    if after_one_cycle:
        pmr = change <= -15.0 + _EPS  # a decrease of >= 15% after one cycle
    else:
        pmr = change < -25.0 - _EPS  # a decrease of more than 25% later
    if pmr:
        return result("PMR")
    return result("SMD")


def _density(lesions: Sequence[LesionMetrics]) -> float | None:
    """Volume-weighted mean HU of the lesions, or None when any has no HU."""
    vol = sum(les.volume_ml for les in lesions)
    if vol <= 0 or any(les.hu_mean is None for les in lesions):
        return None
    return sum((les.hu_mean or 0.0) * les.volume_ml for les in lesions) / vol


def choi_targets(baseline: ScanReport) -> list[LesionMetrics]:
    """Choi's target lesions: the largest measurable baseline lesions (RECIST 1.0 as Choi used)."""
    measurable = [les for les in baseline.lesions if les.longest_diameter_mm >= CHOI_MIN_TARGET_MM]
    measurable.sort(key=lambda les: (-les.longest_diameter_mm, les.lesion_id))
    return measurable[:CHOI_MAX_TARGETS]


def choi(
    baseline: ScanReport,
    followup: ScanReport,
    changes: list[LesionChange],
    n_new_lesions: int,
    n_new_nodules: int,
    *,
    ct_contrast: str = "unknown",
    new_lesion_ids: Sequence[int] = (),
    nodule_lesion_ids: Sequence[int] = (),
) -> ChoiResult:
    """Choi category for GIST from CT size and density of the same target lesions at both visits.

    Args:
        baseline, followup: the scan reports (lesions with longest diameter and mean HU).
        changes: persisting follow-up lesions and their matched baseline lesions.
        n_new_lesions: follow-up lesions matched to no baseline lesion.
        n_new_nodules: persisting lesions with a new intratumoural nodule.
        ct_contrast: one of :data:`CT_CONTRAST_CHOICES` (what the user says about the CT).
        new_lesion_ids, nodule_lesion_ids: follow-up ids behind the two counts (for ``drivers``).
    """
    if ct_contrast not in CT_CONTRAST_CHOICES:
        raise ValueError(f"ct_contrast must be one of {CT_CONTRAST_CHOICES}, got {ct_contrast!r}")
    notes: list[str] = []
    drivers: list[str] = []
    common = {
        "new_lesions": n_new_lesions,
        "new_intratumoural_nodules": n_new_nodules,
        "ct_contrast": ct_contrast,
        "new_lesion_ids": list(new_lesion_ids),
        "nodule_lesion_ids": list(nodule_lesion_ids),
        "notes": notes,
        "drivers": drivers,
    }
    if not (baseline.has_ct and followup.has_ct):
        notes.append("Choi needs CT on both scans")
        return ChoiResult(
            applicable=False,
            category=None,
            size_baseline_mm=None,
            size_followup_mm=None,
            size_change_pct=None,
            density_baseline_hu=None,
            density_followup_hu=None,
            density_change_pct=None,
            not_assessable_reason="no CT on both scans",
            **common,  # type: ignore[arg-type]
        )
    targets = choi_targets(baseline)
    target_ids = {les.lesion_id for les in targets}
    # Follow-up side of each target: the follow-up lesions matched to it (a merge counts once).
    matched = [c for c in changes if target_ids & set(c.baseline_ids)]
    f_ids = sorted({c.followup_id for c in matched})
    f_targets = [followup.lesion(i) for i in f_ids]
    size_b = sum(les.longest_diameter_mm for les in targets) if targets else None
    size_f = sum(les.longest_diameter_mm for les in f_targets) if targets else None
    size_pct = pct_change(size_b, size_f)
    # Density: only targets seen at both visits (a resolved target has no density).
    persisting_b = sorted({b for c in matched for b in c.baseline_ids} & target_ids)
    dens_b = _density([baseline.lesion(i) for i in persisting_b]) if persisting_b else None
    dens_f = _density(f_targets) if f_targets else None

    density_reason = ""
    if ct_contrast == "none":
        density_reason = (
            "density not assessable: the CT is declared non-contrast (ct_contrast=none); Choi "
            "defines density on contrast-enhanced portal-venous CT"
        )
    elif not targets:
        density_reason = "density not assessable: no target lesion"
    elif dens_b is None or dens_f is None:
        density_reason = "density not assessable: no target lesion is seen at both visits"
    elif dens_b < MIN_BASELINE_HU_FOR_PCT:
        density_reason = (
            f"density not assessable: baseline mean {dens_b:.0f} HU of the target lesions is "
            f"below {MIN_BASELINE_HU_FOR_PCT:.0f} HU (no meaningful attenuation, as on the "
            "low-dose non-contrast CT of a PET/CT): a percentage of it is not reported"
        )
    density_ok = not density_reason
    dens_pct = pct_change(dens_b, dens_f) if density_ok else None
    if density_ok and ct_contrast == "unknown":
        notes.append(
            f"contrast phase not declared (ct_contrast=unknown): density used because the "
            f"baseline mean is {dens_b:.0f} HU >= {MIN_BASELINE_HU_FOR_PCT:.0f} HU; Choi "
            "defines it on portal-venous CT"
        )
    basis = "size and density" if density_ok else "size only"
    if not density_ok:
        notes.append(density_reason + "; category from size alone")
    if len(baseline.lesions) > len(targets):
        notes.append(
            f"{len(targets)} target lesion(s) of {len(baseline.lesions)} baseline lesions "
            f"(up to {CHOI_MAX_TARGETS}, longest diameter >= {CHOI_MIN_TARGET_MM:.0f} mm)"
        )

    def result(category: str | None, reason: str | None = None) -> ChoiResult:
        if reason:
            notes.append(f"not assessable: {reason}")
        return ChoiResult(
            applicable=True,
            category=category,
            size_baseline_mm=size_b,
            size_followup_mm=size_f,
            size_change_pct=size_pct,
            density_baseline_hu=dens_b,
            density_followup_hu=dens_f,
            density_change_pct=dens_pct,
            density_assessable=density_ok,
            density_reason=density_reason,
            category_basis=basis,
            target_lesion_ids=sorted(target_ids),
            followup_target_ids=f_ids,
            density_lesion_ids=persisting_b,
            not_assessable_reason=reason,
            **common,  # type: ignore[arg-type]
        )

    size_txt = (
        f"target lesion(s) {_ids(sorted(target_ids))} (sum of longest diameters "
        f"{_fmt(size_b, '.0f')} mm) -> follow-up lesion(s) {_ids(f_ids) or 'none'} "
        f"({_fmt(size_f, '.0f')} mm)" + ("" if size_pct is None else f": {size_pct:+.0f}%")
    )
    dens_txt = (
        f"density of target(s) {_ids(persisting_b)}: {_fmt(dens_b, '.0f')} -> "
        f"{_fmt(dens_f, '.0f')} HU" + ("" if dens_pct is None else f" ({dens_pct:+.0f}%)")
    )
    if n_new_lesions > 0:
        notes.append(f"{n_new_lesions} new lesion(s)")
        drivers.append(_new_lesions_text(followup, new_lesion_ids, n_new_lesions, False))
        return result("PD")
    if n_new_nodules > 0:
        notes.append(f"{n_new_nodules} new intratumoural nodule(s) (PET focal hotspot)")
        drivers.append(
            "new intratumoural nodule(s) in follow-up lesion(s) "
            + (_ids(nodule_lesion_ids) or f"({n_new_nodules})")
        )
        return result("PD")
    if not baseline.lesions:
        return result("NE", "no lesion at baseline")
    if not targets:
        return result(
            "NE",
            f"no measurable target lesion at baseline (longest diameter >= "
            f"{CHOI_MIN_TARGET_MM:.0f} mm)",
        )
    if not followup.lesions:
        drivers.append("no lesion left at follow-up")
        return result("CR")
    pr_density = dens_pct is not None and dens_pct <= -15.0 + _EPS
    pr_size = size_pct is not None and size_pct <= -10.0 + _EPS
    if pr_size or pr_density:
        drivers.append(size_txt if pr_size else dens_txt)
        return result("PR")
    drivers.append(size_txt)
    if density_ok:
        drivers.append(dens_txt)
    if size_pct is not None and size_pct >= 10.0 - _EPS:
        return result("PD")
    return result("SD")


def criteria_vs_pattern(report: PairReport, pattern_label: str) -> list[str]:
    """Sentences for each criterion whose call disagrees with the change pattern, then what
    drives the pattern.

    A criterion disagrees when it calls progression (PMD / PD) while the pattern is
    ``controlled``, or calls no progression while the pattern is a progression pattern
    (``new_lesions``, ``nodule_within_mass``) or a ``diffuse_flare``; a flare the criteria call
    progression is explained too (the same rise, read as reactivation rather than resistance).
    One sentence per disagreeing criterion names the lesions that drive it; one last sentence
    names the lesions and numbers that drive the pattern. Empty when nothing disagrees.
    """
    lines: list[str] = []
    whys: list[str] = []
    calls = [
        ("PERCIST", report.percist.category, report.percist.drivers),
        ("EORTC", report.eortc.category, report.eortc.drivers),
        ("Choi", report.choi.category, report.choi.drivers),
    ]
    for name, category, drivers in calls:
        if category is None or category == "NE":
            continue
        progression = category in _PROGRESSION
        if pattern_label == CONTROLLED and progression:
            why = _why_not_progression(report)
        elif pattern_label in (NODULE_WITHIN_MASS, NEW_LESIONS) and not progression:
            why = _why_progression(report, pattern_label)
        elif pattern_label == DIFFUSE_FLARE:
            why = _why_flare(report, category)
        else:
            continue
        lines.append(
            f"{name} {category} while the pattern is {pattern_label}: {name} is driven by "
            f"{'; '.join(drivers) or 'n/a'}."
        )
        if why not in whys:
            whys.append(why)
    lines += [f"The pattern ({pattern_label}) is driven by: {why}" for why in whys]
    return lines


def _new_lesion_readings(report: PairReport) -> list[str]:
    """How the rule-based reading sees each follow-up lesion the criteria count as new."""
    from petflare.quant.rules import RuleThresholds, counts_as_new, unchanged_site

    t = RuleThresholds()
    out = []
    for m in report.matches:
        if m.timepoint != "followup" or m.status != NEW:
            continue
        les = report.followup.lesion(m.lesion_id)
        contrast = m.baseline_site_suv_contrast
        if unchanged_site(m, les, t):
            out.append(
                f"follow-up lesion {les.lesion_id} has no baseline lesion, but the baseline PET "
                f"at its site already had SUVmean {m.baseline_site_suv_mean:.2f} (>= "
                f"{t.unchanged_site_ratio:.1f} x its {les.suv_mean:.2f}): same uptake, not new"
            )
        elif not counts_as_new(m, les, t):
            out.append(
                f"follow-up lesion {les.lesion_id} ({les.volume_ml:.2f} ml, SUVpeak "
                f"{les.suv_peak:.2f}) is below the floor of a new lesion ({t.min_new_volume_ml} ml,"
                f" SUVpeak {t.min_new_suv_peak})"
            )
        elif contrast is not None and contrast >= t.prior_site_contrast:
            out.append(
                f"follow-up lesion {les.lesion_id} is a reactivated site: its baseline site "
                f"already stood out (SUV {contrast:.2f} x its surroundings, >= "
                f"{t.prior_site_contrast}), a known, non-avid mass rather than a new site"
            )
        else:
            out.append(f"follow-up lesion {les.lesion_id} is new uptake at its site")
    return out


def _why_not_progression(report: PairReport) -> str:
    """Why a ``controlled`` pattern sees no progression where a criterion does."""
    parts = _new_lesion_readings(report)
    d = report.disease
    parts.append(
        f"{d.n_baseline_rose}/{d.n_baseline_lesions} baseline lesions rose by >= "
        f"{d.rise_threshold_pct:.0f}%"
    )
    nodules = report.choi.nodule_lesion_ids
    if nodules:
        parts.append(
            f"follow-up lesion(s) {_ids(nodules)} show the focal nodule sign the criteria count, "
            "which the pattern does not read as a nodule within a mass"
        )
    else:
        parts.append("no focal nodule in a persisting mass")
    return "; ".join(parts) + _rules_aside(report, CONTROLLED)


def _rules_aside(report: PairReport, pattern_label: str) -> str:
    """`` (the rule-based classifier says ...)`` when it differs from the reported pattern."""
    rules = report.pattern_rules
    if rules is None or rules.label == pattern_label:
        return ""
    return f" (the rule-based classifier says {rules.label}, rule {rules.rule})"


def _why_progression(report: PairReport, pattern_label: str) -> str:
    """What a progression pattern sees that a criterion does not count."""
    d = report.disease
    parts = []
    if report.disease.n_new == 0:
        parts.append("no follow-up lesion is unmatched, so the criteria count no new lesion")
    nodules = report.choi.nodule_lesion_ids
    if nodules:
        parts.append(f"focal nodule sign in follow-up lesion(s) {_ids(nodules)}")
    rules = report.pattern_rules
    if rules is not None and rules.label == pattern_label and rules.evidence:
        parts.append(str(rules.evidence[0]))
    parts.append(
        f"{d.n_baseline_rose}/{d.n_baseline_lesions} baseline lesions rose by >= "
        f"{d.rise_threshold_pct:.0f}%, which the criteria weigh only through the hottest lesion "
        "(PERCIST, EORTC) or the size and density sums (Choi)"
    )
    return "; ".join(parts) + _rules_aside(report, pattern_label)


def _why_flare(report: PairReport, category: str) -> str:
    d = report.disease
    parts = _new_lesion_readings(report)
    parts.append(
        f"{d.n_baseline_rose}/{d.n_baseline_lesions} baseline lesions rose by >= "
        f"{d.rise_threshold_pct:.0f}%, spread over {d.rise_spread_mm:.0f} mm"
    )
    if category in _PROGRESSION:
        tail = (
            "a diffuse reactivation at known sites (PET flare, e.g. after imatinib was "
            "stopped), which the criteria count as progression; the pattern does not read it as "
            "resistance"
        )
    else:
        tail = "a rise at most known sites that the criterion does not count"
    return "; ".join(parts) + ": " + tail + _rules_aside(report, DIFFUSE_FLARE)
