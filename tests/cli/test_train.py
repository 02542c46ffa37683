"""``scripts/train.py experiment=debug`` and ``scripts/export_model.py`` as subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from petflare.cli import train as train_cli
from petflare.cli.train import check_cpu_precision, check_run_folder
from petflare.errors import PetflareInputError
from petflare.inference.predictor import Predictor

REPO = Path(__file__).resolve().parents[2]


def run_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / name), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )


@pytest.fixture(scope="module")
def debug_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train")
    result = run_script(
        "train.py", "experiment=debug", f"paths.data_dir={root}", f"paths.output_dir={root}/run"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run"


@pytest.mark.slow
def test_debug_experiment_trains(debug_run: Path) -> None:
    assert (debug_run / "checkpoints" / "last.ckpt").is_file()
    assert list((debug_run / "checkpoints").glob("best-*.ckpt"))
    assert "max_steps: 6" in (debug_run / "config.yaml").read_text()
    record = json.loads((debug_run / "val_metrics.json").read_text())
    assert record["global_step"] == 6
    assert 0.0 <= record["summary"]["mean_dice"] <= 1.0
    metrics_csv = next((debug_run / "logs").rglob("metrics.csv")).read_text()
    assert "val/dice" in metrics_csv and "train/loss_step" in metrics_csv


def test_existing_run_is_not_overwritten(debug_run: Path) -> None:
    with pytest.raises(PetflareInputError, match="ckpt_path="):
        check_run_folder(debug_run, ckpt_path=None, overwrite=False)
    check_run_folder(debug_run, ckpt_path=None, overwrite=True)
    check_run_folder(
        debug_run, ckpt_path=str(debug_run / "checkpoints" / "last.ckpt"), overwrite=False
    )


def test_missing_resume_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PetflareInputError, match="nope.ckpt"):
        check_run_folder(tmp_path, ckpt_path=str(tmp_path / "nope.ckpt"), overwrite=False)


def test_bad_input_exits_2(tmp_path: Path) -> None:
    result = run_script("export_model.py", f"run_dir={tmp_path}", f"out_dir={tmp_path}/m")
    assert result.returncode == 2
    assert "config.yaml" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_export_writes_a_loadable_model_folder(debug_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    result = run_script("export_model.py", f"run_dir={debug_run}", f"out_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["training"]["run_name"] == "debug"
    assert metadata["training"]["seed"] == 42
    assert metadata["metrics"]["validation"]["n_scans"] == 1
    assert "Research" in metadata["intended_use"]
    assert metadata["channels"] == ["pet"] and metadata["spacing_mm"] == [2.5, 2.5, 2.5]
    assert Predictor.from_folder(out, device="cpu").metadata == metadata


@pytest.mark.parametrize(
    ("accelerator", "precision", "native", "expected"),
    [
        ("cpu", "bf16-mixed", False, "32-true"),  # emulated bfloat16 would be slower: fp32
        ("cpu", "bf16-mixed", True, "bf16-mixed"),
        ("cpu", "32-true", False, "32-true"),
        ("gpu", "bf16-mixed", False, "bf16-mixed"),  # a GPU run is not the CPU's business
    ],
)
def test_cpu_bf16_falls_back_to_fp32_without_native_support(
    monkeypatch: pytest.MonkeyPatch, accelerator: str, precision: str, native: bool, expected: str
) -> None:
    monkeypatch.setattr(train_cli, "cpu_bf16_supported", lambda: native)
    cfg = OmegaConf.create({"trainer": {"accelerator": accelerator, "precision": precision}})
    check_cpu_precision(cfg)
    assert cfg.trainer.precision == expected


@pytest.mark.slow
def test_debug_experiment_trains_in_bf16_on_cpu(tmp_path: Path) -> None:
    result = run_script(
        "train.py",
        "experiment=debug",
        "trainer.precision=bf16-mixed",
        f"paths.data_dir={tmp_path}",
        f"paths.output_dir={tmp_path}/run",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "val_metrics.json").read_text())
    assert record["global_step"] == 6
    assert 0.0 <= record["summary"]["mean_dice"] <= 1.0
    # the precision actually used is recorded with the run (fp32 where bf16 is not native)
    expected = "bf16-mixed" if train_cli.cpu_bf16_supported() else "32-true"
    assert f"precision: {expected}" in (tmp_path / "run" / "config.yaml").read_text()
