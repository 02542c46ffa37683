"""Per-lesion and whole-disease change between baseline and follow-up.

For each persisting follow-up lesion the baseline side aggregates every matched baseline
lesion. The follow-up lesion's focal hotspot (see :func:`petflare.quant.metrics.focal_hotspot`)
is measured over the whole mass (follow-up lesion plus the mapped baseline footprint) on both
scans, and the hotspot is also measured at the same anatomical site on the baseline PET. This
tells a nodule that appeared inside a responding mass (focal, the rest of the mass down) from a
mass that lit up as a whole (everything up, uptake evened out).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from petflare.io.study import Study
from petflare.quant.matching import NEW, PERSISTING, RESOLVED, map_points_to_baseline
from petflare.quant.metrics import (
    FOCAL_RADIUS_MM,
    ball_mean_at,
    crop_slices,
    focal_hotspot,
    world_to_voxel,
)
from petflare.quant.report import (
    DiseaseChange,
    FocalHotspot,
    LesionChange,
    LesionMatch,
    ScanReport,
)

#: Default SUVpeak rise (%) for a lesion's uptake to count as "rose" (EORTC's PMD cut-off).
RISE_THRESHOLD_PCT = 25.0


def pct_change(baseline: float | None, followup: float | None) -> float | None:
    """``100 * (followup - baseline) / baseline``; None when undefined."""
    if baseline is None or followup is None or baseline == 0:
        return None
    return 100.0 * (followup - baseline) / abs(baseline)


#: Lowest baseline mean attenuation (HU) of which a percent change is reported. Water is 0 HU,
#: so on the low-dose non-contrast CT of a PET/CT a lesion's mean sits near 0 (or below: fat,
#: partial volume with lung) and a percentage of it explodes or flips sign. Choi's 15% density
#: criterion is defined on enhancing tissue of contrast-enhanced CT (typically 50-100 HU).
MIN_BASELINE_HU_FOR_PCT = 20.0


def hu_pct_change(baseline_hu: float | None, followup_hu: float | None) -> float | None:
    """Percent change of a CT density; None when either is unknown or the baseline is below
    :data:`MIN_BASELINE_HU_FOR_PCT` (a near-zero baseline gives no meaningful percentage)."""
    if baseline_hu is None or followup_hu is None or baseline_hu < MIN_BASELINE_HU_FOR_PCT:
        return None
    return pct_change(baseline_hu, followup_hu)


@dataclass
class PairGeometry:
    """Both studies, their instance labels, and each mapped onto the other's grid."""

    baseline: Study
    followup: Study
    baseline_labels: np.ndarray
    followup_labels: np.ndarray
    baseline_on_followup: np.ndarray
    followup_on_baseline: np.ndarray
    matrix_ras: np.ndarray


def _mass_focality(
    pet: np.ndarray, affine: np.ndarray, region: np.ndarray, radius_mm: float
) -> FocalHotspot | None:
    return focal_hotspot(pet, region, affine, radius_mm) if region.any() else None


