"""Liver reference: from a mask, automatically from CT, from PET, and refusing to guess."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from quant_phantoms import centred_affine, world_coords

from petflare.io.study import Study
from petflare.quant import liver_reference

LIVER_SUV = 2.2
SPLEEN_SUV = 2.0
# Patient right is +x in RAS+ (nibabel 'R'). Liver under the right lung, spleen under the left one.
LIVER = (np.array([45.0, 0.0, -20.0]), np.array([65.0, 55.0, 45.0]))
SPLEEN = (np.array([-70.0, -10.0, -10.0]), np.array([30.0, 30.0, 35.0]))
LUNGS = [(np.array([s * 55.0, 0.0, 75.0]), np.array([45.0, 55.0, 55.0])) for s in (-1, 1)]
HEART = (np.array([-10.0, 15.0, 45.0]), np.array([30.0, 30.0, 30.0]))


def _inside(xyz, ell):
    c, r = ell
    return (((xyz - c) / r) ** 2).sum(-1) <= 1.0


def _torso(shape=(52, 36, 56), spacing=(5.0, 5.0, 6.0), noise=0.08, z_shift=0.0, seed=0):
    aff = centred_affine(shape, spacing, axes=(0, 1, 2), signs=(-1, 1, -1))
    aff[2, 3] += z_shift
    xyz = world_coords(shape, aff)
    body = (((xyz[..., :2]) / [125.0, 85.0]) ** 2).sum(-1) <= 1.0
    pet = np.where(body, 0.8, 0.0)  # muscle / soft tissue
    ct = np.where(body, 40.0, -1000.0)
    for lung in LUNGS:
        m = _inside(xyz, lung) & body
        pet[m], ct[m] = 0.4, -850.0
    for ell, suv, hu in ((LIVER, LIVER_SUV, 60.0), (SPLEEN, SPLEEN_SUV, 50.0), (HEART, 6.0, 45.0)):
        m = _inside(xyz, ell) & body
        pet[m], ct[m] = suv, hu
    rng = np.random.default_rng(seed)
    pet = pet * (1.0 + noise * rng.standard_normal(pet.shape))
    ct = ct + 10.0 * rng.standard_normal(ct.shape)
    liver = _inside(xyz, LIVER) & body
    return Study(pet.astype(np.float32), aff, ct=ct.astype(np.float32)), liver, xyz


@pytest.mark.parametrize("use_ct", [True, False])
def test_automatic_liver_reference(use_ct):
    study, liver, _ = _torso()
    if not use_ct:
        study.ct = None
    ref = liver_reference(study)
    assert ref.found, ref.reason
    assert ref.method == ("auto_ct" if use_ct else "auto_pet")
    assert ref.suv_mean == pytest.approx(LIVER_SUV, rel=0.05)
    assert ref.suv_sd == pytest.approx(0.08 * LIVER_SUV, rel=0.4)
    centre = np.array(ref.centre_mm)
    assert _inside(centre, LIVER) and centre[0] > 0  # in the liver, on the patient's right


def test_liver_from_mask_is_exact_and_in_the_right_lobe():
    study, liver, xyz = _torso(noise=0.0)
    left_lobe_hotter = liver & (xyz[..., 0] < 20.0)
    study.pet[left_lobe_hotter] = 3.0  # a different left lobe must not be sampled
    ref = liver_reference(study, liver_mask=liver)
    assert ref.found and ref.method == "mask"
    assert ref.suv_mean == pytest.approx(LIVER_SUV, abs=1e-6)
    assert ref.suv_sd == pytest.approx(0.0, abs=1e-6)
    assert ref.centre_mm[0] > 20.0


def test_no_lungs_in_view_means_no_reference():
    # Abdomen/pelvis only: the field of view starts 150 mm below the lung bases.
    study, _, _ = _torso(shape=(52, 36, 20), z_shift=-160.0)
    ref = liver_reference(study)
    assert not ref.found and ref.suv_mean is None
    assert "lung" in ref.reason


def test_lesion_crop_has_no_reference():
    aff = centred_affine((20, 20, 20), (4.0, 4.0, 3.0))
    xyz = world_coords((20, 20, 20), aff)
    pet = np.where(np.linalg.norm(xyz, axis=-1) < 20, 6.0, 1.0).astype(np.float32)
    ref = liver_reference(Study(pet, aff))
    assert not ref.found and ref.reason


def test_pooled_spheres_stay_in_the_liver_and_do_not_overlap():
    from petflare.quant import LiverSearchConfig

    study, liver, _ = _torso()
    one = liver_reference(study)
    three = liver_reference(study, config=LiverSearchConfig(n_spheres=3))
    assert three.found and "spheres" in three.reason
    assert three.n_voxels > 2 * one.n_voxels  # more than two spheres' worth, no overlap
    assert three.suv_mean == pytest.approx(LIVER_SUV, rel=0.05)
    assert three.centre_mm == one.centre_mm  # the first sphere is the PERCIST one


def _ball(xyz, centre, radius_mm):
    return np.linalg.norm(xyz - np.asarray(centre), axis=-1) <= radius_mm


def _sphere_voxels(study, ref, xyz):
    return _ball(xyz, ref.centre_mm, ref.radius_mm)


@pytest.mark.parametrize("use_ct", [True, False])
@pytest.mark.parametrize("in_mask", [True, False])
def test_reference_excludes_lesions_and_hot_foci(use_ct, in_mask):
    """A liver metastasis where the sphere would go: in the mask or not, it is not sampled."""
    study, liver, xyz = _torso()
    if not use_ct:
        study.ct = None
    clean = liver_reference(study)
    assert clean.found, clean.reason
    met = _ball(xyz, clean.centre_mm, 14.0)  # hot metastasis right where the sphere sat
    study.pet[met] = 6.0
    if study.ct is not None:
        study.ct[met] = 45.0
    ref = liver_reference(study, lesion_mask=met if in_mask else None)
    assert ref.found, ref.reason
    assert not (_sphere_voxels(study, ref, xyz) & met).any()  # no lesion voxel sampled
    gap = np.linalg.norm(np.subtract(ref.centre_mm, clean.centre_mm))
    assert gap >= 14.0 + ref.radius_mm  # the whole sphere clears the lesion
    assert ref.suv_mean == pytest.approx(LIVER_SUV, rel=0.05)
    assert _inside(np.array(ref.centre_mm), LIVER) and ref.centre_mm[0] > 0


def test_reference_excludes_an_unmasked_cold_hypodense_lesion():
    """A responding (cold, hypodense) metastasis that is not in the lesion mask."""
    study, liver, xyz = _torso()
    clean = liver_reference(study)
    met = _ball(xyz, clean.centre_mm, 14.0)
    study.pet[met] = 0.9
    study.ct[met] = 25.0
    ref = liver_reference(study)
    assert ref.found, ref.reason
    assert not (_sphere_voxels(study, ref, xyz) & met).any()
    assert ref.suv_mean == pytest.approx(LIVER_SUV, rel=0.05)


def test_liver_mask_route_excludes_lesions():
    study, liver, xyz = _torso(noise=0.0)
    clean = liver_reference(study, liver_mask=liver)
    met = _ball(xyz, clean.centre_mm, 12.0)
    study.pet[met] = 8.0
    ref = liver_reference(study, liver_mask=liver, lesion_mask=met)
    assert ref.found and ref.method == "mask"
    assert ref.suv_mean == pytest.approx(LIVER_SUV, abs=1e-6)  # not a single lesion voxel


def test_pet_only_route_without_visible_lungs():
    """FDG lungs often look like fat: the PET route still finds the right lobe of a trunk."""
    study, liver, xyz = _torso(noise=0.05)
    study.ct = None
    lungs = np.zeros(study.shape, dtype=bool)
    for lung in LUNGS:
        lungs |= _inside(xyz, lung)
    body = study.pet > 0
    fat = body & ~lungs & (study.pet < 1.0)
    study.pet[fat] = 0.45  # soft tissue as dark as the lungs: no lung cavity on PET
    study.pet[lungs & body] = 0.45
    ref = liver_reference(study)
    assert ref.found and ref.method == "auto_pet", ref.reason
    assert "no lung base" in ref.reason
    assert ref.suv_mean == pytest.approx(LIVER_SUV, rel=0.05)
    assert _inside(np.array(ref.centre_mm), LIVER) and ref.centre_mm[0] >= 40.0


def test_pet_only_route_refuses_a_short_field_of_view_without_lungs():
    """A 10 cm slab through the liver without lungs: not enough context to call it liver."""
    study, _, _ = _torso(shape=(52, 36, 16))
    study.ct = None
    ref = liver_reference(study)
    assert not ref.found and ref.suv_mean is None and ref.reason


REAL_WHOLEBODY = (
    Path(__file__).resolve().parents[2] / ".." / "shared/data/real/sts001_wholebody_fdg_dicom/image"
)


@pytest.mark.skipif(not REAL_WHOLEBODY.is_dir(), reason="real whole-body FDG DICOM not available")
@pytest.mark.slow
def test_pet_only_route_finds_the_right_lobe_on_a_real_whole_body_scan():
    """GE Discovery ST, no CT: its lungs are as dark as its fat, the liver is still found.

    Hand-placed 3 cm spheres in this patient's right lobe give SUVmean 1.92-2.16.
    """
    from petflare.io.dicom import read_dicom_pet

    study = read_dicom_pet(REAL_WHOLEBODY)
    ref = liver_reference(study)
    assert ref.found and ref.method == "auto_pet", ref.reason
    assert 1.75 <= ref.suv_mean <= 2.2
    x, _, z = ref.centre_mm
    assert x > 40.0  # patient's right (RAS+)
    assert -420.0 <= z <= -340.0  # upper abdomen, below the heart (z -300 to -250 mm)


def test_fine_scan_is_searched_on_blocks_and_measured_on_its_own_voxels():
    """A 2.5 x 2.5 x 3 mm torso: the search runs on 2 x 2 x 2 blocks, the sphere statistics are
    those of the scan's own voxels (equal to a sphere measured directly at the reported centre),
    and the lesion margin still keeps the sphere off a metastasis."""
    from petflare.quant import LiverSearchConfig
    from petflare.quant.reference import search_grid

    study, liver, xyz = _torso(shape=(104, 72, 112), spacing=(2.5, 2.5, 3.0))
    search, factors = search_grid(study, LiverSearchConfig().search_spacing_mm)
    assert factors == (2, 2, 2) and search.shape == (52, 36, 56)
    # every block's centre is the mean of its voxels' centres (any orientation)
    block_xyz = world_coords(search.shape, search.affine)
    fine_mean = xyz.reshape(52, 2, 36, 2, 56, 2, 3).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(block_xyz, fine_mean, atol=1e-6)
    blocks = study.pet.reshape(52, 2, 36, 2, 56, 2).mean((1, 3, 5))
    np.testing.assert_allclose(search.pet, blocks, rtol=1e-5)

    ref = liver_reference(study)
    assert ref.found and ref.method == "auto_ct", ref.reason
    assert _inside(np.array(ref.centre_mm), LIVER) and ref.centre_mm[0] > 0
    ball = _sphere_voxels(study, ref, xyz)
    assert ref.n_voxels == int(ball.sum())  # counted on the 2.5 mm grid, not on the blocks
    assert ref.suv_mean == pytest.approx(float(study.pet[ball].mean()), rel=1e-6)
    assert ref.suv_sd == pytest.approx(float(study.pet[ball].std(ddof=1)), rel=1e-6)

    met = _ball(xyz, ref.centre_mm, 12.0)
    study.pet[met] = 6.0
    moved = liver_reference(study, lesion_mask=met)
    assert moved.found, moved.reason
    assert not (_sphere_voxels(study, moved, xyz) & met).any()
    assert moved.suv_mean == pytest.approx(LIVER_SUV, rel=0.05)


def test_inside_distance_equals_the_full_volume_transform() -> None:
    """The liver search's distance map is computed on the region's box only; it must be exact."""
    from scipy import ndimage

    from petflare.quant.reference import _inside_distance

    rng = np.random.default_rng(7)
    for trial in range(60):
        shape = tuple(int(n) for n in rng.integers(1, 24, 3))
        smooth = ndimage.gaussian_filter(rng.random(shape), 1.5)
        region = smooth > np.quantile(smooth, rng.uniform(0.3, 0.9))
        if trial == 0:
            region[:] = True  # no voxel outside the region at all
        if trial == 1:
            region[:] = False
        spacing = tuple(float(s) for s in rng.uniform(0.7, 5.0, 3))
        expected = ndimage.distance_transform_edt(region, sampling=spacing)
        np.testing.assert_array_equal(_inside_distance(region, spacing), expected)


def test_near_lesions_equals_the_ball_dilation() -> None:
    """The lesion margin of the liver search is a distance transform on axis-aligned grids: it
    must keep exactly the voxels that a dilation with the ball kernel keeps, for any axis order,
    sign and spacing; an oblique grid is dilated."""
    from scipy import ndimage

    from petflare.quant.metrics import ball_kernel
    from petflare.quant.reference import _near_lesions

    rng = np.random.default_rng(11)
    for trial in range(40):
        shape = tuple(int(n) for n in rng.integers(4, 30, 3))
        lesions = ndimage.gaussian_filter(rng.random(shape), 1.0) > rng.uniform(0.6, 0.8)
        lesions[tuple(int(rng.integers(0, n)) for n in shape)] = True
        if trial == 0:
            lesions[:] = False
            lesions[0, 0, 0] = True  # a lesion in the corner: the box is clipped by the array
        spacing = rng.choice([2.0, 3.0, 4.0, 5.0, 2.5, 3.27], size=3)
        perm = rng.permutation(3)
        affine = np.eye(4)
        affine[:3, :3] = 0.0
        for col, row in enumerate(perm):
            affine[row, col] = spacing[col] * rng.choice([-1.0, 1.0])
        if trial % 10 == 9:  # oblique: the dilation itself
            c, s = np.cos(0.3), np.sin(0.3)
            affine[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag(
                spacing
            )
        margin = float(rng.choice([4.0, 6.0, 10.0, 7.3]))
        expected = ndimage.binary_dilation(lesions, structure=ball_kernel(affine, margin))
        got = _near_lesions(affine, lesions, margin)
        assert got is not None
        np.testing.assert_array_equal(got, expected, err_msg=f"trial {trial}")
    assert _near_lesions(np.eye(4), np.zeros((4, 4, 4), dtype=bool), 10.0) is None


@pytest.mark.parametrize("use_ct", [True, False])
def test_search_reuses_a_scan_s_scene_with_the_same_results(use_ct) -> None:
    """The lesion-independent part of the search is kept per scan content: searching one scan
    with several lesion masks gives what fresh searches give, and changing the scan's voxels in
    place is a new scan, not a stale one."""
    from petflare.quant import reference

    study, _, xyz = _torso()
    if not use_ct:
        study.ct = None
    clean = liver_reference(study)
    assert clean.found, clean.reason
    masks = [None, _ball(xyz, clean.centre_mm, 14.0), _ball(xyz, [-60.0, 0.0, 0.0], 20.0)]

    def fresh(mask):
        reference._SCENES.clear()
        return liver_reference(study, lesion_mask=mask)

    expected = [fresh(m) for m in masks]
    reference._SCENES.clear()
    reused = [liver_reference(study, lesion_mask=m) for m in masks]
    assert len(reference._SCENES) == 1  # one scan, one scene
    assert reused == expected
    assert reused[1].centre_mm != clean.centre_mm  # the lesion moved the sphere
    # the scan's own arrays changed in place: a hot focus where the sphere sat is seen
    study.pet[_ball(xyz, clean.centre_mm, 14.0)] = 6.0
    moved = liver_reference(study)
    assert moved == fresh(None)
    assert moved.centre_mm != clean.centre_mm


# ------------------------------------------------- liver-referenced SUV (model preprocessing)


def test_model_folders_of_the_liver_referenced_suv_era_read_back() -> None:
    """Folders written while liver-referenced SUV existed still load; a liver-referenced one not."""
    from petflare.data import PreprocessingConfig

    config = PreprocessingConfig(spacing_mm=(5.0, 5.0, 5.0))
    legacy = {
        **config.to_dict(),
        "suv_reference": "none",
        "liver_level": 2.4,
        "liver_scale_range": [0.5, 2.0],
    }
    assert PreprocessingConfig.from_dict(legacy) == config
    with pytest.raises(ValueError, match="liver-referenced SUV was removed"):
        PreprocessingConfig.from_dict({**legacy, "suv_reference": "liver"})
    with pytest.raises(ValueError, match="unknown preprocessing keys"):
        PreprocessingConfig.from_dict({**config.to_dict(), "liver_levl": 2.4})
