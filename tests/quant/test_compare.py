"""compare_studies end to end: registration under a known motion, matching, JSON and CSV."""

from __future__ import annotations

import json

import numpy as np
import pytest
from quant_phantoms import centred_affine, make_affine

from petflare.errors import OutputExistsError
from petflare.io.study import StudyMeta
from petflare.quant import (
    SCHEMA_VERSION,
    RegistrationConfig,
    compare_studies,
    pair_report_from_json,
)

#: Baseline lesions: centre (mm), radius (mm), SUV.
LESIONS = {
    1: (np.array([-30.0, 10.0, 20.0]), 10.0, 6.0),
    2: (np.array([25.0, -15.0, -10.0]), 9.0, 5.0),
    3: (np.array([5.0, 25.0, -35.0]), 8.0, 7.0),
}
NEW_LESION = (np.array([30.0, 20.0, 30.0]), 8.0, 6.0)


def _rotation(deg_x: float, deg_y: float, deg_z: float) -> np.ndarray:
    ax, ay, az = np.radians([deg_x, deg_y, deg_z])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _phantom(xyz: np.ndarray, lesions: dict):
    """Body with asymmetric anatomy (CT) and lesions (PET), as functions of body coordinates."""
    body = (((xyz - [0, 0, 0]) / [70.0, 50.0, 75.0]) ** 2).sum(-1) <= 1
    lung = (((xyz - [-25.0, 5.0, 45.0]) / [22.0, 25.0, 22.0]) ** 2).sum(-1) <= 1
    bone = (np.hypot(xyz[..., 0] - 8.0, xyz[..., 1] + 32.0) < 9.0) & body
    organ = (((xyz - [20.0, 5.0, 30.0]) / [25.0, 20.0, 18.0]) ** 2).sum(-1) <= 1
    ct = np.where(body, 40.0, -1000.0)
    ct = np.where(organ, 70.0, ct)
    ct = np.where(lung, -800.0, ct)
    ct = np.where(bone, 700.0, ct)
    pet = np.where(body, 1.0, 0.0) + np.where(organ, 1.5, 0.0) - np.where(lung, 0.7, 0.0)
    mask = np.zeros(xyz.shape[:-1], dtype=np.uint8)
    for lid, (c, r, suv) in lesions.items():
        inside = np.linalg.norm(xyz - c, axis=-1) <= r
        pet = np.where(inside, suv, pet)
        ct = np.where(inside, 35.0, ct)
        mask[inside] = lid
    return pet, ct, mask


def _study(shape, affine, lesions, motion=None, study_id="baseline"):
    from quant_phantoms import world_coords

    xyz = world_coords(shape, affine)
    if motion is not None:  # follow-up: the body point seen at y was at R^T (y - t)
        rot, t = motion
        xyz = (xyz - t) @ rot  # row-vector form of R^T (y - t)
    pet, ct, mask = _phantom(xyz, lesions)
    from petflare.io.study import Study

    return Study(pet, affine, ct=ct, mask=mask, meta=StudyMeta(patient_id="P7", study_id=study_id))


@pytest.fixture(scope="module")
def moved_pair():
    rot = _rotation(3.0, -2.0, 6.0)
    t = np.array([9.0, -6.0, 7.0])
    b_shape, b_aff = (40, 32, 44), centred_affine((40, 32, 44), (4.0, 4.0, 4.0))
    f_shape = (36, 44, 30)
    f_aff = centred_affine(f_shape, (4.5, 3.5, 5.0), axes=(1, 2, 0), signs=(1, -1, 1))
    base = _study(b_shape, b_aff, LESIONS)
    follow_lesions = {1: LESIONS[1], 2: LESIONS[3], 4: NEW_LESION}  # lesion 2 resolved
    follow = _study(f_shape, f_aff, follow_lesions, motion=(rot, t), study_id="followup")
    return base, follow, rot, t


def test_registration_recovers_motion_and_matching(moved_pair):
    base, follow, rot, t = moved_pair
    rep = compare_studies(base, follow)
    reg = rep.registration
    assert reg.modality == "ct"
    mat = np.asarray(reg.matrix_ras)
    for c, _, _ in LESIONS.values():
        assert np.linalg.norm(mat[:3, :3] @ c + mat[:3, 3] - (rot @ c + t)) < 3.0
    assert reg.ncc_after > reg.ncc_before
    # Matching: map follow-up ids to baseline ids.
    fol = {m.lesion_id: m for m in rep.matches if m.timepoint == "followup"}
    bas = {m.lesion_id: m for m in rep.matches if m.timepoint == "baseline"}
    f_by_centre = {}
    for les in rep.followup.lesions:
        back = np.linalg.solve(rot, np.array(les.centroid_mm) - t)
        f_by_centre[les.lesion_id] = min(
            [*LESIONS.items(), (4, NEW_LESION)], key=lambda kv: np.linalg.norm(kv[1][0] - back)
        )[0]
    for fid, truth in f_by_centre.items():
        if truth == 4:
            assert fol[fid].status == "new"
        else:
            assert fol[fid].status == "persisting"
            b_id = next(
                les.lesion_id
                for les in rep.baseline.lesions
                if np.linalg.norm(np.array(les.centroid_mm) - LESIONS[truth][0]) < 2
            )
            assert fol[fid].matched_ids == [b_id]
    statuses = sorted(m.status for m in bas.values())
    assert statuses == ["persisting", "persisting", "resolved"]
    assert rep.disease.n_new == 1 and rep.disease.n_resolved == 1
    assert rep.percist.category == "PMD"
    assert rep.pattern_rules is not None and rep.pattern_rules.label == "new_lesions"
    # Same uptake and size: persisting lesions barely change.
    for c in rep.changes:
        assert abs(c.suv_peak_change_pct) < 10
        assert abs(c.volume_change_pct) < 15


