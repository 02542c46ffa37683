"""The inference pipeline API with a known segmenter (SUV >= 4 threshold from inference.baselines).

A classical threshold is a legitimate segmentation model with a known answer, so these tests can
check what the product computes (lesion ids, statuses, pattern, geometry of the written masks)
without a trained network.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from petflare.constants import PATTERNS
from petflare.errors import OutputExistsError, PetflareInputError
from petflare.inference import pipeline
from petflare.inference.baselines import fixed_threshold_mask
from petflare.inference.pipeline import (
    INFERENCE_SCHEMA_VERSION,
    PatternCall,
    ScanInput,
    run_manifest,
    run_pair,
    run_single,
)
from petflare.io.nifti import save_nifti
from petflare.io.study import Study, StudyMeta
from petflare.quant import RegistrationConfig
from petflare_testing import make_non_ras_affine

SHAPE = (30, 24, 16)
#: The phantoms share one world frame (no repositioning), so registration is the identity; with
#: default registration a tiny phantom with moved lesions could be "aligned" lesion onto lesion.
SAME_FRAME = RegistrationConfig(modality="none")
BASE_AFFINE = make_non_ras_affine()
FOLLOW_AFFINE = make_non_ras_affine(spacing_mm=(2.5, 2.5, 4.0), rotation_deg=-5.0)


class ThresholdPredictor:
    """SUV >= 4 as a predictor (``predict(study) -> mask``), recording when it ran."""

    metadata = {"name": "suv_ge_4", "version": "classical", "intended_use": "tests"}

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls: list[tuple[float, float]] = []

    def predict(self, study: Study) -> np.ndarray:
        start = time.perf_counter()
        time.sleep(self.delay_s)
        mask = fixed_threshold_mask(study)
        self.calls.append((start, time.perf_counter()))
        return mask


def world_grid(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def phantom(
    shape: tuple[int, int, int], affine: np.ndarray, spheres: list[tuple[np.ndarray, float, float]]
) -> Study:
    """Body of SUV 1 with spheres (world centre mm, radius mm, SUV)."""
    world = world_grid(shape, affine)
    pet = np.ones(shape, dtype=np.float32)
    for centre, radius_mm, suv in spheres:
        pet[np.linalg.norm(world - centre, axis=-1) <= radius_mm] = suv
    return Study(pet=pet, affine=affine)


def centre_at(affine: np.ndarray, fraction: tuple[float, float, float]) -> np.ndarray:
    """World point at a fraction of the baseline field of view (same anatomy on both grids)."""
    vox = (np.asarray(SHAPE) - 1) * np.asarray(fraction)
    return affine[:3, :3] @ vox + affine[:3, 3]


A = centre_at(BASE_AFFINE, (0.3, 0.35, 0.5))
B = centre_at(BASE_AFFINE, (0.7, 0.65, 0.5))
C = centre_at(BASE_AFFINE, (0.3, 0.7, 0.5))


@pytest.fixture(scope="module")
def studies() -> dict[str, Study]:
    """Baseline: A and B. Follow-up (another non-RAS grid): A stable, B gone, new lesion C."""
    baseline = phantom(SHAPE, BASE_AFFINE, [(A, 9.0, 8.0), (B, 8.0, 6.0)])
    followup = phantom((26, 30, 17), FOLLOW_AFFINE, [(A, 9.0, 8.0), (C, 8.0, 7.0)])
    return {"baseline": baseline, "followup": followup}


@pytest.fixture(scope="module")
def pair_result(studies: dict[str, Study]) -> pipeline.InferenceResult:
    return run_pair(
        studies["baseline"], studies["followup"], ThresholdPredictor(), registration=SAME_FRAME
    )


def test_pair_masks_are_instances_on_each_input_grid(
    pair_result: pipeline.InferenceResult, studies: dict[str, Study]
) -> None:
    for name in ("baseline", "followup"):
        tp = pair_result.timepoints[name]
        assert tp.instances.shape == studies[name].shape
        np.testing.assert_array_equal(tp.study.affine, studies[name].affine)
        assert tp.lesion_ids == [1, 2]
        # ids in the mask are the report's lesion ids, and the volumes agree voxel for voxel
        reported = {les.lesion_id: les for les in tp.scan_report.lesions}
        assert sorted(reported) == tp.lesion_ids
        for lesion_id, lesion in reported.items():
            n_voxels = int((tp.instances == lesion_id).sum())
            assert lesion.n_voxels == n_voxels
            assert lesion.volume_ml == pytest.approx(n_voxels * studies[name].voxel_volume_ml)


def test_pair_statuses_and_rule_pattern(pair_result: pipeline.InferenceResult) -> None:
    report = pair_result.report()
    statuses = {(m["timepoint"], m["status"]) for m in report["matches"]}
    assert statuses == {
        ("baseline", "persisting"),
        ("baseline", "resolved"),
        ("followup", "persisting"),
        ("followup", "new"),
    }
    pattern = report["pattern"]
    assert pattern["label"] == "new_lesions"
    assert pattern["source"] == "rules"
    assert pattern["probabilities"] is None  # the rules never pretend to be calibrated
    assert "new_lesions" in pattern["rule"]  # the rule's id, e.g. "R2_new_lesions"
    assert pattern["evidence"]


def test_pair_report_layout(pair_result: pipeline.InferenceResult) -> None:
    report = json.loads(json.dumps(pair_result.report(), allow_nan=False))
    assert report["schema_version"] == INFERENCE_SCHEMA_VERSION
    assert report["quant_schema_version"]
    assert report["mode"] == "pair"
    assert "Research use only" in report["notice"]
    assert set(report["timepoints"]) == {"baseline", "followup"}
    for section in ("registration", "matches", "changes", "disease", "percist", "eortc", "choi"):
        assert section in report, section
    assert report["masks"]["followup"]["file"] == "followup_lesions.nii.gz"
    assert report["masks"]["followup"]["lesion_ids"] == [1, 2]
    assert report["model"]["name"] == "suv_ge_4"
    for stage in ("segment_baseline", "segment_followup", "quantify_and_compare", "pattern"):
        assert report["timings_s"][stage] >= 0.0


def test_learned_head_probabilities_are_reported(studies: dict[str, Study]) -> None:
    calls = []

    def head(base: Any, follow: Any, pair_report: Any) -> PatternCall:
        calls.append((base.name, follow.name, pair_report.disease.n_new))
        probs = dict(zip(PATTERNS, (0.05, 0.1, 0.05, 0.8), strict=True))
        return PatternCall("new_lesions", "learned_head", probs, None, ["head evidence"])

    result = run_pair(
        studies["baseline"],
        studies["followup"],
        ThresholdPredictor(),
        pattern_head=head,
        registration=SAME_FRAME,
    )
    assert calls == [("baseline", "followup", 1)]
    pattern = result.report()["pattern"]
    assert pattern["source"] == "learned_head"
    assert pattern["probabilities"]["new_lesions"] == pytest.approx(0.8)
    assert result.pattern is not None and result.pattern.probability == pytest.approx(0.8)


def test_rules_cannot_carry_probabilities() -> None:
    with pytest.raises(ValueError, match="no probabilities"):
        PatternCall("controlled", "rules", dict.fromkeys(PATTERNS, 0.25))
    with pytest.raises(ValueError, match="unknown pattern"):
        PatternCall("progression", "rules")


def test_single_scan_from_nifti(tmp_path: Path, studies: dict[str, Study]) -> None:
    study = studies["followup"]
    pet = save_nifti(study.pet, study.affine, tmp_path / "SUV.nii.gz")
    seen: list[str] = []
    result = run_single(ScanInput(pet=pet), ThresholdPredictor(), progress=seen.append)
    assert not result.is_pair and result.pattern is None
    tp = result.timepoints["scan"]
    assert tp.lesion_ids == [1, 2]
    report = result.report()
    assert report["mode"] == "single" and report["pattern"] is None
    assert report["timepoints"]["scan"]["n_lesions"] == 2
    assert report["inputs"]["scan"]["format"] == "nifti"
    assert any("segment_scan done" in line for line in seen)
    assert {"read_scan", "segment_scan", "quantify_scan"} <= set(report["timings_s"])


def test_writers_output_folder(tmp_path: Path, pair_result: pipeline.InferenceResult) -> None:
    from petflare.inference.writers import write_outputs

    out = tmp_path / "out"
    written = write_outputs(pair_result, out)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [
            "baseline_lesions.nii.gz",
            "followup_lesions.nii.gz",
            "report.json",
            "lesions.csv",
            "mip.png",
            "report.html",
        ]
    )
    assert set(written) == set(names)
    for name in ("baseline", "followup"):
        img = nib.load(str(out / f"{name}_lesions.nii.gz"))
        tp = pair_result.timepoints[name]
        np.testing.assert_allclose(img.affine, tp.study.affine, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(img.dataobj), tp.instances)
    report = json.loads((out / "report.json").read_text())
    assert {"write_masks", "figure"} <= set(report["timings_s"])
    rows = list(csv.DictReader((out / "lesions.csv").open()))
    assert len(rows) == 4  # two lesions per timepoint
    by_key = {(r["timepoint"], r["lesion_id"]): r["status"] for r in rows}
    assert sorted(by_key.values()) == ["new", "persisting", "persisting", "resolved"]
    # an existing non-empty folder is refused, and left as it was
    with pytest.raises(OutputExistsError):
        write_outputs(pair_result, out)
    assert sorted(p.name for p in out.iterdir()) == names
    write_outputs(pair_result, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == names


def test_failed_write_leaves_nothing(
    tmp_path: Path, pair_result: pipeline.InferenceResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    from petflare.inference import html, writers

    def broken(*args: Any, **kwargs: Any) -> Path:
        raise RuntimeError("disk full")

    monkeypatch.setattr(html, "write_report_html", broken)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        writers.write_outputs(pair_result, out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left behind either


def write_pair_files(root: Path, studies: dict[str, Study], patient: str) -> dict[str, str]:
    row = {"patient_id": patient}
    for name, study in studies.items():
        path = save_nifti(study.pet, study.affine, root / patient / name / "SUV.nii.gz")
        row[f"{name}_pet"] = str(path.relative_to(root))
    return row


def test_manifest_reads_ahead_in_a_thread(
    tmp_path: Path, studies: dict[str, Study], monkeypatch: pytest.MonkeyPatch
) -> None:
    from petflare.io import load_manifest, write_manifest

    root = tmp_path / "data"
    rows = [write_pair_files(root, studies, p) for p in ("P1", "P2", "P3")]
    rows[1]["pattern"] = "new_lesions"
    manifest = write_manifest(rows, root / "manifest.csv")
    reads: list[tuple[str, str, float]] = []
    real_read = pipeline.read_scan

    def traced_read(scan: ScanInput, **kwargs: Any) -> Study:
        reads.append((str(scan.pet), threading.current_thread().name, time.perf_counter()))
        return real_read(scan, **kwargs)

    monkeypatch.setattr(pipeline, "read_scan", traced_read)
    predictor = ThresholdPredictor(delay_s=0.3)
    out = tmp_path / "batch"
    items = run_manifest(
        load_manifest(manifest), predictor, out, html=False, registration=SAME_FRAME
    )

    assert [i.folder for i in items] == ["P1", "P2", "P3"]
    assert sorted(p.name for p in out.iterdir()) == ["P1", "P2", "P3", "batch_summary.csv"]
    assert (out / "P2" / "followup_lesions.nii.gz").is_file()
    assert not (out / "P2" / "report.html").exists()
    assert all(name.startswith("petflare-read") for _, name, _ in reads)
    # P2's scans were read while P1 was still being segmented (the model never waited on them)
    p2_start = min(t for path, _, t in reads if "/P2/" in path)
    p1_segment_end = predictor.calls[1][1]  # second call: P1 follow-up
    assert p2_start < p1_segment_end
    summary = list(csv.DictReader((out / "batch_summary.csv").open()))
    assert [r["pattern"] for r in summary] == ["new_lesions"] * 3
    assert summary[1]["true_pattern"] == "new_lesions"
    assert {r["pattern_source"] for r in summary} == {"rules"}


def _nan_manifest(root: Path, studies: dict[str, Study]) -> list[dict[str, str]]:
    """Three rows, the middle one's follow-up with a NaN voxel (absolute paths)."""
    rows = [write_pair_files(root, studies, p) for p in ("P1", "P2", "P3")]
    bad = root / rows[1]["followup_pet"]
    arr = np.asarray(nib.load(str(bad)).dataobj).copy()
    arr[0, 0, 0] = np.nan
    save_nifti(arr, studies["followup"].affine, bad, overwrite=True)
    return [
        {k: (str(root / v) if k.endswith("_pet") else v) for k, v in row.items()} for row in rows
    ]


