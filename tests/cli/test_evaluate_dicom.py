"""An institution's contoured DICOM studies as an evaluation set: DICOM PET folders with
RTSTRUCT / SEG labels listed directly in a manifest, scored by ``evaluate`` and converted for
training by ``petflare-convert manifest=``."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from petflare.errors import PetflareInputError
from petflare.inference.evaluation import dataset_entries, evaluate_entries
from petflare.io import load_manifest, write_manifest
from petflare.io.dicom import read_dicom_pet
from petflare.io.dicom_labels import load_labelled_study
from petflare.io.dicom_seg import write_dicom_seg
from petflare_testing import load_module

REPO = Path(__file__).resolve().parents[2]
factory = load_module("petflare_test_dicom_factory", REPO / "tests" / "io" / "dicom_factory.py")
SHAPE = (8, 7, 6)
HOT = (slice(2, 5), slice(2, 5), slice(2, 4))  # the lesion, in the factory's indexing

pytest.importorskip("highdicom")


def _square(series: object, k: int, lo: float, hi: float) -> np.ndarray:
    corners = np.array([[lo, lo], [hi, lo], [hi, hi], [lo, hi]])
    ijk = np.column_stack([corners, np.full(4, k), np.ones(4)])
    return (ijk @ series.pixel_to_lps_matrix().T)[:, :3]  # type: ignore[attr-defined]


def _series(folder: Path, orientation: tuple[float, ...]) -> object:
    """SUV 1 everywhere, 8 in the lesion (activity = SUV / the factory's SUV scale)."""
    suv = np.ones(SHAPE)
    suv[HOT] = 8.0
    return factory.write_pet_series(
        folder,
        shape=SHAPE,
        activity_bq_ml=suv / factory.expected_suv_scale(),
        slopes=[2.0] * SHAPE[2],  # int16 holds up to 65 kBq/mL
        orientation=orientation,
    )


@pytest.fixture
def dicom_dataset(tmp_path: Path) -> Path:
    """p1: RTSTRUCT (GTV = the lesion, plus a 'Body' ROI to leave out); p2: a DICOM SEG."""
    root = tmp_path / "dataset"
    s1 = _series(root / "p1" / "pet", factory.AXIAL)
    gtv = [_square(s1, k, 1.5, 4.5) for k in (2, 3)]
    body = [_square(s1, k, -0.5, 7.5) for k in range(SHAPE[2])]
    factory.write_rtstruct(root / "p1" / "rt.dcm", s1, {"Body": body, "GTV": gtv})
    s2 = _series(root / "p2" / "pet", factory.CORONAL)
    study2 = read_dicom_pet(s2.folder)  # type: ignore[attr-defined]
    write_dicom_seg(study2, (study2.pet > 4).astype(np.uint8), root / "p2" / "seg.dcm", version="1")
    rows = [
        {
            "patient_id": "p1",
            "baseline_pet": root / "p1" / "pet",
            "baseline_mask": "p1/rt.dcm#GTV",
            "followup_pet": root / "p2" / "pet",
            "followup_mask": root / "p2" / "seg.dcm",
            "split": "test",
        }
    ]
    return write_manifest(rows, root / "manifest.csv")


def test_manifest_accepts_dicom_folders_and_label_files(dicom_dataset: Path) -> None:
    rows = load_manifest(dicom_dataset)
    assert Path(rows[0]["baseline_pet"]).is_dir()
    assert rows[0]["baseline_mask"].endswith("rt.dcm#GTV")
    study = load_labelled_study(rows[0]["baseline_pet"], None, rows[0]["baseline_mask"])
    assert study.mask is not None and int(study.mask.sum()) == 18  # 3 x 3 x 2, Body left out
    np.testing.assert_array_equal(study.mask > 0, study.pet > 4)


def test_evaluate_scores_dicom_studies(dicom_dataset: Path) -> None:
    entries, layout = dataset_entries(dicom_dataset)
    assert layout == "manifest" and len(entries) == 2
    evaluation = evaluate_entries(entries, baselines=["suv_ge_4"], progress=False)
    dices = [case.metrics["suv_ge_4"].dice for case in evaluation.cases]
    assert dices == pytest.approx([1.0, 1.0])


def test_dicom_labels_on_nifti_pet_are_refused(tmp_path: Path, dicom_dataset: Path) -> None:
    from petflare.io import save_nifti

    pet = tmp_path / "suv.nii.gz"
    save_nifti(np.ones(SHAPE, np.float32), np.eye(4), pet)
    with pytest.raises(PetflareInputError, match="DICOM PET series they were drawn on"):
        load_labelled_study(pet, None, dicom_dataset.parent / "p2" / "seg.dcm")


@pytest.mark.slow
def test_convert_manifest_for_training(dicom_dataset: Path, tmp_path: Path) -> None:
    """``petflare-convert manifest=`` writes a NIfTI copy of the set and its manifest."""
    out = tmp_path / "nifti_set"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "convert.py"),
            f"manifest={dicom_dataset}",
            f"out={out}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert rows[0]["baseline_pet"] == "p1/baseline/suv.nii.gz"
    assert rows[0]["followup_mask"] == "p1/followup/labels.nii.gz"
    labels = np.asarray(nib.load(str(out / rows[0]["baseline_mask"])).dataobj)
    suv = np.asarray(nib.load(str(out / rows[0]["baseline_pet"])).dataobj)
    np.testing.assert_array_equal(labels > 0, suv > 4)
    provenance = json.loads((out / "p1" / "baseline" / "suv.json").read_text())
    assert json.loads(provenance["label_names"]) == ["GTV"]
    assert load_manifest(out / "manifest.csv")[0]["split"] == "test"


def test_training_source_reads_dicom_through_a_cache(dicom_dataset: Path, tmp_path: Path) -> None:
    from petflare.data.sources import ManifestSource

    rows = [{**row, "split": "train"} for row in load_manifest(dicom_dataset)]
    manifest = write_manifest(rows, dicom_dataset.parent / "train.csv")
    with pytest.raises(PetflareInputError, match="petflare-convert manifest="):
        ManifestSource(manifest).datalists()
    source = ManifestSource(manifest, fractions=None, cache_dir=tmp_path / "cache")
    entries = [e for split in source.datalists().values() for e in split]
    assert len(entries) == 2
    for entry in entries:
        suv = np.asarray(nib.load(entry["pet"]).dataobj)
        labels = np.asarray(nib.load(entry["label"]).dataobj)
        np.testing.assert_array_equal(labels > 0, suv > 4)
        assert str(tmp_path / "cache") in entry["pet"]
