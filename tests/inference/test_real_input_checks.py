"""The real scans in ../shared/data/real pass every input check of ``read_scan`` and the memory
guard, and the pair checks read their real headers (three patients, a delayed acquisition)."""

from __future__ import annotations

import pytest

from petflare.errors import PetflareInputError
from petflare.inference.memory import check_memory
from petflare.inference.pipeline import ScanInput, read_scan
from petflare.io.pair_checks import check_pair
from petflare.io.study import Study
from petflare.paths import real_data_dir

REAL = real_data_dir()
SERIES = {
    "sts001": REAL / "sts001_wholebody_fdg_dicom" / "image",
    "acrin042": REAL / "acrin_nsclc_042_fdg_dicom" / "image",
    "chus052": REAL / "chus052_fdg_dicom" / "image",
}
needs_real = pytest.mark.skipif(
    not all(p.is_dir() for p in SERIES.values()),
    reason=f"real DICOM series not found under {REAL} (set PETFLARE_REAL_DATA)",
)


@pytest.fixture(scope="module")
def real_studies() -> dict[str, Study]:
    return {name: read_scan(ScanInput(pet=path)) for name, path in SERIES.items()}


@needs_real
@pytest.mark.slow
def test_real_series_pass_memory_guard_and_reading(real_studies: dict[str, Study]) -> None:
    """Each series is accepted (plausibility included) and the guard's estimate is modest."""
    estimate = check_memory(list(SERIES.values()), model_spacing_mm=(4.0, 4.0, 4.0))
    assert estimate < 4 * 2**30
    for study in real_studies.values():
        assert study.meta.source["format"] == "DICOM"
        assert study.meta.source["header_patient_id"]


@needs_real
@pytest.mark.slow
def test_real_headers_feed_the_pair_checks(real_studies: dict[str, Study]) -> None:
    sts, acrin = real_studies["sts001"].meta, real_studies["acrin042"].meta
    assert sts.uptake_time_s == pytest.approx(2711.0)  # 10:35:00 -> 11:20:11
    assert acrin.uptake_time_s == pytest.approx(9527.0)  # delayed: 07:21:00 -> 09:59:47
    same = check_pair(sts, sts)
    assert same.same_patient is True and same.order == "as given"
    assert same.uptake_within_percist is True
    with pytest.raises(PetflareInputError, match="different patients"):
        check_pair(sts, acrin, followup_path=SERIES["acrin042"])
    mixed = check_pair(sts, acrin, allow_patient_mismatch=True, swap_reversed_pair=True)
    assert mixed.uptake_within_percist is False  # 45 vs 159 min uptake
    assert any("PERCIST's 15 min" in line for line in mixed.warnings)
    assert mixed.tracers == {"baseline": "FDG", "followup": "FDG"}
