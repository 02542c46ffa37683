"""``scripts/infer.py`` refuses the inputs of issue 36 (exit 2, one line naming the file and the
field, nothing written) and runs on with their overrides: header geometry, implausible SUV, the
memory guard, pair mistakes, and a batch with a bad row in the middle."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from petflare.io.nifti import save_nifti
from petflare_testing import TinyStudyFiles, load_module, make_tiny_model_folder

#: The end-to-end CLI tests' helpers (run_infer, assert_one_line_naming, DICOM writer).
cli = load_module("petflare_test_infer_helpers", Path(__file__).parent / "test_infer.py")

SHAPE = cli.SHAPE
AFFINE = cli.BASE_AFFINE


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_folder(
        tmp_path_factory.mktemp("model") / "tiny-unet",
        spacing_mm=(8.0, 8.0, 8.0),
        min_component_ml=0.0,
        roi_size_vox=(32, 32, 32),
        metadata={"name": "tiny-test-unet", "version": "0.0.1", "intended_use": "tests only"},
    )


def _body(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pet = (1.0 + 0.05 * rng.standard_normal(SHAPE)).astype(np.float32)
    pet[8:12, 7:11, 6:10] = 7.0
    return pet


def _zero_slice_spacing(path: Path) -> None:
    img = nib.Nifti1Image(_body(), None)
    img.header["pixdim"][1:4] = (4.0, 4.0, 0.0)
    img.header.set_qform(None, code=0)
    img.header.set_sform(None, code=0)
    nib.save(img, str(path))


def _forms_disagree(path: Path) -> None:
    qform = AFFINE.copy()
    qform[:3, 3] += (0.0, 0.0, 20.0)
    img = nib.Nifti1Image(_body(), AFFINE)
    img.set_qform(qform, code=1)
    img.set_sform(AFFINE, code=1)
    nib.save(img, str(path))


def _all_negative(path: Path) -> None:
    save_nifti(-_body(), AFFINE, path)


def _header_claims_1024_cube(path: Path) -> None:
    """A header promising 1024^3 float32 voxels at 0.5 mm, with no voxels behind it."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape((1024, 1024, 1024))
    affine = np.diag([0.5, 0.5, 0.5, 1.0])
    header.set_sform(affine, code=1)
    header.set_qform(affine, code=1)
    header["vox_offset"] = 352
    path.write_bytes(header.binaryblock + b"\0" * 4)


@pytest.mark.parametrize(
    ("write", "args", "fragments"),
    [
        (_zero_slice_spacing, [], ["pixdim[3]", "zero"]),
        (_forms_disagree, [], ["qform and sform disagree"]),
        (_all_negative, [], ["mostly negative", "allow_implausible_suv=true"]),
        (_header_claims_1024_cube, ["memory_limit_gb=16"], ["needs about 24.5 GiB",  # 8 mm model
                                                           "memory_limit_gb=N"]),
    ],
    ids=["zero-slice-spacing", "qform-sform", "all-negative", "memory-1024-cube"],
)  # fmt: skip
def test_single_scan_refusals(
    tmp_path: Path,
    model_dir: Path,
    write: Callable[[Path], None],
    args: list[str],
    fragments: list[str],
) -> None:
    pet = tmp_path / "PET.nii"
    write(pet)
    out = tmp_path / "out"
    result = cli.run_infer(f"pet={pet}", f"out={out}", f"model={model_dir}", *args)
    cli.assert_one_line_naming(result, str(pet))
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    cli.assert_nothing_written(out)


def test_dicom_pair_of_two_patients_is_refused(tmp_path: Path, model_dir: Path) -> None:
    factory = cli.load_dicom_factory()
    base, follow = tmp_path / "dcm" / "baseline", tmp_path / "dcm" / "followup"
    cli.write_dicom_pet(base, factory, lesion_suv=6.0)
    cli.write_dicom_pet(follow, factory, lesion_suv=9.0, tags={"PatientID": "OTHER_042"})
    out = tmp_path / "out"
    result = cli.run_infer(
        f"baseline_pet={base}", f"followup_pet={follow}", f"out={out}", f"model={model_dir}"
    )
    cli.assert_one_line_naming(result, str(follow))
    assert "different patients (PatientID 'SYNTH_001' vs 'OTHER_042')" in result.stderr
    assert "allow_patient_mismatch=true" in result.stderr
    assert "loading model" not in result.stderr  # refused before the model was loaded
    cli.assert_nothing_written(out)


