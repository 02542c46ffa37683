"""``scripts/infer.py`` end to end as a subprocess: outputs, geometry, DICOM input, refusals.

The model is a tiny MONAI U-Net exported with the segmentation developer's model-folder API
(random weights: these tests check the product's contract, not segmentation quality, which is
tested in tests/inference/test_pipeline.py with a known threshold predictor).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from petflare.constants import PATTERNS
from petflare.io.nifti import save_nifti
from petflare_testing import TinyStudyFiles, make_non_ras_affine, make_tiny_model_folder

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "infer.py"
SHAPE = (22, 18, 16)
#: Coarse anisotropic non-RAS grids: quant's registration pyramid (shrink 2x/1x of 8 mm) needs at
#: least 4 voxels per axis at its coarsest level, so tiny test volumes use 4-6 mm voxels.
BASE_AFFINE = make_non_ras_affine(spacing_mm=(4.0, 5.0, 6.0))
FOLLOW_AFFINE = make_non_ras_affine(spacing_mm=(5.0, 4.0, 6.5), rotation_deg=-9.0)


PAIR_OUTPUTS = {
    "baseline_lesions.nii.gz",
    "followup_lesions.nii.gz",
    "report.json",
    "lesions.csv",
    "mip.png",
    "report.html",
}
SINGLE_OUTPUTS = {"lesions.nii.gz", "report.json", "lesions.csv", "mip.png", "report.html"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_infer(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``scripts/infer.py key=value ...`` with the test's interpreter."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        timeout=300,
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny U-Net model folder written by petflare.inference.model_folder.export_model_folder."""
    return make_tiny_model_folder(
        tmp_path_factory.mktemp("model") / "tiny-unet",
        spacing_mm=(8.0, 8.0, 8.0),
        min_component_ml=0.0,
        roi_size_vox=(32, 32, 32),
        metadata={"name": "tiny-test-unet", "version": "0.0.1", "intended_use": "tests only"},
    )


@pytest.fixture
def pair_files(write_study: Callable[..., TinyStudyFiles], tmp_path: Path) -> dict[str, Any]:
    """Baseline (LPS, rotated) and follow-up (another non-RAS grid) NIfTI studies with CT."""
    base = write_study(
        tmp_path / "in" / "baseline", shape=SHAPE, affine=BASE_AFFINE, with_mask=False
    )
    follow = write_study(
        tmp_path / "in" / "followup",
        shape=(20, 20, 17),
        affine=FOLLOW_AFFINE,
        with_mask=False,
        lesion_suv=11.0,
        seed=1,
    )
    return {"baseline": base, "followup": follow}


def assert_nothing_written(out: Path) -> None:
    assert not out.exists(), f"{out} was created: {sorted(p.name for p in out.rglob('*'))}"