def test_manifest_bad_row_is_reported_and_the_batch_goes_on(
    tmp_path: Path, studies: dict[str, Study]
) -> None:
    rows = _nan_manifest(tmp_path / "data", studies)
    out = tmp_path / "batch"
    items = run_manifest(rows, ThresholdPredictor(), out, html=False, registration=SAME_FRAME)

    assert [i.status for i in items] == ["done", "failed", "done"]
    assert "NaN" in items[1].reason and rows[1]["followup_pet"] in items[1].reason
    assert sorted(p.name for p in out.iterdir()) == ["P1", "P3", "batch_summary.csv"]
    summary = list(csv.DictReader((out / "batch_summary.csv").open()))
    assert [r["status"] for r in summary] == ["done", "failed", "done"]
    assert summary[1]["pattern"] == "" and "NaN" in summary[1]["reason"]


def test_manifest_rerun_keeps_finished_rows_unless_overwrite(
    tmp_path: Path, studies: dict[str, Study]
) -> None:
    rows = _nan_manifest(tmp_path / "data", studies)
    out = tmp_path / "batch"
    run_manifest(rows, ThresholdPredictor(), out, html=False, registration=SAME_FRAME)
    first_report = (out / "P1" / "report.json").stat().st_mtime_ns
    # the user fixes P2's scan and reruns: only P2 is computed
    save_nifti(studies["followup"].pet, studies["followup"].affine, rows[1]["followup_pet"],
               overwrite=True)  # fmt: skip
    predictor = ThresholdPredictor()
    items = run_manifest(rows, predictor, out, html=False, registration=SAME_FRAME)
    assert [i.status for i in items] == ["done_earlier", "done", "done_earlier"]
    assert len(predictor.calls) == 2  # P2's baseline and follow-up, nothing else
    assert (out / "P1" / "report.json").stat().st_mtime_ns == first_report
    summary = list(csv.DictReader((out / "batch_summary.csv").open()))
    assert [r["pattern"] for r in summary] == ["new_lesions"] * 3  # earlier rows from their report
    # overwrite=True recomputes everything
    predictor = ThresholdPredictor()
    items = run_manifest(rows, predictor, out, overwrite=True, html=False, registration=SAME_FRAME)
    assert [i.status for i in items] == ["done"] * 3 and len(predictor.calls) == 6


