"""The real-background pair benchmark: the product's path on manifest pairs, metrics, report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from petflare.benchmarks.real_pairs import (
    background_of,
    controlled_rate,
    evaluate_pairs,
    format_report,
    method_metrics,
    read_pairs,
    truth_foci,
)
from petflare.errors import PetflareInputError
from petflare.inference.baselines import fixed_threshold_mask
from petflare.io.layouts import write_manifest
from petflare.io.nifti import save_nifti
from petflare.io.study import Study

SHAPE = (40, 32, 24)
AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])


class Threshold:
    """SUV >= 4: finds every sphere of the pairs below."""

    metadata: dict = {}

    def predict(self, study: Study) -> np.ndarray:
        return fixed_threshold_mask(study)


class Blind(Threshold):
    """A deliberately wrong segmentation: nothing found."""

    def predict(self, study: Study) -> np.ndarray:
        return np.zeros(study.shape, dtype=np.uint8)


def _pet(spheres: list[tuple[tuple[int, int, int], float]]) -> np.ndarray:
    idx = np.indices(SHAPE).transpose(1, 2, 3, 0)
    pet = np.ones(SHAPE, dtype=np.float32)
    for centre, suv in spheres:
        pet[np.linalg.norm(idx - np.array(centre), axis=-1) <= 2.5] = suv
    return pet


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two backgrounds, two pairs each: one stable (controlled), one with two new lesions."""
    root = tmp_path_factory.mktemp("real_pairs")
    a, b, c = (10, 16, 12), (28, 10, 12), (28, 24, 12)
    rows = []
    for bg in ("bgone", "bgtwo"):
        for index, (pattern, follow) in enumerate(
            (("controlled", [(a, 8.0)]), ("new_lesions", [(a, 8.0), (b, 7.0), (c, 9.0)]))
        ):
            pair_id = f"{bg}_p{index:04d}"
            row = {"patient_id": pair_id, "pattern": pattern}
            for visit, spheres in (("baseline", [(a, 8.0)]), ("followup", follow)):
                path = root / "autopet" / pair_id / visit / "SUV.nii.gz"
                save_nifti(_pet(spheres), AFFINE, path)
                row[f"{visit}_pet"] = str(path)
            rows.append(row)
            if pattern == "new_lesions":  # the generator's truth: points in the baseline world
                shift = np.eye(4)
                shift[:3, 3] = (0.0, 0.0, 0.0) if bg == "bgone" else (-40.0, 0.0, 0.0)
                truth = {
                    "new_lesions": [
                        {"center_world_mm": [4.0 * v for v in b]},
                        {"center_world_mm": [4.0 * v for v in c]},
                    ],
                    "nuisance": {"reposition": {"followup_from_baseline_world": shift.tolist()}},
                }
                (root / "truth").mkdir(exist_ok=True)
                (root / "truth" / f"{pair_id}.json").write_text(json.dumps(truth))
    write_manifest(rows, root / "manifest.csv")
    return root


def test_background_of_pair_ids() -> None:
    assert background_of("acrin042_p0003") == "acrin042"
    assert background_of("my_scan_p0010") == "my_scan"


def test_missing_manifest_is_named(tmp_path: Path) -> None:
    with pytest.raises(PetflareInputError, match="manifest.csv"):
        read_pairs(tmp_path)


def test_right_masks_score_better_than_a_blind_segmentation(pairs: Path) -> None:
    rows = read_pairs(pairs)
    lines: list[str] = []
    good = evaluate_pairs(rows, Threshold(), progress=lines.append)
    blind = evaluate_pairs(rows, Blind())
    assert len(lines) == 4 and "truth new_lesions" in lines[1]
    assert [r["rules"] for r in good] == ["controlled", "new_lesions"] * 2
    assert [r["background"] for r in good] == ["bgone", "bgone", "bgtwo", "bgtwo"]
    assert all("head" not in r for r in good)  # no head: rules only
    assert method_metrics(good, "rules")["balanced_accuracy"] == 1.0
    assert method_metrics(blind, "rules")["balanced_accuracy"] == 0.5
    assert method_metrics(good, "head") is None
    assert controlled_rate(good, "rules") == (2, 4)
    text = format_report("tiny", good, good[:1], {"bgone": True, "bgtwo": False}, "cmd")
    assert "bgone (seen by the segmentation network)" in text
    assert "bgtwo (not seen" in text
    assert "rules: 1 of 1 `controlled` (100 %)" in text
    assert "| bgtwo_p0001 | pattern | new_lesions | - | new_lesions |" in text


def test_focal_truths_are_looked_up_in_the_followup_lesions(pairs: Path) -> None:
    rows = read_pairs(pairs)
    good = evaluate_pairs(rows, Threshold(), truth_dir=pairs / "truth")
    blind = evaluate_pairs(rows, Blind(), truth_dir=pairs / "truth")
    assert "foci" not in good[0]  # a controlled pair has no truth file here
    # bgone: the new lesions are where the truth says; bgtwo's truth is moved 40 mm (10 voxels)
    # by its recorded repositioning, off both spheres: not in the mask
    # segmented, a new lesion is no rising focus outside the masks; missed, it is flagged
    assert good[1]["foci"] == [{"kind": "new_lesion", "in_mask": True, "flagged": False}] * 2
    assert good[3]["foci"] == [{"kind": "new_lesion", "in_mask": False, "flagged": False}] * 2
    flagged = {"kind": "new_lesion", "in_mask": False, "flagged": True}
    # the tiny phantom has no liver: no baseline site / liver ratio
    assert blind[1]["foci"] == [{**flagged, "baseline_liver_ratio": None}] * 2
    assert [r["unsegmented_foci"] for r in good] == [0, 0, 0, 0]
    assert [r["unsegmented_foci"] for r in blind] == [0, 2, 0, 2]  # stable lesion: no rise
    text = format_report("tiny", good, [], {"bgone": True, "bgtwo": False}, "cmd")
    assert "- new lesions: 2 of 4 lie in a predicted follow-up lesion" in text
    assert "| new lesion 2/2 (flagged 0) |" in text and "| new lesion 0/2 (flagged 0) |" in text
    text = format_report("tiny", blind, blind[:1], {"bgone": True, "bgtwo": False}, "cmd")
    assert "2 of 4 flagged as rising focal uptake outside the masks" in text
    assert "| pattern: new_lesions | 2 | 2 | 4 |" in text
    assert "| physiology: controlled | 1 | 0 | 0 |" in text
    truth = {
        "lesions": [{"nodule": {"centre_world_mm": [1.0, 2.0, 3.0]}}, {"label": 2}],
        "nuisance": {"reposition": {"followup_from_baseline_world": np.eye(4).tolist()}},
    }
    ((kind, point),) = truth_foci(truth)
    assert kind == "nodule" and np.allclose(point, [1.0, 2.0, 3.0])


def test_cli_help_and_missing_pairs_exit_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "scripts" / "benchmark_real_pairs.py"
    shown = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0 and "--physiology" in shown.stdout
    bad = subprocess.run(
        [sys.executable, str(script), "--pairs", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2
    assert "manifest.csv" in bad.stderr
