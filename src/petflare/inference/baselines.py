"""Classical threshold segmentations of FDG-avid lesions, the reference any learned model must beat.

Two baselines widely used in PET oncology:

- a fixed threshold, SUV >= 4.0 (body weight);
- 41% of the local SUVmax: connected regions of SUV >= 2.5 are found first, then inside each region
  the voxels at or above 41% of that region's own SUVmax are kept (the 41% iso-contour recommended
  by the EANM guideline for tumour volume delineation, applied per region so that a hot bladder does
  not raise the threshold of a faint lymph node).

Both take a :class:`~petflare.io.study.Study` or a plain SUV array and return a uint8 mask on the
same grid, so they can be scored with :func:`petflare.training.metrics.scan_metrics` exactly like a
model prediction.
"""

from __future__ import annotations

from collections.abc import Callable

import cc3d
import numpy as np
import scipy.ndimage as ndi

from petflare.io.study import Study

#: Fixed-threshold baseline: SUV at or above this is lesion.
FIXED_THRESHOLD_SUV = 4.0
#: Percent-SUVmax baseline: fraction of each region's SUVmax.
SUVMAX_FRACTION = 0.41
#: Percent-SUVmax baseline: SUV threshold defining the candidate regions.
REGION_THRESHOLD_SUV = 2.5


def _suv_array(pet: Study | np.ndarray) -> np.ndarray:
    arr = pet.pet if isinstance(pet, Study) else np.asarray(pet, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"PET must be 3D, got shape {arr.shape}")
    return arr


def fixed_threshold_mask(
    pet: Study | np.ndarray, threshold_suv: float = FIXED_THRESHOLD_SUV
) -> np.ndarray:
    """Segment every voxel with SUV >= ``threshold_suv`` (NaN voxels are background).

    Args:
        pet: a study (its ``pet`` in SUV is used) or a 3D SUV array.
        threshold_suv: SUV threshold (default 4.0).

    Returns:
        uint8 mask on the input grid.
    """
    suv = _suv_array(pet)
    return (suv >= threshold_suv).astype(np.uint8)


def percent_suvmax_mask(
    pet: Study | np.ndarray,
    fraction: float = SUVMAX_FRACTION,
    region_threshold_suv: float = REGION_THRESHOLD_SUV,
    connectivity: int = 18,
) -> np.ndarray:
    """Segment ``fraction`` x local SUVmax inside each connected region of SUV >= a threshold.

    Args:
        pet: a study (its ``pet`` in SUV is used) or a 3D SUV array.
        fraction: fraction of each region's SUVmax (default 0.41).
        region_threshold_suv: SUV threshold defining the candidate regions (default 2.5).
        connectivity: 3D connectivity of the regions (6, 18 or 26).

    Returns:
        uint8 mask on the input grid: voxels of a region with SUV >= fraction x that region's max.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    suv = _suv_array(pet)
    regions, n = cc3d.connected_components(  # type: ignore[call-overload]
        np.ascontiguousarray(suv >= region_threshold_suv, dtype=np.uint8),
        connectivity=connectivity,
        return_N=True,
    )
    if n == 0:
        return np.zeros(suv.shape, dtype=np.uint8)
    region_max = np.asarray(
        ndi.maximum(suv, labels=regions, index=np.arange(1, n + 1)), dtype=np.float32
    )
    inside = regions > 0  # index only the candidate voxels: whole-body volumes are large
    labels_inside = regions[inside].astype(np.intp) - 1
    out = np.zeros(suv.shape, dtype=np.uint8)
    out[inside] = suv[inside] >= fraction * region_max[labels_inside]
    return out


#: The classical baselines by the name used in reports: callables Study|array -> uint8 mask.
CLASSICAL_BASELINES: dict[str, Callable[[Study | np.ndarray], np.ndarray]] = {
    "suv_ge_4": fixed_threshold_mask,
    "suvmax_41pct": percent_suvmax_mask,
}

#: Human-readable description of each baseline, for report tables.
BASELINE_DESCRIPTIONS: dict[str, str] = {
    "suv_ge_4": "fixed threshold SUV >= 4.0",
    "suvmax_41pct": "41% of local SUVmax inside components of SUV >= 2.5",
}