@pytest.mark.parametrize(
    ("base_meta", "follow_meta", "fragment"),
    [
        ("{patient_id: A1, birth_date: 1960-01-31}", "{patient_id: A1, birth_date: 1961-01-31}",
         "BirthDate '1960-01-31' vs '1961-01-31'"),
        ("{acquisition: '2024-03-01T10:00'}", "{acquisition: '2024-01-05T09:00'}",
         "before the baseline"),
    ],
    ids=["birth-date", "follow-up-first"],
)  # fmt: skip
def test_nifti_pair_with_given_metadata_is_refused(
    write_study: Callable[..., TinyStudyFiles],
    tmp_path: Path,
    model_dir: Path,
    base_meta: str,
    follow_meta: str,
    fragment: str,
) -> None:
    base = write_study(tmp_path / "b", shape=SHAPE, affine=AFFINE, with_mask=False)
    follow = write_study(tmp_path / "f", shape=SHAPE, affine=AFFINE, with_mask=False, seed=1)
    out = tmp_path / "out"
    result = cli.run_infer(
        f"baseline_pet={base.pet}",
        f"followup_pet={follow.pet}",
        f"baseline_meta={base_meta}",
        f"followup_meta={follow_meta}",
        f"out={out}",
        f"model={model_dir}",
    )
    cli.assert_one_line_naming(result, str(follow.pet))
    assert fragment in result.stderr
    cli.assert_nothing_written(out)


