"""Load one PET(/CT) study from NIfTI files into a validated :class:`Study`.

Every check names the offending file, because users of petflare (physicians, physicists)
must be able to fix their data from the message alone: wrong dimensionality, NaN/Inf voxels,
empty volumes, PET stored in Bq/mL instead of SUV, a CT on another grid (resampled onto the
PET grid from both affines), and masks that are not on the PET grid or not label images.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from petflare.constants import F18_HALF_LIFE_S, MAX_PLAUSIBLE_SUV
from petflare.errors import PetflareInputError
from petflare.io.nifti import load_nifti
from petflare.io.study import Study, StudyMeta
from petflare.io.validation import check_suv_plausibility

#: Hounsfield value of air, used for CT voxels that fall outside the CT field of view.
AIR_HU = -1000.0

#: Two grids are "the same" when shapes match and affines agree to this many mm.
GRID_ATOL_MM = 1e-3

#: Voxel-coordinate round-off below which a resampling transform entry is snapped to an integer.
_SNAP_TOL_VOXELS = 1e-4

#: Plausible patient weight range (kg) for the SUV conversion; outside it the unit is wrong.
_WEIGHT_RANGE_KG = (1.0, 400.0)


def load_study(
    pet: str | Path,
    ct: str | Path | None = None,
    mask: str | Path | None = None,
    *,
    weight_kg: float | None = None,
    injected_dose_bq: float | None = None,
    meta: StudyMeta | None = None,
    dose_decay_time_s: float | None = None,
    half_life_s: float = F18_HALF_LIFE_S,
    allow_implausible_suv: bool = False,
) -> Study:
    """Read and validate a PET study, with optional CT and lesion mask, from NIfTI files.

    The PET grid is the study grid: the CT is resampled onto it (linear interpolation, air
    outside the CT field of view) and the mask must already lie on it.

    Args:
        pet: PET NIfTI in SUV (body weight), or in Bq/mL together with ``weight_kg`` and
            ``injected_dose_bq`` for conversion to SUVbw.
        ct: CT NIfTI in Hounsfield units, any grid overlapping the PET.
        mask: lesion mask on the PET grid: 0 background, 1 lesion, or 1..N instance labels.
        weight_kg: patient body weight in kg (only for Bq/mL PET).
        injected_dose_bq: injected activity in Bq, decay-corrected to the PET reference time
            (scan start for DICOM DecayCorrection START), unless ``dose_decay_time_s`` is given.
        meta: descriptive metadata; a copy is returned with ``source``, ``units`` and
            ``weight_kg`` filled in.
        dose_decay_time_s: seconds from the dose assay (or injection) time to the PET reference
            time; the dose is then decay-corrected here as ``dose * 2**(-t / half_life_s)``.
        half_life_s: radionuclide half-life for that correction (default F-18).
        allow_implausible_suv: skip :func:`petflare.io.validation.check_suv_plausibility`
            (mostly negative values, maximum below 1, no body region with uptake).

    Returns:
        A :class:`Study` with float32 SUV PET, float32 HU CT on the PET grid, integer mask.

    Raises:
        PetflareInputError: any invalid input; the message names the file.
    """
    pet_path = Path(pet)
    pet_arr, affine = load_nifti(pet_path)
    _check_volume(pet_arr, pet_path, "PET")
    pet_arr = pet_arr.astype(np.float32, copy=False)
    pet_arr, converted = _to_suv(
        pet_arr,
        pet_path,
        weight_kg=weight_kg,
        injected_dose_bq=injected_dose_bq,
        dose_decay_time_s=dose_decay_time_s,
        half_life_s=half_life_s,
    )
    if not allow_implausible_suv:
        check_suv_plausibility(pet_arr, pet_path)

    sources = {"pet": str(pet_path)}
    ct_arr: np.ndarray | None = None
    if ct is not None:
        ct_arr = load_ct_on_grid(ct, pet_arr.shape, affine)
        sources["ct"] = str(ct)

    mask_arr: np.ndarray | None = None
    if mask is not None:
        mask_path = Path(mask)
        mask_raw, mask_affine = load_nifti(mask_path)
        if not same_grid(mask_raw.shape, mask_affine, pet_arr.shape, affine):
            raise PetflareInputError(
                mask_path,
                "mask is not on the grid of its PET image "
                f"({pet_path.name}): {_describe_grid(mask_raw.shape, mask_affine)} vs "
                f"{_describe_grid(pet_arr.shape, affine)}; masks are never resampled, "
                "export the mask on the PET grid",
            )
        mask_arr = validate_mask(mask_raw, mask_path)
        sources["mask"] = str(mask_path)

    base = meta if meta is not None else StudyMeta()
    new_source = {**base.source, **sources}
    if converted:
        new_source["pet_units_in_file"] = "Bq/mL"
    study_meta = dataclasses.replace(
        base,
        units="SUVbw",
        weight_kg=weight_kg if weight_kg is not None else base.weight_kg,
        source=new_source,
    )
    return Study(pet=pet_arr, affine=affine, ct=ct_arr, mask=mask_arr, meta=study_meta)


def load_ct_on_grid(ct: str | Path, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """Read and validate a NIfTI CT (HU) and return it on the grid ``(shape, affine)``.

    Used by :func:`load_study` and for a PET read from elsewhere (e.g. DICOM): the CT is
    resampled through both affines (trilinear, air -1000 HU outside its field of view).

    Raises:
        PetflareInputError: unreadable, not 3D, empty, non-finite, or no overlap with the grid.
    """
    ct_path = Path(ct)
    ct_raw, ct_affine = load_nifti(ct_path)
    _check_volume(ct_raw, ct_path, "CT")
    return _ct_on_pet_grid(ct_raw, ct_affine, tuple(shape), np.asarray(affine), ct_path)


def same_grid(
    shape_a: tuple[int, ...],
    affine_a: np.ndarray,
    shape_b: tuple[int, ...],
    affine_b: np.ndarray,
    atol_mm: float = GRID_ATOL_MM,
) -> bool:
    """True when two volumes share shape and voxel-to-world affine (within ``atol_mm``)."""
    return tuple(shape_a) == tuple(shape_b) and bool(
        np.allclose(np.asarray(affine_a), np.asarray(affine_b), atol=atol_mm, rtol=0.0)
    )


def resample_to_grid(
    array: np.ndarray,
    affine: np.ndarray,
    target_shape: tuple[int, ...],
    target_affine: np.ndarray,
    *,
    order: int = 1,
    fill_value: float = 0.0,
) -> np.ndarray:
    """Resample ``array`` (on ``affine``) onto the target grid, through world coordinates.

    For each target voxel v the source voxel is ``inv(affine) @ target_affine @ v``, so any
    orientation (LPS/RAS/oblique) and spacing is handled. Outside the source field of view the
    result is ``fill_value``.

    Args:
        array: 3D source volume.
        affine: its 4x4 voxel-to-world matrix.
        target_shape: shape of the target grid.
        target_affine: 4x4 voxel-to-world matrix of the target grid.
        order: spline order (1 = trilinear, 0 = nearest neighbour).
        fill_value: value outside the source volume.

    Returns:
        float32 array of ``target_shape``.
    """
    target_to_source = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ np.asarray(
        target_affine, dtype=np.float64
    )
    # Snap round-off (e.g. -1e-13 instead of 0 from inv(A) @ A, or float32 header affines) to
    # the nearest integer: scipy's "constant" mode treats a voxel centre a hair outside the
    # source grid as outside, which would turn whole boundary faces into fill_value.
    near = np.abs(target_to_source - np.rint(target_to_source)) < _SNAP_TOL_VOXELS
    target_to_source = np.where(near, np.rint(target_to_source), target_to_source)
    out = ndimage.affine_transform(
        np.asarray(array, dtype=np.float32),
        target_to_source[:3, :3],
        offset=target_to_source[:3, 3],
        output_shape=tuple(int(s) for s in target_shape),
        order=order,
        mode="constant",
        cval=fill_value,
        prefilter=False,
    )
    return np.asarray(out, dtype=np.float32)


def validate_mask(mask: np.ndarray, path: str | Path) -> np.ndarray:
    """Check that ``mask`` is a label image ({0, 1} or instance labels 0..N) and return it as ints.

    Raises:
        PetflareInputError: non-finite, negative or non-integer values (e.g. a probability map).
    """
    arr = np.asarray(mask)
    if arr.size == 0:
        raise PetflareInputError(path, f"mask is empty (zero-size array of shape {arr.shape})")
    if np.issubdtype(arr.dtype, np.bool_):
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        n_bad = int(np.count_nonzero(~np.isfinite(arr)))
        if n_bad:
            raise PetflareInputError(path, f"mask has {n_bad} non-finite (NaN/Inf) voxels")
        rounded = np.rint(arr)
        off = np.abs(arr - rounded) > 1e-3
        if off.any():
            examples = ", ".join(f"{v:g}" for v in np.unique(arr[off])[:5])
            raise PetflareInputError(
                path,
                f"mask has {int(off.sum())} non-integer voxels (e.g. {examples}); expected "
                "0/1 or integer instance labels. If this is a probability map, threshold it "
                "(e.g. > 0.5) first",
            )
        arr = rounded
    min_value = float(arr.min())
    if min_value < 0:
        raise PetflareInputError(
            path, f"mask has negative values (min {min_value:g}); expected 0/1 or labels 1..N"
        )
    max_value = int(arr.max())
    dtype = np.uint8 if max_value <= np.iinfo(np.uint8).max else np.int32
    return arr.astype(dtype)


def _check_volume(arr: np.ndarray, path: Path, what: str) -> None:
    """Reject zero-size, non-finite and all-zero image volumes."""
    if arr.size == 0:
        raise PetflareInputError(path, f"{what} volume is empty (zero-size, shape {arr.shape})")
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr)
        if not finite.all():
            n_nan = int(np.isnan(arr).sum())
            n_inf = int(arr.size - finite.sum() - n_nan)
            raise PetflareInputError(
                path, f"{what} has non-finite voxels ({n_nan} NaN, {n_inf} Inf)"
            )
    if not np.any(arr):
        raise PetflareInputError(path, f"{what} volume is empty (all voxels are zero)")


def _to_suv(
    pet: np.ndarray,
    path: Path,
    *,
    weight_kg: float | None,
    injected_dose_bq: float | None,
    dose_decay_time_s: float | None,
    half_life_s: float,
) -> tuple[np.ndarray, bool]:
    """Return the PET in SUVbw, converting from Bq/mL when weight and dose are given."""
    max_value = float(pet.max())
    if weight_kg is None and injected_dose_bq is None:
        if dose_decay_time_s is not None:
            raise PetflareInputError(
                path, "dose_decay_time_s given without weight_kg and injected_dose_bq"
            )
        if max_value > MAX_PLAUSIBLE_SUV:
            raise PetflareInputError(
                path,
                f"PET maximum {max_value:.4g} is not a plausible SUV (> {MAX_PLAUSIBLE_SUV:g}); "
                "the image looks like activity concentration in Bq/mL. Give weight_kg and "
                "injected_dose_bq (decay-corrected to scan start) to convert it to SUVbw, or "
                "load the SUV image (autoPET: SUV.nii.gz, not PET.nii.gz)",
            )
        return pet, False
    if weight_kg is None or injected_dose_bq is None:
        raise PetflareInputError(
            path, "weight_kg and injected_dose_bq must be given together for SUV conversion"
        )
    if not _WEIGHT_RANGE_KG[0] <= weight_kg <= _WEIGHT_RANGE_KG[1]:
        raise PetflareInputError(
            path, f"weight_kg={weight_kg:g} is implausible; give the body weight in kg"
        )
    if not injected_dose_bq > 0:
        raise PetflareInputError(path, f"injected_dose_bq={injected_dose_bq:g} must be positive")
    if max_value <= MAX_PLAUSIBLE_SUV:
        raise PetflareInputError(
            path,
            f"PET maximum {max_value:.4g} already looks like SUV, yet weight_kg and "
            "injected_dose_bq were given for a Bq/mL conversion; omit them for an SUV image",
        )
    dose_bq = float(injected_dose_bq)
    if dose_decay_time_s is not None:
        if dose_decay_time_s < 0:
            raise PetflareInputError(
                path, f"dose_decay_time_s={dose_decay_time_s:g} must not be negative"
            )
        dose_bq *= 2.0 ** (-float(dose_decay_time_s) / float(half_life_s))
    # SUVbw = C [Bq/mL] * weight [g] / dose [Bq]  (1 g of tissue ~ 1 mL)
    suv = (pet.astype(np.float64) * (weight_kg * 1000.0) / dose_bq).astype(np.float32)
    suv_max = float(suv.max())
    if suv_max > MAX_PLAUSIBLE_SUV:
        raise PetflareInputError(
            path,
            f"SUV after conversion reaches {suv_max:.4g} (> {MAX_PLAUSIBLE_SUV:g}); check the "
            "units: injected_dose_bq must be in Bq (not MBq) and weight_kg in kg",
        )
    return suv, True


def _ct_on_pet_grid(
    ct: np.ndarray,
    ct_affine: np.ndarray,
    pet_shape: tuple[int, ...],
    pet_affine: np.ndarray,
    ct_path: Path,
) -> np.ndarray:
    """Return the CT on the PET grid (resampled if needed), rejecting a CT that misses the PET."""
    if same_grid(ct.shape, ct_affine, pet_shape, pet_affine):
        return ct.astype(np.float32, copy=False)
    if not _ct_overlaps_pet(ct.shape, ct_affine, pet_shape, pet_affine):
        raise PetflareInputError(
            ct_path,
            "CT does not overlap the PET field of view: CT "
            f"{_describe_grid(ct.shape, ct_affine)}, PET {_describe_grid(pet_shape, pet_affine)}",
        )
    return resample_to_grid(ct, ct_affine, pet_shape, pet_affine, fill_value=AIR_HU)


def _ct_overlaps_pet(
    ct_shape: tuple[int, ...],
    ct_affine: np.ndarray,
    pet_shape: tuple[int, ...],
    pet_affine: np.ndarray,
) -> bool:
    """True when some PET voxel centre lies inside the CT grid ("air" in HU can't tell us).

    A coarse lattice of PET voxels (~17 per axis) is tried first; only if it misses, a full
    nearest-neighbour coverage map settles small overlaps.
    """
    lattice = [np.unique(np.r_[np.arange(0, s, max(1, s // 16)), s - 1]) for s in pet_shape]
    idx = np.stack(np.meshgrid(*lattice, indexing="ij"), axis=-1).reshape(-1, 3)
    pet_to_ct = np.linalg.inv(np.asarray(ct_affine, dtype=np.float64)) @ pet_affine
    ct_idx = idx @ pet_to_ct[:3, :3].T + pet_to_ct[:3, 3]
    limit = np.asarray(ct_shape, dtype=np.float64) - 1 + _SNAP_TOL_VOXELS
    if np.any(np.all((ct_idx >= -_SNAP_TOL_VOXELS) & (ct_idx <= limit), axis=1)):
        return True
    ones = np.ones(tuple(ct_shape), dtype=np.float32)
    return bool(resample_to_grid(ones, ct_affine, pet_shape, pet_affine, order=0).any())


def _describe_grid(shape: tuple[int, ...], affine: np.ndarray) -> str:
    """Short human-readable description of a grid: shape, spacing, orientation, origin."""
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    axcodes = "".join(str(c) for c in nib.orientations.aff2axcodes(affine))
    return (
        f"shape {tuple(int(s) for s in shape)}, spacing "
        f"{'x'.join(f'{s:.3g}' for s in spacing)} mm, {axcodes}, "
        f"origin ({', '.join(f'{o:.1f}' for o in affine[:3, 3])}) mm"
    )
