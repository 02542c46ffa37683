"""NIfTI round-trips keep geometry exactly (non-RAS, anisotropic, oblique) and reject bad shapes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from petflare.errors import OutputExistsError, PetflareInputError
from petflare.io.nifti import load_nifti, save_nifti
from petflare.io.study import Study


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8])
def test_round_trip_keeps_affine_and_voxels(tmp_path, non_ras_affine, dtype):
    rng = np.random.default_rng(0)
    array = (rng.random((7, 5, 4)) * 100).astype(dtype)
    path = save_nifti(array, non_ras_affine, tmp_path / "x.nii.gz")

    loaded, affine = load_nifti(path)

    # The header stores the affine as float32: equal to ~1e-5 mm, voxels bit-exact.
    np.testing.assert_allclose(affine, non_ras_affine, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(loaded, array)
    assert loaded.dtype == dtype
    header = nib.load(str(path)).header
    assert int(header["sform_code"]) == 1 and int(header["qform_code"]) == 1
    np.testing.assert_allclose(header.get_qform(), non_ras_affine, atol=1e-4)
    # A second round trip is exact: nothing drifts when files are re-saved.
    save_nifti(loaded, affine, tmp_path / "y.nii.gz")
    np.testing.assert_array_equal(load_nifti(tmp_path / "y.nii.gz")[1], affine)


def test_round_trip_geometry_seen_by_study(tmp_path, non_ras_affine):
    path = save_nifti(np.ones((6, 5, 4), np.float32), non_ras_affine, tmp_path / "pet.nii.gz")
    study = Study(*load_nifti(path))
    assert study.orientation == "LPS"
    np.testing.assert_allclose(study.spacing_mm, (2.0, 3.0, 4.5), atol=1e-5)
    assert study.voxel_volume_ml == pytest.approx(2.0 * 3.0 * 4.5 / 1000.0, rel=1e-5)


def test_voxel_to_world_mapping_survives(tmp_path, non_ras_affine):
    """A single hot voxel keeps its world position after the round trip."""
    array = np.zeros((6, 5, 4), np.float32)
    array[1, 3, 2] = 5.0
    loaded, affine = load_nifti(save_nifti(array, non_ras_affine, tmp_path / "p.nii"))
    index = np.argwhere(loaded == 5.0)[0]
    world = affine @ np.append(index, 1.0)
    expected = non_ras_affine @ np.array([1.0, 3.0, 2.0, 1.0])
    np.testing.assert_allclose(world, expected, atol=1e-3)


def test_trailing_singleton_axis_is_squeezed(tmp_path, non_ras_affine):
    nib.save(
        nib.Nifti1Image(np.ones((4, 3, 2, 1), np.float32), non_ras_affine),
        str(tmp_path / "s.nii.gz"),
    )
    array, _ = load_nifti(tmp_path / "s.nii.gz")
    assert array.shape == (4, 3, 2)


@pytest.mark.parametrize(
    ("shape", "message"),
    [((4, 3, 2, 5), "4D series"), ((4, 3), "2D"), ((0, 3, 2), "zero-size")],
)
def test_bad_shapes_are_rejected_naming_the_file(tmp_path, shape, message):
    path = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)), str(path))
    with pytest.raises(PetflareInputError, match=message) as info:
        load_nifti(path)
    assert "bad.nii.gz" in str(info.value)
    assert info.value.path == path


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(PetflareInputError, match="file not found"):
        load_nifti(tmp_path / "absent.nii.gz")
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"not a nifti file")
    with pytest.raises(PetflareInputError, match="corrupt.nii.gz: cannot be read"):
        load_nifti(corrupt)


def test_save_refuses_to_overwrite(tmp_path, non_ras_affine):
    path = save_nifti(np.ones((3, 3, 3), np.float32), non_ras_affine, tmp_path / "a.nii.gz")
    with pytest.raises(OutputExistsError, match="a.nii.gz"):
        save_nifti(np.zeros((3, 3, 3), np.float32), non_ras_affine, path)
    assert load_nifti(path)[0].max() == 1.0
    save_nifti(np.zeros((3, 3, 3), np.float32), non_ras_affine, path, overwrite=True)
    assert load_nifti(path)[0].max() == 0.0


def test_bool_arrays_are_saved_as_uint8(tmp_path, non_ras_affine):
    mask = np.zeros((3, 3, 3), bool)
    mask[1, 1, 1] = True
    array, _ = load_nifti(save_nifti(mask, non_ras_affine, tmp_path / "m.nii.gz"))
    assert array.dtype == np.uint8 and array.sum() == 1
