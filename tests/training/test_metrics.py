"""Analytic tests of the autoPET metrics: known Dice, FPV, FNV and detection counts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from petflare.io.study import Study
from petflare.training.metrics import (
    ScanMetrics,
    equivalent_diameter_mm,
    scan_metrics,
    summarize,
)

# Non-RAS (LPS-like, axes permuted) anisotropic grid: spacing 2 x 3 x 4 mm -> 24 mm^3 per voxel.
AFFINE = np.array(
    [
        [0.0, -2.0, 0.0, 10.0],
        [-3.0, 0.0, 0.0, -5.0],
        [0.0, 0.0, 4.0, 3.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
SHAPE = (16, 14, 12)


@pytest.fixture()
def voxel_ml() -> float:
    study = Study(pet=np.zeros(SHAPE, np.float32), affine=AFFINE)
    assert study.voxel_volume_ml == pytest.approx(0.024)
    return study.voxel_volume_ml


def two_cubes() -> tuple[np.ndarray, np.ndarray]:
    """GT: a 3^3 cube (detected, shifted prediction) and a 2^3 cube (missed); one 4-voxel FP."""
    gt = np.zeros(SHAPE, np.uint8)
    pred = np.zeros(SHAPE, np.uint8)
    gt[2:5, 2:5, 2:5] = 1  # 27 voxels
    gt[10:12, 10:12, 8:10] = 2  # 8 voxels, instance label 2
    pred[3:6, 2:5, 2:5] = 1  # 27 voxels, 18 overlap the first cube
    pred[12:14, 2:4, 9] = 1  # 4 voxels, far from any lesion
    return pred, gt


def test_two_cubes_known_values(voxel_ml: float) -> None:
    pred, gt = two_cubes()
    m = scan_metrics(pred, gt, voxel_ml)
    assert m.dice == pytest.approx(2 * 18 / (35 + 31))
    assert m.fnv_ml == pytest.approx(8 * 0.024)
    assert m.fpv_ml == pytest.approx(4 * 0.024)
    assert (m.n_gt_lesions, m.n_gt_detected) == (2, 1)
    assert (m.n_pred_lesions, m.n_pred_true) == (2, 1)
    assert m.gt_volume_ml == pytest.approx(35 * 0.024)
    assert m.pred_volume_ml == pytest.approx(31 * 0.024)
    assert sorted(m.gt_lesion_volumes_ml) == pytest.approx([8 * 0.024, 27 * 0.024])
    assert sum(m.gt_lesion_detected) == 1
    assert not m.is_negative


def test_perfect_prediction(voxel_ml: float) -> None:
    _, gt = two_cubes()
    m = scan_metrics(gt, gt, voxel_ml)
    assert m.dice == pytest.approx(1.0)
    assert m.fpv_ml == 0.0 and m.fnv_ml == 0.0
    assert m.n_gt_detected == m.n_gt_lesions == m.n_pred_true == m.n_pred_lesions == 2


def test_empty_prediction_on_positive_scan(voxel_ml: float) -> None:
    _, gt = two_cubes()
    m = scan_metrics(np.zeros_like(gt), gt, voxel_ml)
    assert m.dice == 0.0
    assert m.fnv_ml == pytest.approx(35 * 0.024)
    assert m.fpv_ml == 0.0
    assert m.n_pred_lesions == 0 and m.n_gt_detected == 0


def test_negative_scan_counts_in_fpv_only(voxel_ml: float) -> None:
    pred, _ = two_cubes()
    m = scan_metrics(pred, np.zeros(SHAPE, np.uint8), voxel_ml)
    assert math.isnan(m.dice)
    assert m.is_negative
    assert m.fpv_ml == pytest.approx(31 * 0.024)
    assert m.fnv_ml == 0.0
    assert m.to_dict()["dice"] is None  # strict JSON


def test_empty_everything(voxel_ml: float) -> None:
    empty = np.zeros(SHAPE, np.uint8)
    m = scan_metrics(empty, empty, voxel_ml)
    assert math.isnan(m.dice) and m.fpv_ml == 0.0 and m.fnv_ml == 0.0


def test_connectivity_18_vs_26(voxel_ml: float) -> None:
    """A predicted voxel touching the true-positive component only by a corner.

    With 26-connectivity it belongs to the true-positive component (no FPV); with the autoPET
    18-connectivity it is a component of its own that misses the ground truth (1 voxel of FPV).
    """
    gt = np.zeros(SHAPE, np.uint8)
    gt[4:7, 4:7, 4:7] = 1
    pred = np.zeros(SHAPE, np.uint8)
    pred[6, 6, 6] = 1  # inside the lesion (its corner voxel)
    pred[7, 7, 7] = 1  # outside, corner-adjacent only
    m18 = scan_metrics(pred, gt, voxel_ml, connectivity=18)
    m26 = scan_metrics(pred, gt, voxel_ml, connectivity=26)
    assert m18.fpv_ml == pytest.approx(0.024) and m18.n_pred_lesions == 2
    assert m26.fpv_ml == 0.0 and m26.n_pred_lesions == 1
    assert m18.dice == m26.dice


def test_edge_connected_lesions_split_at_6_not_18(voxel_ml: float) -> None:
    gt = np.zeros(SHAPE, np.uint8)
    gt[2, 2, 2] = 1
    gt[3, 3, 2] = 1  # shares an edge with the first voxel
    pred = np.zeros(SHAPE, np.uint8)
    pred[2, 2, 2] = 1
    assert scan_metrics(pred, gt, voxel_ml, connectivity=18).fnv_ml == 0.0
    m6 = scan_metrics(pred, gt, voxel_ml, connectivity=6)
    assert m6.n_gt_lesions == 2 and m6.fnv_ml == pytest.approx(0.024)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"connectivity": 8}, "connectivity"),
        ({"voxel_volume_ml": 0.0}, "voxel_volume_ml"),
        ({"voxel_volume_ml": float("nan")}, "voxel_volume_ml"),
    ],
)
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    pred, gt = two_cubes()
    args = {"voxel_volume_ml": 0.024, **kwargs}
    with pytest.raises(ValueError, match=match):
        scan_metrics(pred, gt, **args)


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        scan_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), 0.001)


def test_equivalent_diameter() -> None:
    volume_ml = math.pi / 6.0 * 20.0**3 / 1000.0  # a 2 cm sphere
    assert equivalent_diameter_mm(volume_ml) == pytest.approx(20.0)


def _scan(dice: float, fpv: float, fnv: float, vols: tuple, det: tuple, n_pred: int, n_true: int):
    return ScanMetrics(
        dice=dice,
        fpv_ml=fpv,
        fnv_ml=fnv,
        n_gt_lesions=len(vols),
        n_gt_detected=sum(det),
        n_pred_lesions=n_pred,
        n_pred_true=n_true,
        gt_lesion_volumes_ml=vols,
        gt_lesion_detected=det,
    )


def test_summarize_excludes_negatives_from_dice_and_fnv() -> None:
    big = math.pi / 6.0 * 25.0**3 / 1000.0  # 2.5 cm lesion
    small = 0.1  # ~5.8 mm lesion
    scans = [
        _scan(0.8, 1.0, 2.0, (big, small), (True, False), n_pred=3, n_true=1),
        _scan(0.6, 0.0, 0.0, (big,), (False,), n_pred=0, n_true=0),
        _scan(float("nan"), 5.0, 0.0, (), (), n_pred=1, n_true=0),  # negative scan
    ]
    s = summarize(scans)
    assert s["n_scans"] == 3 and s["n_positive_scans"] == 2 and s["n_negative_scans"] == 1
    assert s["mean_dice"] == pytest.approx(0.7)
    assert s["mean_fpv_ml"] == pytest.approx(2.0)
    assert s["mean_fnv_ml"] == pytest.approx(1.0)
    assert s["sensitivity"] == pytest.approx(1 / 3)
    assert s["precision"] == pytest.approx(1 / 4)
    assert s["n_large_gt_lesions"] == 2
    assert s["sensitivity_large"] == pytest.approx(0.5)
    s30 = summarize(scans, large_lesion_diameter_mm=30.0)
    assert s30["n_large_gt_lesions"] == 0 and math.isnan(s30["sensitivity_large"])


def test_summarize_empty() -> None:
    s = summarize([])
    assert s["n_scans"] == 0 and math.isnan(s["mean_dice"]) and math.isnan(s["sensitivity"])


def test_summarize_from_real_scan_metrics(voxel_ml: float) -> None:
    pred, gt = two_cubes()
    s = summarize([scan_metrics(pred, gt, voxel_ml)], large_lesion_diameter_mm=4.0)
    # 27 * 24 mm^3 = 648 mm^3 -> 10.7 mm; 8 * 24 = 192 mm^3 -> 7.2 mm: both >= 4 mm
    assert s["n_large_gt_lesions"] == 2 and s["sensitivity_large"] == pytest.approx(0.5)
    s9 = summarize([scan_metrics(pred, gt, voxel_ml)], large_lesion_diameter_mm=9.0)
    assert s9["n_large_gt_lesions"] == 1 and s9["sensitivity_large"] == pytest.approx(1.0)
