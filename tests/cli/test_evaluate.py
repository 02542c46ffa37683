"""End-to-end tests of petflare-evaluate on a tiny autoPET-layout dataset (no model needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from petflare.cli.evaluate import dataset_entries, evaluate_entries
from petflare.io import save_nifti, write_manifest
from petflare.io.study import Study
from petflare_testing import make_tiny_model_folder

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "evaluate.py"
SHAPE = (14, 12, 10)
# Non-RAS, permuted axes, anisotropic: 2 x 3 x 4 mm -> 0.024 ml per voxel.
AFFINE = np.array(
    [
        [0.0, -2.0, 0.0, 30.0],
        [-3.0, 0.0, 0.0, 12.0],
        [0.0, 0.0, 4.0, -40.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
VOXEL_ML = 0.024


def _write_study(folder: Path, suv: np.ndarray, seg: np.ndarray) -> None:
    save_nifti(suv.astype(np.float32), AFFINE, folder / "SUV.nii.gz")
    save_nifti(seg.astype(np.uint8), AFFINE, folder / "SEG.nii.gz")


def _volumes() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(SUV, ground truth, predicted mask) of two studies.

    p1/s1: a lesion cube 3^3 of SUV 8 with a 2^3 lesion of SUV 3 (only the 41% baseline finds
    it); the prediction covers 18 of the 27 voxels and one 2-voxel false positive.
    p2/s1: a negative scan with a hot spot SUV 6 (false positive for both baselines); the
    prediction is empty.
    """
    rng = np.random.default_rng(0)
    suv1 = (1.0 + 0.1 * rng.random(SHAPE)).astype(np.float32)
    seg1 = np.zeros(SHAPE, np.uint8)
    suv1[2:5, 2:5, 2:5] = 8.0
    seg1[2:5, 2:5, 2:5] = 1
    suv1[9:11, 8:10, 6:8] = 3.0
    seg1[9:11, 8:10, 6:8] = 1
    pred1 = np.zeros(SHAPE, np.uint8)
    pred1[3:6, 2:5, 2:5] = 1
    pred1[12, 0, 0:2] = 1
    suv2 = (1.0 + 0.1 * rng.random(SHAPE)).astype(np.float32)
    suv2[6:8, 6:8, 6:8] = 6.0
    seg2 = np.zeros(SHAPE, np.uint8)
    return {"p1_s1": (suv1, seg1, pred1), "p2_s1": (suv2, seg2, np.zeros(SHAPE, np.uint8))}


@pytest.fixture()
def autopet_dataset(tmp_path: Path) -> tuple[Path, Path]:
    """autoPET tree <root>/<patient>/<study>/{SUV,SEG}.nii.gz and a predictions folder."""
    root, preds = tmp_path / "autopet", tmp_path / "preds"
    for case, (suv, seg, pred) in _volumes().items():
        patient, study = case.split("_")
        _write_study(root / patient / study, suv, seg)
        save_nifti(pred, AFFINE, preds / f"{case}.nii.gz")
    return root, preds


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "progress=false", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


@pytest.mark.slow
def test_cli_end_to_end_with_predictions(autopet_dataset: tuple[Path, Path], tmp_path: Path):
    root, preds = autopet_dataset
    out = tmp_path / "eval"
    proc = _run(f"dataset={root}", f"predictions_dir={preds}", f"out={out}")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "metrics.json").read_text())
    assert report["schema_version"] == "1.0"
    assert set(report["methods"]) == {"predictions", "suv_ge_4", "suvmax_41pct"}
    scans = {s["case"]: s for s in report["scans"]}
    assert set(scans) == {"p1_s1", "p2_s1"}
    assert scans["p1_s1"]["voxel_volume_ml"] == pytest.approx(VOXEL_ML)

    # predictions: Dice 2*18/(35+29); FP 2 voxels; the 8-voxel lesion missed.
    p1 = scans["p1_s1"]["metrics"]["predictions"]
    assert p1["dice"] == pytest.approx(36 / 64)
    assert p1["fpv_ml"] == pytest.approx(2 * VOXEL_ML)
    assert p1["fnv_ml"] == pytest.approx(8 * VOXEL_ML)
    p2 = scans["p2_s1"]["metrics"]["predictions"]
    assert p2["dice"] is None and p2["fpv_ml"] == 0.0

    # SUV >= 4: the big lesion exactly, misses the SUV-3 lesion; the SUV-6 spot is 8 voxels FP.
    fixed1 = scans["p1_s1"]["metrics"]["suv_ge_4"]
    assert fixed1["dice"] == pytest.approx(2 * 27 / (35 + 27))
    assert fixed1["fnv_ml"] == pytest.approx(8 * VOXEL_ML)
    assert scans["p2_s1"]["metrics"]["suv_ge_4"]["fpv_ml"] == pytest.approx(8 * VOXEL_ML)
    # 41% of local SUVmax in SUV >= 2.5 regions: both lesions exactly.
    assert scans["p1_s1"]["metrics"]["suvmax_41pct"]["dice"] == pytest.approx(1.0)

    summary = report["summary"]
    assert summary["predictions"]["n_scans"] == 2
    assert summary["predictions"]["n_positive_scans"] == 1
    assert summary["predictions"]["mean_dice"] == pytest.approx(36 / 64)
    assert summary["predictions"]["mean_fpv_ml"] == pytest.approx(VOXEL_ML)  # (2 voxels + 0) / 2
    assert summary["suvmax_41pct"]["sensitivity"] == pytest.approx(1.0)
    assert summary["suv_ge_4"]["sensitivity"] == pytest.approx(0.5)

    md = (out / "metrics.md").read_text()
    assert "| predictions | 0.562 |" in md and "suvmax_41pct" in md and "p2_s1" in md
    assert "| method | mean Dice" in proc.stdout


