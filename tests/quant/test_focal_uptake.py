"""New focal uptake outside the segmented lesions (petflare.quant.focal_uptake)."""

from __future__ import annotations

import numpy as np
import pytest

from petflare.io.study import Study
from petflare.quant import (
    FocalUptakeCriteria,
    PairReport,
    RegistrationConfig,
    compare_studies,
    find_new_focal_uptake,
)
from petflare.quant.focal_uptake import describe_focus, focal_uptake_evidence
from petflare.quant.metrics import voxel_to_world

SHAPE = (56, 56, 56)
SPACING = 4.0
AFFINE = np.diag([SPACING, SPACING, SPACING, 1.0])
IDENTITY = np.eye(4)


def _ball(centre: tuple[int, int, int], radius_mm: float) -> np.ndarray:
    idx = np.indices(SHAPE).transpose(1, 2, 3, 0)
    return np.linalg.norm((idx - np.array(centre)) * SPACING, axis=-1) <= radius_mm


def _scan(seed: int, extra: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """Soft tissue at SUV 1 with mild noise, a mass of SUV 5, and ``extra`` (mask, SUV) regions."""
    rng = np.random.default_rng(seed)
    pet = 1.0 + 0.05 * rng.standard_normal(SHAPE)
    pet[_ball((20, 28, 28), 24.0)] = 5.0  # the mass, segmented at both visits
    for region, suv in extra:
        pet[region] = suv
    return pet.astype(np.float32)


def _study(pet: np.ndarray) -> Study:
    return Study(pet=pet, affine=AFFINE.copy())


MASS = _ball((20, 28, 28), 24.0).astype(np.uint8)
FOCUS = _ball((40, 28, 28), 5.0)  # 10 mm, far from the mass


def test_a_new_hot_focus_outside_the_masks_is_found_where_it_is() -> None:
    base = _study(_scan(1, []))
    follow = _study(_scan(2, [(FOCUS, 10.0)]))
    foci = find_new_focal_uptake(base, follow, IDENTITY, MASS)
    assert len(foci) == 1
    focus = foci[0]
    expected = voxel_to_world(AFFINE, np.array([40, 28, 28]))[0]
    assert np.linalg.norm(np.array(focus.centre_mm) - expected) <= SPACING
    assert focus.suv_followup > 3.0 and focus.suv_baseline < 1.5
    assert focus.nearest_lesion_id == 1 and focus.nearest_lesion_mm == pytest.approx(52.0, abs=5)
    assert "focal uptake rising outside the segmented lesions" in describe_focus(focus)
    assert focus.baseline_liver_ratio is None  # no liver given: no statement about the site
    # segmented, or excluded (a physiological site), it is not reported
    assert find_new_focal_uptake(base, follow, IDENTITY, MASS + FOCUS.astype(np.uint8)) == []
    assert find_new_focal_uptake(base, follow, IDENTITY, MASS, exclude=FOCUS) == []


def test_uptake_that_was_there_at_baseline_or_is_too_faint_is_not_new() -> None:
    base = _study(_scan(1, [(FOCUS, 9.0)]))
    follow = _study(_scan(2, [(FOCUS, 10.0)]))
    assert find_new_focal_uptake(base, follow, IDENTITY, MASS) == []  # +11 %: not a rise
    faint = _study(_scan(2, [(FOCUS, 2.2)]))
    assert find_new_focal_uptake(_study(_scan(1, [])), faint, IDENTITY, MASS) == []


def test_organs_lighting_up_as_a_whole_and_a_global_drift_are_not_foci() -> None:
    bladder = _ball((40, 28, 10), 22.0)  # a 44 mm bladder that fills
    heart = _ball((40, 28, 44), 24.0) & ~_ball((40, 28, 44), 14.0)  # a shell
    bowel = np.zeros(SHAPE, bool)
    bowel[8:50, 44:46, 44:46] = True  # a loop 17 cm long, 8 mm thick
    base = _study(_scan(1, [(bladder, 20.0), (heart, 3.0)]))
    follow = _study(_scan(2, [(bladder, 45.0), (heart, 12.0), (bowel, 6.0)]) * 1.15)
    assert find_new_focal_uptake(base, follow, IDENTITY, MASS) == []


def test_the_baseline_is_read_through_the_registration() -> None:
    """The follow-up is shifted by 20 mm; a lesion in both visits is not new, the new one is."""
    shift = 5  # voxels
    base_pet = _scan(1, [(_ball((40, 16, 28), 6.0), 9.0)])
    follow_pet = np.roll(_scan(2, [(_ball((40, 16, 28), 6.0), 9.0), (FOCUS, 10.0)]), shift, axis=2)
    matrix = np.eye(4)
    matrix[2, 3] = shift * SPACING  # baseline point -> the same anatomy in the follow-up
    follow_mass = np.roll(MASS, shift, axis=2)
    foci = find_new_focal_uptake(_study(base_pet), _study(follow_pet), matrix, follow_mass)
    assert len(foci) == 1
    expected = voxel_to_world(AFFINE, np.array([40, 28, 28 + shift]))[0]
    assert np.linalg.norm(np.array(foci[0].centre_mm) - expected) <= SPACING
    # without the registration the old lesion's moved copy reads as new uptake too
    unregistered = find_new_focal_uptake(
        _study(base_pet), _study(follow_pet), IDENTITY, follow_mass
    )
    assert len(unregistered) == 2


def test_compare_studies_reports_the_foci_only_when_asked_and_round_trips() -> None:
    base = _study(_scan(1, []))
    follow = _study(_scan(2, [(FOCUS, 10.0)]))
    kwargs = {
        "baseline_mask": MASS,
        "followup_mask": MASS,
        "registration": RegistrationConfig(modality="none"),
    }
    assert compare_studies(base, follow, **kwargs).new_focal_uptake == []
    report = compare_studies(base, follow, focal_uptake=FocalUptakeCriteria(), **kwargs)
    assert len(report.new_focal_uptake) == 1
    again = PairReport.from_json(report.to_json())
    assert again.new_focal_uptake == report.new_focal_uptake
    strict = FocalUptakeCriteria(min_suv=20.0)
    assert compare_studies(base, follow, focal_uptake=strict, **kwargs).new_focal_uptake == []


def test_evidence_names_the_hottest_foci_and_counts_the_rest() -> None:
    base = _study(_scan(1, []))
    follow = _study(_scan(2, [(FOCUS, 10.0)]))
    (focus,) = find_new_focal_uptake(base, follow, IDENTITY, MASS)
    many = [focus] * 7
    lines = focal_uptake_evidence(many, limit=5)
    assert len(lines) == 6 and lines[0] == describe_focus(focus)
    assert lines[-1].startswith("2 more rising foci")
    assert focal_uptake_evidence([]) == []


def test_each_focus_says_whether_its_site_was_already_avid_at_baseline() -> None:
    """A focus rising inside an unsegmented mass that took up 3x the liver at baseline, and one
    at a quiet site: the evidence tells them apart (a nodule in a mass vs new uptake)."""
    mass = _ball((40, 28, 28), 16.0)  # not in the masks
    inside = _ball((40, 28, 28), 5.0)
    quiet = _ball((40, 10, 10), 5.0)
    base = _study(_scan(1, [(mass, 6.0)]))
    follow = _study(_scan(2, [(mass, 6.0), (inside, 14.0), (quiet, 8.0)]))
    foci = find_new_focal_uptake(base, follow, IDENTITY, MASS, liver_baseline=2.0)
    by_site = {round(f.centre_mm[2] / SPACING): f for f in foci}
    assert set(by_site) == {28, 10}
    assert by_site[28].baseline_liver_ratio == pytest.approx(3.0, rel=0.1)
    assert "already took up 3.0x the liver" in describe_focus(by_site[28])
    assert by_site[10].baseline_liver_ratio < 1.0
    assert "(new uptake)" in describe_focus(by_site[10])