def test_without_registration_motion_breaks_nothing_but_matching(moved_pair):
    base, follow, _, _ = moved_pair
    rep = compare_studies(base, follow, registration=RegistrationConfig(modality="none"))
    assert rep.registration.method == "identity"
    assert np.allclose(rep.registration.matrix_ras, np.eye(4))


def test_json_roundtrip_and_csv(moved_pair, tmp_path):
    base, follow, _, _ = moved_pair
    rep = compare_studies(base, follow, registration=RegistrationConfig(modality="none"))
    text = rep.to_json()
    data = json.loads(text)
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["baseline"]["schema_version"] == SCHEMA_VERSION
    back = pair_report_from_json(text)
    assert back == rep
    assert back.to_json() == text
    path = rep.write_lesion_csv(tmp_path / "lesions.csv")
    lines = path.read_text().splitlines()
    assert lines[0].startswith("patient_id,timepoint,lesion_id,status")
    assert len(lines) == 1 + rep.baseline.n_lesions + rep.followup.n_lesions
    with pytest.raises(OutputExistsError):
        rep.write_lesion_csv(path)
    rep.write_json(tmp_path / "report.json")
    with pytest.raises(OutputExistsError):
        rep.write_json(tmp_path / "report.json")
    bad = dict(data, schema_version="2.0")
    with pytest.raises(ValueError, match="schema_version"):
        pair_report_from_json(json.dumps(bad))


def test_pet_registration_when_ct_missing():
    """PET-only registration recovers a pure translation on a non-RAS grid."""
    t = np.array([8.0, 0.0, -6.0])
    shape, aff = (36, 30, 40), make_affine((4.0, 4.0, 4.0), axes=(0, 1, 2), signs=(-1, -1, 1))
    aff[:3, 3] = [70, 60, -80]
    base = _study(shape, aff, LESIONS)
    follow = _study(shape, aff, LESIONS, motion=(np.eye(3), t))
    base.ct = follow.ct = None
    rep = compare_studies(base, follow)
    assert rep.registration.modality == "pet"
    assert np.allclose(np.asarray(rep.registration.matrix_ras)[:3, 3], t, atol=2.0)
    assert all(m.status == "persisting" for m in rep.matches)
    assert rep.pattern_rules.label == "controlled"


def test_new_lesion_at_a_non_avid_baseline_mass_is_a_reactivated_site(moved_pair):
    """A follow-up lesion where the baseline showed a non-avid mass gets a high site contrast."""
    base, _, _, _ = moved_pair
    from quant_phantoms import world_coords

    xyz = world_coords(base.shape, base.affine)
    site = np.linalg.norm(xyz - NEW_LESION[0], axis=-1) <= NEW_LESION[1]
    pet_b = base.pet.copy()
    pet_b[site] = 2.5  # visible at baseline (2.5x background) but not in the baseline mask
    from petflare.io.study import Study

    b = Study(pet_b, base.affine, ct=base.ct, mask=base.mask)
    mask_f = base.mask.copy()
    mask_f[site] = 9
    pet_f = pet_b.copy()
    pet_f[site] = 8.0
    f = Study(pet_f, base.affine, ct=base.ct, mask=mask_f)
    rep = compare_studies(b, f, registration=RegistrationConfig(modality="none"))
    new = [m for m in rep.matches if m.timepoint == "followup" and m.status == "new"]
    assert len(new) == 1
    assert new[0].baseline_site_suv_mean == pytest.approx(2.5, rel=0.01)
    assert new[0].baseline_site_suv_contrast > 1.4  # the rules' reactivated-site threshold
    # Uninvolved-site lesions of the moved pair have no such contrast (see the first test).
    assert rep.pattern_rules.label != "new_lesions"


