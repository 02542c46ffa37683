"""report.json's inputs.<timepoint>.conversion: the DICOM conversion's provenance of each scan."""

from __future__ import annotations

from pathlib import Path

from petflare.inference.pipeline import read_scan
from petflare.inference.results import ScanInput, _conversion
from petflare.io.study import Study
from petflare_testing import REPO, load_module

factory = load_module("petflare_test_dicom_factory", REPO / "tests" / "io" / "dicom_factory.py")


def test_dicom_scan_conversion_provenance(tmp_path: Path) -> None:
    factory.write_pet_series(tmp_path / "dcm")  # F, 1.68 m, 71 kg
    conversion = _conversion(read_scan(ScanInput(pet=tmp_path / "dcm")))["conversion"]
    assert conversion["series_selection"].startswith("picked 'PET AC synthetic'")
    assert conversion["suv_route"].startswith("header")
    assert conversion["scan_start_rule"].startswith("SeriesDate/SeriesTime")
    assert float(conversion["sul_factor"]) > 0


def test_nifti_scan_has_no_conversion(tmp_path: Path) -> None:
    import numpy as np

    study = Study(pet=np.ones((3, 3, 3), np.float32), affine=np.eye(4))
    assert _conversion(study) == {}