@pytest.mark.slow
def test_pair_overrides_are_recorded_and_warned(
    write_study: Callable[..., TinyStudyFiles], tmp_path: Path, model_dir: Path
) -> None:
    """Swapped on request, another tracer warned, a 30 min uptake difference recorded."""
    base = write_study(tmp_path / "b", shape=SHAPE, affine=AFFINE, with_mask=False)
    follow = write_study(tmp_path / "f", shape=SHAPE, affine=AFFINE, with_mask=False, seed=1)
    out = tmp_path / "out"
    result = cli.run_infer(
        f"baseline_pet={follow.pet}",  # given the wrong way round
        f"followup_pet={base.pet}",
        "baseline_meta={acquisition: '2024-03-01T10:00', uptake_min: 90, tracer: FLT}",
        "followup_meta={acquisition: '2024-01-05T09:00', uptake_min: 60}",
        "swap_reversed_pair=true",
        "registration=none",
        f"out={out}",
        f"model={model_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "petflare: warning:" in line]
    assert len(warnings) == 3, result.stderr
    report = json.loads((out / "report.json").read_text())
    checks = report["pair_checks"]
    assert checks["order"] == "swapped"
    assert report["inputs"]["baseline"]["pet"] == str(base.pet)
    assert checks["tracers"] == {"baseline": "FDG", "followup": "FLT"}
    assert checks["uptake_difference_min"] == 30.0 and checks["uptake_within_percist"] is False


def _batch_rows(
    write_study: Callable[..., TinyStudyFiles], root: Path
) -> tuple[list[dict[str, str]], Path]:
    rows = []
    for patient, seed in (("P1", 0), ("P2", 2), ("P3", 4)):
        base = write_study(root / patient / "b", shape=SHAPE, affine=AFFINE, with_mask=False,
                           with_ct=False, seed=seed)  # fmt: skip
        follow = write_study(root / patient / "f", shape=SHAPE, affine=AFFINE, with_mask=False,
                             with_ct=False, seed=seed + 1)  # fmt: skip
        rows.append(
            {"patient_id": patient, "baseline_pet": str(base.pet), "followup_pet": str(follow.pet)}
        )
    bad = Path(rows[1]["followup_pet"])
    save_nifti(-_body(), AFFINE, bad, overwrite=True)  # P2's follow-up is sign-flipped
    return rows, bad


@pytest.mark.slow
def test_batch_goes_on_past_a_bad_row_and_a_rerun_keeps_finished_rows(
    write_study: Callable[..., TinyStudyFiles], tmp_path: Path, model_dir: Path
) -> None:
    from petflare.io import write_manifest

    rows, bad = _batch_rows(write_study, tmp_path / "data")
    manifest = write_manifest(rows, tmp_path / "data" / "manifest.csv")
    out = tmp_path / "batch"
    args = (f"manifest={manifest}", f"out={out}", f"model={model_dir}", "registration=none")
    result = cli.run_infer(*args, "html=false")
    cli.assert_one_line_naming(result, str(manifest))
    assert "1 of 3 manifest rows failed (first: P2:" in result.stderr
    assert {p.name for p in out.iterdir()} == {"P1", "P3", "batch_summary.csv"}
    summary = list(csv.DictReader((out / "batch_summary.csv").open()))
    assert [r["status"] for r in summary] == ["done", "failed", "done"]
    assert str(bad) in summary[1]["reason"] and "mostly negative" in summary[1]["reason"]
    kept = (out / "P1" / "report.json").stat().st_mtime_ns

    save_nifti(np.abs(np.asarray(nib.load(bad).dataobj)), AFFINE, bad, overwrite=True)
    result = cli.run_infer(*args, "html=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 row(s) finished earlier are kept" in result.stderr
    assert (out / "P1" / "report.json").stat().st_mtime_ns == kept
    summary = list(csv.DictReader((out / "batch_summary.csv").open()))
    assert [r["status"] for r in summary] == ["done_earlier", "done", "done_earlier"]


def test_batch_into_a_foreign_folder_is_still_refused(tmp_path: Path, model_dir: Path) -> None:
    """Only a previous batch's folder (with batch_summary.csv) is continued without overwrite."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("patient_id,baseline_pet,followup_pet\nP1,a.nii.gz,b.nii.gz\n")
    result = cli.run_infer(f"manifest={manifest}", f"out={out}", f"model={model_dir}")
    cli.assert_one_line_naming(result, str(out))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_help_lists_every_override() -> None:
    result = cli.run_infer("--help")
    assert result.returncode == 0, result.stderr
    for option in (
        "allow_implausible_suv=",
        "allow_patient_mismatch=",
        "swap_reversed_pair=",
        "memory_limit_gb=",
        "baseline_meta=",
        "followup_meta=",
        "meta={...}",
        "overwrite=",
    ):
        assert option in result.stdout, option


REAL = Path(
    os.environ.get(
        "PETFLARE_REAL_DATA", Path(__file__).parents[2] / ".." / "shared" / "data" / "real"
    )
)
STS001 = REAL / "sts001_wholebody_fdg_dicom" / "image"
ACRIN042 = REAL / "acrin_nsclc_042_fdg_dicom" / "image"
needs_real = pytest.mark.skipif(
    not (STS001.is_dir() and ACRIN042.is_dir()),
    reason=f"real DICOM series not found under {REAL} (set PETFLARE_REAL_DATA)",
)


@needs_real
@pytest.mark.slow
def test_real_pair_of_two_patients_is_refused(tmp_path: Path, model_dir: Path) -> None:
    out = tmp_path / "out"
    result = cli.run_infer(
        f"baseline_pet={STS001}", f"followup_pet={ACRIN042}", f"out={out}", f"model={model_dir}"
    )
    cli.assert_one_line_naming(result, str(ACRIN042))
    assert "PatientID 'STS_001' vs 'ACRIN-NSCLC-FDG-PET-042'" in result.stderr
    cli.assert_nothing_written(out)


@needs_real
@pytest.mark.slow
def test_real_whole_body_scan_still_runs(tmp_path: Path, model_dir: Path) -> None:
    out = tmp_path / "out"
    result = cli.run_infer(f"pet={STS001}", f"out={out}", f"model={model_dir}", "html=false")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"]["scan"]["format"] == "dicom"