def lesion_changes(
    baseline: ScanReport,
    followup: ScanReport,
    matches: list[LesionMatch],
    geometry: PairGeometry,
    rise_threshold_pct: float = RISE_THRESHOLD_PCT,
    focal_radius_mm: float = FOCAL_RADIUS_MM,
) -> list[LesionChange]:
    """One :class:`LesionChange` per persisting follow-up lesion.

    Focality is measured over the *mass*: the follow-up lesion together with the footprint of
    its matched baseline lesion(s) (mapped through the registration), on each scan. A nodule
    that is the only avid part of a responding mass is thus compared with the rest of that
    mass, not just with itself.
    """
    g = geometry
    out: list[LesionChange] = []
    for m in matches:
        if m.timepoint != "followup" or m.status != PERSISTING:
            continue
        fl = followup.lesion(m.lesion_id)
        bls = [baseline.lesion(i) for i in m.matched_ids]
        vol_b = sum(b.volume_ml for b in bls)
        tlg_b = sum(b.tlg for b in bls)
        mean_b = tlg_b / vol_b if vol_b > 0 else 0.0
        hus = [b.hu_mean for b in bls if b.hu_mean is not None]
        hu_b = None
        if len(hus) == len(bls) and vol_b > 0:
            hu_b = sum(h * b.volume_ml for h, b in zip(hus, bls, strict=True)) / vol_b
        region_f = (g.followup_labels == fl.lesion_id) | np.isin(
            g.baseline_on_followup, m.matched_ids
        )
        region_b = np.isin(g.baseline_labels, m.matched_ids) | (
            g.followup_on_baseline == fl.lesion_id
        )
        hot = _mass_focality(g.followup.pet, g.followup.affine, region_f, focal_radius_mm)
        hot_b = _mass_focality(g.baseline.pet, g.baseline.affine, region_b, focal_radius_mm)
        region_b_mean = float(g.baseline.pet[region_b].mean()) if region_b.any() else None
        hot_same_site = None
        if hot is not None:
            site = map_points_to_baseline(g.matrix_ras, np.array(hot.centre_mm))[0]
            hot_same_site = ball_mean_at(g.baseline.pet, g.baseline.affine, site, hot.radius_mm)
        peak_b = max(b.suv_peak for b in bls)
        peak_change = pct_change(peak_b, fl.suv_peak)
        mass_ml = float(region_f.sum()) * g.followup.voxel_volume_ml
        out.append(
            LesionChange(
                followup_id=fl.lesion_id,
                baseline_ids=list(m.matched_ids),
                suv_max_baseline=max(b.suv_max for b in bls),
                suv_max_followup=fl.suv_max,
                suv_max_change_pct=pct_change(max(b.suv_max for b in bls), fl.suv_max),
                suv_peak_baseline=peak_b,
                suv_peak_followup=fl.suv_peak,
                suv_peak_change_pct=peak_change,
                suv_mean_baseline=mean_b,
                suv_mean_followup=fl.suv_mean,
                suv_mean_change_pct=pct_change(mean_b, fl.suv_mean),
                volume_ml_baseline=vol_b,
                volume_ml_followup=fl.volume_ml,
                volume_change_pct=pct_change(vol_b, fl.volume_ml),
                tlg_baseline=tlg_b,
                tlg_followup=fl.tlg,
                tlg_change_pct=pct_change(tlg_b, fl.tlg),
                longest_diameter_mm_baseline=max(b.longest_diameter_mm for b in bls),
                longest_diameter_mm_followup=fl.longest_diameter_mm,
                hu_mean_baseline=hu_b,
                hu_mean_followup=fl.hu_mean,
                hu_change_pct=hu_pct_change(hu_b, fl.hu_mean),
                mass_volume_ml_followup=mass_ml,
                lesion_fraction_of_mass=fl.volume_ml / mass_ml if mass_ml > 0 else None,
                focal_ratio_baseline=hot_b.ratio if hot_b else None,
                focal_ratio_followup=hot.ratio if hot else None,
                hotspot_centre_mm=hot.centre_mm if hot else None,
                hotspot_volume_ml=hot.hotspot_volume_ml if hot else None,
                hotspot_suv_mean_followup=hot.hotspot_suv_mean if hot else None,
                hotspot_suv_mean_baseline_same_site=hot_same_site,
                hotspot_change_pct=pct_change(hot_same_site, hot.hotspot_suv_mean if hot else None),
                rest_suv_mean_followup=hot.rest_suv_mean if hot else None,
                rest_change_pct=pct_change(region_b_mean, hot.rest_suv_mean if hot else None),
                hu_difference_hu=(
                    None if hu_b is None or fl.hu_mean is None else fl.hu_mean - hu_b
                ),
                uptake_rose=peak_change is not None and peak_change >= rise_threshold_pct,
            )
        )
    return out


