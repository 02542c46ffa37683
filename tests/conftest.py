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
from pathlib import Path

import numpy as np
import pytest

from petflare.io.nifti import save_nifti
from petflare_testing import (  # noqa: F401  (re-exported for fixtures)
    NON_RAS_SPACING_MM,
    TINY_SHAPE,
    TinyStudyFiles,
    make_non_ras_affine,
    make_study_arrays,
)


@pytest.fixture
def non_ras_affine() -> np.ndarray:
    """LPS-like affine, spacing (2.0, 3.0, 4.5) mm, origin offset, 7 degree rotation about z."""
    return make_non_ras_affine()


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
