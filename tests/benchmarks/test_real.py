"""Tests of the real-data benchmark: metrics, annotations, perturbations, report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from petflare.benchmarks import real
from petflare.constants import ORGAN_TO_INDEX
from petflare.errors import PetflareInputError
from petflare.io.study import Study
from petflare.paths import real_data_dir
from petflare_testing import REPO, make_non_ras_affine

REAL = real_data_dir()
VOXEL_ML = 0.008  # 2 mm cubes

BRAIN, BLADDER, LIVER = ORGAN_TO_INDEX["brain"], ORGAN_TO_INDEX["bladder"], ORGAN_TO_INDEX["liver"]


def _regions() -> np.ndarray:
    """A 40^3 map: known disease, brain, bladder and liver boxes, the rest unannotated."""
    regions = np.zeros((40, 40, 40), dtype=np.uint8)
    regions[5:12, 5:12, 5:12] = real.KNOWN_DISEASE_LABEL
    regions[25:35, 5:15, 25:35] = BRAIN
    regions[5:12, 25:35, 25:35] = BLADDER
    regions[20:30, 20:30, 5:12] = LIVER
    return regions


def test_a_wrong_mask_has_more_fpv_outside_known_disease() -> None:
    regions = _regions()
    right = (regions == real.KNOWN_DISEASE_LABEL).astype(np.uint8)
    wrong = right.copy()
    wrong[26:30, 6:10, 26:30] = 1  # in the brain
    wrong[1:3, 37:39, 37:39] = 1  # unannotated
    fpv_right, _, forbidden_right, dice, found, _ = real.real_scan_metrics(right, regions, VOXEL_ML)
    fpv_wrong, by_region, forbidden, _, _, volume = real.real_scan_metrics(wrong, regions, VOXEL_ML)
    assert fpv_right == 0.0 and forbidden_right == ()
    assert dice is None and found is None  # no GTV given
    assert fpv_wrong == pytest.approx((64 + 8) * VOXEL_ML)
    assert by_region["brain"] == pytest.approx(64 * VOXEL_ML)
    assert by_region[real.UNANNOTATED] == pytest.approx(8 * VOXEL_ML)
    assert forbidden == ("brain",)
    assert volume == pytest.approx(float(wrong.sum()) * VOXEL_ML)


def _bench_with(row: real.RealScanResult) -> real.RealBenchmark:
    bench = _bench()
    bench.wholebody.append(row)
    return bench


def test_known_disease_found_counts_the_pieces_a_prediction_keeps() -> None:
    regions = np.zeros((20, 20, 20), dtype=np.uint8)
    regions[2:5, 2:5, 2:5] = real.KNOWN_DISEASE_LABEL
    regions[12:16, 12:16, 12:16] = real.KNOWN_DISEASE_LABEL
    both = (regions == real.KNOWN_DISEASE_LABEL).astype(np.uint8)
    one = both.copy()
    one[12:16] = 0  # a filter that deleted the second tumour
    assert real.known_disease_found(both, regions) == [2, 2]
    assert real.known_disease_found(one, regions) == [1, 2]
    assert real.known_disease_found(one, np.zeros_like(regions)) is None
    row = real.RealScanResult("acrin", "m", real.UNPERTURBED, 10.0, {}, (), None, None, 1.0)
    row.disease_found = [1, 2]
    assert row.to_dict()["disease_found"] == [1, 2]
    assert "| 1 of 2 |" in real.report_markdown(_bench_with(row), "cmd")


def test_a_component_touching_known_disease_is_not_false_positive() -> None:
    regions = _regions()
    pred = np.zeros_like(regions)
    pred[8:16, 8:10, 8:10] = 1  # starts in the disease, runs out of it: one component
    fpv, by_region, _, _, _, _ = real.real_scan_metrics(pred, regions, VOXEL_ML)
    assert fpv == 0.0 and sum(by_region.values()) == 0.0


def test_with_a_gtv_a_shifted_mask_scores_lower_dice_and_higher_fpv() -> None:
    regions = _regions()
    gt = (regions == real.KNOWN_DISEASE_LABEL).astype(np.uint8)
    right = gt.copy()
    shifted = np.roll(gt, 10, axis=0)  # misses the GTV, lands in unannotated tissue
    good = real.real_scan_metrics(right, regions, VOXEL_ML, gt)
    bad = real.real_scan_metrics(shifted, regions, VOXEL_ML, gt)
    assert good[3] == pytest.approx(1.0) and good[4] is True and good[0] == 0.0
    assert bad[3] is not None and bad[3] < good[3]
    assert bad[4] is False
    assert bad[0] > good[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fpv_by_region_adds_up_to_fpv(seed: int) -> None:
    rng = np.random.default_rng(seed)
    regions = _regions()
    pred = (rng.random(regions.shape) > 0.97).astype(np.uint8)
    fpv, by_region, _, _, _, _ = real.real_scan_metrics(pred, regions, VOXEL_ML)
    assert fpv > 0.0
    assert sum(by_region.values()) == pytest.approx(fpv)
    assert real.KNOWN_DISEASE not in by_region


def test_metrics_reject_grids_that_differ() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        real.real_scan_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 5), np.uint8), VOXEL_ML)


def _study(shape: tuple[int, int, int] = (24, 20, 16)) -> Study:
    pet = np.full(shape, 0.5, dtype=np.float32)
    pet[2:6, 2:6, 2:6] = 8.0  # "bladder"
    pet[10:14, 10:14, 8:12] = 6.0  # "tumour"
    pet[18:20, 3:5, 3:5] = 5.0  # hot, but in no rule's box
    return Study(pet=pet, affine=make_non_ras_affine((2.0, 3.0, 4.0)))


def test_make_regions_labels_hot_voxels_in_their_boxes_first_rule_wins() -> None:
    study = _study()
    rules = [
        real.RegionRule(real.KNOWN_DISEASE, (8, 16, 8, 16, 6, 14), 4.0),
        real.RegionRule("bladder", (0, 16, 0, 16, 0, 16), 4.0),  # also covers the tumour box
    ]
    regions = real.make_regions(study, rules)
    assert regions.dtype == np.uint8 and regions.shape == study.shape
    assert (regions[2:6, 2:6, 2:6] == BLADDER).all()
    assert (regions[10:14, 10:14, 8:12] == real.KNOWN_DISEASE_LABEL).all()
    assert (regions[18:20, 3:5, 3:5] == 0).all()  # outside every box
    assert regions[1, 3, 3] == BLADDER  # the one-voxel margin
    assert regions[0, 3, 3] == 0


def test_make_regions_largest_only_keeps_one_component() -> None:
    study = _study()
    rules = [real.RegionRule("liver", (0, 24, 0, 20, 0, 16), 4.0, largest_only=True)]
    regions = real.make_regions(study, rules)
    assert (regions[2:6, 2:6, 2:6] == LIVER).all()  # 64 voxels: the largest
    assert (regions[10:14, 10:14, 8:12] == 0).all()


def test_make_regions_refuses_an_unknown_region() -> None:
    with pytest.raises(ValueError, match="unknown region"):
        real.make_regions(_study(), [real.RegionRule("spleen", (0, 1, 0, 1, 0, 1), 1.0)])


def test_regions_round_trip_and_the_reader_checks_the_grid(tmp_path: Path) -> None:
    study = _study()
    regions = real.make_regions(study, [real.RegionRule("bladder", (0, 8, 0, 8, 0, 8), 4.0)])
    path = real.write_regions(regions, study, tmp_path / "c" / real.REGIONS_FILE, overwrite=False)
    np.testing.assert_array_equal(real.load_regions(path, study), regions)
    moved = Study(pet=study.pet, affine=study.affine @ np.diag([1.0, 1.0, 2.0, 1.0]))
    with pytest.raises(PetflareInputError, match="affine"):
        real.load_regions(path, moved)
    with pytest.raises(PetflareInputError, match="shape"):
        real.load_regions(path, _study((24, 20, 15)))
    bad = regions.copy()
    bad[0, 0, 0] = 42
    real.write_regions(bad, study, tmp_path / "bad.nii.gz", overwrite=False)
    with pytest.raises(PetflareInputError, match="unknown region values"):
        real.load_regions(tmp_path / "bad.nii.gz", study)
    with pytest.raises(PetflareInputError):
        real.load_regions(tmp_path / "missing.nii.gz", study)


@pytest.mark.parametrize("spacing_mm", [2.0, 3.0, 5.0])
def test_resampling_keeps_the_field_of_view_and_maps_masks_back(spacing_mm: float) -> None:
    study = _study()
    perturbed, back = real.resampled(spacing_mm)(study)
    np.testing.assert_allclose(perturbed.spacing_mm, spacing_mm, rtol=1e-6)
    corner = np.array([-0.5, -0.5, -0.5, 1.0])
    np.testing.assert_allclose(perturbed.affine @ corner, study.affine @ corner, atol=1e-6)
    mask = back((perturbed.pet > 3.0).astype(np.uint8))
    assert mask.shape == study.shape
    truth = study.pet > 3.0
    dice = 2.0 * (mask.astype(bool) & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.6  # 5 mm voxels on 4-voxel blobs: coarse, but in the right place


def test_the_other_perturbations_change_the_suv_as_described() -> None:
    study = _study()
    scaled, _ = real.suv_scaled(1.3)(study)
    np.testing.assert_allclose(scaled.pet, study.pet * 1.3, rtol=1e-6)
    blurred, _ = real.blurred(6.0)(study)
    assert blurred.pet.max() < study.pet.max()
    assert blurred.pet.sum() == pytest.approx(study.pet.sum(), rel=0.05)
    noisy, same = real.noisy(0.15, seed=3)(study)
    assert noisy.pet.min() >= 0.0 and not np.array_equal(noisy.pet, study.pet)
    assert same(np.ones(3)) is not None
    np.testing.assert_array_equal(real.noisy(0.15, seed=3)(study)[0].pet, noisy.pet)


def test_used_in_training_reads_the_metadata() -> None:
    metadata = {"training": {"data_source": {"backgrounds": ["../real/chus052_fdg_dicom"]}}}
    assert real.used_in_training(metadata, "chus052_fdg_dicom")
    assert not real.used_in_training(metadata, "acrin_nsclc_042_fdg_dicom")
    assert not real.used_in_training({}, "STS_001")
    assert real.used_in_training({"training": {"crops": "STS_001"}}, "sts001_wholebody_fdg_dicom")


def test_used_in_training_ignores_left_out_backgrounds() -> None:
    """A hybrid run's record (synth.hybrid: backgrounds_used / backgrounds_not_used, exclude)."""
    metadata = {
        "training": {
            "hybrid": {
                "backgrounds_used": [{"name": "acrin042"}, {"name": "chus052"}],
                "backgrounds_not_used": {"sts001": "excluded"},
                "exclude": ["sts001"],
            }
        }
    }
    assert real.used_in_training(metadata, "acrin_nsclc_042_fdg_dicom")
    assert real.used_in_training(metadata, "chus052_fdg_dicom")
    assert not real.used_in_training(metadata, "sts001_wholebody_fdg_dicom")
    assert not real.used_in_training(metadata, "STS_001")  # same patient, also left out