def test_pair_checks_run_before_any_computation(studies: dict[str, Study]) -> None:
    """Different patients are refused before the predictor is called; the override records it."""
    base = dataclasses.replace(studies["baseline"], meta=StudyMeta(patient_id="P1"))
    follow = dataclasses.replace(studies["followup"], meta=StudyMeta(patient_id="P2"))
    predictor = ThresholdPredictor()
    with pytest.raises(PetflareInputError, match="different patients"):
        run_pair(base, follow, predictor, registration=SAME_FRAME)
    assert predictor.calls == []
    result = run_pair(base, follow, predictor, registration=SAME_FRAME, allow_patient_mismatch=True)
    checks = result.report()["pair_checks"]
    assert checks["same_patient"] is False and checks["patient_mismatch_allowed"] is True


def test_reversed_pair_is_swapped_on_request(studies: dict[str, Study]) -> None:
    early = StudyMeta(patient_id="P1", acquisition_datetime="2024-01-10T09:00:00")
    late = StudyMeta(patient_id="P1", acquisition_datetime="2024-03-10T09:00:00")
    base = dataclasses.replace(studies["baseline"], meta=late)  # given the wrong way round
    follow = dataclasses.replace(studies["followup"], meta=early)
    with pytest.raises(PetflareInputError, match="before the baseline"):
        run_pair(base, follow, ThresholdPredictor(), registration=SAME_FRAME)
    result = run_pair(
        base, follow, ThresholdPredictor(), registration=SAME_FRAME, swap_reversed_pair=True
    )
    assert result.timepoints["baseline"].study is follow
    assert result.report()["pair_checks"]["order"] == "swapped"


