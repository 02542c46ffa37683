"""The inference product as a library: PET scans in; lesion masks, reports and a pattern out.

``run_single`` segments and quantifies one scan, ``run_pair`` does both timepoints and compares
them, ``run_manifest`` (:mod:`petflare.inference.batch`) runs a whole longitudinal manifest with
the model loaded once, each row on its own. Each function takes typed
inputs and an already loaded predictor (any object with ``predict(study) -> mask``), so it runs
from a notebook as well as from ``scripts/infer.py``; every stage is timed.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from petflare.errors import PetflareInputError
from petflare.inference.physiology import physiology_evidence, split_physiological, with_evidence
from petflare.inference.postprocess import component_sites
from petflare.inference.results import (
    INFERENCE_SCHEMA_VERSION,
    RESEARCH_NOTICE,
    SINGLE_TIMEPOINT,
    BatchItem,
    InferenceResult,
    LoadedScan,
    PatternCall,
    PatternHead,
    ProgressFn,
    ScanInput,
    StageTimer,
    TimepointResult,
    jsonable,
    mask_filename,
    report_json,
)
from petflare.io.pair_checks import PairCheckResult, check_pair
from petflare.io.study import Study, StudyMeta

if TYPE_CHECKING:
    from petflare.quant.report import ScanReport

#: Re-exported: the result types live in petflare.inference.results; callers may import them
#: from here as before.
__all__ = [
    "INFERENCE_SCHEMA_VERSION",
    "RESEARCH_NOTICE",
    "SINGLE_TIMEPOINT",
    "BatchItem",
    "InferenceResult",
    "LoadedScan",
    "PatternCall",
    "PatternHead",
    "ProgressFn",
    "ScanInput",
    "StageTimer",
    "TimepointResult",
    "jsonable",
    "load_scan",
    "mask_filename",
    "model_info",
    "read_scan",
    "report_json",
    "run_manifest",
    "run_pair",
    "run_single",
    "segment",
    "stderr_progress",
]


def stderr_progress(message: str) -> None:
    """Default progress display: one flushed line per stage event on stderr."""
    print(f"[petflare] {message}", file=sys.stderr, flush=True)


class SegmentationPredictor(Protocol):
    """What the pipeline needs from a segmentation model (e.g. ``Predictor.from_folder``)."""

    def predict(self, study: Study) -> np.ndarray:
        """Binary (or instance) lesion mask on ``study``'s own grid."""
        ...


def read_scan(scan: ScanInput, *, patient_id: str = "", study_id: str = "") -> Study:
    """Read and validate one scan into a :class:`Study` in SUVbw (NIfTI or DICOM series).

    Raises:
        PetflareInputError: missing file, not 3D, NaN, Bq/mL without dose, CT missing the PET
            field of view, DICOM lacking a tag needed for SUV, ...; the message names the file.
    """
    pet = Path(scan.pet)
    if not pet.exists():
        raise PetflareInputError(pet, "file or folder not found")
    if scan.ct is not None and not Path(scan.ct).exists():
        raise PetflareInputError(scan.ct, "CT file not found")
    from petflare.io.pair_checks import apply_user_meta

    meta = StudyMeta(patient_id=patient_id, study_id=study_id)
    if pet.is_dir():
        return _read_dicom_scan(scan, meta)
    from petflare.io import load_study

    study = load_study(
        pet,
        scan.ct,
        weight_kg=scan.weight_kg,
        injected_dose_bq=scan.injected_dose_bq,
        meta=meta,
        allow_implausible_suv=scan.allow_implausible_suv,
    )
    study.meta = apply_user_meta(study.meta, scan.meta, pet)
    return study


def load_scan(scan: ScanInput, *, patient_id: str = "", study_id: str = "") -> LoadedScan:
    """:func:`read_scan`, timed: lets a caller validate every input before loading a model."""
    start = time.perf_counter()
    study = read_scan(scan, patient_id=patient_id, study_id=study_id)
    return LoadedScan(study=study, source=scan, read_s=time.perf_counter() - start)


