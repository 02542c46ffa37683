"""Transparent rule-based change-pattern classifier: the baseline a learned head must beat.

Rules are tried in order; the first that fires gives the label (see docs/rules.md for the
thresholds and their clinical reasons):

1. ``R1_new_lesions``: at least one follow-up lesion matches no baseline lesion and is big
   and hot enough to be real (volume >= ``min_new_volume_ml`` and SUVpeak >=
   ``min_new_suv_peak``). New disease outranks everything else (PERCIST/EORTC/Choi: PD).
2. ``R2_nodule_within_mass``: a persisting mass carries a new focal hotspot (hotspot/rest
   ratio, hotspot rise at the same site, focality gain, rest of the mass not lit up; see
   :class:`petflare.quant.change.NoduleCriteria`) - the Shankar 2005 resistant-clone sign.
3. ``R3_diffuse_flare``: uptake rose (SUVpeak up >= ``rise_threshold_pct``) in at least
   ``min_fraction_rose`` of the baseline lesions, and the rise is mass-wide (median SUVmean
   rise of the risen lesions >= ``min_mean_rise_pct``) rather than focal - the reactivation
   of previously responding sites after imatinib withdrawal (Van den Abbeele 2003).
4. ``R4_controlled``: none of the above (response or stable disease).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from petflare.constants import PATTERNS
from petflare.quant.change import NoduleCriteria, nodule_evidence
from petflare.quant.matching import NEW
from petflare.quant.report import PairReport, RuleDecision

__all__ = ["RuleDecision", "RuleThresholds", "classify_pattern_rules"]

CONTROLLED, DIFFUSE_FLARE, NODULE_WITHIN_MASS, NEW_LESIONS = PATTERNS


@dataclass(frozen=True)
class RuleThresholds:
    """All thresholds of the rule-based classifier (documented in docs/rules.md)."""

    min_new_volume_ml: float = 0.3
    min_new_suv_peak: float = 1.5
    nodule: NoduleCriteria = field(default_factory=NoduleCriteria)
    rise_threshold_pct: float = 25.0
    min_fraction_rose: float = 0.5
    min_mean_rise_pct: float = 20.0


def classify_pattern_rules(
    pair_report: PairReport, thresholds: RuleThresholds | None = None
) -> RuleDecision:
    """Label the change pattern of a pair report with the first rule that fires."""
    t = thresholds or RuleThresholds()
    rep = pair_report

    # R1: new lesions.
    new_ids = [m.lesion_id for m in rep.matches if m.timepoint == "followup" and m.status == NEW]
    real_new = [
        rep.followup.lesion(i)
        for i in new_ids
        if rep.followup.lesion(i).volume_ml >= t.min_new_volume_ml
        and rep.followup.lesion(i).suv_peak >= t.min_new_suv_peak
    ]
    if real_new:
        evidence = [
            f"{len(real_new)} new lesion(s) (of {len(new_ids)} unmatched), "
            f"total {sum(x.volume_ml for x in real_new):.1f} ml"
        ]
        for les in real_new[:5]:
            c = ", ".join(f"{v:.0f}" for v in les.centroid_mm)
            evidence.append(
                f"new lesion {les.lesion_id}: {les.volume_ml:.1f} ml, SUVpeak "
                f"{les.suv_peak:.2f} at ({c}) mm"
            )
        return RuleDecision(NEW_LESIONS, "R1_new_lesions", evidence)

    # R2: a focal nodule in a persisting mass.
    nodules = [e for c in rep.changes if (e := nodule_evidence(c, t.nodule)) is not None]
    if nodules:
        return RuleDecision(NODULE_WITHIN_MASS, "R2_nodule_within_mass", nodules)

    # R3: diffuse, mass-wide rise at previously known sites.
    n_base = rep.baseline.n_lesions
    risen = [
        c
        for c in rep.changes
        if c.suv_peak_change_pct is not None and c.suv_peak_change_pct >= t.rise_threshold_pct
    ]
    rose_ids = {b for c in risen for b in c.baseline_ids}
    fraction = len(rose_ids) / n_base if n_base else 0.0
    mean_rises = [c.suv_mean_change_pct for c in risen if c.suv_mean_change_pct is not None]
    median_mean_rise = float(np.median(mean_rises)) if mean_rises else None
    flare_evidence = [
        f"{len(rose_ids)}/{n_base} baseline lesions with SUVpeak up >= "
        f"{t.rise_threshold_pct:.0f}% (fraction {fraction:.2f})",
        "median SUVmean change of those lesions: "
        + ("n/a" if median_mean_rise is None else f"{median_mean_rise:+.0f}%"),
        f"spread of the rise: {rep.disease.rise_spread_mm:.0f} mm",
    ]
    if (
        rose_ids
        and fraction >= t.min_fraction_rose
        and median_mean_rise is not None
        and median_mean_rise >= t.min_mean_rise_pct
    ):
        return RuleDecision(DIFFUSE_FLARE, "R3_diffuse_flare", flare_evidence)

    # R4: controlled.
    evidence = [
        f"no new lesion >= {t.min_new_volume_ml} ml (unmatched: {len(new_ids)})",
        "no focal nodule in a persisting mass",
        *flare_evidence,
        f"PERCIST {rep.percist.category}, EORTC {rep.eortc.category}",
    ]
    return RuleDecision(CONTROLLED, "R4_controlled", evidence)
