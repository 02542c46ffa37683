"""Sex, height and weight given for a NIfTI scan (``meta={...}``) reach StudyMeta, for SUL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from petflare.errors import PetflareInputError
from petflare.inference.pipeline import read_scan
from petflare.inference.results import ScanInput
from petflare.io import save_nifti
from petflare.quant.metrics import sul_factor
from petflare_testing import REPO, load_module, make_non_ras_affine

factory = load_module("petflare_test_dicom_factory", REPO / "tests" / "io" / "dicom_factory.py")


def _suv_nifti(tmp_path: Path) -> Path:
    path = tmp_path / "suv.nii.gz"
    rng = np.random.default_rng(0)
    save_nifti((1.0 + rng.random((6, 5, 4))).astype(np.float32), make_non_ras_affine(), path)
    return path


def test_nifti_body_measures_give_sul(tmp_path: Path) -> None:
    meta = {"sex": "F", "height_m": "1.7", "weight_kg": 70}
    study = read_scan(ScanInput(pet=_suv_nifti(tmp_path), meta=meta))
    assert (study.meta.sex, study.meta.height_m, study.meta.weight_kg) == ("F", 1.7, 70.0)
    bmi = 70.0 / 1.7**2
    factor, _ = sul_factor(study.meta.sex, study.meta.height_m, study.meta.weight_kg)
    assert factor == pytest.approx(9270.0 / (8780.0 + 244.0 * bmi), rel=1e-12)


@pytest.mark.parametrize(
    ("meta", "fragment"),
    [({"sex": "X"}, "sex=X must be M or F"), ({"height_m": 170}, "height_m=170 is outside")],
)
def test_bad_body_measures_refused(tmp_path: Path, meta: dict, fragment: str) -> None:
    pet = _suv_nifti(tmp_path)
    with pytest.raises(PetflareInputError, match=fragment):
        read_scan(ScanInput(pet=pet, meta=meta))


def test_dicom_header_wins_and_gaps_are_filled(tmp_path: Path) -> None:
    factory.write_pet_series(tmp_path / "dcm", tags={"PatientSize": None})  # F, 71 kg
    meta = {"sex": "M", "height_m": 1.6, "weight_kg": 90}
    study = read_scan(ScanInput(pet=tmp_path / "dcm", meta=meta))
    assert (study.meta.sex, study.meta.height_m, study.meta.weight_kg) == ("F", 1.6, 71.0)
