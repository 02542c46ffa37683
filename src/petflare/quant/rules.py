"""Transparent rule-based change-pattern classifier: the baseline a learned head must beat.

Rules are tried in order; the first that fires gives the label (docs/rules.md gives the
thresholds and their clinical reasons):

1. ``R1_diffuse_flare``: uptake rose at most known sites. Known sites are the baseline lesions
   plus *reactivated sites*: follow-up lesions without a baseline lesion whose site already
   stood out on the baseline PET (SUV contrast >= ``prior_site_contrast`` against a shell
   around it: a non-avid, responding mass). At least ``min_fraction_rose`` of the known sites
   rose (SUVpeak up >= ``rise_threshold_pct``, or reactivated), the rise is mass-wide (median
   SUVmean change of the risen persisting lesions >= ``min_mean_rise_pct``), and at most
   ``max_new_with_flare`` lesion is new at an uninvolved site. Van den Abbeele 2003.
2. ``R2_new_lesions``: at least one real new lesion (volume >= ``min_new_volume_ml``, SUVpeak
   >= ``min_new_suv_peak``, and uptake that is new at its site: the baseline PET there held
   less than ``unchanged_site_ratio`` of its SUVmean) at a previously uninvolved site, or a
   reactivated site larger than ``max_focus_ml`` that R1 did not explain. PERCIST / EORTC /
   Choi progression.
3. ``R3_nodule_within_mass``: a persisting mass shows the focal or the remnant sign of
   :class:`petflare.quant.change.NoduleCriteria`, or a small (<= ``max_focus_ml``) avid focus
   appeared at a reactivated site (a nodule in a mass that was non-avid at baseline), or a
   small avid focus sits inside a hypodense mass on the follow-up CT (its 3-12 mm shell in
   ``hypodense_shell_hu``: the water-like density of a responding GIST). Such foci are not
   counted as new lesions in R1/R2. Shankar et al. 2005.
4. ``R4_controlled``: none of the above (response or stable disease).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from petflare.constants import PATTERNS
from petflare.quant.change import NoduleCriteria, nodule_evidence
from petflare.quant.matching import NEW
from petflare.quant.report import LesionMatch, LesionMetrics, PairReport, RuleDecision

__all__ = [
    "RuleDecision",
    "RuleThresholds",
    "classify_pattern_rules",
    "counts_as_new",
    "unchanged_site",
]

CONTROLLED, DIFFUSE_FLARE, NODULE_WITHIN_MASS, NEW_LESIONS = PATTERNS


@dataclass(frozen=True)
class RuleThresholds:
    """All thresholds of the rule-based classifier (documented in docs/rules.md)."""

    min_new_volume_ml: float = 0.3
    min_new_suv_peak: float = 1.5
    unchanged_site_ratio: float = 0.6
    prior_site_contrast: float = 1.4
    nodule: NoduleCriteria = field(default_factory=NoduleCriteria)
    rise_threshold_pct: float = 25.0
    min_fraction_rose: float = 0.5
    min_mean_rise_pct: float = 20.0
    max_new_with_flare: int = 1
    hypodense_shell_hu: tuple[float, float] = (0.0, 30.0)


def _describe(les: LesionMetrics, what: str) -> str:
    c = ", ".join(f"{v:.0f}" for v in les.centroid_mm)
    return f"{what} {les.lesion_id}: {les.volume_ml:.1f} ml, SUVpeak {les.suv_peak:.2f} at ({c}) mm"


def unchanged_site(match: LesionMatch, lesion: LesionMetrics, thresholds: RuleThresholds) -> bool:
    """An unmatched follow-up lesion whose site held the same uptake on the baseline PET.

    The baseline SUVmean in its mapped footprint is at least ``unchanged_site_ratio`` of the
    lesion's own SUVmean: uptake did not appear there, the mask only differs (physiological
    uptake segmented on one scan only, or a lesion the baseline mask missed). Not new disease.
    """
    site = match.baseline_site_suv_mean
    return (
        site is not None
        and lesion.suv_mean > 0
        and site >= thresholds.unchanged_site_ratio * lesion.suv_mean
    )


def counts_as_new(match: LesionMatch, lesion: LesionMetrics, thresholds: RuleThresholds) -> bool:
    """An unmatched follow-up lesion above the size/uptake floor whose uptake is new at its site
    (reactivated and intramass sites are told apart later, in the rules)."""
    return (
        lesion.volume_ml >= thresholds.min_new_volume_ml
        and lesion.suv_peak >= thresholds.min_new_suv_peak
        and not unchanged_site(match, lesion, thresholds)
    )


def classify_pattern_rules(
    pair_report: PairReport, thresholds: RuleThresholds | None = None
) -> RuleDecision:
    """Label the change pattern of a pair report with the first rule that fires."""
    t = thresholds or RuleThresholds()
    rep = pair_report
    focus_ml = t.nodule.max_focus_ml

    # Unmatched follow-up lesions: real ones, split into reactivated sites and new sites.
    unmatched = [m for m in rep.matches if m.timepoint == "followup" and m.status == NEW]
    real = [m for m in unmatched if counts_as_new(m, rep.followup.lesion(m.lesion_id), t)]
    n_unchanged = sum(unchanged_site(m, rep.followup.lesion(m.lesion_id), t) for m in unmatched)
    reactivated = [
        m
        for m in real
        if m.baseline_site_suv_contrast is not None
        and m.baseline_site_suv_contrast >= t.prior_site_contrast
    ]
    lo_hu, hi_hu = t.hypodense_shell_hu
    intramass = [
        m
        for m in real
        if m not in reactivated
        and m.followup_shell_hu_mean is not None
        and lo_hu <= m.followup_shell_hu_mean <= hi_hu
        and rep.followup.lesion(m.lesion_id).volume_ml <= focus_ml
    ]
    new_sites = [rep.followup.lesion(m.lesion_id) for m in real if m not in reactivated + intramass]
    react_les = [rep.followup.lesion(m.lesion_id) for m in reactivated]

    # R1: diffuse flare at known sites.
    n_base = rep.baseline.n_lesions
    risen = [
        c
        for c in rep.changes
        if c.suv_peak_change_pct is not None and c.suv_peak_change_pct >= t.rise_threshold_pct
    ]
    rose_ids = {b for c in risen for b in c.baseline_ids}
    n_known = n_base + len(reactivated)
    n_rose = len(rose_ids) + len(reactivated)
    fraction = n_rose / n_known if n_known else 0.0
    mean_rises = [c.suv_mean_change_pct for c in risen if c.suv_mean_change_pct is not None]
    median_mean_rise = float(np.median(mean_rises)) if mean_rises else None
    mass_wide = median_mean_rise is None or median_mean_rise >= t.min_mean_rise_pct
    flare_evidence = [
        f"{n_rose}/{n_known} known sites rose ({len(rose_ids)} baseline lesions with SUVpeak "
        f"up >= {t.rise_threshold_pct:.0f}%, {len(reactivated)} reactivated non-avid sites; "
        f"fraction {fraction:.2f})",
        "median SUVmean change of the risen lesions: "
        + ("n/a" if median_mean_rise is None else f"{median_mean_rise:+.0f}%"),
        f"spread of the rise: {rep.disease.rise_spread_mm:.0f} mm",
        f"{len(new_sites)} new lesion(s) at uninvolved sites",
    ]
    if (
        n_rose
        and fraction >= t.min_fraction_rose
        and mass_wide
        and len(new_sites) <= t.max_new_with_flare
    ):
        return RuleDecision(DIFFUSE_FLARE, "R1_diffuse_flare", flare_evidence)

    # R2: new lesions (at uninvolved sites, or large reactivated sites R1 did not explain).
    big_react = [les for les in react_les if les.volume_ml > focus_ml]
    if new_sites or big_react:
        evidence = [
            f"{len(new_sites)} new lesion(s) at uninvolved sites "
            f"({sum(x.volume_ml for x in new_sites):.1f} ml), {len(big_react)} large "
            f"reactivated site(s); {len(unmatched)} unmatched in total, {n_unchanged} of them "
            "at sites with the same uptake on the baseline PET (not new)"
        ]
        evidence += [_describe(les, "new lesion") for les in new_sites[:5]]
        evidence += [_describe(les, "reactivated site") for les in big_react[:3]]
        return RuleDecision(NEW_LESIONS, "R2_new_lesions", evidence)

    # R3: a nodule within a mass.
    nodules = [e for c in rep.changes if (e := nodule_evidence(c, t.nodule)) is not None]
    nodules += [
        _describe(les, "avid focus at a non-avid baseline mass (reactivated site)")
        for les in react_les
        if les.volume_ml <= focus_ml
    ]
    nodules += [
        _describe(rep.followup.lesion(m.lesion_id), "avid focus")
        + f" inside a hypodense mass (shell {m.followup_shell_hu_mean:.0f} HU)"
        for m in intramass
    ]
    if nodules:
        return RuleDecision(NODULE_WITHIN_MASS, "R3_nodule_within_mass", nodules)

    # R4: controlled.
    evidence = [
        f"no new lesion >= {t.min_new_volume_ml} ml (unmatched: {len(unmatched)}, of which "
        f"{n_unchanged} at sites with the same uptake on the baseline PET)",
        "no focal nodule in a persisting mass",
        *flare_evidence[:2],
        f"PERCIST {rep.percist.category}, EORTC {rep.eortc.category}",
    ]
    return RuleDecision(CONTROLLED, "R4_controlled", evidence)
