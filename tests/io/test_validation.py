"""Header geometry and SUV plausibility checks: each bad input is built and refused by name;
every real scan in ../shared/data/real passes (the thresholds' margin is measured there)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from petflare.errors import PetflareInputError
from petflare.io.loading import load_study
from petflare.io.nifti import load_nifti
from petflare.io.validation import (
    MIN_PLAUSIBLE_SUV_MAX,
    check_suv_plausibility,
)
from petflare.paths import real_data_dir
from petflare_testing import make_non_ras_affine

SHAPE = (12, 10, 8)


def _pet(seed: int = 0) -> np.ndarray:
    """Body-like SUV block: background ~1, a hot cube of 6."""
    rng = np.random.default_rng(seed)
    pet = (1.0 + 0.05 * rng.standard_normal(SHAPE)).astype(np.float32)
    pet[4:7, 4:7, 3:5] = 6.0
    return pet


def _save(img: nib.Nifti1Image, path: Path) -> Path:
    nib.save(img, str(path))
    return path


def _zero_slice_spacing(path: Path) -> Path:
    """The issue's case: pixdim[3] = 0 and neither qform nor sform (nibabel would read 1 mm)."""
    img = nib.Nifti1Image(_pet(), None)
    img.header["pixdim"][1:4] = (2.0, 2.0, 0.0)
    img.header.set_qform(None, code=0)
    img.header.set_sform(None, code=0)
    return _save(img, path)


def _pixdim(value: float) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        img = nib.Nifti1Image(_pet(), make_non_ras_affine())
        img.header["pixdim"][2] = value
        return _save(img, path)

    return write


def _singular_sform(path: Path) -> Path:
    affine = make_non_ras_affine()
    affine[:3, 2] = affine[:3, 1]  # two voxel axes parallel: no volume
    img = nib.Nifti1Image(_pet(), None)
    img.header.set_qform(None, code=0)
    img.header.set_sform(affine, code=1)
    return _save(img, path)


def _nan_sform(path: Path) -> Path:
    header = nib.Nifti1Header()
    header.set_sform(make_non_ras_affine(), code=1)
    header["srow_x"][3] = np.nan
    return _save(nib.Nifti1Image(_pet(), None, header=header), path)  # None: keep the header


def _forms_disagree(path: Path) -> Path:
    sform = make_non_ras_affine()
    qform = sform.copy()
    qform[:3, 3] += (0.0, 0.0, 10.0)  # 10 mm apart, voxels are 2-4.5 mm
    img = nib.Nifti1Image(_pet(), sform)
    img.set_qform(qform, code=1)
    img.set_sform(sform, code=1)
    return _save(img, path)


@pytest.mark.parametrize(
    ("write", "fragment"),
    [
        (_zero_slice_spacing, "pixdim[3]"),
        (_pixdim(0.0), "pixdim[2]"),
        (_pixdim(-3.0), "negative"),
        (_pixdim(np.inf), "not finite"),
        (_singular_sform, "sform (srow_x/srow_y/srow_z) is singular"),
        (_nan_sform, "sform (srow_x/srow_y/srow_z) has non-finite"),
        (_forms_disagree, "qform and sform disagree by up to 10 mm"),
    ],
    ids=["zero-slice-spacing", "zero-pixdim", "negative-pixdim", "inf-pixdim", "singular",
         "nan-sform", "qform-vs-sform"],
)  # fmt: skip
def test_bad_header_geometry_is_refused(
    tmp_path: Path, write: Callable[[Path], Path], fragment: str
) -> None:
    path = write(tmp_path / "pet.nii.gz")
    with pytest.raises(PetflareInputError) as info:
        load_study(path)
    assert str(path) in str(info.value)
    assert fragment in str(info.value)


def test_forms_within_a_voxel_and_qform_only_files_load(tmp_path: Path) -> None:
    """Float32 round-off between the two forms, or a file with only one, is not an error."""
    sform = make_non_ras_affine()
    qform = sform.copy()
    qform[:3, 3] += 0.4  # 0.7 mm < the smallest voxel (2 mm)
    img = nib.Nifti1Image(_pet(), sform)
    img.set_qform(qform, code=1)
    img.set_sform(sform, code=1)
    load_study(_save(img, tmp_path / "close.nii.gz"))
    only_q = nib.Nifti1Image(_pet(), make_non_ras_affine())
    only_q.set_sform(None, code=0)
    study = load_study(_save(only_q, tmp_path / "qform.nii.gz"))
    np.testing.assert_allclose(study.spacing_mm, (2.0, 3.0, 4.5), atol=1e-5)


