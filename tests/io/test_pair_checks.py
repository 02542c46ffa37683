"""Baseline / follow-up pair checks: identity, order, tracer, PERCIST uptake-time window."""

from __future__ import annotations

import dataclasses

import pytest

from petflare.errors import PetflareInputError
from petflare.io.pair_checks import check_pair
from petflare.io.study import StudyMeta

BASE = StudyMeta(
    patient_id="P001",
    patient_name="Doe^Jane",
    birth_date="1960-01-31",
    acquisition_datetime="2024-01-10T09:30:00",
    study_date="2024-01-10",
    uptake_time_s=60 * 60.0,
)
FOLLOW = dataclasses.replace(
    BASE, acquisition_datetime="2024-03-12T10:00:00", study_date="2024-03-12", uptake_time_s=3900.0
)


def test_consistent_pair_passes_and_is_recorded() -> None:
    result = check_pair(BASE, FOLLOW)
    assert result.same_patient is True
    assert result.compared_fields == ["PatientID", "PatientName", "BirthDate"]
    assert result.order == "as given" and not result.swapped
    assert result.interval_days == pytest.approx(62.02083, abs=1e-4)
    assert result.uptake_difference_min == pytest.approx(5.0)
    assert result.uptake_within_percist is True
    assert result.warnings == []
    assert result.to_dict()["uptake_tolerance_min"] == 15


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"patient_id": "P002"}, "PatientID 'P001' vs 'P002'"),
        ({"patient_name": "Roe^Richard"}, "PatientName"),
        ({"birth_date": "1961-01-31"}, "BirthDate"),
    ],
)
def test_different_patient_is_refused_unless_allowed(change: dict[str, str], field: str) -> None:
    other = dataclasses.replace(FOLLOW, **change)
    with pytest.raises(PetflareInputError) as info:
        check_pair(BASE, other, followup_path="/data/followup")
    message = str(info.value)
    assert message.startswith("/data/followup: ") and field in message
    assert "allow_patient_mismatch=true" in message
    result = check_pair(BASE, other, allow_patient_mismatch=True)
    assert result.same_patient is False and result.patient_mismatch_allowed
    assert field in result.warnings[0]


def test_name_spelling_and_unknown_fields_are_not_a_mismatch() -> None:
    """``DOE^JANE`` equals ``Doe Jane``; an anonymised (empty) field is simply not compared."""
    other = dataclasses.replace(FOLLOW, patient_name="DOE JANE", birth_date="")
    result = check_pair(BASE, other)
    assert result.same_patient is True
    assert result.compared_fields == ["PatientID", "PatientName"]
    unknown = check_pair(StudyMeta(), StudyMeta())
    assert (unknown.same_patient, unknown.order, unknown.uptake_within_percist) == (
        None,
        "unknown",
        None,
    )


def test_dicom_patient_id_is_compared_even_when_a_manifest_renames_both() -> None:
    """Batch mode sets the manifest's patient_id on both scans; the headers' own IDs count."""
    base = dataclasses.replace(BASE, patient_id="row1", source={"header_patient_id": "P001"})
    follow = dataclasses.replace(FOLLOW, patient_id="row1", source={"header_patient_id": "P999"})
    with pytest.raises(PetflareInputError, match="PatientID 'P001' vs 'P999'"):
        check_pair(base, follow)


def test_followup_before_baseline_is_refused_or_swapped_on_request() -> None:
    with pytest.raises(PetflareInputError) as info:
        check_pair(FOLLOW, BASE, followup_path="/data/followup")
    assert "before the baseline" in str(info.value)
    assert "swap_reversed_pair=true" in str(info.value)
    result = check_pair(FOLLOW, BASE, swap_reversed_pair=True)
    assert result.swapped and result.order == "swapped"
    assert result.interval_days == pytest.approx(62.02083, abs=1e-4)
    assert result.uptake_difference_min == pytest.approx(5.0)  # in the swapped order
    assert "swapped" in result.warnings[0]


def test_order_falls_back_to_study_dates() -> None:
    base = dataclasses.replace(BASE, acquisition_datetime="")
    follow = dataclasses.replace(FOLLOW, acquisition_datetime="", study_date="2023-12-01")
    with pytest.raises(PetflareInputError, match="before the baseline"):
        check_pair(base, follow)


def test_other_tracer_is_warned_and_recorded() -> None:
    psma = dataclasses.replace(FOLLOW, tracer="Ga-68 PSMA-11", radiopharmaceutical="Ga68PSMA")
    result = check_pair(BASE, psma)
    assert result.tracers == {"baseline": "FDG", "followup": "Ga-68 PSMA-11"}
    assert len(result.warnings) == 1 and "'Ga68PSMA', not FDG" in result.warnings[0]


@pytest.mark.parametrize(
    ("follow_uptake_min", "within"), [(74.9, True), (75.5, False), (44, False)]
)
def test_uptake_time_difference_beyond_percist_is_recorded(
    follow_uptake_min: float, within: bool
) -> None:
    follow = dataclasses.replace(FOLLOW, uptake_time_s=follow_uptake_min * 60)
    result = check_pair(BASE, follow)
    assert result.uptake_within_percist is within
    assert result.to_dict()["uptake_difference_min"] == pytest.approx(follow_uptake_min - 60)
    assert bool(result.warnings) is not within
    if not within:
        assert "PERCIST's 15 min" in result.warnings[0]


def test_user_metadata_fills_a_nifti_and_never_overrides_a_header() -> None:
    from petflare.io.pair_checks import apply_user_meta

    given = {"patient_id": "A1", "acquisition": "2024-01-10", "tracer": "18F-fdg", "uptake_min": 62}
    meta = apply_user_meta(StudyMeta(), given, "pet.nii.gz")
    assert (meta.patient_id, meta.acquisition_datetime, meta.tracer) == (
        "A1",
        "2024-01-10T00:00:00",
        "FDG",
    )
    assert meta.uptake_time_s == pytest.approx(3720.0)
    assert meta.source["header_patient_id"] == "A1"
    dicom = StudyMeta(patient_id="P001", tracer="FDG", source={"format": "DICOM"})
    kept = apply_user_meta(dicom, {"patient_id": "A1", "tracer": "FLT"}, "dcm")
    assert (kept.patient_id, kept.tracer) == ("P001", "FDG")
    with pytest.raises(PetflareInputError, match="unknown metadata key"):
        apply_user_meta(StudyMeta(), {"weight": 70}, "pet.nii.gz")
    with pytest.raises(PetflareInputError, match="not an ISO date"):
        apply_user_meta(StudyMeta(), {"acquisition": "10/01/2024"}, "pet.nii.gz")