def test_empty_masks_give_empty_but_valid_reports():
    shape, aff = (16, 14, 12), make_affine((4.0, 4.0, 5.0))
    pet = np.ones(shape, dtype=np.float32)
    from petflare.io.study import Study

    b = Study(pet, aff, mask=np.zeros(shape, np.uint8))
    f = Study(pet.copy(), aff)  # no mask at all
    rep = compare_studies(b, f, registration=RegistrationConfig(modality="none"))
    assert rep.baseline.n_lesions == 0 and rep.followup.n_lesions == 0
    assert rep.percist.category == "NE" and rep.eortc.category == "NE"
    assert rep.choi.applicable is False
    assert rep.pattern_rules.label == "controlled"
    assert not rep.baseline.liver.found and rep.baseline.liver.reason
    assert pair_report_from_json(rep.to_json()) == rep


def test_registration_is_reproducible(moved_pair):
    """A sampled metric with a fixed seed gives the same transform on every run."""
    from petflare.quant.registration import register_followup_to_baseline

    base, follow, _, _ = moved_pair
    cfg = RegistrationConfig(samples=3000)  # a small random sample: the seed decides it
    first, second = (register_followup_to_baseline(base, follow, cfg) for _ in range(2))
    # The same sample, so the same optimum; only the metric's multithreaded sums may differ
    # in the last bits. A wall-clock seed draws another sample: tenths of a mm away here.
    np.testing.assert_allclose(first.matrix_ras, second.matrix_ras, rtol=0, atol=1e-6)


def test_a_known_alignment_gives_the_report_registering_gives(moved_pair, monkeypatch):
    import petflare.quant.analysis as analysis

    base, follow, _, _ = moved_pair
    rep = compare_studies(base, follow)

    def fail(*args, **kwargs):
        raise AssertionError("registered again")

    monkeypatch.setattr(analysis, "register_followup_to_baseline", fail)
    again = compare_studies(base, follow, alignment=rep.registration)
    assert again == rep


def test_registration_blocks_are_about_the_final_spacing_per_scan_and_axis():
    from petflare.quant.registration import block_factors

    assert block_factors((2.04, 2.04, 3.0), 8.0) == [4, 4, 3]
    assert block_factors((4.0, 4.42, 4.73), 8.0) == [2, 2, 2]  # floor gave 1: 4x the voxels
    assert block_factors((5.5, 6.0, 9.0), 8.0) == [1, 1, 1]
    assert block_factors((1.0, 1.0, 1.0), 8.0) == [8, 8, 8]


def test_wall_clock_registration_seed_is_refused():
    with pytest.raises(ValueError, match="wall clock"):
        RegistrationConfig(seed=0)


def test_uptake_times_and_ct_contrast_reach_the_criteria(moved_pair):
    """StudyMeta.uptake_time_s reaches PERCIST / EORTC; ct_contrast reaches Choi."""
    import dataclasses

    base, follow, _, _ = moved_pair
    base = dataclasses.replace(base, meta=StudyMeta(patient_id="P7", uptake_time_s=3600.0))
    follow = dataclasses.replace(follow, meta=StudyMeta(patient_id="P7", uptake_time_s=4800.0))
    none = RegistrationConfig(modality="none")
    rep = compare_studies(base, follow, registration=none, ct_contrast="none")
    assert rep.baseline.uptake_time_min == pytest.approx(60.0)
    assert rep.percist.uptake_time_difference_min == pytest.approx(20.0)
    assert rep.percist.category == "PMD"  # new lesions, a qualitative finding
    assert any("uptake times differ by 20 min" in n for n in rep.percist.notes)
    assert rep.choi.ct_contrast == "none" and rep.choi.density_assessable is False
    assert rep.choi.density_change_pct is None and rep.choi.category_basis == "size only"
    with pytest.raises(ValueError, match="ct_contrast"):
        compare_studies(base, follow, registration=none, ct_contrast="arterial")


def test_head_features_keep_the_raw_hu_change_for_near_zero_baselines(moved_pair):
    """The report hides a percentage of a near-zero HU baseline; the pattern head's lesion
    features still get the raw change they were trained on (from the two HU means)."""
    import dataclasses

    from petflare.data.longitudinal import lesion_units

    base, follow, _, _ = moved_pair
    rep = compare_studies(base, follow, registration=RegistrationConfig(modality="none"))
    change = rep.changes[0]
    near_zero = dataclasses.replace(
        change, hu_mean_baseline=-4.0, hu_mean_followup=2.0, hu_change_pct=None
    )
    raw = dataclasses.replace(near_zero, hu_change_pct=150.0)  # what 1.0 reports held
    features = []
    for c in (near_zero, raw):
        rep.changes = [c, *rep.changes[1:]]
        unit = next(u for u in lesion_units(rep) if u.followup_ids == [c.followup_id])
        features.append(unit.features)
    np.testing.assert_array_equal(features[0], features[1])
    assert np.any(np.isclose(features[0], 1.5))  # +150% as the clipped fraction 1.5
