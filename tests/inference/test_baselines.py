"""Classical baselines on constructed SUV volumes with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from petflare.inference.baselines import (
    CLASSICAL_BASELINES,
    fixed_threshold_mask,
    percent_suvmax_mask,
)
from petflare.io.study import Study

SHAPE = (20, 18, 16)
AFFINE = np.diag([-2.0, -2.5, 3.0, 1.0])  # LPS, anisotropic


def phantom() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Background SUV 1 with three regions of known answer.

    - hot: core SUV 10 (8 voxels) inside a shell of SUV 3; a rim voxel at 4.5 is above
      41% x 10 = 4.1 but a shell voxel at 3 is not.
    - warm: one voxel SUV 5 in a block of SUV 3: 41% x 5 = 2.05 < 2.5, so the whole block of
      SUV >= 2.5 is kept by the percent baseline, while only the 5 passes SUV >= 4.
    - faint: SUV 2.2, below both thresholds.
    """
    suv = np.ones(SHAPE, np.float32)
    suv[2:8, 2:8, 2:8] = 3.0
    suv[4:6, 4:6, 4:6] = 10.0
    suv[3, 4, 4] = 4.5
    suv[12:15, 12:15, 10:13] = 3.0
    suv[13, 13, 11] = 5.0
    suv[2:4, 14:16, 12:14] = 2.2
    suv[0, 0, 0] = np.nan  # a NaN voxel must not be segmented or break the max

    fixed = np.zeros(SHAPE, np.uint8)
    fixed[4:6, 4:6, 4:6] = 1
    fixed[3, 4, 4] = 1
    fixed[13, 13, 11] = 1
    percent = np.zeros(SHAPE, np.uint8)
    percent[4:6, 4:6, 4:6] = 1
    percent[3, 4, 4] = 1
    percent[12:15, 12:15, 10:13] = 1
    return suv, {"fixed": fixed, "percent": percent}


def test_fixed_threshold_known_mask() -> None:
    suv, expected = phantom()
    out = fixed_threshold_mask(suv)
    assert out.dtype == np.uint8 and out.shape == SHAPE
    np.testing.assert_array_equal(out, expected["fixed"])


def test_percent_suvmax_known_mask() -> None:
    suv, expected = phantom()
    out = percent_suvmax_mask(suv)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected["percent"])


def test_percent_threshold_is_local_not_global() -> None:
    """A very hot region (SUV 100) must not suppress a separate region of max 5."""
    suv, expected = phantom()
    suv[17, 1, 1] = 100.0  # isolated hot voxel, its own region
    out = percent_suvmax_mask(suv)
    assert out[17, 1, 1] == 1
    np.testing.assert_array_equal(out[12:15, 12:15, 10:13], 1)


def test_regions_joined_by_connectivity() -> None:
    """Two blobs touching by an edge form one region at 18- but two at 6-connectivity."""
    suv = np.ones((8, 8, 8), np.float32)
    suv[2, 2, 2] = 10.0
    suv[3, 3, 2] = 3.0  # edge neighbour: 3 < 4.1 if it shares the 10's region
    assert percent_suvmax_mask(suv, connectivity=18)[3, 3, 2] == 0
    assert percent_suvmax_mask(suv, connectivity=6)[3, 3, 2] == 1


def test_study_input_and_registry() -> None:
    suv, expected = phantom()
    study = Study(pet=suv, affine=AFFINE)
    assert set(CLASSICAL_BASELINES) == {"suv_ge_4", "suvmax_41pct"}
    np.testing.assert_array_equal(CLASSICAL_BASELINES["suv_ge_4"](study), expected["fixed"])
    np.testing.assert_array_equal(CLASSICAL_BASELINES["suvmax_41pct"](study), expected["percent"])


def test_empty_and_invalid() -> None:
    flat = np.ones((6, 6, 6), np.float32)
    assert percent_suvmax_mask(flat).sum() == 0
    assert fixed_threshold_mask(flat).sum() == 0
    with pytest.raises(ValueError, match="3D"):
        fixed_threshold_mask(np.ones((4, 4)))
    with pytest.raises(ValueError, match="fraction"):
        percent_suvmax_mask(flat, fraction=41.0)
