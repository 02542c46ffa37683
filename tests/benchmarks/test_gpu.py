"""petflare.benchmarks.gpu: every part runs (on the CPU, --quick) and the report names them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from petflare_testing import make_tiny_model_folder

REPO = Path(__file__).resolve().parents[2]


def quick_cpu_command(tmp_path: Path, *options: str) -> tuple[list[str], Path]:
    """The script's CPU smoke run on a tiny model folder, and the report it writes."""
    model = make_tiny_model_folder(
        tmp_path / "model", spacing_mm=(8.0, 8.0, 8.0), min_component_ml=20.0
    )
    out = tmp_path / "gpu.md"
    script = str(REPO / "scripts" / "benchmark_gpu.py")
    base = ["--device", "cpu", "--quick", "--model-dir", str(model), "--out", str(out)]
    return [sys.executable, script, *base, *options], out


@pytest.mark.slow
def test_quick_cpu_run_writes_every_part(tmp_path: Path) -> None:
    cmd, out = quick_cpu_command(tmp_path, "--pairs", "1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    for heading in ("## Training throughput", "## Whole-body inference", "## Pairs end to end"):
        assert heading in text
    raw = json.loads(text.split("```json\n", 1)[1].split("\n```", 1)[0])
    assert raw["train"]["steps_per_s"] > 0 and raw["train"]["precision"] == "fp32"
    inference = raw["inference"]
    assert inference["input_shape"][:2] == [96, 96]  # padded in-plane like an autoPET volume
    assert inference["predictor_s"] > 0 and inference["autopet_net_full_res_s"] > 0
    assert inference["reoriented_differing_voxels"] == 0  # CPU: the same voxels, exactly
    assert raw["pairs"]["pairs_per_minute"] > 0 and raw["pairs"]["batch_pairs"] == 1
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert again.returncode == 2 and "exists" in again.stderr


@pytest.mark.slow
def test_cuda_requested_without_a_gpu_exits_2(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark_gpu.py"), "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 2 and "CUDA" in proc.stderr


@pytest.mark.slow
def test_parts_select_what_runs_and_what_is_reported(tmp_path: Path) -> None:
    cmd, out = quick_cpu_command(tmp_path, "--parts", "train")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "## Training throughput" in text
    assert "## Whole-body inference" not in text and "## Pairs end to end" not in text
    raw = json.loads(text.split("```json\n", 1)[1].split("\n```", 1)[0])
    assert set(raw) >= {"train"} and "inference" not in raw and "pairs" not in raw