def _read_dicom_scan(scan: ScanInput, meta: StudyMeta) -> Study:
    """Convert a DICOM PET series to an SUVbw Study, with the optional NIfTI CT on its grid."""
    import dataclasses

    from petflare.io import load_ct_on_grid
    from petflare.io.dicom import read_dicom_pet  # import at use: pydicom parsing is optional

    if scan.weight_kg is not None or scan.injected_dose_bq is not None:
        raise PetflareInputError(
            scan.pet,
            "weight_kg / injected_dose_bq apply to NIfTI in Bq/mL only; a DICOM series is "
            "converted to SUV from its own headers",
        )
    from petflare.io.pair_checks import HEADER_PATIENT_ID, apply_user_meta
    from petflare.io.validation import check_suv_plausibility

    study = read_dicom_pet(scan.pet)
    if not scan.allow_implausible_suv:
        check_suv_plausibility(study.pet, scan.pet)
    source = dict(study.meta.source)
    if study.meta.study_id:
        source["dicom_study_id"] = study.meta.study_id
    if study.meta.patient_id:  # the pair checks compare it even when a manifest renames both
        source[HEADER_PATIENT_ID] = study.meta.patient_id
    ct = None
    if scan.ct is not None:
        ct = load_ct_on_grid(scan.ct, study.shape, study.affine)
        source["ct"] = str(scan.ct)
    study_meta = dataclasses.replace(
        study.meta,
        patient_id=meta.patient_id or study.meta.patient_id,
        study_id=meta.study_id or study.meta.study_id,
        source=source,
    )
    study_meta = apply_user_meta(study_meta, scan.meta, scan.pet)
    return Study(pet=study.pet, affine=study.affine, ct=ct, meta=study_meta)


def model_info(predictor: Any) -> dict[str, Any]:
    """Name, version and intended use of the model, from its ``metadata`` when it has one."""
    metadata = getattr(predictor, "metadata", None) or {}
    info = {
        "name": metadata.get("name", type(predictor).__name__),
        "version": metadata.get("version"),
        "intended_use": metadata.get("intended_use"),
        "training_data": metadata.get("training_data"),
    }
    folder = getattr(predictor, "model_dir", None)
    if folder is not None:
        info["folder"] = str(folder)
    inference = getattr(predictor, "inference", None)
    if inference is not None:  # the settings that made the masks (overrides included)
        info["segmentation"] = {
            "threshold": inference.threshold,
            "min_component_ml": getattr(predictor, "min_component_ml", None),
            "tta": getattr(predictor, "tta", None),
            "physiology_filter": getattr(predictor, "physiology_filter", None),
            "organ_classes": getattr(predictor, "organ_classes", None),
            "site_network": getattr(predictor, "sites", None) is not None,
        }
    return jsonable(info)


@dataclass
class SegmentedScan:
    """One study's lesions as the pipeline reports them.

    Attributes:
        instances: lesions labelled 1..N (26-connected components, uint32).
        sites: each lesion's site from an anatomy-aware network's organ output (an organ of
            ``petflare.constants.ORGANS`` or ``"other"``), None without one.
        dropped_physiological: lesions the physiology filter removed, per site.
        organs: the organ map the sites came from (same grid), None without one.
    """

    instances: np.ndarray
    sites: dict[int, str] | None = None
    dropped_physiological: dict[str, int] = field(default_factory=dict)
    organs: np.ndarray | None = None

    def physiological_organs(self) -> np.ndarray | None:
        """Voxels of the organ map in a physiological-uptake organ (brain, myocardium, kidney,
        bladder), or None without an organ map."""
        if self.organs is None:
            return None
        from petflare.constants import ORGAN_TO_INDEX, PHYSIOLOGICAL_SITES

        return np.isin(self.organs, [ORGAN_TO_INDEX[name] for name in PHYSIOLOGICAL_SITES])

    def annotate(self, report: ScanReport) -> None:
        """Write the sites and the filter's removals into the scan's report."""
        report.dropped_physiological = dict(self.dropped_physiological)
        if self.sites is not None:
            for lesion in report.lesions:
                lesion.site = self.sites.get(lesion.lesion_id)


def segment(
    study: Study, predictor: SegmentationPredictor, timer: StageTimer, name: str
) -> SegmentedScan:
    """Segment one study and label its lesions 1..N (26-connected components, uint32).

    The ids are the ones petflare.quant reports (it keeps an instance labelling as given), so
    the written mask and the report agree. A predictor with ``segment(study)`` (the
    :class:`~petflare.inference.predictor.Predictor`) also gives the organ map of an
    anatomy-aware network, from which each lesion gets its site.
    """
    from petflare.quant import lesion_instances

    with timer.stage(f"segment_{name}"):
        run = getattr(predictor, "segment", None)
        found = run(study) if callable(run) else None
        mask = np.asarray(found.mask if found is not None else predictor.predict(study))
        if mask.shape != study.shape:
            raise RuntimeError(
                f"predictor returned a mask of shape {mask.shape} for a study of shape "
                f"{study.shape}"
            )
        instances = np.asarray(lesion_instances(mask > 0))
        organs = None if found is None else found.organs
        return SegmentedScan(
            instances,
            sites=None if organs is None else component_sites(instances, organs),
            dropped_physiological={} if found is None else dict(found.dropped_physiological),
            organs=organs,
        )


