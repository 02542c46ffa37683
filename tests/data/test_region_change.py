"""Voxelwise change features of a lesion unit's region (``region_change_stats``).

Synthetic aligned crops (log1p SUV, as the head sees them) on an anisotropic grid: a mass that
responds around a new focal nodule, a mass that flares throughout, and a stable mass under
noise must each give the feature pattern that tells them apart.
"""

from __future__ import annotations

import numpy as np
import pytest

from petflare.data.longitudinal import (
    LESION_FEATURE_NAMES,
    REGION_PET_FEATURE_NAMES,
    RISE_LOG,
    LesionUnit,
    peak_filtered,
    region_change_stats,
    shell_voxels,
)
from petflare.data.longitudinal.features import _mark_fragments

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


def _stats(
    base_suv: np.ndarray,
    fol_suv: np.ndarray,
    region: np.ndarray,
    voxels: tuple[int, int, int] = (3, 3, 3),
) -> dict[str, float]:
    b, f = np.log1p(base_suv), np.log1p(fol_suv)
    vals = region_change_stats(
        b, f, peak_filtered(b, AFFINE), peak_filtered(f, AFFINE), region, voxels
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


def test_surroundings_tell_a_new_lesion_from_an_organ_that_lit_up() -> None:
    """A new focus in unchanged tissue vs a piece of a large organ whose uptake rose."""
    rng = np.random.default_rng(3)
    voxels = shell_voxels(AFFINE)
    assert voxels == (3, 3, 4)  # 12 mm on the 4 x 4 x 3 mm grid
    # new lesion: background 0.8 at both time points, a 6 SUV ball at follow-up only
    base = _scan(0.8, rng)
    fol = _scan(0.8, rng)
    lesion = _ball((60.0, 60.0, 54.0), 8.0)
    fol[lesion] = 6.0
    new = _stats(base, fol, lesion, voxels)
    assert abs(new["shell_rise"]) < 0.1
    assert new["shell_contrast_followup"] > 1.0
    assert new["log_hot_extent"] < 0.5  # the hot structure is (within) the lesion itself
    # organ: the whole mass region goes from 1.5 to 6 SUV; the "lesion" is a piece of it
    base = _scan(1.5, rng)
    fol = _scan(6.0, rng)
    organ = _stats(base, fol, lesion, voxels)
    assert organ["shell_rise"] > RISE_LOG
    assert organ["shell_contrast_followup"] < 0.5
    assert organ["log_hot_extent"] > 1.5  # hot with the whole organ
    # a region that fills the crop has no surroundings: the shell features are 0
    full = np.ones(SHAPE, bool)
    everything = _stats(base, fol, full, voxels)
    assert (everything["shell_contrast_baseline"], everything["shell_rise"]) == (0.0, 0.0)


def test_pieces_of_one_baseline_mass_are_marked_as_fragments() -> None:
    def unit(kind: str, base: list[int], fol: list[int], volume: float) -> LesionUnit:
        return LesionUnit(
            kind,
            fol,
            base,
            [0.0, 0.0, 0.0],
            np.zeros(len(LESION_FEATURE_NAMES), np.float32),
            {"volume_ml_followup": volume},
        )

    units = [
        unit("persisting", [1], [1], 3.0),
        unit("persisting", [1, 2], [2], 1.0),
        unit("persisting", [2], [3], 4.0),  # joined to the first two through baseline lesion 2
        unit("persisting", [4], [4], 10.0),
        unit("new", [], [5], 2.0),
        unit("resolved", [3], [], 0.0),
    ]
    _mark_fragments(units)
    n = LESION_FEATURE_NAMES.index("log_n_fragments")
    share = LESION_FEATURE_NAMES.index("fragment_volume_share")
    got = [(round(float(u.features[n]), 4), round(float(u.features[share]), 4)) for u in units]
    log3 = round(float(np.log(3)), 4)
    assert got[:3] == [(log3, 0.375), (log3, 0.125), (log3, 0.5)]
    assert got[3] == (0.0, 1.0)
    assert units[0].info["n_fragments"] == 3 and units[3].info["n_fragments"] == 1
    assert got[4] == (0.0, 0.0) and got[5] == (0.0, 0.0)  # untouched: not persisting
