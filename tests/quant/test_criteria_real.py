"""PERCIST in SUL on a real scan whose DICOM header gives sex, height and weight (ACRIN-042)."""

from __future__ import annotations

import cc3d
import numpy as np
import pytest

from petflare.paths import real_data_dir
from petflare.quant import RegistrationConfig, compare_studies, lean_body_mass_kg
from petflare.quant.report import lesion_csv_text

ACRIN = real_data_dir() / "acrin_nsclc_042_fdg_dicom"


@pytest.mark.slow
@pytest.mark.skipif(
    not ACRIN.is_dir(), reason=f"real data {ACRIN.name} not found (set PETFLARE_REAL_DATA)"
)
def test_percist_uses_sul_from_the_dicom_header() -> None:
    from petflare.io.dicom import read_dicom_pet

    study = read_dicom_pet(ACRIN)
    meta = study.meta
    assert meta.sex and meta.height_m and meta.weight_kg and meta.uptake_time_s
    # the largest SUV > 5 component stands in for a lesion (the scan is its own follow-up)
    labels = cc3d.connected_components(study.pet > 5.0, connectivity=26)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    mask = (labels == int(np.argmax(counts))).astype(np.uint8)
    report = compare_studies(
        study,
        study,
        baseline_mask=mask,
        followup_mask=mask,
        registration=RegistrationConfig(modality="none"),
    )
    factor = lean_body_mass_kg(meta.sex, meta.height_m, meta.weight_kg) / meta.weight_kg
    p = report.percist
    assert p.unit == "SUL" and p.normalisation.startswith("SUL")
    assert p.sul_factor_baseline == pytest.approx(factor)
    lesion = report.baseline.lesions[0]
    assert p.baseline_peak == pytest.approx(lesion.suv_peak * factor)
    liver = report.baseline.liver
    assert liver.found and liver.suv_mean is not None and liver.suv_sd is not None
    assert p.liver_mean_baseline == pytest.approx(liver.suv_mean * factor)
    threshold = 1.5 * liver.suv_mean * factor + 2.0 * liver.suv_sd * factor
    assert p.measurability_threshold == pytest.approx(threshold)
    assert p.uptake_time_min_baseline == pytest.approx(meta.uptake_time_s / 60.0)
    assert p.uptake_time_difference_min == 0.0 and p.category == "SMD"
    # EORTC stays in body-weight SUV and says so; the CSV carries the factor
    assert report.eortc.unit == "SUV"
    rows = lesion_csv_text(report).splitlines()
    header = rows[0].split(",")
    assert float(rows[1].split(",")[header.index("sul_factor")]) == pytest.approx(factor, 1e-5)