def run_single(
    scan: ScanInput | LoadedScan | Study,
    predictor: SegmentationPredictor,
    *,
    progress: ProgressFn | None = None,
) -> InferenceResult:
    """Segment and quantify one scan.

    Args:
        scan: where to read the PET (and CT), an already read scan, or a Study.
        predictor: loaded segmentation model (``predict(study) -> mask``).
        progress: called with one line per stage event (e.g. :func:`stderr_progress`).
    """
    timer = StageTimer(progress)
    study, source = _as_study(scan, timer, SINGLE_TIMEPOINT)
    from petflare.quant import analyze_study

    segmented = segment(study, predictor, timer, SINGLE_TIMEPOINT)
    instances = segmented.instances
    with timer.stage(f"quantify_{SINGLE_TIMEPOINT}"):
        scan_report = analyze_study(study, mask=instances)
        segmented.annotate(scan_report)
    tp = TimepointResult(SINGLE_TIMEPOINT, study, instances, scan_report, source)
    return InferenceResult(
        timepoints={SINGLE_TIMEPOINT: tp},
        model=model_info(predictor),
        timer=timer,
        patient_id=study.meta.patient_id,
    )


def run_pair(
    baseline: ScanInput | LoadedScan | Study,
    followup: ScanInput | LoadedScan | Study,
    predictor: SegmentationPredictor,
    *,
    pattern_head: PatternHead | None = None,
    progress: ProgressFn | None = None,
    timer: StageTimer | None = None,
    patient_id: str = "",
    registration: Any = None,
    ct_contrast: str = "unknown",
    pair_checks: PairCheckResult | None = None,
    allow_patient_mismatch: bool = False,
    swap_reversed_pair: bool = False,
) -> InferenceResult:
    """Segment, quantify and compare a baseline and a follow-up scan, and call the pattern.

    Both scans are read (and validated) before any computation, so a bad follow-up is reported
    before minutes are spent on the baseline.

    Args:
        baseline: baseline scan location, or a loaded Study.
        followup: follow-up scan location, or a loaded Study.
        predictor: loaded segmentation model (``predict(study) -> mask``).
        pattern_head: learned pattern classifier; None uses the rule-based classifier and says so
            (``pattern.source == "rules"``, no probabilities).
        progress: called with one line per stage event.
        timer: an existing timer to add to (batch mode); a new one otherwise.
        patient_id: written into the report.
        registration: ``petflare.quant.RegistrationConfig`` for aligning follow-up to baseline
            (None: quant's default; ``RegistrationConfig(modality="none")`` for scans already
            in one frame of reference).
        ct_contrast: what the CT is, for Choi's density: ``unknown``, ``none`` (non-contrast)
            or ``portal_venous`` (petflare.quant.criteria, docs/report.md).
        pair_checks: the checks already made by the caller (scans already in the right order);
            None makes them here (:func:`petflare.io.pair_checks.check_pair`), before any
            computation.
        allow_patient_mismatch: let scans of different patients through (recorded).
        swap_reversed_pair: exchange the scans when the follow-up is the earlier one.

    Raises:
        PetflareInputError: a bad scan, or a pair that fails the pair checks.
    """
    timer = timer if timer is not None else StageTimer(progress)
    base_study, base_src = _as_study(baseline, timer, "baseline")
    follow_study, follow_src = _as_study(followup, timer, "followup")
    if pair_checks is None:
        pair_checks = check_pair(
            base_study.meta,
            follow_study.meta,
            followup_path=None if follow_src is None else follow_src.pet,
            allow_patient_mismatch=allow_patient_mismatch,
            swap_reversed_pair=swap_reversed_pair,
        )
        if pair_checks.swapped:
            base_study, base_src, follow_study, follow_src = (
                follow_study,
                follow_src,
                base_study,
                base_src,
            )
    return _compute_pair(
        base_study,
        base_src,
        follow_study,
        follow_src,
        predictor,
        timer,
        pattern_head,
        patient_id,
        registration,
        ct_contrast,
        pair_checks,
    )


