"""Fixtures for the quantification tests: studies built from analytic functions of world mm."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from quant_phantoms import world_coords

from petflare.io.study import Study, StudyMeta


@pytest.fixture
def study_from() -> Callable[..., Study]:
    """Build a Study by evaluating analytic functions of world position on a grid."""

    def build(
        shape: tuple[int, int, int],
        affine: np.ndarray,
        pet_fn: Callable[[np.ndarray], np.ndarray],
        mask_fn: Callable[[np.ndarray], np.ndarray] | None = None,
        ct_fn: Callable[[np.ndarray], np.ndarray] | None = None,
        meta: StudyMeta | None = None,
    ) -> Study:
        xyz = world_coords(shape, affine)
        return Study(
            pet=pet_fn(xyz).astype(np.float32),
            affine=affine,
            ct=None if ct_fn is None else ct_fn(xyz).astype(np.float32),
            mask=None if mask_fn is None else mask_fn(xyz).astype(np.uint8),
            meta=meta or StudyMeta(patient_id="P1", study_id="s"),
        )

    return build
