"""Response criteria: PERCIST 1.0, EORTC 1999 and Choi (GIST, CT).

- PERCIST 1.0 (Wahl et al., J Nucl Med 2009;50:122S-150S): hottest lesion's SULpeak on each
  scan (need not be the same lesion); measurable if > 1.5 x liver mean + 2 SD.
  CMR: uptake gone to background (no lesion left, or hottest <= liver mean);
  PMR: decrease >= 30% and >= 0.8 units; PMD: increase > 30% and > 0.8 units, or total TLG
  up > 75%, or new lesions; SMD otherwise. NE when the baseline is not measurable.
- EORTC 1999 (Young et al., Eur J Cancer 1999;35:1773-82): hottest lesion SUVmax;
  PMR decrease >= 15% after one cycle, > 25% later; PMD increase > 25%, longest dimension
  up > 20%, or new lesions; CMR when no uptake is left; SMD otherwise.
- Choi (J Clin Oncol 2007;25:1753-9): sum of longest diameters and mean density (HU).
  PR: size down >= 10% or density down >= 15%, no new lesions or new intratumoural nodules;
  PD: size up >= 10% without PR by density, new lesions, or new intratumoural nodules;
  CR: all lesions gone; SD otherwise. Needs CT on both scans.
"""

from __future__ import annotations

from petflare.quant.change import pct_change
from petflare.quant.report import (
    ChoiResult,
    EortcResult,
    LesionChange,
    PercistResult,
    ScanReport,
)

#: Tolerance for the ">=" boundaries (percent and SUL units), against float round-off.
_EPS = 1e-9


def _hottest_peak(scan: ScanReport, use_sul: bool) -> float | None:
    if not scan.lesions:
        return None
    if use_sul:
        return max(les.sul_peak for les in scan.lesions if les.sul_peak is not None)
    return max(les.suv_peak for les in scan.lesions)


def percist(baseline: ScanReport, followup: ScanReport, n_new_lesions: int) -> PercistResult:
    """PERCIST 1.0 category from two scan reports and the number of new lesions."""
    notes: list[str] = []
    use_sul = baseline.uses_sul and followup.uses_sul
    unit = "SUL" if use_sul else "SUV"
    if not use_sul:
        notes.append("SUL unavailable (sex/height/weight): SUVbw used, 0.8 cut-off applied to SUV")
    b_peak = _hottest_peak(baseline, use_sul)
    f_peak = _hottest_peak(followup, use_sul)
    tlg_pct = pct_change(baseline.total_tlg, followup.total_tlg)

    liver = baseline.liver
    threshold = liver_mean = None
    measurable: bool | None = None
    if liver.found and liver.suv_mean is not None and liver.suv_sd is not None:
        factor = baseline.sul_factor if use_sul and baseline.sul_factor else 1.0
        liver_mean = liver.suv_mean * factor
        threshold = 1.5 * liver_mean + 2.0 * liver.suv_sd * factor
        measurable = b_peak is not None and b_peak > threshold
    else:
        notes.append(f"no liver reference ({liver.reason}): measurability not assessed")

    change_pct = pct_change(b_peak, f_peak if f_peak is not None else 0.0)
    change_abs = None if b_peak is None else (f_peak or 0.0) - b_peak

    def result(category: str) -> PercistResult:
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
        )

    if n_new_lesions > 0:
        notes.append(f"{n_new_lesions} new lesion(s)")
        return result("PMD")
    if b_peak is None:
        notes.append("no lesion at baseline")
        return result("NE")
    if measurable is False:
        notes.append(f"baseline hottest {unit}peak {b_peak:.2f} <= threshold {threshold:.2f}")
        return result("NE")
    if f_peak is None or (liver_mean is not None and f_peak <= liver_mean):
        return result("CMR")
    assert change_pct is not None and change_abs is not None
    if change_pct <= -30.0 + _EPS and change_abs <= -0.8 + _EPS:
        return result("PMR")
    if change_pct > 30.0 + _EPS and change_abs > 0.8 + _EPS:
        return result("PMD")
    if tlg_pct is not None and tlg_pct > 75.0 + _EPS:
        notes.append(f"total TLG up {tlg_pct:.0f}%")
        return result("PMD")
    return result("SMD")


