"""Input checks that a file can be read yet must not produce numbers: bad geometry, implausible SUV.

Two families, each naming the file and the offending field or value:

- NIfTI header geometry, read from the raw header before nibabel repairs it (nibabel silently
  turns a zero ``pixdim`` into 1 mm, which would make every volume, MTV and TLG wrong by the true
  slice thickness): zero, negative or non-finite voxel sizes, a non-finite or singular
  qform/sform/affine, and a qform and sform that place the image differently by more than a voxel.
- PET values that every real body-weight SUV image meets (see :func:`check_suv_plausibility`);
  the thresholds are documented in docs/inference.md with the values measured on the real scans.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from petflare.errors import PetflareInputError

#: A 3x3 voxel-to-world matrix is singular when |det| / (product of its column lengths) is below
#: this: its voxel axes are (nearly) parallel, so the voxel volume is (nearly) zero.
_SINGULAR_RTOL = 1e-6

#: An image whose maximum is below this is not in SUV: any FDG scan of a body region holds tissue
#: with SUV ~0.5-3 (muscle, blood pool, liver) and most hold brain, heart or bladder far above.
#: The real scans' maxima are 5.4 (smallest IBSI crop) to 66 (docs/inference.md).
MIN_PLAUSIBLE_SUV_MAX = 1.0

#: SUV above which a voxel counts as "uptake" when looking for a body region.
BODY_UPTAKE_SUV = 0.1

#: At least this fraction of voxels must show uptake (> BODY_UPTAKE_SUV): a whole-body field of
#: view is ~15-25 % body, a crop around a tumour 60-80 %; a lesion mask or a single hot spot
#: given as the PET is far below.
MIN_BODY_FRACTION = 0.01

#: Refused when more than this share of the image's total |value| is negative ("mostly
#: negative", e.g. a sign-flipped export). Reconstruction noise in air is symmetric about zero
#: and small next to the body's uptake; the real scans have none.
MAX_NEGATIVE_SHARE = 0.5

#: Hint shown with every plausibility refusal.
SUV_OVERRIDE_HINT = "if you are sure the image is SUV, pass allow_implausible_suv=true"


def check_nifti_geometry(img: Any, path: str | Path) -> None:
    """Refuse a NIfTI (or other nibabel image) whose header geometry cannot be trusted.

    Args:
        img: an image returned by ``nib.load`` (data not yet read).
        path: the file, named in the message.

    Raises:
        PetflareInputError: a zero, negative or non-finite voxel size in the raw header
            (``pixdim``), a non-finite or singular sform, qform or resulting affine, or a qform
            and sform (both set) that disagree by more than a voxel anywhere in the image.
    """
    path = Path(path)
    if isinstance(img.header, nib.Nifti1Header):  # Nifti2Header is a subclass
        raw = _raw_nifti_header(img, path)
        n_spatial = min(3, int(raw["dim"][0]))
        _check_pixdim(raw, n_spatial, path)
        if n_spatial == 3:
            _check_forms(raw, tuple(int(s) for s in img.shape[:3]), path)
    affine = np.asarray(img.affine, dtype=np.float64)
    _check_matrix(affine, path, "affine (voxel-to-world matrix)")


def _raw_nifti_header(img: Any, path: Path) -> Any:
    """The header as stored, without the repairs nibabel applies when loading."""
    holder = img.file_map.get("header")
    filename = getattr(holder, "filename", None) or str(path)
    try:
        with ImageOpener(filename) as fileobj:
            return type(img.header).from_fileobj(fileobj, check=False)
    except Exception as exc:  # nibabel raises many types for corrupt headers
        raise PetflareInputError(path, f"NIfTI header cannot be read ({exc})") from exc


def _check_pixdim(raw: Any, n_spatial: int, path: Path) -> None:
    pixdim = np.asarray(raw["pixdim"], dtype=np.float64)
    for axis in range(1, n_spatial + 1):
        value = float(pixdim[axis])
        if np.isfinite(value) and value > 0:
            continue
        what = "not finite" if not np.isfinite(value) else "zero" if value == 0 else "negative"
        raise PetflareInputError(
            path,
            f"NIfTI header field pixdim[{axis}] (voxel size along array axis {axis - 1}) is "
            f"{value:g}, {what}: volumes, MTV and TLG would be wrong (nibabel would silently "
            "read 1 mm). Rewrite the file with the true voxel size",
        )


def _check_forms(raw: Any, shape: tuple[int, ...], path: Path) -> None:
    sform = qform = None
    if int(raw["sform_code"]) > 0:
        sform = np.eye(4)
        sform[:3] = np.stack([raw["srow_x"], raw["srow_y"], raw["srow_z"]]).astype(np.float64)
        _check_matrix(sform, path, "sform (srow_x/srow_y/srow_z)")
    if int(raw["qform_code"]) > 0:
        fields = ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z")
        bad = [name for name in fields if not np.isfinite(float(raw[name]))]
        if bad:
            raise PetflareInputError(
                path, f"NIfTI header qform field(s) {', '.join(bad)} are not finite"
            )
        try:
            qform = np.asarray(raw.get_qform(), dtype=np.float64)
        except Exception as exc:  # an impossible quaternion (b^2 + c^2 + d^2 > 1)
            raise PetflareInputError(
                path, f"NIfTI header qform (quatern_b/c/d) is invalid ({exc})"
            ) from exc
        _check_matrix(qform, path, "qform (quatern_*, qoffset_*, pixdim)")
    if sform is None or qform is None:
        return
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in shape])), dtype=np.float64)
    distance_mm = np.linalg.norm(
        corners @ (sform[:3, :3] - qform[:3, :3]).T + (sform[:3, 3] - qform[:3, 3]), axis=1
    ).max()
    voxel_mm = float(np.linalg.norm(sform[:3, :3], axis=0).min())
    if distance_mm > voxel_mm:
        raise PetflareInputError(
            path,
            f"NIfTI header qform and sform disagree by up to {distance_mm:.3g} mm (more than one "
            f"voxel, {voxel_mm:.3g} mm): programs would place the image differently. Rewrite the "
            "file with one geometry (e.g. nibabel: img.set_qform(img.get_sform()))",
        )


def _check_matrix(matrix: np.ndarray, path: Path, name: str) -> None:
    """Refuse a non-finite or singular voxel-to-world matrix."""
    if not np.all(np.isfinite(matrix)):
        raise PetflareInputError(path, f"NIfTI header {name} has non-finite entries")
    linear = matrix[:3, :3]
    lengths = np.linalg.norm(linear, axis=0)
    if np.any(lengths == 0) or abs(np.linalg.det(linear)) < _SINGULAR_RTOL * np.prod(lengths):
        raise PetflareInputError(
            path,
            f"NIfTI header {name} is singular (a zero or collapsed voxel axis, voxel sizes "
            f"{', '.join(f'{v:.3g}' for v in lengths)} mm): the image has no valid geometry",
        )


def check_suv_plausibility(pet: np.ndarray, path: str | Path | None) -> None:
    """Refuse PET values that no real body-weight SUV image has.

    Checked in this order: not mostly negative (:data:`MAX_NEGATIVE_SHARE`), a maximum of at
    least :data:`MIN_PLAUSIBLE_SUV_MAX`, and a body region with uptake (at least
    :data:`MIN_BODY_FRACTION` of the voxels above :data:`BODY_UPTAKE_SUV`). The upper limit
    (Bq/mL given as SUV) is checked where the units are decided (``petflare.io.loading``).

    Args:
        pet: the PET volume in SUV (finite values).
        path: the file or DICOM folder, named in the message.

    Raises:
        PetflareInputError: with the measured value, the threshold and the override.
    """
    values = np.asarray(pet, dtype=np.float32)
    negative = float(-values[values < 0].sum(dtype=np.float64))
    total = float(np.abs(values).sum(dtype=np.float64))
    if total > 0 and negative / total > MAX_NEGATIVE_SHARE:
        raise PetflareInputError(
            path,
            f"PET is mostly negative ({100 * negative / total:.0f} % of the total |SUV| is "
            f"below zero, {100 * np.mean(values < 0):.0f} % of voxels): not an SUV image (a "
            f"sign-flipped export?); {SUV_OVERRIDE_HINT}",
        )
    maximum = float(values.max())
    if maximum < MIN_PLAUSIBLE_SUV_MAX:
        raise PetflareInputError(
            path,
            f"PET maximum {maximum:.3g} is below {MIN_PLAUSIBLE_SUV_MAX:g}, which no FDG SUV "
            "image of a body has (wrong units, e.g. MBq/mL or kBq/mL scaled, or not a PET?); "
            f"{SUV_OVERRIDE_HINT}",
        )
    body_fraction = float(np.mean(values > BODY_UPTAKE_SUV))
    if body_fraction < MIN_BODY_FRACTION:
        raise PetflareInputError(
            path,
            f"only {100 * body_fraction:.2g} % of voxels have SUV > {BODY_UPTAKE_SUV:g} (at least "
            f"{100 * MIN_BODY_FRACTION:g} % expected for a body in the field of view): a mask or "
            f"a few hot spots rather than a PET?; {SUV_OVERRIDE_HINT}",
        )