def test_a_scan_that_the_site_network_saw_counts_as_seen() -> None:
    """A folder and its site network: either one's training makes the scan "seen"."""
    lesion_only: dict = {"training": {"data_source": {"phantom": {}}}}
    sites = {"training": {"real_backgrounds": {"used": ["chus052"], "not_used": ["sts001"]}}}
    assert not real.used_by_any(lesion_only, "chus052_fdg_dicom")
    assert real.used_by_any([lesion_only, sites], "chus052_fdg_dicom")
    assert not real.used_by_any([lesion_only, sites], "sts001_wholebody_fdg_dicom")
    assert not real.used_by_any(None, "chus052_fdg_dicom")


def test_baselines_follow_the_issue_definitions() -> None:
    study = _study()
    fixed = real.fixed_suv_baseline(study)
    assert fixed.sum() == int((study.pet >= 2.5).sum())
    relative = real.percent_suvmax_baseline(study)
    assert relative[3, 3, 3] == 1 and relative[0, 0, 0] == 0


def _bench() -> real.RealBenchmark:
    bench = real.RealBenchmark(model="models/x", methods=["model", *real.BASELINES])
    sts, acrin = "sts001_wholebody_fdg_dicom", "acrin_nsclc_042_fdg_dicom"
    for method in bench.methods:
        bench.wholebody.append(
            real.RealScanResult(
                sts,
                method,
                real.UNPERTURBED,
                120.0,
                {"bladder": 100.0, real.UNANNOTATED: 20.0},
                ("bladder",),
                0.3,
                True,
                400.0,
            )
        )
    bench.wholebody.append(
        real.RealScanResult(
            acrin, "model", real.UNPERTURBED, 10.0, {"bowel": 10.0}, (), None, None, 30.0
        )
    )
    bench.wholebody.append(
        real.RealScanResult(sts, "model", "SUV x1.3", 200.0, {}, (), 0.31, True, 500.0)
    )
    bench.used_in_training = {sts: False, acrin: True, "STS_001": False}
    bench.crops.append(
        real.CropResult("STS_001", 55.0, {"model": 0.2, "SUV>=2.5": 0.5, "41% SUVmax": 0.4})
    )
    return bench


