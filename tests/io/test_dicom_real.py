"""Real-world DICOM: Philips CNTS (CHUS-052), study-folder series selection and SUL (ACRIN-042),
RTSTRUCT and SEG labels (STS_001). Skipped with a reason where ../shared/data/real is absent."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from petflare.errors import PetflareInputError
from petflare.io.dicom import read_dicom_pet, select_pet_series
from petflare.io.dicom_labels import read_dicom_labels, read_seg_labels
from petflare.io.study import Study
from petflare.paths import real_data_dir

REAL = real_data_dir()
CHUS = REAL / "chus052_fdg_dicom"
ACRIN = REAL / "acrin_nsclc_042_fdg_dicom"
STS = REAL / "sts001_wholebody_fdg_dicom"


def _needs(folder: Path) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not folder.is_dir(),
        reason=f"real data {folder.name} not found under {REAL} (set PETFLARE_REAL_DATA)",
    )


F18_HALF_LIFE_S = 6588.0  # the series' RadionuclideHalfLife


@pytest.fixture(scope="module")
def chus() -> Study:
    return read_dicom_pet(CHUS)


@_needs(CHUS)
def test_chus052_philips_routes_agree(chus: Study) -> None:
    """The header route (Bq/mL via (7053,1009), earliest acquisition) vs the scanner's factor."""
    source = chus.meta.source
    assert source["units_in_file"] == "CNTS"
    assert source["suv_route"].startswith("Philips SUV Scale Factor")
    header = float(source["suv_scale_factor_header"])
    philips = float(source["suv_scale_factor_philips"])
    assert philips == pytest.approx(0.000434 / 1.139608, rel=1e-9)
    assert header == pytest.approx(philips, rel=0.01)
    # the header route by hand: 72 kg, 297 MBq decayed from 08:24:00 to 09:35:39
    decay_s = (dt.datetime(1885, 8, 27, 9, 35, 39) - dt.datetime(1885, 8, 27, 8, 24)).seconds
    by_hand = 72_000.0 / (297e6 * 0.5 ** (decay_s / F18_HALF_LIFE_S))
    assert header == pytest.approx(by_hand, rel=1e-9)
    assert "agrees with" in source["suv_route_check"]


@_needs(CHUS)
def test_chus052_scrambled_series_time_named(chus: Study) -> None:
    source = chus.meta.source
    assert source["suv_reference_time"] == "1885-08-27T09:35:39"
    assert source["scan_start_rule"].startswith("earliest AcquisitionDate/AcquisitionTime")
    assert "SeriesDate/SeriesTime 1885-08-27T11:11:11" in source["scan_start_note"]
    # what the naive SeriesTime decay would have done: an 83 % SUV error
    naive_error = 2.0 ** (5732 / F18_HALF_LIFE_S) - 1.0
    assert naive_error == pytest.approx(0.83, abs=0.01)


@_needs(CHUS)
def test_chus052_suv_max(chus: Study) -> None:
    assert chus.shape == (144, 144, 255)
    assert 5.0 < float(chus.pet.max()) < 100.0  # the brain / bladder of an FDG scan
    # the SUV is the stored value x slope x the Philips SUV factor, nothing else
    assert chus.meta.sex == "M" and chus.meta.height_m is None
    assert "sul_factor" not in chus.meta.source and "height_m unknown" in chus.meta.source["sul"]


@_needs(ACRIN)
def test_acrin042_study_folder_picks_attenuation_corrected() -> None:
    selection = select_pet_series(ACRIN)
    assert selection.series.description == "PET AC"
    assert selection.series.files[0].parent.name == "image"
    assert "Units PROPCNTS" in selection.reason and "'PET NAC'" in selection.reason


@_needs(ACRIN)
def test_acrin042_nac_alone_refused_naming_units() -> None:
    with pytest.raises(PetflareInputError) as info:
        read_dicom_pet(ACRIN / "nac_image")
    message = str(info.value)
    assert str(ACRIN / "nac_image") in message and "Units PROPCNTS" in message
    assert "\n" not in message


@_needs(ACRIN)
def test_acrin042_sul_factor_is_janmahasatian() -> None:
    study = read_dicom_pet(ACRIN)
    weight, height = 91.0, 1.8799999952316  # PatientWeight, PatientSize of the header
    bmi = weight / height**2
    lbm = 9270.0 * weight / (6680.0 + 216.0 * bmi)  # male
    assert study.meta.sex == "M"
    assert (study.meta.height_m, study.meta.weight_kg) == pytest.approx((height, weight))
    assert float(study.meta.source["sul_factor"]) == pytest.approx(lbm / weight, rel=1e-12)
    assert float(study.meta.source["suv_scale_factor"]) == pytest.approx(4.2111e-4, rel=1e-4)
    assert float(study.pet.max()) == pytest.approx(51.0, abs=0.5)


@pytest.mark.slow
@_needs(STS)
def test_sts001_study_folder_and_labels() -> None:
    """The study folder (image/ + mask/ RTSTRUCT): the PET is found, the RTSTRUCT read whole."""
    study = read_dicom_pet(STS)
    assert study.shape == (128, 128, 267)
    labels = read_dicom_labels(STS / "mask" / "1-1.dcm", study)
    assert set(labels.names) == {"GTV_Mass", "GTV_Edema"}
    mass = read_dicom_labels(STS / "mask" / "1-1.dcm", study, ["GTV_Mass"]).labels
    assert int(mass.sum()) == 5095


@pytest.mark.slow
@_needs(STS)
def test_sts001_petflare_seg_reads_back_voxel_equal(tmp_path: Path) -> None:
    """The SEG petflare writes for a real scan reads back equal to its lesion instance mask."""
    pytest.importorskip("highdicom")
    from petflare.io.dicom_seg import write_dicom_seg

    study = read_dicom_pet(STS / "image")
    hot, _ = ndimage.label(study.pet > 4.0)  # heart, bladder, tumour: many real components
    sizes = np.bincount(hot.ravel())
    keep = [int(i) for i in np.argsort(sizes)[::-1][1:6]]  # the five largest components
    instances = np.zeros(study.shape, dtype=np.uint16)
    for number, component in enumerate(keep, start=1):
        instances[hot == component] = number
    seg = write_dicom_seg(study, instances, tmp_path / "lesions.dcm", version="test")
    assert seg is not None
    back = read_seg_labels(seg, study)
    np.testing.assert_array_equal(back.labels, instances)
    assert back.names == tuple(f"Lesion {n}" for n in range(1, 6))