def test_pair_report_carries_ct_contrast_and_criteria_evidence(studies: dict[str, Study]) -> None:
    """ct_contrast reaches Choi; the disagreement sentences are in report.json."""
    result = run_pair(
        studies["baseline"],
        studies["followup"],
        ThresholdPredictor(),
        registration=SAME_FRAME,
        ct_contrast="none",
    )
    report = result.report()
    assert report["choi"]["ct_contrast"] == "none"
    # rules call new_lesions and PERCIST / EORTC call PMD from the new lesion: no disagreement
    assert report["pattern"]["label"] == "new_lesions"
    assert report["criteria_evidence"] == []
    # the same report read as "controlled" names the new lesion behind PERCIST's PMD
    from petflare.quant.criteria import criteria_vs_pattern

    lines = criteria_vs_pattern(result.pair_report, "controlled")
    assert any(line.startswith("PERCIST PMD") and "follow-up lesion" in line for line in lines)


class OrganAwarePredictor(ThresholdPredictor):
    """SUV >= 4 plus an organ map: the lower half of the first axis is "liver", the upper
    "brain"; one lesion found in the brain was removed by the (pretend) physiology filter."""

    organ_classes = 9
    physiology_filter = True

    def segment(self, study: Study) -> Any:
        from petflare.constants import ORGAN_TO_INDEX
        from petflare.inference.predictor import Segmentation

        organs = np.zeros(study.shape, dtype=np.uint8)
        half = study.shape[0] // 2
        organs[:half] = ORGAN_TO_INDEX["liver"]
        organs[half:] = ORGAN_TO_INDEX["brain"]
        return Segmentation(self.predict(study), organs, {"brain": 1})


