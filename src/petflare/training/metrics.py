"""autoPET segmentation metrics: per-scan Dice, false-positive / false-negative volume, detection.

Definitions follow the autoPET challenge (Gatidis et al., see DOMAIN.md):

- Dice is computed over all lesion voxels of a scan; it is undefined (NaN) when the ground truth is
  empty, and such negative scans are left out of the mean Dice.
- False-positive volume (FPV) is the volume in ml of the predicted connected components
  (18-connectivity by default) that do not overlap the ground truth at all.
- False-negative volume (FNV) is the volume in ml of the ground-truth components that no predicted
  voxel overlaps. Negative scans count in FPV only (their FNV is 0 and left out of the mean FNV).

Lesion-wise detection: a ground-truth lesion is detected when any predicted voxel overlaps it; a
predicted component is a true positive when it overlaps any ground-truth lesion. Sensitivity and
precision are pooled over the lesions of all scans. Pure numpy + cc3d so that it runs anywhere
(validation loops, the evaluation CLI) without torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import cc3d
import numpy as np

#: Connectivities cc3d supports in 3D (faces, faces+edges, faces+edges+corners).
VALID_CONNECTIVITIES = (6, 18, 26)

#: Default lesion size for the "large lesion" sensitivity: equivalent-sphere diameter in mm.
LARGE_LESION_DIAMETER_MM = 20.0


def equivalent_diameter_mm(volume_ml: float) -> float:
    """Diameter in mm of the sphere with volume ``volume_ml`` (1 ml = 1000 mm^3)."""
    return float((6.0 * volume_ml * 1000.0 / math.pi) ** (1.0 / 3.0))


@dataclass(frozen=True)
class ScanMetrics:
    """autoPET metrics of one scan.

    Attributes:
        dice: foreground Dice over all lesion voxels; NaN when the ground truth is empty.
        fpv_ml: volume of predicted components with no overlap with the ground truth (ml).
        fnv_ml: volume of ground-truth components with no overlap with the prediction (ml).
        n_gt_lesions: number of ground-truth connected components.
        n_gt_detected: ground-truth components overlapped by at least one predicted voxel.
        n_pred_lesions: number of predicted connected components.
        n_pred_true: predicted components overlapping at least one ground-truth voxel.
        gt_volume_ml: total ground-truth lesion volume (ml).
        pred_volume_ml: total predicted lesion volume (ml).
        gt_lesion_volumes_ml: volume of each ground-truth component (ml), in label order.
        gt_lesion_detected: whether each ground-truth component was detected, same order.
    """

    dice: float
    fpv_ml: float
    fnv_ml: float
    n_gt_lesions: int
    n_gt_detected: int
    n_pred_lesions: int
    n_pred_true: int
    gt_volume_ml: float = 0.0
    pred_volume_ml: float = 0.0
    gt_lesion_volumes_ml: tuple[float, ...] = field(default_factory=tuple)
    gt_lesion_detected: tuple[bool, ...] = field(default_factory=tuple)

    @property
    def is_negative(self) -> bool:
        """True for a scan without any ground-truth lesion (counts in FPV only)."""
        return self.n_gt_lesions == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict; NaN becomes None (strict JSON has no NaN)."""
        out = asdict(self)
        out["gt_lesion_volumes_ml"] = list(self.gt_lesion_volumes_ml)
        out["gt_lesion_detected"] = list(self.gt_lesion_detected)
        out["is_negative"] = self.is_negative
        return {k: _json_float(v) for k, v in out.items()}


