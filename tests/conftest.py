"""Shared pytest fixtures: a non-RAS anisotropic affine and tiny NIfTI studies written to tmp_path.

Geometry is sacred in petflare, so tests should use :func:`non_ras_affine` (LPS-like axes,
anisotropic spacing, an origin offset and a small oblique rotation) rather than the identity.

Typical use::

    def test_something(write_study, tmp_path):
        # writes SUV.nii.gz, CTres.nii.gz, SEG.nii.gz
        files = write_study(tmp_path / "p1" / "baseline")
        study = load_study(files.pet, files.ct, files.mask)
        assert study.mask.sum() == files.mask_array.sum()
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from petflare.io.nifti import save_nifti

#: Voxel spacing (mm) of the non-RAS test affine, one distinct value per axis.
NON_RAS_SPACING_MM = (2.0, 3.0, 4.5)

#: Default tiny grid shape for synthetic studies (a few thousand voxels).
TINY_SHAPE = (20, 16, 12)


def make_non_ras_affine(
    spacing_mm: tuple[float, float, float] = NON_RAS_SPACING_MM,
    rotation_deg: float = 7.0,
    origin_mm: tuple[float, float, float] = (112.5, 96.0, -310.25),
) -> np.ndarray:
    """Return an LPS-like voxel-to-world (RAS+ mm) affine with anisotropic spacing.

    Array axis 0 runs towards patient Left (-x in RAS), axis 1 towards Posterior (-y), axis 2
    towards Superior, each rotated by ``rotation_deg`` about z, so orientation is 'LPS' in
    nibabel codes and no axis is aligned with the world.
    """
    theta = np.deg2rad(rotation_deg)
    rot_z = np.array(
        [
            [np.cos(theta), -np.sin(theta), 0.0],
            [np.sin(theta), np.cos(theta), 0.0],
            [0.0, 0.0, 1.0],
        ]
    )
    flip_lps = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = rot_z @ flip_lps @ np.diag(spacing_mm)
    affine[:3, 3] = origin_mm
    return affine


@pytest.fixture
def non_ras_affine() -> np.ndarray:
    """LPS-like affine, spacing (2.0, 3.0, 4.5) mm, origin offset, 7 degree rotation about z."""
    return make_non_ras_affine()


@dataclass
class TinyStudyFiles:
    """Paths and in-memory arrays of a tiny study written by the ``write_study`` fixture.

    Attributes:
        folder: the study folder.
        pet, ct, mask: written file paths (``ct``/``mask`` None when not requested).
        affine: the affine of all three files.
        pet_array: PET in SUV (float32); ``ct_array`` in HU (float32); ``mask_array`` uint8
            (1 inside the sphere lesion, 0 elsewhere).
        lesion_center_mm: world (RAS mm) centre of the sphere lesion.
    """

    folder: Path
    pet: Path
    ct: Path | None
    mask: Path | None
    affine: np.ndarray
    pet_array: np.ndarray
    ct_array: np.ndarray | None
    mask_array: np.ndarray | None
    lesion_center_mm: np.ndarray


def make_study_arrays(
    shape: tuple[int, int, int],
    affine: np.ndarray,
    *,
    lesion_radius_mm: float = 8.0,
    background_suv: float = 1.0,
    lesion_suv: float = 8.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (pet_suv, ct_hu, mask, lesion_center_mm) for a body block with one sphere lesion.

    The lesion is a sphere in world millimetres (so it is an ellipsoid in voxels on an
    anisotropic grid) centred in the volume; PET has mild noise, CT is soft tissue (40 HU)
    with air (-1000 HU) in the outer voxel layer and a denser (60 HU) lesion.
    """
    rng = np.random.default_rng(seed)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    center_vox = (np.asarray(shape) - 1) / 2.0
    center_mm = affine[:3, :3] @ center_vox + affine[:3, 3]
    inside = np.linalg.norm(world - center_mm, axis=-1) <= lesion_radius_mm

    pet = background_suv + 0.05 * rng.standard_normal(shape)
    pet[inside] = lesion_suv
    pet = np.clip(pet, 0.0, None).astype(np.float32)
    ct = np.full(shape, 40.0, dtype=np.float32)
    ct[[0, -1], :, :] = -1000.0
    ct[:, [0, -1], :] = -1000.0
    ct[inside] = 60.0
    return pet, ct, inside.astype(np.uint8), center_mm


@pytest.fixture
def write_study(non_ras_affine: np.ndarray) -> Callable[..., TinyStudyFiles]:
    """Factory writing a tiny NIfTI study (PET in SUV with a sphere lesion, CT, mask).

    Call ``write_study(folder, *, shape=TINY_SHAPE, affine=None, with_ct=True, with_mask=True,
    names=("SUV.nii.gz", "CTres.nii.gz", "SEG.nii.gz"), lesion=True, seed=0, **array_kwargs)``.
    ``affine`` defaults to :func:`non_ras_affine`; ``lesion=False`` writes an empty mask (a
    negative study) and no hot sphere; extra keyword arguments go to
    :func:`make_study_arrays`. Returns a :class:`TinyStudyFiles`.
    """

    def _write(
        folder: str | Path,
        *,
        shape: tuple[int, int, int] = TINY_SHAPE,
        affine: np.ndarray | None = None,
        with_ct: bool = True,
        with_mask: bool = True,
        names: tuple[str, str, str] = ("SUV.nii.gz", "CTres.nii.gz", "SEG.nii.gz"),
        lesion: bool = True,
        seed: int = 0,
        **array_kwargs: float,
    ) -> TinyStudyFiles:
        folder = Path(folder)
        aff = non_ras_affine if affine is None else np.asarray(affine, dtype=np.float64)
        if not lesion:  # negative study: lesion tissue looks like background, empty mask
            array_kwargs = {**array_kwargs, "lesion_suv": array_kwargs.get("background_suv", 1.0)}
        pet, ct, mask, center = make_study_arrays(shape, aff, seed=seed, **array_kwargs)
        if not lesion:
            ct = np.where(mask > 0, 40.0, ct).astype(np.float32)
            mask = np.zeros_like(mask)
        pet_path = save_nifti(pet, aff, folder / names[0])
        ct_path = save_nifti(ct, aff, folder / names[1]) if with_ct else None
        mask_path = save_nifti(mask, aff, folder / names[2]) if with_mask else None
        return TinyStudyFiles(
            folder=folder,
            pet=pet_path,
            ct=ct_path,
            mask=mask_path,
            affine=aff,
            pet_array=pet,
            ct_array=ct if with_ct else None,
            mask_array=mask if with_mask else None,
            lesion_center_mm=center,
        )

    return _write


@pytest.fixture
def tiny_study(write_study: Callable[..., TinyStudyFiles], tmp_path: Path) -> TinyStudyFiles:
    """One tiny study (SUV/CTres/SEG with one sphere lesion) in ``tmp_path / "study"``."""
    return write_study(tmp_path / "study")
