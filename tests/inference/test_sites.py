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


def test_split_renumbers_disease_lesions_and_measures_physiology() -> None:
    from petflare.inference.physiology import split_physiological, with_evidence
    from petflare.io.study import Study

    mask, organs = scene()
    labels = np.zeros(mask.shape, dtype=np.uint32)
    labels[2:6, 2:6, 2:6] = 1  # brain
    labels[12:16, 2:6, 2:6] = 2  # liver
    labels[24:28, 2:6, 2:6] = 3  # no organ
    pet = np.where(labels > 0, 5.0, 1.0).astype(np.float32)
    pet[3, 3, 3] = 11.0
    study = Study(pet=pet, affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    split = split_physiological(study, labels, component_sites(labels, organs))
    assert split.sites == {1: "liver", 2: NO_ORGAN_SITE}
    np.testing.assert_array_equal(split.instances[12:16, 2:6, 2:6], 1)
    np.testing.assert_array_equal(split.instances[24:28, 2:6, 2:6], 2)
    assert not split.instances[:10].any()
    assert split.physiological == {
        "brain": {"components": 1.0, "volume_ml": 0.51, "suv_max": 11.0, "suv_mean": 5.09}
    }
    # no organ output: nothing is taken out
    assert split_physiological(study, labels, None).instances is labels
    assert with_evidence(["a"], ["b"]) == ["a", "b"]
    assert with_evidence({"explanations": ["a"], "t": 1}, ["b"]) == {
        "explanations": ["a", "b"],
        "t": 1,
    }
    assert with_evidence(None, []) is None