def test_report_states_tables_targets_and_robustness(tmp_path: Path) -> None:
    md, js = real.write_report(_bench(), tmp_path / "r.md", "python scripts/benchmark_real.py")
    text = md.read_text()
    assert (
        "| sts001_wholebody_fdg_dicom | no | model | yes | n/a | 0.30 | 120.0 | bladder 100.0"
        in text
    )
    assert "NOT met (found, FPV <= 50 ml)" in text
    assert (
        "| acrin_nsclc_042_fdg_dicom | yes | model | n/a | n/a | n/a | 10.0 | bowel 10.0 | none |"
        in text
    )
    assert "met (FPV <= 50 ml" in text
    assert "model: mean Dice above both classical baselines: NOT met" in text
    assert (
        "| sts001_wholebody_fdg_dicom | model | SUV x1.3 | 200.0 | +67 % | 0.31 | +3 % | NO |"
        in text
    )
    assert "Within 20 %: 0 of 1 perturbed scans." in text
    payload = json.loads(js.read_text())
    assert (
        payload["schema_version"] == "1.0"
        and payload["used_in_training"]["acrin_nsclc_042_fdg_dicom"]
    )
    assert payload["crops"][0]["dice"]["model"] == 0.2
    with pytest.raises(PetflareInputError):
        real.write_report(_bench(), tmp_path / "r.md", "cmd")
    md.write_text("stale")
    real.rerender_report(md)
    assert md.read_text() == text  # the JSON holds everything the markdown shows


