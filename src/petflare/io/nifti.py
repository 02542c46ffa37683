"""NIfTI reading and writing with nibabel: the affine is kept exactly, writes are atomic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from petflare.errors import PetflareInputError
from petflare.io.atomic import atomic_path
from petflare.io.validation import check_nifti_geometry


def load_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3D NIfTI volume and its affine.

    A trailing singleton 4th axis (common in exported PET) is squeezed; a real 4D series is
    rejected. The affine is the one nibabel chooses (sform if set, else qform), in RAS+ mm.
    The raw header geometry is checked first (``petflare.io.validation.check_nifti_geometry``).

    Raises:
        PetflareInputError: missing/unreadable file, untrustworthy header geometry (zero or
            non-finite voxel size, singular affine, qform/sform disagreeing) or not 3D; the
            message names the file and the header field.
    """
    path = Path(path)
    if not path.is_file():
        raise PetflareInputError(path, "file not found")
    try:
        img: Any = nib.load(str(path))  # a spatial image; typed loosely by nibabel
        if 0 in img.shape:  # nibabel returns a flat (0,) array here, hiding the real shape
            raise PetflareInputError(path, f"empty volume (zero-size, shape {tuple(img.shape)})")
        check_nifti_geometry(img, path)  # before the voxels are read: refuse in a millisecond
        data = np.asanyarray(img.dataobj)
    except PetflareInputError:
        raise
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise PetflareInputError(path, f"cannot be read as NIfTI ({exc})") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        kind = "a 4D series" if data.ndim == 4 else f"{data.ndim}D"
        raise PetflareInputError(
            path, f"expected a 3D volume, got {kind} of shape {tuple(data.shape)}"
        )
    return np.asarray(data), np.asarray(img.affine, dtype=np.float64)


def save_nifti(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | Path,
    overwrite: bool = False,
    dtype: np.dtype | type | None = None,
) -> Path:
    """Write ``array`` with ``affine`` (set as both sform and qform) atomically.

    Args:
        array: 3D voxel array in the axis order the affine describes.
        affine: 4x4 voxel-to-world matrix, written unchanged.
        path: target file (``.nii`` or ``.nii.gz``).
        overwrite: replace an existing file; otherwise an existing file raises.
        dtype: on-disk dtype (default: the array's own).
    """
    arr = np.asarray(array if dtype is None else np.asarray(array).astype(dtype))
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_data_dtype(arr.dtype)
    with atomic_path(path, overwrite) as tmp:
        nib.save(img, str(tmp))
    return Path(path)
