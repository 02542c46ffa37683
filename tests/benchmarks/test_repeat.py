"""petflare.benchmarks.repeat: simulated repeats of a scan and their pair calls."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from petflare.benchmarks import repeat as bench
from petflare.io.study import Study
from petflare_testing import make_non_ras_affine


class ThresholdPredictor:
    def predict(self, study: Study) -> np.ndarray:
        return (study.pet >= 3.0).astype(np.uint8)


def _scan() -> Study:
    """A body of SUV 1 on a non-RAS anisotropic grid with two hot spheres."""
    shape = (40, 34, 22)
    affine = make_non_ras_affine(spacing_mm=(3.0, 3.5, 5.0), rotation_deg=0.0)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    pet = np.zeros(shape, np.float32)
    pet[4:-4, 4:-4, 2:-2] = 1.0
    for frac, radius, suv in (((0.35, 0.4, 0.5), 12.0, 8.0), ((0.65, 0.6, 0.5), 10.0, 6.0)):
        centre = affine[:3, :3] @ ((np.asarray(shape) - 1) * np.asarray(frac)) + affine[:3, 3]
        pet[np.linalg.norm(world - centre, axis=-1) <= radius] = suv
    return Study(pet=pet, affine=affine)


def _hot_centroid_mm(study: Study) -> np.ndarray:
    """Uptake-weighted centre of the spheres (weights: SUV above the body's 1)."""
    weights = np.clip(study.pet - 1.0, 0.0, None)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in study.shape], indexing="ij"), axis=-1)
    ijk = (idx * weights[..., None]).sum(axis=(0, 1, 2)) / weights.sum()
    return study.affine[:3, :3] @ ijk + study.affine[:3, 3]


def test_repeats_move_the_body_in_world_mm_and_keep_the_grid() -> None:
    scan = _scan()
    args = argparse.Namespace(n_repeats=3, seed=0, max_shift_mm=6.0, noise_cv=(0.0, 0.0))
    pairs = bench.repeats(scan, args)
    assert len(pairs) == 3
    itself, how = pairs[0]
    np.testing.assert_array_equal(itself.pet, scan.pet)
    assert how["shift_mm"] == [0.0, 0.0, 0.0] and itself.meta.study_id == "followup"
    for repeat, how in pairs[1:]:
        assert repeat.shape == scan.shape
        np.testing.assert_array_equal(repeat.affine, scan.affine)
        moved = _hot_centroid_mm(repeat) - _hot_centroid_mm(scan)
        np.testing.assert_allclose(moved, how["shift_mm"], atol=0.5)  # RAS mm, via the affine
        assert max(abs(s) for s in how["shift_mm"]) <= 6.0


def test_the_scan_paired_with_itself_reads_controlled() -> None:
    scan = _scan()
    args = argparse.Namespace(n_repeats=2, seed=3, max_shift_mm=4.0, noise_cv=(0.03, 0.03))
    rows = bench.score_pairs(ThresholdPredictor(), None, scan, bench.repeats(scan, args))
    itself = rows[0]
    assert itself["label"] == itself["rules"] == "controlled"
    assert itself["p_controlled"] is None  # no head: the rules, without probabilities
    assert (itself["n_baseline"], itself["n_followup"], itself["persisting"]) == (2, 2, 2)
    assert itself["resolved"] == 0 and itself["new"] == 0 and itself["new_uptake"] == 0
    text = bench.markdown("cmd", Path("scan"), {"rules": rows})
    n_controlled = sum(r["label"] == "controlled" for r in rows)
    assert f"| rules | {n_controlled} / 2 | n/a | {n_controlled} / 2 |" in text  # summary


def test_bad_input_exits_2_naming_the_file(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope.nii.gz"
    assert bench.main(["--pet", str(missing), "--model-dir", str(tmp_path)]) == 2
    assert str(missing) in capsys.readouterr().err
    out = tmp_path / "repeat.md"
    out.write_text("earlier result")
    assert bench.main(["--pet", str(missing), "--model-dir", str(tmp_path), "--out", str(out)]) == 2
    assert out.read_text() == "earlier result"
