"""End to end on real DICOM: a series folder in, the report out, for each of the three real scans.

The shipped phantom-trained model segments GE (STS_001, ACRIN-042 from its study folder) and
Philips CNTS (CHUS-052) series; single-scan and pair runs (the pair uses one series as both
timepoints). The DICOM SEG each run writes reads back, through petflare's SEG reader, voxel for
voxel equal to the lesion mask it wrote. Skipped with a reason where ../shared/data/real is absent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from petflare.paths import real_data_dir

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "infer.py"
MODEL = REPO / "models" / "phantom-unet"


REAL = real_data_dir()
#: Each real series as a user would point at it: a series folder or a whole study folder.
SERIES = {
    "sts001": REAL / "sts001_wholebody_fdg_dicom" / "image",
    "acrin042": REAL / "acrin_nsclc_042_fdg_dicom",  # study folder: image/ (AC) is picked
    "chus052": REAL / "chus052_fdg_dicom",  # Philips CNTS
}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(p.is_dir() for p in SERIES.values()),
        reason=f"real DICOM series not found under {REAL} (set PETFLARE_REAL_DATA)",
    ),
    pytest.mark.skipif(not (MODEL / "model.pt").is_file(), reason=f"no model folder {MODEL}"),
]


def _infer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args, f"model={MODEL}", "device=cpu", "progress=false"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
    )


def _check_timepoint(out: Path, report: dict, name: str, folder: Path) -> None:
    """Report, lesion mask and DICOM SEG of one timepoint agree with each other and the input."""
    from petflare.io.dicom import read_dicom_pet
    from petflare.io.dicom_labels import read_seg_labels

    study = read_dicom_pet(folder)
    mask_img = nib.load(str(out / report["masks"][name]["file"]))
    lesions = np.asarray(mask_img.dataobj)
    assert lesions.shape == study.shape
    np.testing.assert_allclose(mask_img.affine, study.affine, atol=1e-4)
    timepoint = report["timepoints"][name]
    assert timepoint["n_lesions"] == len(report["masks"][name]["lesion_ids"])
    assert sorted(les["lesion_id"] for les in timepoint["lesions"]) == sorted(
        int(i) for i in np.unique(lesions) if i
    )
    seg_file = report["masks"][name]["dicom_seg_file"]
    if timepoint["n_lesions"] == 0:
        assert seg_file is None
        return
    back = read_seg_labels(out / seg_file, study).labels
    ids = sorted(int(i) for i in np.unique(lesions) if i)
    expected = np.zeros_like(back)
    for number, lesion_id in enumerate(ids, start=1):  # segment n = n-th lesion id
        expected[lesions == lesion_id] = number
    np.testing.assert_array_equal(back, expected)


@pytest.mark.parametrize("name", sorted(SERIES))
def test_single_scan_real_dicom(name: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _infer(f"pet={SERIES[name]}", f"out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "single" and report["inputs"]["scan"]["format"] == "dicom"
    conversion = report["inputs"]["scan"]["conversion"]  # which series, which SUV route, why
    assert conversion["series_selection"].startswith("picked")
    assert conversion["suv_route"].startswith("Philips") == (name == "chus052")
    _check_timepoint(out, report, "scan", SERIES[name])
    assert (out / "report.html").is_file() and (out / "lesions.csv").is_file()


@pytest.mark.parametrize("name", sorted(SERIES))
def test_pair_real_dicom_same_series(name: str, tmp_path: Path) -> None:
    """The same series as baseline and follow-up: a controlled pair with matched lesions."""
    out = tmp_path / "out"
    result = _infer(
        f"baseline_pet={SERIES[name]}",
        f"followup_pet={SERIES[name]}",
        f"out={out}",
        "registration=none",  # the same grid twice: nothing to register
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "pair"
    for timepoint in ("baseline", "followup"):
        _check_timepoint(out, report, timepoint, SERIES[name])
    base, follow = report["timepoints"]["baseline"], report["timepoints"]["followup"]
    assert base["n_lesions"] == follow["n_lesions"]
    assert base["total_mtv_ml"] == pytest.approx(follow["total_mtv_ml"])
    assert report["pattern"]["label"] in {
        "controlled",
        "diffuse_flare",
        "nodule_within_mass",
        "new_lesions",
    }