def _shell(
    site: np.ndarray, spacing: tuple[float, float, float], inner_mm: float, outer_mm: float
) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray]:
    """Crop around ``site``; the site and a shell ``inner_mm``-``outer_mm`` around it."""
    px, py, pz = (int(np.ceil((outer_mm + 2.0) / s)) for s in spacing)
    sl, _ = crop_slices(site, (px, py, pz))
    inner = site[sl]
    dist = ndimage.distance_transform_edt(~inner, sampling=spacing)
    return sl, inner, (dist > inner_mm) & (dist <= outer_mm)


def annotate_new_sites(
    matches: list[LesionMatch], geometry: PairGeometry, followup: ScanReport
) -> None:
    """Fill the site evidence of every new follow-up lesion (in place).

    ``baseline_site_*``: the mapped footprint on the baseline against a 3-12 mm shell.
    ``followup_shell_hu_mean``: follow-up CT in a 3-12 mm shell around the lesion itself (a
    hypodense shell means the focus sits inside a hypodense, i.e. responding, mass).
    """
    g = geometry
    spacing = g.baseline.spacing_mm
    for m in matches:
        if m.timepoint != "followup" or m.status != NEW:
            continue
        if g.followup.ct is not None:
            fsl, _, fshell = _shell(
                g.followup_labels == m.lesion_id, g.followup.spacing_mm, 3.0, 12.0
            )
            fct = g.followup.ct[fsl]
            fshell &= fct > -500.0
            if fshell.any():
                m.followup_shell_hu_mean = float(fct[fshell].mean())
        site = g.followup_on_baseline == m.lesion_id
        if not site.any():  # too small to survive resampling: a ball at the mapped centroid
            les = followup.lesion(m.lesion_id)
            c = map_points_to_baseline(g.matrix_ras, np.array(les.centroid_mm))
            ijk = np.rint(world_to_voxel(g.baseline.affine, c)[0]).astype(int)
            if np.any(ijk < 0) or np.any(ijk >= np.array(g.baseline.shape)):
                continue
            site[tuple(ijk)] = True
        sl, inner, shell = _shell(site, spacing, 3.0, 12.0)
        pet = g.baseline.pet[sl]
        body = pet > 0.1 if g.baseline.ct is None else g.baseline.ct[sl] > -500.0
        shell &= body
        if not shell.any():
            continue
        site_suv = float(pet[inner].mean())
        shell_suv = float(pet[shell].mean())
        m.baseline_site_suv_mean = site_suv
        m.baseline_site_suv_contrast = site_suv / shell_suv if shell_suv > 0 else None
        if g.baseline.ct is not None:
            ct = g.baseline.ct[sl]
            m.baseline_site_hu_contrast = float(ct[inner].mean() - ct[shell].mean())


@dataclass(frozen=True)
class NoduleCriteria:
    """When a persisting lesion counts as carrying a new focal nodule (a resistant clone).

    Two independent signs (either suffices):

    - *focal*: within the mass, a hotspot clearly hotter than the rest (``min_focal_ratio``),
      hotter than the same site at baseline (``min_hotspot_rise_pct``), more focal than the
      mass was at baseline (``min_focality_gain``), while the rest of the mass has not lit up
      as a whole (``max_rest_rise_pct``; that would be a diffuse reactivation instead);
    - *remnant*: the only avid part of the mass is a small focus (at most
      ``max_fraction_of_mass`` of the mass and ``max_focus_ml``) while the rest of the mass
      has responded (``rest_change_pct`` <= 0): the mask shows the nodule, not the mass.
    """

    min_focal_ratio: float = 1.5
    min_hotspot_rise_pct: float = 30.0
    min_focality_gain: float = 1.25
    max_rest_rise_pct: float = 25.0
    max_fraction_of_mass: float = 0.25
    max_focus_ml: float = 10.0