def test_lesion_sites_and_filtered_counts_reach_the_report(studies: dict[str, Study]) -> None:
    result = run_pair(
        studies["baseline"], studies["followup"], OrganAwarePredictor(), registration=SAME_FRAME
    )
    assert result.pair_report is not None
    for name, scan in (
        ("baseline", result.pair_report.baseline),
        ("followup", result.pair_report.followup),
    ):
        tp = result.timepoints[name]
        half = tp.study.shape[0] // 2
        for lesion in scan.lesions:
            rows = np.nonzero(tp.instances == lesion.lesion_id)[0]
            assert (rows < half).mean() >= 0.5
            # in a pair, lesions in the brain are physiological uptake, not compared
            assert lesion.site == "liver"
        assert scan.dropped_physiological == {"brain": 1}
    report = json.loads(result.pair_report.to_json())
    assert {les["site"] for les in report["baseline"]["lesions"]} == {"liver"}
    assert set(report["baseline"]["physiological_uptake"]) == {"brain"}
    # a lesion-only predictor reports no site
    plain = run_single(studies["baseline"], ThresholdPredictor())
    assert all(les.site is None for les in plain.timepoints["scan"].scan_report.lesions)


class BandOrganPredictor(ThresholdPredictor):
    """SUV >= 4 plus an organ map in bands along the first array axis: liver, myocardium,
    brain (no physiology filter: every component reaches the pipeline)."""

    organ_classes = 9

    def segment(self, study: Study) -> Any:
        from petflare.constants import ORGAN_TO_INDEX
        from petflare.inference.predictor import Segmentation

        organs = np.zeros(study.shape, dtype=np.uint8)
        organs[:10] = ORGAN_TO_INDEX["liver"]
        organs[10:20] = ORGAN_TO_INDEX["myocardium"]
        organs[20:] = ORGAN_TO_INDEX["brain"]
        return Segmentation(self.predict(study), organs)


