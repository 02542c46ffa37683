"""``scripts/infer.py`` end to end as a subprocess: outputs, geometry, DICOM input, refusals.

The model is a tiny MONAI U-Net exported with the segmentation developer's model-folder API
(random weights: these tests check the product's contract, not segmentation quality, which is
tested in tests/inference/test_pipeline.py with a known threshold predictor).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import TinyStudyFiles, make_non_ras_affine
from petflare.io.nifti import save_nifti

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "infer.py"
SHAPE = (22, 18, 12)


def run_infer(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``scripts/infer.py key=value ...`` with the test's interpreter."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), "progress=false", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        timeout=300,
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny U-Net model folder written by petflare.inference.model_folder.export_model_folder."""
    from petflare.data.transforms import PreprocessingConfig
    from petflare.inference.model_folder import InferenceSettings, export_model_folder
    from petflare.networks import build_unet

    kwargs: dict[str, Any] = {
        "in_channels": 1,
        "out_channels": 2,
        "channels": (4, 8),
        "strides": (2,),
    }
    torch.manual_seed(0)
    net = build_unet(**kwargs)
    return export_model_folder(
        tmp_path_factory.mktemp("model") / "tiny-unet",
        net.state_dict(),
        network_target="petflare.networks.build_unet",
        network_kwargs=kwargs,
        preprocessing=PreprocessingConfig(spacing_mm=(4.0, 4.0, 4.0)),
        inference=InferenceSettings(roi_size_vox=(16, 16, 16), min_component_ml=0.0),
        config_yaml="seed: 0\n",
        metadata={"name": "tiny-test-unet", "version": "0.0.1", "intended_use": "tests only"},
    )


@pytest.fixture
def pair_files(write_study: Callable[..., TinyStudyFiles], tmp_path: Path) -> dict[str, Any]:
    """Baseline (LPS, rotated) and follow-up (another non-RAS grid) NIfTI studies with CT."""
    base = write_study(tmp_path / "in" / "baseline", shape=SHAPE, with_mask=False)
    follow_affine = make_non_ras_affine(spacing_mm=(2.5, 2.0, 4.0), rotation_deg=-9.0)
    follow = write_study(
        tmp_path / "in" / "followup",
        shape=(20, 20, 11),
        affine=follow_affine,
        with_mask=False,
        lesion_suv=11.0,
        seed=1,
    )
    return {"baseline": base, "followup": follow}


def assert_nothing_written(out: Path) -> None:
    assert not out.exists(), f"{out} was created: {sorted(p.name for p in out.rglob('*'))}"


def assert_one_line_naming(result: subprocess.CompletedProcess[str], name: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("petflare: error:"), lines[0]
    assert name in lines[0], lines[0]


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
        "html=",
        "progress=",
        "weight_kg=",
        "injected_dose_bq=",
    ):
        assert option in result.stdout, option
    assert "Research use only" in result.stdout


def test_missing_file_is_refused(tmp_path: Path, model_dir: Path) -> None:
    out = tmp_path / "out"
    missing = tmp_path / "nope.nii.gz"
    result = run_infer(f"pet={missing}", f"out={out}", f"model={model_dir}")
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
        ([], "no input"),
    ],
    ids=["two_modes", "half_pair", "bad_device", "no_input"],
)
def test_bad_option_combinations_are_refused(
    args: list[str], expected: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = run_infer(*args, f"out={out}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert_nothing_written(out)


def test_missing_model_folder_is_refused(pair_files: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    model = tmp_path / "no-model"
    result = run_infer(f"pet={pair_files['baseline'].pet}", f"out={out}", f"model={model}")
    assert_one_line_naming(result, str(model))
    assert_nothing_written(out)