def test_2d_image_keeps_its_own_message(tmp_path: Path) -> None:
    """pixdim[3] of a 2D image is meaningless; the dimensionality is what is wrong."""
    img = nib.Nifti1Image(np.ones((6, 5), np.float32), np.eye(4))
    img.header["pixdim"][3] = 0.0
    with pytest.raises(PetflareInputError, match="expected a 3D volume"):
        load_nifti(_save(img, tmp_path / "flat.nii.gz"))


def _all_negative() -> np.ndarray:
    return -_pet()


def _mostly_negative() -> np.ndarray:
    pet = -_pet()
    pet[:2] = 0.5  # some positive voxels do not make it an SUV image
    return pet


def _tiny_values() -> np.ndarray:
    return _pet() * 1e-3  # e.g. SUV written in thousandths, or MBq/mL


def _hot_spot_only() -> np.ndarray:
    pet = np.zeros(SHAPE, np.float32)
    pet[5, 5, 4] = 9.0  # one voxel: a lesion mask / a single spike, not a body
    return pet


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (_all_negative, "mostly negative"),
        (_mostly_negative, "mostly negative"),
        (_tiny_values, f"below {MIN_PLAUSIBLE_SUV_MAX:g}"),
        (_hot_spot_only, "% of voxels have SUV"),
    ],
)
def test_implausible_suv_is_refused_with_override(
    tmp_path: Path, make: Callable[[], np.ndarray], fragment: str
) -> None:
    img = nib.Nifti1Image(make(), make_non_ras_affine())
    path = _save(img, tmp_path / "pet.nii.gz")
    with pytest.raises(PetflareInputError) as info:
        load_study(path)
    message = str(info.value)
    assert str(path) in message and fragment in message
    assert "allow_implausible_suv=true" in message
    study = load_study(path, allow_implausible_suv=True)
    np.testing.assert_array_equal(study.pet, make())


def test_fbp_like_noise_in_air_is_accepted() -> None:
    """Symmetric negative noise outside the body (filtered back-projection) is plausible."""
    rng = np.random.default_rng(3)
    pet = rng.normal(0.0, 0.3, (20, 20, 10)).astype(np.float32)  # air, half negative
    pet[5:15, 5:15] = 1.0 + 0.1 * rng.standard_normal((10, 10, 10))  # body, 25 %
    assert np.mean(pet < 0) > 0.3
    check_suv_plausibility(pet, "fbp.nii.gz")


# ------------------------------------------------------------------------------ real scans


REAL = real_data_dir()
IBSI_CROPS = sorted((REAL / "ibsi_sts_crops").glob("STS_*/PET_image.nii.gz"))
REAL_DICOM = {
    "sts001": REAL / "sts001_wholebody_fdg_dicom" / "image",
    "acrin042_delayed": REAL / "acrin_nsclc_042_fdg_dicom" / "image",
    "chus052_philips_cnts": REAL / "chus052_fdg_dicom" / "image",
}


@pytest.mark.skipif(not IBSI_CROPS, reason=f"real IBSI crops not found under {REAL}")
@pytest.mark.parametrize("index", range(5))
def test_real_ibsi_crops_pass_every_check(index: int) -> None:
    """The five IBSI SUV crops (GE, qform only) pass the header and plausibility checks."""
    if index >= len(IBSI_CROPS):
        pytest.skip(f"only {len(IBSI_CROPS)} IBSI crops under {REAL}")
    study = load_study(IBSI_CROPS[index])
    assert float(study.pet.max()) > 5 * MIN_PLAUSIBLE_SUV_MAX  # the margin measured


@pytest.mark.parametrize("name", sorted(REAL_DICOM))
def test_real_dicom_series_pass_plausibility(name: str) -> None:
    """Each real series converted to SUV passes (CHUS-052 needs Philips CNTS support)."""
    from petflare.io.dicom import read_dicom_pet

    folder = REAL_DICOM[name]
    if not folder.is_dir():
        pytest.skip(f"real series {folder} not found (set PETFLARE_REAL_DATA)")
    try:
        study = read_dicom_pet(folder)
    except PetflareInputError as exc:
        if "CNTS" in str(exc):
            pytest.skip(f"Philips CNTS is not converted to SUV by this version: {exc}")
        raise
    check_suv_plausibility(study.pet, folder)
    assert float(study.pet.max()) > 5 * MIN_PLAUSIBLE_SUV_MAX
