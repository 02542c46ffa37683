"""load_study: validation errors name the file; CT resampling respects both affines; SUV units."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from petflare.constants import F18_HALF_LIFE_S
from petflare.errors import PetflareInputError
from petflare.io.loading import (
    AIR_HU,
    _ct_overlaps_pet,
    load_ct_on_grid,
    load_study,
    resample_to_grid,
    validate_mask,
)
from petflare.io.nifti import save_nifti
from petflare.io.study import StudyMeta

REAL_IBSI = Path(__file__).resolve().parents[3] / "shared" / "data" / "real" / "ibsi_sts_crops"


def test_valid_study_loads_on_pet_grid(tiny_study):
    study = load_study(tiny_study.pet, tiny_study.ct, tiny_study.mask)
    assert study.pet.dtype == np.float32 and study.ct.dtype == np.float32
    np.testing.assert_allclose(study.affine, tiny_study.affine, atol=1e-4)
    np.testing.assert_allclose(study.pet, tiny_study.pet_array)
    np.testing.assert_array_equal(study.ct, tiny_study.ct_array)
    np.testing.assert_array_equal(study.mask, tiny_study.mask_array)
    assert study.mask.dtype == np.uint8
    assert study.orientation == "LPS"
    assert study.meta.units == "SUVbw"
    assert study.meta.source == {
        "pet": str(tiny_study.pet),
        "ct": str(tiny_study.ct),
        "mask": str(tiny_study.mask),
    }


def test_meta_is_kept_and_not_mutated(tiny_study):
    meta = StudyMeta(patient_id="P1", study_id="baseline", study_date="2024-01-02")
    study = load_study(tiny_study.pet, meta=meta)
    assert (study.meta.patient_id, study.meta.study_date) == ("P1", "2024-01-02")
    assert study.meta.source == {"pet": str(tiny_study.pet)}
    assert meta.source == {}


def test_trailing_singleton_fourth_axis_is_squeezed(tmp_path, tiny_study):
    path = tmp_path / "pet4d.nii.gz"
    img = nib.Nifti1Image(tiny_study.pet_array[..., None], tiny_study.affine)
    nib.save(img, str(path))
    study = load_study(path, mask=tiny_study.mask)
    assert study.shape == tiny_study.pet_array.shape


def _write(path, array, affine):
    return save_nifti(np.asarray(array), affine, path)


# Each case: (which file is broken, how to break it, expected message fragment).
def _real_4d(files, d):
    return _write(d / "pet_4d.nii.gz", np.stack([files.pet_array] * 3, axis=-1), files.affine)


def _nan_pet(files, d):
    pet = files.pet_array.copy()
    pet[2, 3, 4] = np.nan
    return _write(d / "pet_nan.nii.gz", pet, files.affine)


def _inf_ct(files, d):
    ct = files.ct_array.copy()
    ct[0, 0, 0] = np.inf
    return _write(d / "ct_inf.nii.gz", ct, files.affine)


def _zero_pet(files, d):
    return _write(d / "pet_zero.nii.gz", np.zeros_like(files.pet_array), files.affine)


def _zero_size_pet(files, d):
    return _write(d / "pet_empty.nii.gz", np.zeros((0, 4, 4), np.float32), files.affine)


def _bqml_pet(files, d):
    return _write(d / "pet_bqml.nii.gz", files.pet_array * 5000.0, files.affine)


def _mask_other_grid(files, d):
    shifted = files.affine.copy()
    shifted[:3, 3] += 2.0
    return _write(d / "mask_shifted.nii.gz", files.mask_array, shifted)


def _mask_other_shape(files, d):
    return _write(d / "mask_shape.nii.gz", files.mask_array[:-1], files.affine)


def _mask_probabilities(files, d):
    return _write(d / "mask_prob.nii.gz", files.mask_array * 0.7, files.affine)


def _mask_negative(files, d):
    return _write(d / "mask_neg.nii.gz", files.mask_array.astype(np.int16) * -1, files.affine)


def _ct_elsewhere(files, d):
    far = files.affine.copy()
    far[:3, 3] += 5000.0
    return _write(d / "ct_far.nii.gz", files.ct_array, far)


@pytest.mark.parametrize(
    ("role", "breaker", "message"),
    [
        ("pet", _real_4d, "expected a 3D volume, got a 4D series"),
        ("pet", _nan_pet, r"non-finite voxels \(1 NaN, 0 Inf\)"),
        ("ct", _inf_ct, r"non-finite voxels \(0 NaN, 1 Inf\)"),
        ("pet", _zero_pet, "all voxels are zero"),
        ("pet", _zero_size_pet, "zero-size"),
        ("pet", _bqml_pet, "looks like activity concentration in Bq/mL.*weight_kg"),
        ("mask", _mask_other_grid, "not on the grid of its PET image"),
        ("mask", _mask_other_shape, "not on the grid of its PET image"),
        ("mask", _mask_probabilities, "non-integer voxels.*probability map"),
        ("mask", _mask_negative, "negative values"),
        ("ct", _ct_elsewhere, "does not overlap the PET field of view"),
    ],
)
def test_validation_errors_name_the_file(tmp_path, tiny_study, role, breaker, message):
    bad = breaker(tiny_study, tmp_path)
    files = {"pet": tiny_study.pet, "ct": tiny_study.ct, "mask": tiny_study.mask, role: bad}
    with pytest.raises(PetflareInputError, match=message) as info:
        load_study(files["pet"], files["ct"], files["mask"])
    assert str(info.value).startswith(str(bad))
    assert info.value.path == bad


def test_missing_file_is_named(tiny_study, tmp_path):
    with pytest.raises(PetflareInputError, match="CTres_missing.nii.gz: file not found"):
        load_study(tiny_study.pet, tmp_path / "CTres_missing.nii.gz")


def test_instance_labels_are_accepted(tmp_path, tiny_study):
    labels = tiny_study.mask_array.astype(np.float32) * 3.0  # float file, integral values
    labels[0, 0, 0] = 300.0
    path = _write(tmp_path / "instances.nii.gz", labels, tiny_study.affine)
    study = load_study(tiny_study.pet, mask=path)
    assert study.mask.dtype == np.int32
    assert set(np.unique(study.mask)) == {0, 3, 300}


def test_empty_mask_is_a_valid_negative_study(tmp_path, tiny_study):
    path = _write(tmp_path / "SEG.nii.gz", np.zeros_like(tiny_study.mask_array), tiny_study.affine)
    assert load_study(tiny_study.pet, mask=path).mask.sum() == 0


def test_validate_mask_bool():
    assert validate_mask(np.ones((2, 2, 2), bool), "m.nii.gz").dtype == np.uint8


# ------------------------------------------------------------------ SUV conversion


def test_bqml_is_converted_to_suvbw(tmp_path, tiny_study):
    weight_kg, dose_bq = 70.0, 350e6
    bqml = tiny_study.pet_array.astype(np.float64) * dose_bq / (weight_kg * 1000.0)
    path = _write(tmp_path / "PET.nii.gz", bqml.astype(np.float32), tiny_study.affine)
    study = load_study(path, weight_kg=weight_kg, injected_dose_bq=dose_bq)
    np.testing.assert_allclose(study.pet, tiny_study.pet_array, rtol=1e-5, atol=1e-6)
    assert study.meta.weight_kg == weight_kg
    assert study.meta.source["pet_units_in_file"] == "Bq/mL"


def test_dose_decay_correction(tmp_path, tiny_study):
    """The assayed dose decays for one half-life before the scan: SUV doubles vs no correction."""
    weight_kg, dose_bq = 80.0, 400e6
    bqml = tiny_study.pet_array.astype(np.float64) * (dose_bq / 2) / (weight_kg * 1000.0)
    path = _write(tmp_path / "PET.nii.gz", bqml.astype(np.float32), tiny_study.affine)
    corrected = load_study(
        path, weight_kg=weight_kg, injected_dose_bq=dose_bq, dose_decay_time_s=F18_HALF_LIFE_S
    )
    np.testing.assert_allclose(corrected.pet, tiny_study.pet_array, rtol=1e-5, atol=1e-6)
    uncorrected = load_study(path, weight_kg=weight_kg, injected_dose_bq=dose_bq)
    np.testing.assert_allclose(uncorrected.pet * 2, tiny_study.pet_array, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weight_kg": 70.0}, "must be given together"),
        ({"injected_dose_bq": 3e8}, "must be given together"),
        ({"weight_kg": 70.0, "injected_dose_bq": 350.0}, r"MBq"),  # dose in MBq by mistake
        ({"weight_kg": 70000.0, "injected_dose_bq": 3e8}, "weight_kg=70000 is implausible"),
        ({"weight_kg": 70.0, "injected_dose_bq": -1.0}, "must be positive"),
        (
            {"weight_kg": 70.0, "injected_dose_bq": 3e8, "dose_decay_time_s": -5.0},
            "must not be negative",
        ),
    ],
)
def test_bad_conversion_arguments(tmp_path, tiny_study, kwargs, message):
    path = _write(tmp_path / "PET.nii.gz", tiny_study.pet_array * 5000.0, tiny_study.affine)
    with pytest.raises(PetflareInputError, match=message) as info:
        load_study(path, **kwargs)
    assert info.value.path == path


def test_conversion_refused_for_an_suv_image(tiny_study):
    with pytest.raises(PetflareInputError, match="already looks like SUV") as info:
        load_study(tiny_study.pet, weight_kg=70.0, injected_dose_bq=3e8)
    assert info.value.path == tiny_study.pet


# ------------------------------------------------------------------ CT resampling


def _world_coords(shape, affine):
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def _linear_hu(world):
    """A CT whose HU is a linear function of world position: linear resampling is exact."""
    return (0.5 * world[..., 0] - 0.25 * world[..., 1] + 0.75 * world[..., 2]).astype(np.float32)


def test_ct_on_another_grid_is_resampled_through_world_coordinates(tmp_path, tiny_study):
    # CT: RAS orientation, 1.5 mm isotropic, covering the PET block with a margin on all
    # sides except beyond the PET's last slices in z, which must come out as air.
    pet_world = _world_coords(tiny_study.pet_array.shape, tiny_study.affine)
    low = pet_world.reshape(-1, 3).min(axis=0) - 6.0
    high = pet_world.reshape(-1, 3).max(axis=0) + 6.0
    z_cut = np.percentile(pet_world[..., 2], 60)
    high[2] = z_cut
    ct_affine = np.diag([1.5, 1.5, 1.5, 1.0])
    ct_affine[:3, 3] = low
    ct_shape = tuple(int(n) for n in np.ceil((high - low) / 1.5) + 1)
    ct = _linear_hu(_world_coords(ct_shape, ct_affine))
    ct_path = _write(tmp_path / "CT.nii.gz", ct, ct_affine)

    study = load_study(tiny_study.pet, ct_path)

    assert study.ct.shape == study.pet.shape
    ct_top = ct_affine[2, 3] + 1.5 * (ct_shape[2] - 1)
    inside = pet_world[..., 2] < ct_top - 0.01
    outside = pet_world[..., 2] > ct_top + 1.5
    assert inside.sum() > 100 and outside.sum() > 100
    np.testing.assert_allclose(study.ct[inside], _linear_hu(pet_world)[inside], atol=0.05)
    assert np.all(study.ct[outside] == AIR_HU)


def test_load_ct_on_grid_matches_load_study(tiny_study, non_ras_affine):
    """The public helper (for PET read from DICOM) gives the same CT as load_study."""
    target_affine = non_ras_affine.copy()
    target_affine[:3, 3] += 1.0  # a slightly shifted grid: forces resampling
    ct = load_ct_on_grid(tiny_study.ct, (10, 8, 6), target_affine)
    assert ct.shape == (10, 8, 6) and ct.dtype == np.float32
    assert ct.min() >= -1000.0 and ct.max() <= 60.0
    same = load_ct_on_grid(tiny_study.ct, tiny_study.ct_array.shape, tiny_study.affine)
    np.testing.assert_array_equal(same, tiny_study.ct_array)


def test_thin_overlap_between_lattice_points_is_found(non_ras_affine):
    """A CT slab covering PET voxels 1-2 along axis 0 only: missed by the coarse lattice."""
    pet_shape = (64, 64, 64)
    ct_affine = non_ras_affine.copy()
    ct_affine[:3, 3] = non_ras_affine[:3, :3] @ [1.0, 0.0, 0.0] + non_ras_affine[:3, 3]
    assert _ct_overlaps_pet((2, 64, 64), ct_affine, pet_shape, non_ras_affine)
    ct_affine[:3, 3] = non_ras_affine[:3, :3] @ [-3.0, 0.0, 0.0] + non_ras_affine[:3, 3]
    assert not _ct_overlaps_pet((2, 64, 64), ct_affine, pet_shape, non_ras_affine)


def test_resample_identity_is_exact(non_ras_affine):
    array = np.random.default_rng(1).random((5, 6, 7)).astype(np.float32)
    out = resample_to_grid(array, non_ras_affine, array.shape, non_ras_affine)
    np.testing.assert_allclose(out, array, atol=1e-5)


def test_resample_handles_flipped_axes(non_ras_affine):
    """Same voxels stored with axis 0 reversed: resampling must undo the flip."""
    array = np.random.default_rng(2).random((5, 6, 7)).astype(np.float32)
    flipped_affine = non_ras_affine.copy()
    flipped_affine[:3, 0] *= -1
    flipped_affine[:3, 3] = non_ras_affine[:3, :3] @ [4, 0, 0] + non_ras_affine[:3, 3]
    out = resample_to_grid(array[::-1], flipped_affine, array.shape, non_ras_affine)
    np.testing.assert_allclose(out, array, atol=1e-5)


# ------------------------------------------------------------------ real data


@pytest.mark.skipif(not REAL_IBSI.is_dir(), reason=f"real test data absent ({REAL_IBSI})")
def test_real_ibsi_crop_loads():
    """IBSI STS_001 crop: real SUV PET (GE, LPS-flipped affine) with its GTV mask."""
    case = REAL_IBSI / "STS_001"
    study = load_study(case / "PET_image.nii.gz", mask=case / "PET_mask.nii.gz")
    assert study.shape == (41, 43, 59)
    np.testing.assert_allclose(study.spacing_mm, (4.6875, 4.6875, 3.27), atol=1e-4)
    assert 5.0 < float(study.pet.max()) < 50.0
    assert set(np.unique(study.mask)) == {0, 1}
    assert float(study.pet[study.mask > 0].mean()) > float(study.pet[study.mask == 0].mean())