def _json_float(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _components(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    labels, n = cc3d.connected_components(  # type: ignore[call-overload]
        np.ascontiguousarray(mask, dtype=np.uint8), connectivity=connectivity, return_N=True
    )
    return labels, int(n)


def _touched_labels(labels: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Labels (> 0) of ``labels`` present at the voxels where ``where`` is True."""
    touched = np.unique(labels[where])
    return touched[touched > 0]


def scan_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    voxel_volume_ml: float,
    connectivity: int = 18,
) -> ScanMetrics:
    """Compute the autoPET metrics of one scan.

    Args:
        pred: predicted mask (binary or instance labels; > 0 is lesion), on the grid of ``gt``.
        gt: ground-truth mask (binary or instance labels; > 0 is lesion).
        voxel_volume_ml: volume of one voxel in ml, from the image header / affine.
        connectivity: 3D connectivity for the connected components (6, 18 or 26); autoPET uses 18.

    Returns:
        The scan's :class:`ScanMetrics`.

    Raises:
        ValueError: shapes differ, the arrays are not 3D, or the connectivity / voxel volume is
            invalid.
    """
    pred_b = np.asarray(pred) > 0
    gt_b = np.asarray(gt) > 0
    if pred_b.shape != gt_b.shape:
        raise ValueError(f"prediction shape {pred_b.shape} differs from ground truth {gt_b.shape}")
    if gt_b.ndim != 3:
        raise ValueError(f"masks must be 3D, got shape {gt_b.shape}")
    if connectivity not in VALID_CONNECTIVITIES:
        raise ValueError(f"connectivity must be one of {VALID_CONNECTIVITIES}, got {connectivity}")
    if not (voxel_volume_ml > 0 and math.isfinite(voxel_volume_ml)):
        raise ValueError(f"voxel_volume_ml must be a positive number, got {voxel_volume_ml}")

    n_gt_vox = int(gt_b.sum())
    n_pred_vox = int(pred_b.sum())
    n_inter = int(np.logical_and(gt_b, pred_b).sum())
    dice = 2.0 * n_inter / (n_gt_vox + n_pred_vox) if n_gt_vox > 0 else float("nan")

    gt_labels, n_gt = _components(gt_b, connectivity)
    pred_labels, n_pred = _components(pred_b, connectivity)
    gt_sizes = np.bincount(gt_labels.ravel(), minlength=n_gt + 1)[1:]
    pred_sizes = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)[1:]

    detected = np.zeros(n_gt, dtype=bool)
    detected[_touched_labels(gt_labels, pred_b) - 1] = True
    pred_true = np.zeros(n_pred, dtype=bool)
    pred_true[_touched_labels(pred_labels, gt_b) - 1] = True

    fnv_ml = float(gt_sizes[~detected].sum()) * voxel_volume_ml
    fpv_ml = float(pred_sizes[~pred_true].sum()) * voxel_volume_ml
    return ScanMetrics(
        dice=float(dice),
        fpv_ml=fpv_ml,
        fnv_ml=fnv_ml,
        n_gt_lesions=n_gt,
        n_gt_detected=int(detected.sum()),
        n_pred_lesions=n_pred,
        n_pred_true=int(pred_true.sum()),
        gt_volume_ml=n_gt_vox * voxel_volume_ml,
        pred_volume_ml=n_pred_vox * voxel_volume_ml,
        gt_lesion_volumes_ml=tuple(float(s) * voxel_volume_ml for s in gt_sizes),
        gt_lesion_detected=tuple(bool(d) for d in detected),
    )


def _ratio(num: int, den: int) -> float:
    return num / den if den > 0 else float("nan")


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def summarize(
    metrics: Sequence[ScanMetrics],
    large_lesion_diameter_mm: float = LARGE_LESION_DIAMETER_MM,
) -> dict[str, Any]:
    """Aggregate per-scan metrics the autoPET way.

    Mean Dice and mean FNV are taken over positive scans only, mean FPV over all scans.
    Detection sensitivity and precision are pooled over lesions of all scans, and a second
    sensitivity is restricted to ground-truth lesions whose equivalent-sphere diameter is at least
    ``large_lesion_diameter_mm``. Undefined quantities (no positive scan, no lesion) are NaN.

    Args:
        metrics: per-scan metrics.
        large_lesion_diameter_mm: size threshold for ``sensitivity_large``.

    Returns:
        A flat dict of floats / ints (keys documented in the code below).
    """
    positives = [m for m in metrics if not m.is_negative]
    n_gt = sum(m.n_gt_lesions for m in metrics)
    n_det = sum(m.n_gt_detected for m in metrics)
    n_pred = sum(m.n_pred_lesions for m in metrics)
    n_true = sum(m.n_pred_true for m in metrics)
    min_volume_ml = math.pi / 6.0 * large_lesion_diameter_mm**3 / 1000.0
    large = [
        det
        for m in metrics
        for vol, det in zip(m.gt_lesion_volumes_ml, m.gt_lesion_detected, strict=True)
        if vol >= min_volume_ml
    ]
    dices = [m.dice for m in positives]
    return {
        "n_scans": len(metrics),
        "n_positive_scans": len(positives),
        "n_negative_scans": len(metrics) - len(positives),
        "mean_dice": _mean(dices),
        "median_dice": float(np.median(dices)) if dices else float("nan"),
        "mean_fpv_ml": _mean([m.fpv_ml for m in metrics]),
        "mean_fnv_ml": _mean([m.fnv_ml for m in positives]),
        "n_gt_lesions": n_gt,
        "n_gt_detected": n_det,
        "n_pred_lesions": n_pred,
        "n_pred_true": n_true,
        "sensitivity": _ratio(n_det, n_gt),
        "precision": _ratio(n_true, n_pred),
        "large_lesion_diameter_mm": float(large_lesion_diameter_mm),
        "n_large_gt_lesions": len(large),
        "sensitivity_large": _ratio(int(sum(large)), len(large)),
    }
