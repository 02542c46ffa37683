"""Every entry script answers ``--help`` with its own description (Hydra's help template)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS_DIR = Path(__file__).resolve().parents[2] / "scripts"

#: script -> a phrase its help text must contain (its own description, not Hydra's default).
HELP_PHRASES = {
    "train.py": "petflare-train",
    "infer.py": "petflare-infer",
    "synthesize.py": "petflare-synth",
    "convert.py": "petflare-convert",
    "evaluate.py": "petflare-evaluate",
    "demo.py": "petflare demo",
    "export_model.py": "petflare-export-model",
    "train_head.py": "petflare-train-head",
}


@pytest.mark.parametrize("script", sorted(HELP_PHRASES))
@pytest.mark.slow
def test_help_exits_zero_with_description(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPTS_DIR / script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert HELP_PHRASES[script] in result.stdout