@pytest.mark.parametrize(
    ("value", "reference", "floor", "expected"),
    [(1.1, 1.0, 0.0, True), (1.3, 1.0, 0.0, False), (0.5, 0.0, 1.0, True), (None, 1.0, 0.0, None)],
)
def test_within_tolerance(
    value: float | None, reference: float, floor: float, expected: bool | None
) -> None:
    assert real.within_tolerance(value, reference, floor) is expected


def test_script_help() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark_real.py"), "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--model" in proc.stdout and "--make-annotations" in proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(
    not (REAL / "sts001_wholebody_fdg_dicom" / "image").is_dir(),
    reason=f"real data not found under {REAL} (set PETFLARE_REAL_DATA)",
)
def test_end_to_end_on_the_real_sts001_scan(tmp_path: Path) -> None:
    """The shipped annotation lies on the series' grid; a threshold segmenter finds the
    sarcoma and pays the bladder and heart as false positives; the report is written."""
    bench = real.run_benchmark(
        REAL,
        REPO / real.ANNOTATIONS_DIR,
        {"threshold": lambda s: (s.pet >= 4.0).astype(np.uint8)},
        model_name="threshold",
        perturbations={"SUV x1.3": real.suv_scaled(1.3)},
        cases=real.WHOLEBODY_CASES[:1],
        crops=("STS_001",),
    )
    rows = {(r.method, r.variant): r for r in bench.wholebody}
    base = rows[("threshold", real.UNPERTURBED)]
    assert base.found and base.dice is not None and base.dice > 0.1
    assert {"bladder", "myocardium"} <= set(base.forbidden_touched)
    assert base.fpv_by_region_ml["bladder"] > 20.0
    assert rows[("threshold", "SUV x1.3")].fpv_ml > base.fpv_ml
    assert bench.crops[0].dice["threshold"] > 0.0
    md, _ = real.write_report(bench, tmp_path / "r.md", "cmd")
    assert "sts001_wholebody_fdg_dicom" in md.read_text()