def test_physiological_changes_are_named_and_not_counted_as_disease() -> None:
    """Disease stable in the liver; the heart's uptake halves and the brain cortex appears at
    follow-up. A lesion-only reading calls new lesions; the physiology-aware one controlled."""
    liver, heart, brain = (centre_at(BASE_AFFINE, (f, 0.5, 0.5)) for f in (0.15, 0.5, 0.85))
    baseline = phantom(SHAPE, BASE_AFFINE, [(liver, 6.0, 8.0), (heart, 6.0, 12.0)])
    followup = phantom(
        SHAPE, BASE_AFFINE, [(liver, 6.0, 8.0), (heart, 6.0, 6.0), (brain, 6.0, 9.0)]
    )
    plain = run_pair(baseline, followup, ThresholdPredictor(), registration=SAME_FRAME)
    assert plain.pattern.label == "new_lesions"
    aware = run_pair(baseline, followup, BandOrganPredictor(), registration=SAME_FRAME)
    assert aware.pattern.label == "controlled"
    report = aware.pair_report
    assert report is not None
    for scan in (report.baseline, report.followup):
        assert [les.site for les in scan.lesions] == ["liver"]
        assert scan.n_lesions == 1
    assert report.disease.n_new == 0
    assert report.new_focal_uptake == []  # the brain appearing is a physiological site
    assert set(report.baseline.physiological_uptake) == {"myocardium"}
    assert set(report.followup.physiological_uptake) == {"myocardium", "brain"}
    assert report.baseline.physiological_uptake["myocardium"]["suv_max"] == pytest.approx(12.0)
    assert report.followup.physiological_uptake["myocardium"]["suv_max"] == pytest.approx(6.0)
    lines = [e for e in aware.pattern.evidence if "physiological uptake" in e]
    assert len(lines) == 2
    assert lines[0].startswith("brain: not segmented -> SUVmax 9.0")
    assert lines[1].startswith("myocardium: SUVmax 12.0")
    # the written follow-up mask holds the disease lesion only, with the report's id
    follow = aware.timepoints["followup"]
    assert follow.lesion_ids == [1]
    assert (follow.instances > 0).sum() == follow.scan_report.lesions[0].n_voxels


class HighThresholdPredictor(ThresholdPredictor):
    """SUV >= 12: finds the hot mass, misses a focus of SUV 8."""

    def predict(self, study: Study) -> np.ndarray:
        return (study.pet >= 12.0).astype(np.uint8)


def test_a_rising_focus_the_masks_miss_is_named_and_marked(tmp_path: Path) -> None:
    from petflare.inference.status_figures import status_mip_figure, unsegmented_focus_centres

    baseline = phantom(SHAPE, BASE_AFFINE, [(A, 9.0, 15.0)])
    followup = phantom(SHAPE, BASE_AFFINE, [(A, 9.0, 15.0), (C, 6.0, 8.0)])
    missed = run_pair(baseline, followup, HighThresholdPredictor(), registration=SAME_FRAME)
    report = missed.pair_report
    assert report is not None and report.disease.n_new == 0
    (focus,) = report.new_focal_uptake
    assert np.linalg.norm(np.asarray(focus.centre_mm) - C) <= 6.0
    assert any("rising outside the segmented lesions" in line for line in missed.pattern.evidence)
    (centre,) = unsegmented_focus_centres(missed)["followup"]
    assert np.allclose(centre, focus.centre_mm)
    assert status_mip_figure(missed, tmp_path / "mip.png").stat().st_size > 0
    # segmented (SUV >= 4), it is a new lesion and no longer an unsegmented focus
    seen = run_pair(baseline, followup, ThresholdPredictor(), registration=SAME_FRAME)
    assert seen.pair_report is not None and seen.pair_report.new_focal_uptake == []
    assert seen.pair_report.disease.n_new == 1


class HighThresholdBladderPredictor(HighThresholdPredictor):
    """HighThresholdPredictor whose organ map calls everything bladder (a site network's map,
    with the filter's removals already gone from the mask)."""

    organ_classes = 9

    def segment(self, study: Study) -> Any:
        from petflare.constants import ORGAN_TO_INDEX
        from petflare.inference.predictor import Segmentation

        organs = np.full(study.shape, ORGAN_TO_INDEX["bladder"], dtype=np.uint8)
        organs[self.predict(study) > 0] = 0  # the hot mass itself is disease
        return Segmentation(self.predict(study), organs)


def test_no_rising_focus_is_named_inside_an_organ_of_physiological_uptake() -> None:
    """Urine filling the bladder rises focally between visits; the organ map says where the
    bladder is, so the voxelwise check leaves it alone even when no mask held it."""
    baseline = phantom(SHAPE, BASE_AFFINE, [(A, 9.0, 15.0)])
    followup = phantom(SHAPE, BASE_AFFINE, [(A, 9.0, 15.0), (C, 6.0, 8.0)])
    missed = run_pair(baseline, followup, HighThresholdPredictor(), registration=SAME_FRAME)
    assert missed.pair_report is not None and len(missed.pair_report.new_focal_uptake) == 1
    aware = run_pair(baseline, followup, HighThresholdBladderPredictor(), registration=SAME_FRAME)
    assert aware.pair_report is not None and aware.pair_report.new_focal_uptake == []
