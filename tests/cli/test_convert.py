"""petflare-convert as a subprocess on tiny synthetic DICOM series (and STS_001 if present)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import nibabel as nib
import numpy as np
import pytest

from petflare.paths import real_data_dir

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "convert.py"


def _load_factory() -> ModuleType:
    """The synthetic DICOM writer shared with tests/io (loaded by path: tests are not a package)."""
    name = "petflare_test_dicom_factory"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "io" / "dicom_factory.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


factory = _load_factory()


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd or REPO,
    )


def _square_contour(series: object, slice_index: int, lo: float, hi: float) -> np.ndarray:
    corners = np.array([[lo, lo], [hi, lo], [hi, hi], [lo, hi]])
    ijk = np.column_stack([corners, np.full(4, slice_index), np.ones(4)])
    return (ijk @ series.pixel_to_lps_matrix().T)[:, :3]  # type: ignore[attr-defined]


@pytest.mark.slow
def test_convert_writes_suv_and_mask(tmp_path: Path) -> None:
    series = factory.write_pet_series(tmp_path / "dicom", orientation=factory.AXIAL_FLIPPED)
    rt = factory.write_rtstruct(
        tmp_path / "rt.dcm", series, {"GTV": [_square_contour(series, 2, 0.5, 2.5)]}
    )
    out, mask_out = tmp_path / "out" / "suv.nii.gz", tmp_path / "out" / "gtv.nii.gz"
    result = _run(
        f"dicom={tmp_path / 'dicom'}",
        f"out={out}",
        f"rtstruct={rt}",
        "roi=GTV",
        f"mask_out={mask_out}",
    )
    assert result.returncode == 0, result.stderr
    assert "SUVbw" in result.stdout and str(out) in result.stdout

    img = nib.load(str(out))
    assert img.get_data_dtype() == np.float32
    suv = np.asarray(img.dataobj)
    # Voxel centres -> LPS -> the factory's stored activity at that position.
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in suv.shape], indexing="ij"), -1)
    ras = idx.reshape(-1, 3) @ img.affine[:3, :3].T + img.affine[:3, 3]
    expected = series.activity_at_lps(ras * [-1.0, -1.0, 1.0]).reshape(suv.shape)
    np.testing.assert_allclose(suv, expected * factory.expected_suv_scale(), rtol=1e-6)

    mask_img = nib.load(str(mask_out))
    np.testing.assert_allclose(mask_img.affine, img.affine)
    assert mask_img.get_data_dtype() == np.uint8
    assert int(np.asarray(mask_img.dataobj).sum()) == 4
    assert sorted(p.name for p in out.parent.iterdir()) == ["gtv.nii.gz", "suv.json", "suv.nii.gz"]


@pytest.mark.slow
def test_convert_seg_labels_and_provenance(tmp_path: Path) -> None:
    """A DICOM SEG becomes a label map; the provenance JSON records the conversion."""
    import json

    from petflare.io.dicom import read_dicom_pet
    from petflare.io.dicom_seg import write_dicom_seg

    series = factory.write_pet_series(tmp_path / "study" / "pet")
    study = read_dicom_pet(series.folder)
    lesions = np.zeros(study.shape, dtype=np.uint16)
    lesions[1:3, 1, 2] = 1
    lesions[4, 3, 5] = 2
    seg = write_dicom_seg(study, lesions, tmp_path / "study" / "seg" / "seg.dcm", version="1")
    out, labels_out = tmp_path / "out" / "suv.nii.gz", tmp_path / "out" / "labels.nii.gz"
    result = _run(
        f"dicom={tmp_path / 'study'}", f"out={out}", f"labels={seg}", f"mask_out={labels_out}"
    )
    assert result.returncode == 0, result.stderr
    assert "picked 'PET AC synthetic'" in result.stdout
    np.testing.assert_array_equal(np.asarray(nib.load(str(labels_out)).dataobj), lesions)
    provenance = json.loads((tmp_path / "out" / "suv.json").read_text())
    assert provenance["labels_kind"] == "SEG"
    assert json.loads(provenance["label_names"]) == ["Lesion 1", "Lesion 2"]
    assert provenance["series_instance_uid"] == series.series_uid
    assert float(provenance["sul_factor"]) > 0
    assert provenance["suv_route"].startswith("header")


@pytest.mark.slow
def test_convert_refuses_existing_output(tmp_path: Path) -> None:
    factory.write_pet_series(tmp_path / "dicom")
    out = tmp_path / "suv.nii.gz"
    out.write_bytes(b"precious")
    result = _run(f"dicom={tmp_path / 'dicom'}", f"out={out}")
    assert result.returncode == 2
    assert out.read_bytes() == b"precious"
    assert "already exists" in result.stderr and str(out) in result.stderr
    assert _run(f"dicom={tmp_path / 'dicom'}", f"out={out}", "overwrite=true").returncode == 0
    assert nib.load(str(out)).shape == (5, 4, 6)


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("missing_tag", "PatientWeight"),
        ("wrong_units", "CNTS"),
        ("nac_only", "Units PROPCNTS"),
        ("roi_for_seg_missing", "label file (RTSTRUCT or DICOM SEG) not found"),
        ("missing_folder", "DICOM folder not found"),
        ("bad_roi", "available ROIs: GTV"),
        ("no_args", "dicom=DIR and out=FILE.nii.gz are required"),
        ("not_nifti", "must name a .nii.gz or .nii file"),
        ("partial_mask", "must be given together"),
    ],
)
@pytest.mark.slow
def test_convert_bad_input_exit_2(tmp_path: Path, case: str, fragment: str) -> None:
    dicom = tmp_path / "dicom"
    tags = {
        "missing_tag": {"PatientWeight": None},
        "wrong_units": {"Units": "CNTS"},
        "nac_only": {"Units": "PROPCNTS", "SeriesDescription": "PET NAC"},
    }
    series = factory.write_pet_series(dicom, tags=tags.get(case))
    out = tmp_path / "out" / "suv.nii.gz"
    args = [f"dicom={dicom}", f"out={out}"]
    if case == "missing_folder":
        args[0] = f"dicom={tmp_path / 'nowhere'}"
    elif case == "bad_roi":
        rt = factory.write_rtstruct(
            tmp_path / "rt.dcm", series, {"GTV": [_square_contour(series, 1, 0.5, 2.5)]}
        )
        args += [f"rtstruct={rt}", "roi=Liver", f"mask_out={tmp_path / 'out' / 'm.nii.gz'}"]
    elif case == "no_args":
        args = []
    elif case == "not_nifti":
        args[1] = f"out={tmp_path / 'out' / 'suv.nrrd'}"
    elif case == "partial_mask":
        args.append("roi=GTV")
    elif case == "roi_for_seg_missing":
        args += [f"labels={tmp_path / 'none.dcm'}", f"mask_out={tmp_path / 'out' / 'm.nii.gz'}"]
    result = _run(*args)
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert fragment in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_convert_help_documents_options() -> None:
    result = _run("--help")
    assert result.returncode == 0
    options = ("dicom=", "out=", "overwrite=", "series_uid=", "labels=", "roi=", "mask_out=")
    for option in (*options, "rtstruct=", "CNTS", "SUL", "PROPCNTS"):
        assert option in result.stdout


STS_DICOM = real_data_dir() / "sts001_wholebody_fdg_dicom"


@pytest.mark.skipif(
    not (STS_DICOM / "image").is_dir(),
    reason=f"real STS_001 DICOM not found under {real_data_dir()} (set PETFLARE_REAL_DATA)",
)
@pytest.mark.slow
def test_convert_sts001_whole_body(tmp_path: Path) -> None:
    out, mask_out = tmp_path / "sts001_suv.nii.gz", tmp_path / "sts001_gtv.nii.gz"
    start = time.perf_counter()
    result = _run(
        f"dicom={STS_DICOM / 'image'}",
        f"out={out}",
        f"rtstruct={STS_DICOM / 'mask' / '1-1.dcm'}",
        "roi=GTV_Mass",
        f"mask_out={mask_out}",
    )
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    img = nib.load(str(out))
    assert img.shape == (128, 128, 267)
    assert "".join(nib.aff2axcodes(img.affine)) == "LPS"
    assert 0 < np.asarray(nib.load(str(mask_out)).dataobj).sum() < 10_000
    assert seconds < 60.0


ACRIN = real_data_dir() / "acrin_nsclc_042_fdg_dicom"


@pytest.mark.slow
@pytest.mark.skipif(
    not (ACRIN / "nac_image").is_dir(),
    reason=f"real ACRIN-042 DICOM not found under {real_data_dir()} (set PETFLARE_REAL_DATA)",
)
def test_convert_acrin042_study_folder_and_nac(tmp_path: Path) -> None:
    """The study folder converts image/ and says why; nac_image/ alone exits 2 naming units."""
    out = tmp_path / "suv.nii.gz"
    result = _run(f"dicom={ACRIN}", f"out={out}")
    assert result.returncode == 0, result.stderr
    assert "picked 'PET AC'" in result.stdout and "Units PROPCNTS" in result.stdout
    assert "SUL = SUVbw x LBM/weight" in result.stdout
    nac_out = tmp_path / "nac.nii.gz"
    refused = _run(f"dicom={ACRIN / 'nac_image'}", f"out={nac_out}")
    assert refused.returncode == 2
    message = refused.stderr.strip()
    assert len(message.splitlines()) == 1 and "Units PROPCNTS" in message
    assert str(ACRIN / "nac_image") in message
    assert not nac_out.exists() and not (tmp_path / "nac.json").exists()