@pytest.mark.slow
@pytest.mark.skipif(
    not (REAL / "chus052_fdg_dicom" / "image").is_dir(),
    reason=f"real CHUS-052 DICOM not found under {REAL} (set PETFLARE_REAL_DATA)",
)
def test_philips_cnts_series_reads_as_suv() -> None:
    study = real.read_real_pet(REAL / "chus052_fdg_dicom" / "image")
    assert study.shape == (144, 144, 255)
    assert "7053,1000" in study.meta.source["suv_conversion"]
    assert 40.0 < float(study.pet.max()) < 70.0  # bladder; counts would be ~1e5
    regions = real.load_regions(
        real.regions_path(REPO / real.ANNOTATIONS_DIR, "chus052_fdg_dicom"), study
    )
    assert (regions == ORGAN_TO_INDEX["brain"]).sum() * study.voxel_volume_ml > 1000.0


def test_used_in_training_prefers_the_recorded_backgrounds() -> None:
    """A folder whose export recorded its hybrid backgrounds is judged by that record alone
    (a command line that names a left-out scan does not make it 'seen')."""
    metadata = {
        "training": {
            "command": "petflare-hybrid exclude=[sts001]",
            "real_backgrounds": {"used": ["acrin042", "chus052"], "not_used": ["sts001"]},
        }
    }
    assert real.used_in_training(metadata, "acrin_nsclc_042_fdg_dicom")
    assert real.used_in_training(metadata, "chus052_fdg_dicom")
    assert not real.used_in_training(metadata, "sts001_wholebody_fdg_dicom")


def test_organ_agreement_scores_a_misplaced_organ_lower() -> None:
    regions = _regions()
    right = np.where(regions == real.KNOWN_DISEASE_LABEL, 0, regions).astype(np.uint8)
    wrong = right.copy()
    wrong[regions == BRAIN] = 0
    wrong[5:12, 5:12, 5:12] = BRAIN  # the "brain" is on the tumour
    wrong[30:33, 30:33, 30:33] = BRAIN  # and a second piece elsewhere
    good = {o.organ: o for o in real.organ_agreement("c", right, regions, VOXEL_ML)}
    bad = {o.organ: o for o in real.organ_agreement("c", wrong, regions, VOXEL_ML)}
    assert set(good) == {"brain", "bladder", "liver"}  # organs neither side has are left out
    assert good["brain"].dice == pytest.approx(1.0) and good["brain"].largest_inside == 1.0
    assert good["brain"].predicted_components == 1
    assert bad["brain"].dice == pytest.approx(0.0) and bad["brain"].largest_inside == 0.0
    assert bad["brain"].predicted_components == 2
    assert bad["brain"].annotated_ml == pytest.approx(1000 * VOXEL_ML)
    assert bad["bladder"].dice == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        real.organ_agreement("c", right[:-1], regions, VOXEL_ML)


def test_report_shows_the_organ_table_and_rerenders_it(tmp_path: Path) -> None:
    bench = _bench()
    bench.organs = real.organ_agreement(
        "sts001_wholebody_fdg_dicom", _regions() % 100, _regions(), VOXEL_ML
    )
    md, _ = real.write_report(bench, tmp_path / "r.md", "cmd")
    text = md.read_text()
    assert "## Organ output against the annotated regions" in text
    assert "| sts001_wholebody_fdg_dicom | no | brain | 8 | 8 | 1.00 | 1 | 1.00 |" in text
    md.write_text("stale")
    real.rerender_report(md)
    assert md.read_text() == text