@pytest.mark.slow
def test_cli_refuses_to_overwrite(autopet_dataset: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = autopet_dataset
    out = tmp_path / "eval"
    assert _run(f"dataset={root}", f"out={out}").returncode == 0
    before = (out / "metrics.json").read_text()
    proc = _run(f"dataset={root}", f"out={out}", "baselines=[suv_ge_4]")
    assert proc.returncode == 2 and "already exists" in proc.stderr
    assert (out / "metrics.json").read_text() == before
    proc = _run(f"dataset={root}", f"out={out}", "baselines=[suv_ge_4]", "overwrite=true")
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads((out / "metrics.json").read_text())["methods"]) == {"suv_ge_4"}


@pytest.mark.slow
def test_cli_bad_inputs_exit_2(autopet_dataset: tuple[Path, Path], tmp_path: Path) -> None:
    root, preds = autopet_dataset
    out = tmp_path / "eval"
    cases = [
        ([f"dataset={tmp_path / 'nope'}", f"out={out}"], "nope"),
        ([f"out={out}"], "dataset=PATH is required"),
        ([f"dataset={root}", f"out={out}", "baselines=[otsu]"], "unknown baseline"),
        ([f"dataset={root}", f"out={out}", "patterns=true"], "patterns=true needs a manifest"),
        ([f"dataset={root}", f"out={out}", f"predictions_dir={tmp_path / 'x'}"], "not found"),
    ]
    (preds / "p2_s1.nii.gz").unlink()
    cases.append(([f"dataset={root}", f"out={out}", f"predictions_dir={preds}"], "p2_s1.nii.gz"))
    for args, message in cases:
        proc = _run(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_prediction_off_grid_is_refused(autopet_dataset: tuple[Path, Path], tmp_path: Path):
    root, preds = autopet_dataset
    _, _, pred = _volumes()["p2_s1"]
    flipped = AFFINE.copy()
    flipped[0, 1] = 2.0  # same shape, other orientation: the mask would be mirrored
    save_nifti(pred, flipped, preds / "p2_s1.nii.gz", overwrite=True)
    proc = _run(f"dataset={root}", f"out={tmp_path / 'eval'}", f"predictions_dir={preds}")
    assert proc.returncode == 2
    assert "p2_s1.nii.gz" in proc.stderr and "grid" in proc.stderr


def test_manifest_layout_and_segmenter(tmp_path: Path) -> None:
    """The library path: manifest datalist, a segmenter callable scored and timed."""
    vols = _volumes()
    suv1, seg1, _ = vols["p1_s1"]
    suv2, seg2, _ = vols["p2_s1"]
    root = tmp_path / "ds"
    _write_study(root / "a" / "base", suv1, seg1)
    _write_study(root / "a" / "fu", suv2, seg2)
    manifest = write_manifest(
        [
            {
                "patient_id": "a",
                "baseline_pet": str(root / "a/base/SUV.nii.gz"),
                "baseline_mask": str(root / "a/base/SEG.nii.gz"),
                "followup_pet": str(root / "a/fu/SUV.nii.gz"),
                "followup_mask": str(root / "a/fu/SEG.nii.gz"),
                "split": "test",
            }
        ],
        root / "manifest.csv",
    )
    entries, layout = dataset_entries(manifest, split="test")
    assert layout == "manifest"
    assert [e["case"] for e in entries] == ["a_baseline", "a_followup"]

    def oracle(study: Study) -> np.ndarray:
        assert study.mask is not None
        return (study.mask > 0).astype(np.uint8)

    ev = evaluate_entries(entries, segmenters={"oracle": oracle}, baselines=[], progress=False)
    assert list(ev.summary) == ["oracle"]
    assert ev.summary["oracle"]["mean_dice"] == pytest.approx(1.0)
    assert ev.summary["oracle"]["mean_fpv_ml"] == 0.0
    assert ev.cases[0].seconds["oracle"] >= 0.0
    assert ev.cases[1].metrics["oracle"].is_negative


def _baseline_benchmark_cmd(root: Path, tmp_path: Path, wholebody: Path) -> list[str]:
    """benchmark_seg.py without a model folder or crops: report ``tmp_path/bench.md``."""
    return [
        sys.executable,
        str(REPO / "scripts" / "benchmark_seg.py"),
        *("--model", str(tmp_path / "no-model"), "--phantom-dataset", str(root)),
        *("--real-dir", str(tmp_path / "no-real"), "--wholebody-dir", str(wholebody)),
        *("--out-dir", str(tmp_path / "bench"), "--report", str(tmp_path / "bench.md")),
    ]


@pytest.mark.slow
def test_benchmark_script_scores_baselines_without_model(
    autopet_dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    """scripts/benchmark_seg.py runs its baseline parts when no model folder exists yet."""
    root, _ = autopet_dataset
    report = tmp_path / "bench.md"
    cmd = _baseline_benchmark_cmd(root, tmp_path, tmp_path / "no-wholebody")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    text = report.read_text()
    assert "| suv_ge_4 | 0.871 |" in text  # 2*27/(35+27) on the one positive scan
    assert "| suvmax_41pct | 1.000 |" in text
    assert "model folder not found" in text and "Skipped" in text
    assert f"Skipped: `{tmp_path / 'no-wholebody'}` not found." in text
    assert (tmp_path / "bench" / "phantom_eval" / "metrics.json").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert again.returncode == 2 and "already exists" in again.stderr


@pytest.mark.slow
def test_benchmark_script_scores_scans_with_another_suv_calibration(
    autopet_dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    """--suv-scale scores copies whose SUV is multiplied; masks and the originals stay."""
    root, _ = autopet_dataset
    cmd = _baseline_benchmark_cmd(root, tmp_path, tmp_path / "no-wholebody")
    proc = subprocess.run(
        [*cmd, "--suv-scale", "0.5"], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "bench.md").read_text()
    assert "Every SUV multiplied by 0.5 (masks unchanged)." in text
    # unscaled, 41% SUVmax in SUV >= 2.5 scores 1.000 (above): at half the SUV it does not
    assert "| suvmax_41pct | 1.000 |" not in text
    copies = sorted((tmp_path / "bench" / "phantom_suv_scaled").glob("*_SUV.nii.gz"))
    originals = sorted(root.glob("*/*/SUV.nii.gz"))
    assert copies and len(copies) == len(originals)
    original = nib.load(originals[0])
    copy = nib.load(tmp_path / "bench" / "phantom_suv_scaled" / copies[0].name)
    np.testing.assert_allclose(copy.affine, original.affine)
    assert float(np.asarray(copy.dataobj).max()) == pytest.approx(
        0.5 * float(np.asarray(original.dataobj).max()), rel=1e-5
    )


def test_nnunet_layout_case_names(tmp_path: Path) -> None:
    root = tmp_path / "Dataset001_Tiny"
    vols = _volumes()
    for case, (suv, seg, _) in vols.items():
        save_nifti(suv, AFFINE, root / "imagesTr" / f"{case}_0000.nii.gz")
        save_nifti(seg, AFFINE, root / "labelsTr" / f"{case}.nii.gz")
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "PET"}, "labels": {"background": 0, "lesion": 1}})
    )
    entries, layout = dataset_entries(root)
    assert layout == "nnunet_raw"
    assert [e["case"] for e in entries] == sorted(vols)