def assert_one_line_naming(result: subprocess.CompletedProcess[str], name: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    # progress lines ("[petflare] ...") may precede it; the error itself is one line, the last
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert all(line.startswith("[petflare] ") for line in lines[:-1]), result.stderr
    assert lines[-1].startswith("petflare: error:"), result.stderr
    assert name in lines[-1], lines[-1]
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- refusals


def test_help_documents_every_option() -> None:
    result = run_infer("--help")
    assert result.returncode == 0, result.stderr
    for option in (
        "baseline_pet=",
        "followup_pet=",
        "baseline_ct=",
        "followup_ct=",
        "pet=",
        "ct=",
        "manifest=",
        "out=",
        "overwrite=",
        "model=",
        "device=auto|cpu|cuda",
        "tta=",
        "sw_batch_size=",
        "min_component_ml=",
        "threshold=",
        "html=",
        "progress=",
        "pattern_source=auto|rules|learned_head",
        "registration=auto|ct|pet|none",
        "ct_contrast=unknown|none|portal_venous",
        "weight_kg=",
        "injected_dose_bq=",
    ):
        assert option in result.stdout, option
    assert "Research use only" in result.stdout


def test_missing_file_is_refused(tmp_path: Path, model_dir: Path) -> None:
    out = tmp_path / "out"
    missing = tmp_path / "nope.nii.gz"
    result = run_infer(f"pet={missing}", f"out={out}", f"model={model_dir}", "progress=false")
    assert_one_line_naming(result, str(missing))
    assert_nothing_written(out)


def test_4d_pet_is_refused(tmp_path: Path, model_dir: Path) -> None:
    pet = tmp_path / "pet4d.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((6, 5, 4, 3), np.float32), make_non_ras_affine()), pet)
    out = tmp_path / "out"
    result = run_infer(f"pet={pet}", f"out={out}", f"model={model_dir}")
    assert_one_line_naming(result, str(pet))
    assert "4D" in result.stderr
    assert_nothing_written(out)


def test_nan_pet_is_refused(pair_files: dict[str, Any], tmp_path: Path, model_dir: Path) -> None:
    arr = pair_files["followup"].pet_array.copy()
    arr[3, 4, 5] = np.nan
    bad = save_nifti(arr, pair_files["followup"].affine, tmp_path / "nan.nii.gz")
    out = tmp_path / "out"
    result = run_infer(
        f"baseline_pet={pair_files['baseline'].pet}",
        f"followup_pet={bad}",
        f"out={out}",
        f"model={model_dir}",
    )
    assert_one_line_naming(result, str(bad))
    assert "NaN" in result.stderr
    assert_nothing_written(out)


def test_bq_per_ml_without_dose_is_refused(tmp_path: Path, model_dir: Path) -> None:
    bqml = np.full(SHAPE, 5000.0, dtype=np.float32)  # activity concentration, not SUV
    pet = save_nifti(bqml, make_non_ras_affine(), tmp_path / "PET_bqml.nii.gz")
    out = tmp_path / "out"
    result = run_infer(f"pet={pet}", f"out={out}", f"model={model_dir}")
    assert_one_line_naming(result, str(pet))
    assert "Bq/mL" in result.stderr
    assert_nothing_written(out)


def test_ct_missing_the_pet_is_refused(
    pair_files: dict[str, Any], tmp_path: Path, model_dir: Path
) -> None:
    far = make_non_ras_affine(origin_mm=(900.0, 900.0, 900.0))  # 1 m away from the PET
    ct = save_nifti(np.zeros(SHAPE, np.float32), far, tmp_path / "far_ct.nii.gz")
    out = tmp_path / "out"
    result = run_infer(
        f"baseline_pet={pair_files['baseline'].pet}",
        f"baseline_ct={ct}",
        f"followup_pet={pair_files['followup'].pet}",
        f"out={out}",
        f"model={model_dir}",
    )
    assert_one_line_naming(result, str(ct))
    assert_nothing_written(out)


def test_existing_output_dir_is_refused(
    pair_files: dict[str, Any], tmp_path: Path, model_dir: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    keep = out / "previous.txt"
    keep.write_text("earlier results")
    result = run_infer(f"pet={pair_files['baseline'].pet}", f"out={out}", f"model={model_dir}")
    assert_one_line_naming(result, str(out))
    assert sorted(p.name for p in out.iterdir()) == ["previous.txt"]
    assert keep.read_text() == "earlier results"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["pet=a.nii.gz", "baseline_pet=b.nii.gz"], "several modes"),
        (["baseline_pet=b.nii.gz"], "followup_pet"),
        (["pet=a.nii.gz", "device=tpu"], "device=tpu"),
        (["pet=a.nii.gz", "sw_batch_size=many"], "sw_batch_size=many"),
        (["pet=a.nii.gz", "registration=elastix"], "registration=elastix"),
        (["pet=a.nii.gz", "threshold=1.5"], "threshold=1.5"),
        (["pet=a.nii.gz", "ct_contrast=arterial"], "ct_contrast=arterial"),
        ([], "no input"),
    ],
    ids=[
        "two_modes",
        "half_pair",
        "bad_device",
        "bad_number",
        "bad_registration",
        "bad_threshold",
        "bad_ct_contrast",
        "no_input",
    ],
)
def test_bad_option_combinations_are_refused(
    args: list[str], expected: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = run_infer(*args, f"out={out}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert_nothing_written(out)


@pytest.mark.slow
def test_learned_head_required_but_absent_is_refused(
    pair_files: dict[str, Any], tmp_path: Path, model_dir: Path
) -> None:
    out = tmp_path / "out"
    result = run_infer(
        f"baseline_pet={pair_files['baseline'].pet}",
        f"followup_pet={pair_files['followup'].pet}",
        f"out={out}",
        f"model={model_dir}",
        "pattern_source=learned_head",
        "progress=false",
    )
    assert_one_line_naming(result, str(model_dir / "head.json"))
    assert_nothing_written(out)


def test_missing_model_folder_is_refused(pair_files: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    model = tmp_path / "no-model"
    result = run_infer(f"pet={pair_files['baseline'].pet}", f"out={out}", f"model={model}")
    assert_one_line_naming(result, str(model))
    assert_nothing_written(out)


# --------------------------------------------------------------------------- end to end


def check_outputs(out: Path, inputs: dict[str, tuple[np.ndarray, tuple[int, ...]]]) -> dict:
    """Check every output file; ``inputs`` maps timepoint -> (input affine, input shape)."""
    is_pair = "baseline" in inputs
    names = {p.name for p in out.iterdir()}
    dicom_segs = {n for n in names if n.endswith("_seg.dcm")}
    assert names - dicom_segs == (PAIR_OUTPUTS if is_pair else SINGLE_OUTPUTS), names
    report = json.loads((out / "report.json").read_text())
    assert report["schema_version"] == "1.0" and report["quant_schema_version"]
    assert report["mode"] == ("pair" if is_pair else "single")
    assert "Research use only" in report["notice"]
    assert report["model"]["name"] == "tiny-test-unet" and report["model"]["version"] == "0.0.1"
    assert set(report["timepoints"]) == set(inputs)
    n_rows = 0
    for name, (affine, shape) in inputs.items():
        mask_file = out / report["masks"][name]["file"]
        img = nib.load(str(mask_file))
        labels = np.asarray(img.dataobj)
        assert labels.shape == tuple(shape)
        np.testing.assert_allclose(img.affine, affine, atol=1e-4)
        assert np.issubdtype(labels.dtype, np.integer)
        ids = sorted(int(i) for i in np.unique(labels) if i != 0)
        assert ids == report["masks"][name]["lesion_ids"]
        lesions = report["timepoints"][name]["lesions"]
        assert sorted(les["lesion_id"] for les in lesions) == ids
        for les in lesions:  # the report measured exactly the voxels written under its id
            assert les["n_voxels"] == int((labels == les["lesion_id"]).sum())
        n_rows += len(lesions)
    rows = list(csv.DictReader((out / "lesions.csv").open()))
    assert len(rows) == n_rows
    assert {r["timepoint"] for r in rows} <= set(inputs)
    png = (out / "mip.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5000
    page = (out / "report.html").read_text()
    assert "Research use only; trained on synthetic phantoms unless stated otherwise" in page
    assert "data:image/png;base64," in page
    if is_pair:
        pattern = report["pattern"]
        assert pattern["label"] in PATTERNS
        assert pattern["source"] == "rules" and pattern["probabilities"] is None
        for section in ("matches", "percist", "eortc", "choi", "registration"):
            assert section in report
        assert "rules" in page and "PERCIST" in page
    else:
        assert report["pattern"] is None
    return report


@pytest.fixture(scope="module")
def phantom_pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A whole-body phantom pair from petflare.synth at a coarse 10 mm grid, written as NIfTI.

    Realistic enough for quant's default registration (body outline, organs, repositioning);
    arbitrary axis orders and flips come from the phantom itself.
    """
    from petflare.synth.config import PhantomConfig
    from petflare.synth.dataset import generate_pair

    config = PhantomConfig(spacing_inplane_mm=(10.0, 10.0), spacing_slice_mm=(10.0, 10.0))
    baseline, followup, _ = generate_pair(3, "nodule_within_mass", config)
    root = tmp_path_factory.mktemp("phantom")
    files: dict[str, Any] = {}
    for name, study in (("baseline", baseline), ("followup", followup)):
        assert study.ct is not None
        files[name] = {
            "pet": save_nifti(study.pet, study.affine, root / name / "SUV.nii.gz"),
            "ct": save_nifti(study.ct, study.affine, root / name / "CTres.nii.gz"),
            "affine": study.affine,
            "shape": study.shape,
        }
    return files


@pytest.mark.slow
def test_pair_nifti_end_to_end(
    phantom_pair: dict[str, Any], tmp_path: Path, model_dir: Path
) -> None:
    base, follow = phantom_pair["baseline"], phantom_pair["followup"]
    out = tmp_path / "results" / "pair"
    result = run_infer(
        f"baseline_pet={base['pet']}",
        f"baseline_ct={base['ct']}",
        f"followup_pet={follow['pet']}",
        f"followup_ct={follow['ct']}",
        f"out={out}",
        f"model={model_dir}",
        "device=cpu",
        "ct_contrast=none",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = check_outputs(
        out,
        {
            "baseline": (base["affine"], base["shape"]),
            "followup": (follow["affine"], follow["shape"]),
        },
    )
    assert report["inputs"]["followup"]["ct"] == str(follow["ct"])
    assert report["registration"]["modality"] == "ct"  # the default: CT when both have it
    assert report["choi"]["ct_contrast"] == "none" and not report["choi"]["density_assessable"]
    assert isinstance(report["criteria_evidence"], list)
    assert report["timepoints"]["baseline"]["has_ct"] is True
    # progress: one line per stage on stderr
    for stage in ("segment_baseline", "segment_followup", "quantify_and_compare", "figure"):
        assert f"[petflare] {stage} done in" in result.stderr
        assert stage in report["timings_s"]
    # a second run into the same folder is refused, unless overwrite=true
    again = run_infer(
        f"baseline_pet={base['pet']}",
        f"followup_pet={follow['pet']}",
        f"out={out}",
        f"model={model_dir}",
        "progress=false",
    )
    assert_one_line_naming(again, str(out))
    replaced = run_infer(
        f"baseline_pet={base['pet']}",
        f"followup_pet={follow['pet']}",
        f"out={out}",
        f"model={model_dir}",
        "overwrite=true",
        "progress=false",
    )
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == PAIR_OUTPUTS
    assert list(out.parent.iterdir()) == [out]  # no temporary folder left beside it


@pytest.mark.slow
def test_single_scan_end_to_end(
    pair_files: dict[str, Any], tmp_path: Path, model_dir: Path
) -> None:
    scan = pair_files["followup"]
    out = tmp_path / "single"
    result = run_infer(
        f"pet={scan.pet}",
        f"ct={scan.ct}",
        f"out={out}",
        f"model={model_dir}",
        "html=true",
        "progress=false",
        "threshold=0.3",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = check_outputs(out, {"scan": (scan.affine, scan.pet_array.shape)})
    # the report records the settings that made the mask, the override included
    assert report["model"]["segmentation"] == {
        "threshold": 0.3,
        "min_component_ml": 0.0,
        "tta": False,
        "physiology_filter": False,  # a lesion-only network: no organ output, no filter
        "organ_classes": 0,
        "site_network": False,  # the tiny test folder has no sites/
    }


def load_dicom_factory() -> ModuleType:
    """The io tests' synthetic DICOM writer (tests/io/dicom_factory.py), loaded by path."""
    path = Path(__file__).resolve().parents[1] / "io" / "dicom_factory.py"
    spec = importlib.util.spec_from_file_location("petflare_test_dicom_factory", path)
    assert spec is not None and spec.loader is not None
    if spec.name in sys.modules:
        return sys.modules[spec.name]
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def write_dicom_pet(folder: Path, factory: ModuleType, lesion_suv: float, **kwargs: Any) -> Any:
    """A DICOM PET series of a body (SUV 1) with a hot sphere, stored in Bq/mL as scanners do."""
    shape = (20, 16, 16)
    bq_per_suv = 1.0 / factory.expected_suv_scale()
    i, j, k = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    sphere = (i - 9) ** 2 / 9.0 + (j - 7) ** 2 / 16.0 + (k - 8) ** 2 / 4.0 <= 1.0
    activity = np.where(sphere, lesion_suv, 1.0) * bq_per_suv
    slopes = [2.0 + 0.1 * s for s in range(shape[2])]  # int16 range for ~40 kBq/mL
    return factory.write_pet_series(
        folder,
        shape=shape,
        activity_bq_ml=activity,
        slopes=slopes,
        pixel_spacing_mm=(4.0, 4.0),
        slice_spacing_mm=4.0,
        **kwargs,
    )


@pytest.mark.slow
def test_dicom_pair_end_to_end(tmp_path: Path, model_dir: Path) -> None:
    from petflare.io.dicom import read_dicom_pet

    factory = load_dicom_factory()
    write_dicom_pet(tmp_path / "dcm" / "baseline", factory, lesion_suv=6.0)
    write_dicom_pet(
        tmp_path / "dcm" / "followup", factory, lesion_suv=9.0, orientation=factory.CORONAL
    )
    inputs = {}
    for name in ("baseline", "followup"):
        study = read_dicom_pet(tmp_path / "dcm" / name)
        inputs[name] = (study.affine, study.shape)
    out = tmp_path / "dicom_out"
    result = run_infer(
        f"baseline_pet={tmp_path / 'dcm' / 'baseline'}",
        f"followup_pet={tmp_path / 'dcm' / 'followup'}",
        f"out={out}",
        f"model={model_dir}",
        "registration=none",  # a 16-voxel series is too small for the registration pyramid
        "progress=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = check_outputs(out, inputs)
    assert report["inputs"]["baseline"]["format"] == "dicom"
    import pydicom

    for name in ("baseline", "followup"):  # a DICOM SEG of each timepoint's lesions
        seg_file = report["masks"][name]["dicom_seg_file"]
        assert seg_file == f"{name}_lesions_seg.dcm"
        seg = pydicom.dcmread(out / seg_file)
        assert seg.Modality == "SEG"
        assert len(seg.SegmentSequence) == len(report["masks"][name]["lesion_ids"])
        source_uid = pydicom.dcmread(
            next((tmp_path / "dcm" / name).glob("*.dcm")), stop_before_pixels=True
        ).SeriesInstanceUID
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source_uid
    assert (
        report["timepoints"]["followup"]["orientation"]
        != report["timepoints"]["baseline"]["orientation"]
    )  # the coronal follow-up series kept its own grid


def test_dicom_missing_weight_is_refused(tmp_path: Path, model_dir: Path) -> None:
    factory = load_dicom_factory()
    folder = tmp_path / "dcm"
    write_dicom_pet(folder, factory, lesion_suv=6.0, tags={"PatientWeight": None})
    out = tmp_path / "out"
    result = run_infer(f"pet={folder}", f"out={out}", f"model={model_dir}")
    assert_one_line_naming(result, str(folder))
    assert "PatientWeight" in result.stderr
    assert_nothing_written(out)


@pytest.mark.slow
def test_batch_manifest_end_to_end(
    write_study: Callable[..., TinyStudyFiles], tmp_path: Path, model_dir: Path
) -> None:
    from petflare.io import write_manifest

    root = tmp_path / "data"
    rows = []
    for patient, seed in (("P1", 0), ("P2", 3)):
        base = write_study(
            root / patient / "baseline",
            shape=SHAPE,
            affine=BASE_AFFINE,
            with_mask=False,
            seed=seed,
        )
        follow = write_study(
            root / patient / "followup",
            shape=SHAPE,
            affine=BASE_AFFINE,
            with_mask=False,
            seed=seed + 1,
            lesion_suv=12.0,
        )
        rows.append(
            {
                "patient_id": patient,
                "baseline_pet": str(base.pet),
                "baseline_ct": str(base.ct),
                "followup_pet": str(follow.pet),
                "followup_ct": str(follow.ct),
            }
        )
    manifest = write_manifest(rows, root / "manifest.csv")
    out = tmp_path / "batch"
    result = run_infer(
        f"manifest={manifest}", f"out={out}", f"model={model_dir}", "registration=none"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == {"P1", "P2", "batch_summary.csv"}
    for patient in ("P1", "P2"):
        check_outputs(
            out / patient, {"baseline": (BASE_AFFINE, SHAPE), "followup": (BASE_AFFINE, SHAPE)}
        )
    summary = list(csv.DictReader((out / "batch_summary.csv").open()))
    assert [r["patient_id"] for r in summary] == ["P1", "P2"]
    assert all(r["pattern"] in PATTERNS and r["pattern_source"] == "rules" for r in summary)
    assert "[1/2 P1] segment_baseline done" in result.stderr


def test_internal_error_writes_only_a_log(
    pair_files: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from omegaconf import OmegaConf

    from petflare.cli import infer as cli

    def broken(request: Any, predictor: Any = None) -> list[Path]:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(cli, "run_request", broken)
    out = tmp_path / "out"
    cfg = OmegaConf.create(
        {"pet": str(pair_files["baseline"].pet), "out": str(out), "model_dir": str(tmp_path)}
    )
    with pytest.raises(SystemExit) as exc:
        cli.infer(cfg)
    assert exc.value.code == 1
    assert [p.name for p in out.iterdir()] == [cli.ERROR_LOG]
    log = (out / cli.ERROR_LOG).read_text()
    assert "Traceback" in log and "simulated bug" in log
    assert cli.ERROR_LOG in capsys.readouterr().err


def test_model_alias() -> None:
    from petflare.cli.infer import alias_model_argument

    assert alias_model_argument(["model=/m", "pet=x", "model_dir=/n"]) == [
        "model_dir=/m",
        "pet=x",
        "model_dir=/n",
    ]


@pytest.mark.slow
def test_console_script_is_the_same_command() -> None:
    script = Path(sys.executable).parent / "petflare-infer"
    if not script.exists():
        pytest.skip("petflare-infer not installed in this environment (pip install -e . adds it)")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == run_infer("--help").stdout
