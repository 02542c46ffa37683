"""The demo runs the whole pair pipeline on one phantom pair per pattern and reports a table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from petflare.constants import PATTERNS
from petflare.inference.demo import format_table, run_demo
from petflare_testing import make_tiny_model_folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random U-Net model folder (the demo's contract, not its accuracy, is tested here)."""
    return make_tiny_model_folder(
        tmp_path_factory.mktemp("model") / "tiny-unet",
        spacing_mm=(10.0, 10.0, 10.0),
        min_component_ml=2.0,
        roi_size_vox=(48, 48, 48),
        metadata={"name": "tiny-test-unet", "version": "0.0.1", "intended_use": "tests only"},
    )


@pytest.mark.slow
def test_demo_runs_one_pair_per_pattern(tmp_path: Path, tiny_model: Path) -> None:
    from petflare.synth import PhantomConfig

    coarse = PhantomConfig(
        spacing_inplane_mm=(10.0, 10.0), spacing_slice_mm=(10.0, 10.0), psf_fwhm_mm=(10.0, 12.0)
    )
    rows = run_demo(tmp_path / "demo", seed=5, model=tiny_model, device="cpu", phantom=coarse)

    assert [r.true_pattern for r in rows] == list(PATTERNS)
    for row in rows:
        assert row.predicted_pattern in PATTERNS
        assert row.seconds > 0
        assert row.html.is_file() and row.html.stat().st_size > 1000
        report = json.loads((row.html.parent / "report.json").read_text())
        assert report["pattern"]["label"] == row.predicted_pattern
        assert (row.html.parent / "baseline_lesions.nii.gz").is_file()
    table = format_table(rows)
    for name in PATTERNS:
        assert name in table
    assert str(rows[0].html) in table