def _compute_pair(
    base_study: Study,
    base_src: ScanInput | None,
    follow_study: Study,
    follow_src: ScanInput | None,
    predictor: SegmentationPredictor,
    timer: StageTimer,
    pattern_head: PatternHead | None,
    patient_id: str,
    registration: Any = None,
    ct_contrast: str = "unknown",
    pair_checks: PairCheckResult | None = None,
) -> InferenceResult:
    """Segmentation, quantification, comparison and pattern for two loaded studies."""
    from petflare.quant import FocalUptakeCriteria, classify_pattern_rules, compare_studies
    from petflare.quant.focal_uptake import focal_uptake_evidence

    base_segmented, base_physio = _disease_part(
        base_study, segment(base_study, predictor, timer, "baseline")
    )
    follow_all = segment(follow_study, predictor, timer, "followup")
    follow_segmented, follow_physio = _disease_part(follow_study, follow_all)
    # what the follow-up segmented at physiological sites, and the organs of physiological uptake
    # in its organ map (what the filter removed included), is never reported as new focal uptake
    physiological = (follow_all.instances > 0) & (follow_segmented.instances == 0)
    organs = follow_all.physiological_organs()
    if organs is not None:
        physiological |= organs
    base_instances, follow_instances = base_segmented.instances, follow_segmented.instances
    with timer.stage("quantify_and_compare"):
        # measures both scans, aligns them, matches lesions, PERCIST / EORTC / Choi, rules
        pair_report = compare_studies(
            base_study,
            follow_study,
            baseline_mask=base_instances,
            followup_mask=follow_instances,
            registration=registration,
            ct_contrast=ct_contrast,
            focal_uptake=FocalUptakeCriteria(),
            focal_uptake_exclude=physiological if physiological.any() else None,
        )
        base_segmented.annotate(pair_report.baseline)
        follow_segmented.annotate(pair_report.followup)
        pair_report.baseline.physiological_uptake = base_physio
        pair_report.followup.physiological_uptake = follow_physio
    base = TimepointResult("baseline", base_study, base_instances, pair_report.baseline, base_src)
    follow = TimepointResult(
        "followup", follow_study, follow_instances, pair_report.followup, follow_src
    )
    with timer.stage("pattern"):
        if pattern_head is not None:
            pattern = pattern_head(base, follow, pair_report)
        else:
            decision = pair_report.pattern_rules or classify_pattern_rules(pair_report)
            pattern = PatternCall(
                label=str(decision.label),
                source="rules",
                probabilities=None,
                rule=str(decision.rule),
                evidence=decision.evidence,
            )
        pattern.evidence = with_evidence(
            pattern.evidence,
            [
                *physiology_evidence(base_physio, follow_physio),
                *focal_uptake_evidence(pair_report.new_focal_uptake),
            ],
        )
    return InferenceResult(
        timepoints={"baseline": base, "followup": follow},
        model=model_info(predictor),
        timer=timer,
        pair_report=pair_report,
        pattern=pattern,
        patient_id=patient_id or base_study.meta.patient_id,
        pair_checks=pair_checks,
    )


def _disease_part(
    study: Study, segmented: SegmentedScan
) -> tuple[SegmentedScan, dict[str, dict[str, float]]]:
    """The scan's disease lesions (physiological-site components taken out, renumbered) and
    what was taken out per site (:mod:`petflare.inference.physiology`)."""
    split = split_physiological(study, segmented.instances, segmented.sites)
    disease = SegmentedScan(
        split.instances, split.sites, dict(segmented.dropped_physiological), segmented.organs
    )
    return disease, split.physiological


def run_manifest(*args: Any, **kwargs: Any) -> list[BatchItem]:
    """Batch mode (a longitudinal manifest, model loaded once): kept here for callers of the
    pipeline API; see :func:`petflare.inference.batch.run_manifest`."""
    from petflare.inference.batch import run_manifest as run_batch

    return run_batch(*args, **kwargs)


def _as_study(
    scan: ScanInput | LoadedScan | Study, timer: StageTimer, name: str
) -> tuple[Study, ScanInput | None]:
    """Return a loaded Study (reading it when given a location) and its source description."""
    if isinstance(scan, Study):
        return scan, None
    if isinstance(scan, LoadedScan):
        timer.add(f"read_{name}", scan.read_s)
        return scan.study, scan.source
    with timer.stage(f"read_{name}"):
        study = read_scan(scan, study_id=name)
    return study, scan
