"""Change-pattern evaluation (rules, optional head) on a tiny coarse phantom manifest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from petflare.constants import PATTERNS, Keys
from petflare.errors import PetflareInputError
from petflare.inference.evaluation import PATTERN_RULES_METHOD, evaluate_patterns
from petflare.io import load_manifest

REPO = Path(__file__).resolve().parents[2]
#: Two patterns the rules tell apart on ground-truth masks.
TINY_PATTERNS = ("diffuse_flare", "new_lesions")


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two coarse (10 mm) phantom pairs with ground-truth masks and a pattern column."""
    from petflare.synth import PhantomConfig, generate_dataset

    coarse = PhantomConfig(
        spacing_inplane_mm=(10.0, 10.0), spacing_slice_mm=(10.0, 10.0), psf_fwhm_mm=(10.0, 12.0)
    )
    return generate_dataset(
        tmp_path_factory.mktemp("pairs"), 2, seed=11, config=coarse, patterns=TINY_PATTERNS
    )


@pytest.mark.slow
def test_rules_are_scored_against_the_manifest_patterns(tiny_manifest: Path) -> None:
    rows = load_manifest(tiny_manifest)
    result = evaluate_patterns(rows, progress=False)

    assert list(result["metrics"]) == [PATTERN_RULES_METHOD]
    assert [p["truth"] for p in result["pairs"]] == [r[Keys.PATTERN] for r in rows]
    assert all(p[PATTERN_RULES_METHOD] in PATTERNS for p in result["pairs"])
    rules = result["metrics"][PATTERN_RULES_METHOD]
    assert rules["n"] == 2
    correct = sum(p["truth"] == p[PATTERN_RULES_METHOD] for p in result["pairs"])
    assert rules["accuracy"] == pytest.approx(correct / 2)
    assert rules["auroc_macro_ovr"] is None and rules["ece"] is None  # no probabilities


def test_rows_without_pattern_are_skipped_and_masks_are_required(tiny_manifest: Path) -> None:
    rows = load_manifest(tiny_manifest)
    with pytest.raises(PetflareInputError, match="no manifest row has a pattern"):
        evaluate_patterns([{**r, Keys.PATTERN: None} for r in rows], progress=False)
    no_mask = [{**rows[0], Keys.FOLLOWUP_MASK: None}]
    with pytest.raises(PetflareInputError, match="followup_mask"):
        evaluate_patterns(no_mask, progress=False)


@pytest.mark.slow
def test_cli_patterns_option_writes_pattern_metrics(tiny_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "evaluate.py"),
            f"dataset={tiny_manifest}",
            f"out={out}",
            "patterns=true",
            "progress=false",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "metrics.json").read_text())
    assert report["patterns"]["metrics"][PATTERN_RULES_METHOD]["n"] == 2
    assert len(report["scans"]) == 4  # the segmentation metrics are still there
    assert "## Change pattern" in (out / "metrics.md").read_text()
