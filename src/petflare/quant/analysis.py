"""Entry points: measure a study (`analyze_study`) and compare two (`compare_studies`)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from petflare.io.study import Study
from petflare.quant.change import (
    RISE_THRESHOLD_PCT,
    NoduleCriteria,
    PairGeometry,
    annotate_new_sites,
    disease_change,
    lesion_changes,
    nodule_evidence,
)
from petflare.quant.criteria import CT_CONTRAST_CHOICES, choi, eortc, percist
from petflare.quant.focal_uptake import FocalUptakeCriteria, find_new_focal_uptake
from petflare.quant.instances import lesion_instances
from petflare.quant.matching import NEW, MatchingConfig, match_lesions
from petflare.quant.metrics import (
    FOCAL_RADIUS_MM,
    SUV_PEAK_RADIUS_MM,
    LesionContext,
    ball_kernel,
    measure_lesion,
    sul_factor,
)
from petflare.quant.reference import LiverSearchConfig, liver_reference
from petflare.quant.registration import (
    RegistrationConfig,
    register_followup_to_baseline,
    resample_to,
)
from petflare.quant.report import PairReport, RegistrationResult, ScanReport
from petflare.quant.rules import RuleThresholds, classify_pattern_rules


def _labels_for(study: Study, mask: np.ndarray | None, connectivity: int) -> np.ndarray:
    m = study.mask if mask is None else mask
    if m is None:
        return np.zeros(study.shape, dtype=np.uint32)
    if m.shape != study.shape:
        raise ValueError(f"mask shape {m.shape} differs from PET shape {study.shape}")
    return lesion_instances(m, connectivity=connectivity)


def _analyze(
    study: Study,
    labels: np.ndarray,
    connectivity: int,
    liver_mask: np.ndarray | None,
    liver_config: LiverSearchConfig | None,
    peak_radius_mm: float,
    focal_radius_mm: float,
) -> ScanReport:
    meta = study.meta
    factor, sul_reason = sul_factor(meta.sex, meta.height_m, meta.weight_kg)
    ctx = LesionContext(
        pet=study.pet,
        affine=study.affine,
        ct=study.ct,
        sul_factor=factor,
        peak_radius_mm=peak_radius_mm,
        focal_radius_mm=focal_radius_mm,
    )
    boxes = ndimage.find_objects(labels)  # labels are 1..N: one bounding box per lesion
    lesions = [
        measure_lesion(ctx, labels, i + 1, box) for i, box in enumerate(boxes) if box is not None
    ]
    hottest = max(lesions, key=lambda les: les.suv_peak, default=None)
    kernel_ml = float(ball_kernel(study.affine, peak_radius_mm).sum()) * study.voxel_volume_ml
    return ScanReport(
        patient_id=meta.patient_id,
        study_id=meta.study_id,
        shape=list(study.shape),
        spacing_mm=list(study.spacing_mm),
        orientation=study.orientation,
        voxel_volume_ml=study.voxel_volume_ml,
        connectivity=connectivity,
        has_ct=study.ct is not None,
        peak_sphere_volume_ml=kernel_ml,
        n_lesions=len(lesions),
        total_mtv_ml=float(sum(les.volume_ml for les in lesions)),
        total_tlg=float(sum(les.tlg for les in lesions)),
        hottest_lesion_id=hottest.lesion_id if hottest else None,
        hottest_suv_peak=hottest.suv_peak if hottest else None,
        sul_factor=factor,
        sul_reason=sul_reason,
        liver=liver_reference(study, liver_mask, liver_config, lesion_mask=labels > 0),
        lesions=lesions,
        uptake_time_min=None if meta.uptake_time_s is None else meta.uptake_time_s / 60.0,
    )


def analyze_study(
    study: Study,
    mask: np.ndarray | None = None,
    *,
    connectivity: int = 26,
    liver_mask: np.ndarray | None = None,
    liver_config: LiverSearchConfig | None = None,
    peak_radius_mm: float = SUV_PEAK_RADIUS_MM,
    focal_radius_mm: float = FOCAL_RADIUS_MM,
) -> ScanReport:
    """Measure every lesion of one study and its liver reference.

    Args:
        study: PET in SUV (optional CT in HU) with its affine.
        mask: lesion mask on the PET grid (binary or instance); defaults to ``study.mask``.
            Without any mask the report has no lesions (the liver reference is still measured).
        connectivity: 6, 18 or 26 for splitting a binary mask into lesions.
        liver_mask: optional liver mask for the PERCIST reference (else found automatically).
        liver_config: thresholds of the automatic liver search.
        peak_radius_mm: SUVpeak sphere radius (default: 1 cm^3 sphere, 6.2 mm).
        focal_radius_mm: radius of the focal-hotspot ball used for intra-lesion focality.
    """
    labels = _labels_for(study, mask, connectivity)
    return _analyze(
        study, labels, connectivity, liver_mask, liver_config, peak_radius_mm, focal_radius_mm
    )


def compare_studies(
    baseline: Study,
    followup: Study,
    *,
    baseline_mask: np.ndarray | None = None,
    followup_mask: np.ndarray | None = None,
    connectivity: int = 26,
    baseline_liver_mask: np.ndarray | None = None,
    followup_liver_mask: np.ndarray | None = None,
    registration: RegistrationConfig | None = None,
    matching: MatchingConfig | None = None,
    liver_config: LiverSearchConfig | None = None,
    rise_threshold_pct: float = RISE_THRESHOLD_PCT,
    nodule_criteria: NoduleCriteria | None = None,
    after_one_cycle: bool = False,
    rule_thresholds: RuleThresholds | None = None,
    alignment: RegistrationResult | None = None,
    ct_contrast: str = "unknown",
    focal_uptake: FocalUptakeCriteria | None = None,
    focal_uptake_exclude: np.ndarray | None = None,
) -> PairReport:
    """Compare a follow-up study with its baseline.

    Aligns follow-up to baseline (rigid, SimpleITK), matches lesions, computes per-lesion and
    whole-disease change, PERCIST / EORTC / Choi, and the rule-based pattern label.

    Args:
        baseline, followup: the two studies (masks default to ``study.mask``).
        baseline_mask, followup_mask: lesion masks overriding ``study.mask``.
        connectivity: lesion connectivity (6, 18 or 26).
        baseline_liver_mask, followup_liver_mask: optional liver masks.
        registration: registration settings (``modality="none"`` assumes a shared frame).
        matching: lesion-matching thresholds.
        liver_config: thresholds of the automatic liver search.
        rise_threshold_pct: SUVpeak rise that counts as "uptake rose".
        nodule_criteria: thresholds for a new intratumoural nodule (Choi PD and rule R2).
        after_one_cycle: EORTC's early (one cycle) PMR threshold of 15% instead of 25%.
        rule_thresholds: thresholds of the rule-based classifier.
        alignment: the registration of these two scans when it is already known (e.g.
            computed for another lesion mask of the same pair): used as it is, and
            ``registration`` is then ignored. The report is the one registering would give.
        ct_contrast: what the CT is, for Choi's density (``petflare.quant.criteria``'s
            ``CT_CONTRAST_CHOICES``): ``portal_venous``, ``none`` or ``unknown``.
        focal_uptake: when given, new focal uptake outside the follow-up's lesions is searched
            with these thresholds (:mod:`petflare.quant.focal_uptake`) into
            ``new_focal_uptake``; None (default) leaves that list empty.
        focal_uptake_exclude: follow-up voxels that search never reports (e.g. the
            physiological-site components an anatomy-aware network segmented).
    """
    if ct_contrast not in CT_CONTRAST_CHOICES:
        raise ValueError(f"ct_contrast must be one of {CT_CONTRAST_CHOICES}, got {ct_contrast!r}")
    rules = rule_thresholds or RuleThresholds()
    nodules = nodule_criteria or rules.nodule
    b_labels = _labels_for(baseline, baseline_mask, connectivity)
    f_labels = _labels_for(followup, followup_mask, connectivity)
    radii = (SUV_PEAK_RADIUS_MM, FOCAL_RADIUS_MM)
    b_rep = _analyze(baseline, b_labels, connectivity, baseline_liver_mask, liver_config, *radii)
    f_rep = _analyze(followup, f_labels, connectivity, followup_liver_mask, liver_config, *radii)
    reg = (
        alignment
        if alignment is not None
        else register_followup_to_baseline(baseline, followup, registration)
    )
    matrix = np.asarray(reg.matrix_ras)
    f_on_b = resample_to(
        f_labels, followup.affine, baseline.shape, baseline.affine, matrix, nearest=True
    )
    b_on_f = resample_to(
        b_labels,
        baseline.affine,
        followup.shape,
        followup.affine,
        np.linalg.inv(matrix),
        nearest=True,
    )
    geometry = PairGeometry(baseline, followup, b_labels, f_labels, b_on_f, f_on_b, matrix)
    matches = match_lesions(b_labels, f_on_b, b_rep.lesions, f_rep.lesions, matrix, matching)
    annotate_new_sites(matches, geometry, f_rep)
    changes = lesion_changes(b_rep, f_rep, matches, geometry, rise_threshold_pct)
    disease = disease_change(b_rep, f_rep, matches, changes, rise_threshold_pct)
    nodule_ids = [c.followup_id for c in changes if nodule_evidence(c, nodules) is not None]
    new_ids = [m.lesion_id for m in matches if m.timepoint == "followup" and m.status == NEW]
    report = PairReport(
        baseline=b_rep,
        followup=f_rep,
        registration=reg,
        matches=matches,
        changes=changes,
        disease=disease,
        percist=percist(b_rep, f_rep, disease.n_new, new_lesion_ids=new_ids),
        eortc=eortc(b_rep, f_rep, changes, disease.n_new, after_one_cycle, new_lesion_ids=new_ids),
        choi=choi(
            b_rep,
            f_rep,
            changes,
            disease.n_new,
            len(nodule_ids),
            ct_contrast=ct_contrast,
            new_lesion_ids=new_ids,
            nodule_lesion_ids=nodule_ids,
        ),
    )
    if focal_uptake is not None:
        report.new_focal_uptake = find_new_focal_uptake(
            baseline,
            followup,
            matrix,
            f_labels,
            exclude=focal_uptake_exclude,
            liver_baseline=b_rep.liver.suv_mean if b_rep.liver.found else None,
            liver_followup=f_rep.liver.suv_mean if f_rep.liver.found else None,
            criteria=focal_uptake,
        )
    report.pattern_rules = classify_pattern_rules(report, rules)
    return report
