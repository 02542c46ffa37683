"""generate_pair: determinism, geometry, physiology ranges and each pattern's defining property."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from petflare.constants import PATTERNS
from petflare.synth import ALL_ORIENTATIONS, PhantomConfig, generate_pair
from petflare.synth.anatomy import render_anatomy, sample_anatomy, sample_physiology
from petflare.synth.canvas import Canvas
from petflare.synth.geometry import ScanGeometry, grid_affine, orientation_to_axes

SEEDS = (11, 12, 13)

#: Coarse but otherwise default settings (any orientation, noise, repositioning): ~0.2 s a pair.
COARSE = PhantomConfig(
    spacing_inplane_mm=(8.0, 10.0), spacing_slice_mm=(8.0, 10.0), psf_fwhm_mm=(9.0, 12.0)
)


def _voxel(study, world_mm) -> tuple[int, int, int]:  # noqa: ANN001
    """Nearest voxel index of a world point."""
    ijk = np.linalg.inv(study.affine) @ np.append(np.asarray(world_mm, float), 1.0)
    return tuple(int(v) for v in np.rint(ijk[:3]))


def _lesions(truth: dict) -> dict[int, dict]:
    return {les["id"]: les for les in truth["lesions"]}


def test_same_seed_gives_identical_arrays() -> None:
    a = generate_pair(5, "nodule_within_mass", COARSE)
    b = generate_pair(5, "nodule_within_mass", COARSE)
    for sa, sb in zip(a[:2], b[:2], strict=True):
        np.testing.assert_array_equal(sa.pet, sb.pet)
        np.testing.assert_array_equal(sa.ct, sb.ct)
        np.testing.assert_array_equal(sa.mask, sb.mask)
        np.testing.assert_array_equal(sa.affine, sb.affine)
    assert a[2] == b[2]
    c = generate_pair(6, "nodule_within_mass", COARSE)
    assert c[0].shape != a[0].shape or not np.array_equal(c[0].pet, a[0].pet)


@pytest.mark.parametrize("code", ["RAS", "LPS", "SAL", "IRP"])
def test_grid_affine_follows_orientation(code: str) -> None:
    lo, hi = np.array([-100.0, -50.0, -800.0]), np.array([100.0, 60.0, 0.0])
    spacing = np.array([4.0, 4.0, 3.0])
    affine, shape = grid_affine(lo, hi, spacing, code)
    assert "".join(nib.orientations.aff2axcodes(affine)) == code
    perm, _ = orientation_to_axes(code)
    n_world = np.ceil((hi - lo) / spacing).astype(int) + 1
    assert list(shape) == [int(n_world[w]) for w in perm]
    # the grid covers the box: its world corners are the box corners
    corners = np.array(
        [
            [i, j, k, 1]
            for i in (0, shape[0] - 1)
            for j in (0, shape[1] - 1)
            for k in (0, shape[2] - 1)
        ]
    )
    world = (affine @ corners.T).T[:, :3]
    np.testing.assert_allclose(world.min(axis=0), lo)
    assert np.all(world.max(axis=0) >= hi)


def test_orientations_vary_and_world_geometry_is_consistent() -> None:
    seen = set()
    for seed in range(6):
        base, follow, truth = generate_pair(seed, "controlled", COARSE)
        seen.update({base.orientation, follow.orientation})
        assert base.orientation in ALL_ORIENTATIONS
        # the pair is repositioned, not identical
        assert (
            truth["scans"]["baseline"]["translation_mm"]
            != truth["scans"]["followup"]["translation_mm"]
        )
        # each lesion in the mask sits at its recorded world centre
        for lid in truth["mask_ids"]["baseline"]:
            les = _lesions(truth)[lid]
            if les["baseline"]["diameter_mm"] < 25:
                continue
            idx = _voxel(base, les["baseline"]["center_world_mm"])
            assert base.mask[idx] == lid
    assert len(seen) >= 4  # many axis orders / flips, not one fixed look


def test_fixed_orientation_is_respected() -> None:
    cfg = PhantomConfig(
        spacing_inplane_mm=(9.0, 9.0), spacing_slice_mm=(9.0, 9.0), orientations=("LPS",)
    )
    base, follow, _ = generate_pair(3, "controlled", cfg)
    assert base.orientation == follow.orientation == "LPS"
    np.testing.assert_allclose(base.spacing_mm, (9.0, 9.0, 9.0))


def test_physiologic_uptake_and_ct_numbers_are_plausible() -> None:
    rng = np.random.default_rng(0)
    anatomy = sample_anatomy(rng)
    phys = sample_physiology(rng)
    lo, hi = anatomy.body_bounds()
    affine, shape = grid_affine(lo - 20, hi + 20, np.array([5.0, 5.0, 5.0]), "RAS")
    canvas = Canvas(ScanGeometry(shape, affine, np.eye(3), np.zeros(3)), rng)
    render_anatomy(canvas, anatomy, phys)

    def at(point: np.ndarray) -> tuple[float, float]:
        ijk = np.rint(np.linalg.inv(affine[:3, :3]) @ (point - affine[:3, 3])).astype(int)
        region = tuple(slice(i - 1, i + 2) for i in ijk)
        return float(canvas.suv[region].mean()), float(canvas.hu[region].mean())

    o = anatomy.organs
    liver_suv, liver_hu = at(o["liver"].center)
    assert 1.5 <= liver_suv <= 3.5 and 40 <= liver_hu <= 75
    lung_suv, lung_hu = at(o["lung_r"].center)
    assert 0.2 <= lung_suv <= 0.7 and -950 <= lung_hu <= -700
    brain_suv, _ = at(o["brain"].center + np.array([0, 0, 0.6 * o["brain"].radii[2]]))
    assert 2.5 <= brain_suv <= 11
    assert canvas.suv.max() >= 5.0  # bladder / renal pelvis / brain
    bladder_suv, _ = at(o["bladder"].center)
    assert bladder_suv >= 5.0
    air_suv, air_hu = float(canvas.suv[0, 0, 0]), float(canvas.hu[0, 0, 0])
    assert air_suv == 0.0 and air_hu == -1000.0
    thigh = anatomy.thighs[0]
    muscle_suv, muscle_hu = at(np.array([thigh.center_x + 30.0, thigh.center_y[0], thigh.z[1]]))
    assert 0.5 <= muscle_suv <= 1.1 and 20 <= muscle_hu <= 70
    assert canvas.hu.max() >= 600  # cortical bone
    assert float(np.percentile(canvas.hu[canvas.hu > -500], 50)) < 80


@pytest.mark.parametrize("seed", SEEDS)
def test_pet_is_in_suv_and_liver_matches_truth(seed: int) -> None:
    base, follow, truth = generate_pair(seed, "controlled", COARSE)
    for study, tp in ((base, "baseline"), (follow, "followup")):
        assert study.pet.dtype == np.float32 and study.pet.min() >= 0.0
        assert 8.0 <= float(study.pet.max()) <= 80.0
        liver = truth["liver_suv_mean"][tp]
        assert 1.5 <= liver <= 3.5
        assert study.ct is not None and study.ct.min() >= -1024 and study.ct.max() <= 3071
        assert study.mask is not None and set(np.unique(study.mask)) <= {0, *truth["mask_ids"][tp]}
        assert set(np.unique(study.mask)) - {0} == set(truth["mask_ids"][tp])


@pytest.mark.parametrize("seed", SEEDS)
def test_controlled_has_no_rise_and_nothing_new(seed: int) -> None:
    _, _, truth = generate_pair(seed, "controlled", COARSE)
    assert truth["pattern"] == "controlled"
    assert truth["new_lesion_ids"] == [] and truth["nodule"] is None
    assert truth["flared_lesion_ids"] == []
    for les in truth["lesions"]:
        b, f = les["baseline"], les["followup"]
        assert f["suv"] <= 1.1 * b["suv"] + 0.01
        assert f["diameter_mm"] <= 1.05 * b["diameter_mm"] + 0.1


@pytest.mark.parametrize("seed", SEEDS)
def test_diffuse_flare_majority_regains_uptake_through_whole_volume(seed: int) -> None:
    base, follow, truth = generate_pair(seed, "diffuse_flare", COARSE)
    lesions = _lesions(truth)
    known = [les for les in truth["lesions"] if les["baseline"] is not None]
    flared = truth["flared_lesion_ids"]
    assert len(flared) > len(known) / 2
    thr = truth["avid_threshold_suv"]["followup"]
    for lid in flared:
        b, f = lesions[lid]["baseline"], lesions[lid]["followup"]
        assert f["suv"] >= 1.3 * b["suv"] and f["suv"] >= thr
        assert f["in_mask"] == "whole" and lid in truth["mask_ids"]["followup"]
        assert f["necrosis_fraction"] <= b["necrosis_fraction"]
    # the follow-up mask holds the whole flared volumes: larger than at baseline overall
    vol_b = sum(int((base.mask == i).sum()) * base.voxel_volume_ml for i in flared)
    vol_f = sum(int((follow.mask == i).sum()) * follow.voxel_volume_ml for i in flared)
    assert vol_f >= 0.9 * vol_b


@pytest.mark.parametrize("seed", SEEDS)
def test_nodule_within_mass_has_one_focal_nodule_in_a_responding_mass(seed: int) -> None:
    _, follow, truth = generate_pair(seed, "nodule_within_mass", COARSE)
    nodule = truth["nodule"]
    assert nodule is not None and nodule["timepoint"] == "followup"
    host = _lesions(truth)[nodule["lesion_id"]]
    assert host["change"] == "nodule"
    assert host["baseline"]["diameter_mm"] >= 35
    thr = truth["avid_threshold_suv"]["followup"]
    assert host["followup"]["suv"] < thr <= nodule["suv"]  # the mass keeps responding
    assert host["followup"]["hu"] <= 25  # hypodense
    assert 8.0 <= nodule["diameter_mm"] <= 22.0
    assert host["followup"]["in_mask"] == "nodule"
    # the nodule (labelled with its mass's id) is where the truth says, and is small
    idx = _voxel(follow, nodule["center_world_mm"])
    assert follow.mask[idx] == host["id"]
    nodule_ml = float((follow.mask == host["id"]).sum()) * follow.voxel_volume_ml
    mass_ml = np.pi / 6 * host["followup"]["diameter_mm"] ** 3 / 1000
    assert nodule_ml < 0.5 * mass_ml
    # exactly one nodule, nothing else rises or appears
    assert [les["id"] for les in truth["lesions"] if les["change"] == "nodule"] == [host["id"]]
    assert truth["new_lesion_ids"] == [] and truth["flared_lesion_ids"] == []
    for les in truth["lesions"]:
        assert les["followup"]["suv"] <= 1.1 * les["baseline"]["suv"] + 0.01


@pytest.mark.parametrize("seed", SEEDS)
def test_new_lesions_appear_at_uninvolved_sites_only(seed: int) -> None:
    base, follow, truth = generate_pair(seed, "new_lesions", COARSE)
    new = truth["new_lesion_ids"]
    assert 1 <= len(new) <= 3
    lesions = _lesions(truth)
    known = [les for les in truth["lesions"] if les["baseline"] is not None]
    for lid in new:
        les = lesions[lid]
        assert les["baseline"] is None and les["change"] == "new"
        assert lid in truth["mask_ids"]["followup"] and not (base.mask == lid).any()
        assert (follow.mask == lid).any()
        c = np.array(les["center_patient_mm"])
        for old in known:
            gap = np.linalg.norm(c - np.array(old["center_patient_mm"]))
            assert gap > 0.5 * (les["followup"]["diameter_mm"] + old["baseline"]["diameter_mm"])
    for old in known:
        assert old["followup"]["suv"] <= 1.1 * old["baseline"]["suv"] + 0.01


def test_unknown_pattern_is_rejected() -> None:
    with pytest.raises(ValueError, match="pattern"):
        generate_pair(0, "progression", COARSE)


def test_every_pattern_gives_a_pair() -> None:
    for i, pattern in enumerate(PATTERNS):
        base, follow, truth = generate_pair(100 + i, pattern, COARSE)
        assert truth["pattern"] == pattern
        assert base.meta.patient_id == follow.meta.patient_id
        assert base.meta.study_date < follow.meta.study_date


def test_inclusive_mask_ratio_labels_moderately_avid_lesions_only_in_the_mask() -> None:
    """mask_liver_ratio lowers the labelling threshold; images and scenario stay the same."""
    strict_cfg = COARSE
    inclusive_cfg = PhantomConfig(**{**vars(COARSE), "mask_liver_ratio": 1.0})
    grew = 0
    for seed in SEEDS:
        strict = generate_pair(seed, "controlled", strict_cfg)
        inclusive = generate_pair(seed, "controlled", inclusive_cfg)
        truth = inclusive[2]
        for tp, s, i in zip(("baseline", "followup"), strict[:2], inclusive[:2], strict=True):
            np.testing.assert_array_equal(s.pet, i.pet)
            assert not np.any((s.mask > 0) & (i.mask == 0)), "a strictly avid voxel was dropped"
            grew += int(((i.mask > 0) & (s.mask == 0)).sum())
            thr = truth["mask_threshold_suv"][tp]
            assert thr == pytest.approx(truth["liver_suv_mean"][tp], rel=0.25)
            for les in truth["lesions"]:
                state = les[tp]
                if state is not None and state["in_mask"] == "whole":
                    assert state["suv"] >= thr - 0.01
        assert strict[2]["avid_threshold_suv"] == truth["avid_threshold_suv"]
    assert grew > 0, "no moderately avid lesion was added to any mask"


def test_heterogeneity_scale_changes_texture_not_masks() -> None:
    base = generate_pair(11, "diffuse_flare", COARSE)
    hetero = generate_pair(
        11, "diffuse_flare", PhantomConfig(**{**vars(COARSE), "heterogeneity_scale": 2.0})
    )
    ratios = []
    for b, h in zip(base[:2], hetero[:2], strict=True):
        np.testing.assert_array_equal(b.mask, h.mask)
        for lid in np.unique(b.mask[b.mask > 0]):
            inside = b.mask == lid
            if inside.sum() >= 20:  # within-lesion coefficient of variation
                cov = [np.std(x.pet[inside]) / np.mean(x.pet[inside]) for x in (b, h)]
                ratios.append(cov[1] / cov[0])
    assert ratios and min(ratios) > 1.0 and np.median(ratios) > 1.1, ratios
    with pytest.raises(ValueError, match="mask_liver_ratio"):
        PhantomConfig(mask_liver_ratio=0.0)


def test_lesion_falloff_grades_uptake_inside_unchanged_masks() -> None:
    """Graded lesions: hotter centre, cooler edge, same masks, CT and mean-uptake rule."""
    from scipy import ndimage

    graded_cfg = PhantomConfig(**{**vars(COARSE), "lesion_falloff": (0.6, 0.7)})
    gains = []
    for seed in SEEDS:
        flat = generate_pair(seed, "controlled", COARSE)
        graded = generate_pair(seed, "controlled", graded_cfg)
        for les in graded[2]["lesions"]:
            for tp in ("baseline", "followup"):
                if les[tp] is not None:
                    assert 0.6 <= les[tp]["uptake_falloff"] <= 0.7
                    assert les[tp]["suv"] == _lesions(flat[2])[les["id"]][tp]["suv"]
        for f, g in zip(flat[:2], graded[:2], strict=True):
            np.testing.assert_array_equal(f.mask, g.mask)
            np.testing.assert_array_equal(f.ct, g.ct)
            for lid in np.unique(f.mask[f.mask > 0]):
                inside = f.mask == lid
                core = ndimage.binary_erosion(inside, iterations=1)
                if core.sum() < 8:
                    continue
                edge = inside & ~core
                ratios = [x.pet[core].mean() / x.pet[edge].mean() for x in (f, g)]
                gains.append(ratios[1] / ratios[0])
    assert len(gains) >= 3 and np.median(gains) > 1.1, gains
    with pytest.raises(ValueError, match="lesion_falloff"):
        PhantomConfig(lesion_falloff=(0.5, 1.0))


def test_myocardium_range_is_configurable_and_the_default_draw_unchanged() -> None:
    """``myocardium_suv`` moves only the non-fasted hearts; the default keeps the 2-8 draw."""
    from petflare.synth import PhantomConfig

    assert PhantomConfig().myocardium_suv == (2.0, 8.0)
    with pytest.raises(ValueError, match="myocardium_suv"):
        PhantomConfig(myocardium_suv=(0.0, 5.0))
    default = [sample_physiology(np.random.default_rng(s)).myocardium for s in range(200)]
    explicit = [
        sample_physiology(np.random.default_rng(s), myocardium_suv=(2.0, 8.0)).myocardium
        for s in range(200)
    ]
    assert default == explicit
    hot = np.array(
        [
            sample_physiology(np.random.default_rng(s), myocardium_suv=(10.0, 18.0)).myocardium
            for s in range(200)
        ]
    )
    suppressed = hot < 2.0
    assert 0.2 < suppressed.mean() < 0.5  # fasting keeps about a third of hearts cold
    assert ((hot[~suppressed] >= 10.0) & (hot[~suppressed] <= 18.0)).all()
    # the same draws: each scan's heart is cold in both or hot in both
    np.testing.assert_array_equal(suppressed, np.array(default) < 2.0)