@pytest.mark.slow
def test_cli_with_model_folder(autopet_dataset: tuple[Path, Path], tmp_path: Path) -> None:
    """A (random, tiny) model folder is run through Predictor.from_folder and scored."""
    pytest.importorskip("petflare.inference.predictor")
    pytest.importorskip("torch")
    model = make_tiny_model_folder(
        tmp_path / "model", network_kwargs={"channels": [8, 16], "strides": [2]}
    )
    root, _ = autopet_dataset
    out = tmp_path / "eval"
    proc = _run(f"dataset={root}", f"model_dir={model}", f"out={out}", "baselines=[]")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "metrics.json").read_text())
    assert list(report["methods"]) == ["model"]
    for scan in report["scans"]:
        assert scan["seconds"]["model"] > 0.0
        assert scan["metrics"]["model"]["n_pred_lesions"] >= 0
    assert report["summary"]["model"]["n_scans"] == 2


STS_DICOM = (
    Path(os.environ.get("PETFLARE_REAL_DATA", REPO / ".." / "shared" / "data" / "real"))
    / "sts001_wholebody_fdg_dicom"
)


@pytest.mark.skipif(
    not (STS_DICOM / "image").is_dir(), reason=f"real STS_001 DICOM series not found: {STS_DICOM}"
)
@pytest.mark.slow
def test_benchmark_script_scores_the_real_whole_body_series(
    autopet_dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    """The whole-body DICOM part converts the series and its RTSTRUCT and scores them."""
    root, _ = autopet_dataset
    report = tmp_path / "bench.md"
    cmd = _baseline_benchmark_cmd(root, tmp_path, STS_DICOM)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    text = report.read_text().split("## Real FDG-PET: whole-body DICOM series")[1]
    assert "`GTV_Mass` (366 ml)" in text  # the sarcoma's volume as the RTSTRUCT draws it
    assert (tmp_path / "bench" / "wholebody_eval" / "metrics.json").is_file()
    suv4 = next(line for line in text.splitlines() if line.startswith("| suv_ge_4 |"))
    fpv = float(suv4.split("|")[3])
    assert fpv > 100.0  # SUV >= 4 takes the hot heart, brain and bladder for lesions