def nodule_evidence(change: LesionChange, criteria: NoduleCriteria) -> str | None:
    """A one-line description if ``change`` shows a new focal nodule, else None."""
    ratio = change.focal_ratio_followup
    rise = change.hotspot_change_pct
    rest = change.rest_change_pct
    rest_txt = "n/a" if rest is None else f"{rest:+.0f}%"
    centre = ", ".join(f"{c:.0f}" for c in change.hotspot_centre_mm or [])
    frac = change.lesion_fraction_of_mass
    if (
        frac is not None
        and frac <= criteria.max_fraction_of_mass
        and change.volume_ml_followup <= criteria.max_focus_ml
        and rest is not None
        and rest <= 0.0
    ):
        return (
            f"follow-up lesion {change.followup_id}: avid focus of {change.volume_ml_followup:.1f}"
            f" ml is {100 * frac:.0f}% of a {change.mass_volume_ml_followup:.0f} ml mass whose"
            f" rest changed {rest_txt} (remnant sign)"
        )
    if ratio is None or rise is None:
        return None
    gain_ok = (
        change.focal_ratio_baseline is None
        or ratio >= criteria.min_focality_gain * change.focal_ratio_baseline
    )
    rest_ok = rest is None or rest <= criteria.max_rest_rise_pct
    if ratio >= criteria.min_focal_ratio and rise >= criteria.min_hotspot_rise_pct and gain_ok:
        if rest_ok:
            base_ratio = change.focal_ratio_baseline
            base_txt = "n/a" if base_ratio is None else f"{base_ratio:.2f}"
            return (
                f"follow-up lesion {change.followup_id}: hotspot/rest ratio {ratio:.2f} "
                f"(baseline {base_txt}), hotspot {rise:+.0f}% vs same site at baseline, "
                f"rest of mass {rest_txt}, hotspot {change.hotspot_volume_ml:.1f} ml at "
                f"({centre}) mm (focal sign)"
            )
    return None


def count_new_nodules(changes: list[LesionChange], criteria: NoduleCriteria) -> int:
    """Number of persisting lesions with a new focal nodule."""
    return sum(nodule_evidence(c, criteria) is not None for c in changes)


def disease_change(
    baseline: ScanReport,
    followup: ScanReport,
    matches: list[LesionMatch],
    changes: list[LesionChange],
    rise_threshold_pct: float = RISE_THRESHOLD_PCT,
) -> DiseaseChange:
    """Whole-disease change: how many lesions rose and how widely, what is new, totals."""
    base_status = {m.lesion_id: m for m in matches if m.timepoint == "baseline"}
    new_ids = [m.lesion_id for m in matches if m.timepoint == "followup" and m.status == NEW]
    new = [followup.lesion(i) for i in new_ids]
    rose_ids = {b for c in changes if c.uptake_rose for b in c.baseline_ids}
    rose = [baseline.lesion(i) for i in sorted(rose_ids)]
    spread = 0.0
    if len(rose) > 1:
        pts = np.array([les.centroid_mm for les in rose])
        spread = float(np.linalg.norm(pts[:, None] - pts[None], axis=-1).max())
    n_base = baseline.n_lesions
    return DiseaseChange(
        n_baseline_lesions=n_base,
        n_followup_lesions=followup.n_lesions,
        n_persisting_baseline=sum(m.status == PERSISTING for m in base_status.values()),
        n_resolved=sum(m.status == RESOLVED for m in base_status.values()),
        n_new=len(new),
        new_volume_ml=float(sum(les.volume_ml for les in new)),
        new_tlg=float(sum(les.tlg for les in new)),
        new_max_suv_peak=max((les.suv_peak for les in new), default=None),
        rise_threshold_pct=float(rise_threshold_pct),
        n_baseline_rose=len(rose),
        fraction_baseline_rose=len(rose) / n_base if n_base else None,
        rise_spread_mm=spread,
        total_mtv_ml_baseline=baseline.total_mtv_ml,
        total_mtv_ml_followup=followup.total_mtv_ml,
        total_tlg_baseline=baseline.total_tlg,
        total_tlg_followup=followup.total_tlg,
        total_tlg_change_pct=pct_change(baseline.total_tlg, followup.total_tlg),
    )
