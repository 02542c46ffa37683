"""Lesion sites from an organ map and the physiological-uptake filter."""

from __future__ import annotations

import numpy as np
import pytest

from petflare.constants import ORGAN_TO_INDEX
from petflare.inference.postprocess import (
    NO_ORGAN_SITE,
    component_sites,
    remove_physiological_components,
)


def scene() -> tuple[np.ndarray, np.ndarray]:
    """Three predicted blobs: one in the brain, one in the liver, one outside every organ."""
    mask = np.zeros((30, 12, 12), dtype=np.uint8)
    organs = np.zeros_like(mask)
    organs[0:10] = ORGAN_TO_INDEX["brain"]
    organs[10:20] = ORGAN_TO_INDEX["liver"]
    mask[2:6, 2:6, 2:6] = 1  # brain
    mask[12:16, 2:6, 2:6] = 1  # liver
    mask[24:28, 2:6, 2:6] = 1  # no organ
    return mask, organs


def test_component_sites_take_the_majority_organ() -> None:
    mask, organs = scene()
    labels = np.zeros(mask.shape, dtype=np.int32)
    labels[2:6, 2:6, 2:6] = 1
    labels[12:16, 2:6, 2:6] = 2
    labels[24:28, 2:6, 2:6] = 3
    labels[8:12, 8:12, 8:12] = 4  # half brain, half liver: neither reaches 0.6
    assert component_sites(labels, organs) == {
        1: "brain",
        2: "liver",
        3: NO_ORGAN_SITE,
        4: "brain",  # exactly half in each: the first organ at the 0.5 cut
    }
    assert component_sites(labels, organs, min_fraction=0.6)[4] == NO_ORGAN_SITE


def test_filter_drops_only_physiological_sites() -> None:
    mask, organs = scene()
    kept, dropped = remove_physiological_components(mask, organs)
    assert dropped == {"brain": 1}
    assert kept[2:6].sum() == 0
    assert kept[12:16].sum() == 64 and kept[24:28].sum() == 64  # liver lesion kept
    kept_all, none = remove_physiological_components(mask, organs, sites=())
    np.testing.assert_array_equal(kept_all, mask)
    assert none == {}


def test_shapes_must_match() -> None:
    with pytest.raises(ValueError, match="differ"):
        component_sites(np.zeros((4, 4, 4), np.int32), np.zeros((4, 4, 5), np.uint8))
