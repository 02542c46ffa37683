"""Voxelwise change features of a lesion unit's region (``region_change_stats``).

Synthetic aligned crops (log1p SUV, as the head sees them) on an anisotropic grid: a mass that
responds around a new focal nodule, a mass that flares throughout, and a stable mass under
noise must each give the feature pattern that tells them apart.
"""

from __future__ import annotations

import numpy as np
import pytest

from petflare.data.longitudinal import (
    REGION_PET_FEATURE_NAMES,
    RISE_LOG,
    peak_filtered,
    region_change_stats,
)

SPACING = (4.0, 4.0, 3.0)
AFFINE = np.diag([*SPACING, 1.0])
PEAK_SPHERE_ML = 1.0  # PERCIST's SUVpeak ball
SHAPE = (30, 30, 36)


def _ball(centre_mm: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    idx = np.meshgrid(
        *[np.arange(n) * s for n, s in zip(SHAPE, SPACING, strict=True)], indexing="ij"
    )
    return sum((g - c) ** 2 for g, c in zip(idx, centre_mm, strict=True)) <= radius_mm**2


MASS = _ball((60.0, 60.0, 54.0), 30.0)


def _stats(base_suv: np.ndarray, fol_suv: np.ndarray, region: np.ndarray) -> dict[str, float]:
    b, f = np.log1p(base_suv), np.log1p(fol_suv)
    vals = region_change_stats(
        b, f, peak_filtered(b, AFFINE), peak_filtered(f, AFFINE), region
    ).features
    assert vals.shape == (len(REGION_PET_FEATURE_NAMES),)
    return dict(zip(REGION_PET_FEATURE_NAMES, vals.tolist(), strict=True))


def _scan(mass_suv: float, rng: np.random.Generator, cv: float = 0.1) -> np.ndarray:
    img = np.full(SHAPE, 0.8) + MASS * (mass_suv - 0.8)
    return np.clip(img * (1.0 + cv * rng.standard_normal(SHAPE)), 0.0, None)


def test_peak_filter_averages_a_one_ml_sphere() -> None:
    uniform = np.log1p(np.full(SHAPE, 3.0))
    np.testing.assert_allclose(peak_filtered(uniform, AFFINE), uniform, rtol=1e-9)
    spike = np.zeros(SHAPE)
    spike[15, 15, 18] = np.log1p(100.0)
    out = np.expm1(peak_filtered(spike, AFFINE))
    n_voxels = round(100.0 / out[15, 15, 18])  # the spike is shared by every kernel voxel
    volume_ml = n_voxels * np.prod(SPACING) / 1000.0
    assert 0.5 * PEAK_SPHERE_ML < volume_ml < 1.5 * PEAK_SPHERE_ML
    assert out.sum() == pytest.approx(100.0)


def test_nodule_in_responding_mass_is_a_focal_rise() -> None:
    rng = np.random.default_rng(0)
    base = _scan(6.0, rng)
    fol = _scan(1.2, rng)
    nodule = _ball((72.0, 60.0, 54.0), 8.0)
    fol[nodule] = 9.0
    s = _stats(base, fol, MASS)
    assert s["rise_at_followup_peak"] > RISE_LOG
    assert s["relative_rise_at_followup_peak"] > 1.0  # the host fell, the nodule did not
    assert s["contrast_gain"] > 0.8
    assert s["max_local_rise"] > RISE_LOG
    assert s["rise_fraction"] < 0.1
    assert s["fall_fraction"] > 0.6
    assert s["hot_fraction_followup"] < 0.15
    assert s["peak_contrast_followup"] > 1.0
    b, f = np.log1p(base), np.log1p(fol)
    change = region_change_stats(b, f, peak_filtered(b, AFFINE), peak_filtered(f, AFFINE), MASS)
    focus_mm = np.array(change.focus_voxel) * SPACING
    assert np.linalg.norm(focus_mm - (72.0, 60.0, 54.0)) <= 6.0  # the focus is the nodule
    assert change.focus_suv[1] == pytest.approx(9.0, rel=0.1)
    assert change.region_suv[1] == pytest.approx(1.2, rel=0.15)


def test_flare_rises_through_the_whole_mass() -> None:
    rng = np.random.default_rng(1)
    s = _stats(_scan(2.5, rng), _scan(8.0, rng), MASS)
    assert s["rise_fraction"] > 0.8
    assert s["fall_fraction"] == 0.0
    assert s["hot_fraction_followup"] > 0.4


def test_stable_mass_under_noise_shows_no_rise() -> None:
    rng = np.random.default_rng(2)
    s = _stats(_scan(5.0, rng, cv=0.25), _scan(5.0, rng, cv=0.25), MASS)
    assert s["max_local_rise"] < RISE_LOG
    assert s["rise_fraction"] == 0.0
    assert s["fall_fraction"] == 0.0
    assert abs(s["contrast_gain"]) < 0.2


def test_nodule_in_a_host_that_was_hot_is_seen_against_the_hosts_fall() -> None:
    """Host SUV 8 -> 1.2 with a nodule of SUV 6: a fall everywhere, least at the nodule."""
    rng = np.random.default_rng(4)
    base = _scan(8.0, rng)
    fol = _scan(1.2, rng)
    fol[_ball((48.0, 60.0, 54.0), 8.0)] = 6.0
    nodule = _stats(base, fol, MASS)
    partial = _stats(base, _scan(4.0, rng), MASS)  # the whole mass halves its uptake
    assert nodule["rise_at_followup_peak"] < 0.0  # no rise anywhere ...
    assert nodule["relative_rise_at_followup_peak"] > 1.0  # ... but a focus against its host
    assert partial["relative_rise_at_followup_peak"] < 0.4
    assert nodule["contrast_gain"] > partial["contrast_gain"] + 0.8


def test_focus_just_outside_the_mask_is_still_seen() -> None:
    """A nodule at the mask's edge (or a few mm of misregistration) is in the grown region."""
    small = _ball((60.0, 60.0, 54.0), 20.0)
    base = np.full(SHAPE, 0.8) + small * 5.2
    fol = np.full(SHAPE, 0.8) + small * 0.4
    edge = _ball((84.0, 60.0, 54.0), 5.0) & ~small
    fol[edge] = 9.0
    s = _stats(base, fol, small)
    assert s["max_local_rise"] > RISE_LOG
    assert s["rise_fraction"] < 0.1
