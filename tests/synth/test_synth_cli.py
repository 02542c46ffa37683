"""The petflare-synth command line, run as a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "synthesize.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO, timeout=300
    )


@pytest.mark.slow
def test_cli_writes_dataset_and_figure(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    res = _run(f"out={out}", "n_pairs=2", "seed=4", "synth=coarse")
    assert res.returncode == 0, res.stderr
    assert (out / "manifest.csv").is_file()
    png = out / "mip_example.png"
    assert png.is_file() and png.stat().st_size > 10_000
    assert str(out / "manifest.csv") in res.stdout and "mip_example.png" in res.stdout
    # a second run into the now non-empty folder is refused with exit 2 and a one-line message
    again = _run(f"out={out}", "n_pairs=2", "synth=coarse")
    assert again.returncode == 2
    assert "overwrite=true" in again.stderr and str(out) in again.stderr
    ok = _run(f"out={out}", "n_pairs=1", "synth=coarse", "overwrite=true", "figure=false")
    assert ok.returncode == 0, ok.stderr
    assert not png.exists()  # the folder was replaced


@pytest.mark.parametrize(
    ("args", "message"),
    [((), "out=DIR is required"), (("out=/tmp/x", "synth.height_m=[2,1]"), "height_m")],
)
@pytest.mark.slow
def test_cli_bad_input_exits_2(args: tuple[str, ...], message: str) -> None:
    res = _run(*args)
    assert res.returncode == 2
    assert message in res.stderr


@pytest.mark.slow
def test_cli_help_documents_options() -> None:
    res = _run("--help")
    assert res.returncode == 0
    for word in ("out=DIR", "n_pairs", "seed", "overwrite", "synth=", "manifest.csv"):
        assert word in res.stdout