def eortc(
    baseline: ScanReport,
    followup: ScanReport,
    changes: list[LesionChange],
    n_new_lesions: int,
    after_one_cycle: bool = False,
) -> EortcResult:
    """EORTC 1999 category on the hottest lesion's SUVmax and the per-lesion extent change."""
    notes: list[str] = []
    b_max = max((les.suv_max for les in baseline.lesions), default=None)
    f_max = max((les.suv_max for les in followup.lesions), default=None)
    change = pct_change(b_max, f_max if f_max is not None else 0.0)
    ld_changes = [
        pct_change(c.longest_diameter_mm_baseline, c.longest_diameter_mm_followup) for c in changes
    ]
    ld = max((v for v in ld_changes if v is not None), default=None)

    def result(category: str) -> EortcResult:
        return EortcResult(
            category=category,
            baseline_suv_max=b_max,
            followup_suv_max=f_max,
            change_pct=change,
            longest_diameter_change_pct=ld,
            after_one_cycle=after_one_cycle,
            new_lesions=n_new_lesions,
            notes=notes,
        )

    if n_new_lesions > 0:
        notes.append(f"{n_new_lesions} new lesion(s)")
        return result("PMD")
    if b_max is None:
        notes.append("no lesion at baseline")
        return result("NE")
    if f_max is None:
        return result("CMR")
    assert change is not None
    if change > 25.0 + _EPS:
        return result("PMD")
    if ld is not None and ld > 20.0 + _EPS:
        notes.append(f"longest dimension up {ld:.0f}%")
        return result("PMD")
    if (after_one_cycle and change <= -15.0 + _EPS) or (not after_one_cycle and change < -25.0):
        return result("PMR")
    return result("SMD")


def choi(
    baseline: ScanReport,
    followup: ScanReport,
    changes: list[LesionChange],
    n_new_lesions: int,
    n_new_nodules: int,
) -> ChoiResult:
    """Choi category for GIST from CT size (sum of longest diameters) and density (HU)."""
    notes: list[str] = []
    if not (baseline.has_ct and followup.has_ct):
        return ChoiResult(
            applicable=False,
            category=None,
            size_baseline_mm=None,
            size_followup_mm=None,
            size_change_pct=None,
            density_baseline_hu=None,
            density_followup_hu=None,
            density_change_pct=None,
            new_lesions=n_new_lesions,
            new_intratumoural_nodules=n_new_nodules,
            notes=["Choi needs CT on both scans"],
        )
    size_b = sum(les.longest_diameter_mm for les in baseline.lesions)
    persisting_ids = {c.followup_id for c in changes}
    persisting = [les for les in followup.lesions if les.lesion_id in persisting_ids]
    size_f = sum(les.longest_diameter_mm for les in persisting)

    def density(lesions) -> float | None:
        vol = sum(les.volume_ml for les in lesions)
        if vol <= 0:
            return None
        return sum(les.hu_mean * les.volume_ml for les in lesions) / vol

    dens_b, dens_f = density(baseline.lesions), density(persisting)
    size_pct = pct_change(size_b, size_f) if baseline.lesions else None
    # Density in HU can be near 0; Choi's 15% is relative to the baseline HU.
    dens_pct = pct_change(dens_b, dens_f)

    def result(category: str) -> ChoiResult:
        return ChoiResult(
            applicable=True,
            category=category,
            size_baseline_mm=size_b,
            size_followup_mm=size_f,
            size_change_pct=size_pct,
            density_baseline_hu=dens_b,
            density_followup_hu=dens_f,
            density_change_pct=dens_pct,
            new_lesions=n_new_lesions,
            new_intratumoural_nodules=n_new_nodules,
            notes=notes,
        )

    if n_new_lesions > 0:
        notes.append(f"{n_new_lesions} new lesion(s)")
        return result("PD")
    if n_new_nodules > 0:
        notes.append(f"{n_new_nodules} new intratumoural nodule(s) (PET focal hotspot)")
        return result("PD")
    if not baseline.lesions:
        notes.append("no lesion at baseline")
        return result("NE")
    if not followup.lesions:
        return result("CR")
    pr_density = dens_pct is not None and dens_pct <= -15.0 + _EPS
    pr_size = size_pct is not None and size_pct <= -10.0 + _EPS
    if pr_size or pr_density:
        return result("PR")
    if size_pct is not None and size_pct >= 10.0 - _EPS:
        return result("PD")
    return result("SD")
