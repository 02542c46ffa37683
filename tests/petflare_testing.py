"""Shared test helpers (importable as ``petflare_testing``; tests/ is on pytest's pythonpath).

Plain functions and classes live here; ``tests/conftest.py`` wraps them in fixtures. Tests import
them with ``from petflare_testing import make_non_ras_affine`` (never ``from conftest import``:
several conftest.py files exist and the name is ambiguous).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: The repository root (scripts/, tests/, configs/).
REPO = Path(__file__).resolve().parents[1]
#: The ``head_*`` experiments of configs/experiment (train_head.yaml's; the rest are train.yaml's).
HEAD_EXPERIMENTS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("head_*.yaml"))


def load_module(name: str, path: str | Path) -> Any:
    """Import a file that is not in a package (a script, another test module) as ``name``.

    The module is registered in ``sys.modules`` first, as a normal import would, so that
    dataclasses and pickling inside it can find their module.
    """
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


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


#: Network of :func:`make_tiny_model_folder` unless told otherwise: a 2-level MONAI U-Net.
TINY_UNET_KWARGS: dict[str, Any] = {
    "in_channels": 1,
    "out_channels": 2,
    "channels": (4, 8),
    "strides": (2,),
}


def make_tiny_model_folder(
    path: str | Path,
    spacing_mm: tuple[float, float, float] = (4.0, 4.0, 4.0),
    *,
    network_kwargs: dict[str, Any] | None = None,
    min_component_ml: float | None = None,
    roi_size_vox: tuple[int, int, int] = (16, 16, 16),
    metadata: dict[str, Any] | None = None,
    seed: int = 0,
    organ_classes: int = 0,
) -> Path:
    """Export a tiny random U-Net model folder (``export_model_folder``) for contract tests.

    Random weights: tests that use it check the product's contract, not segmentation quality.

    Args:
        path: model folder to write.
        spacing_mm: model voxel size (coarse keeps tiny volumes tiny).
        network_kwargs: ``build_unet`` arguments; :data:`TINY_UNET_KWARGS` when None.
        min_component_ml: post-processing minimum component; InferenceSettings' default if None.
        roi_size_vox: sliding-window size (larger windows mean fewer, faster steps on big grids).
        metadata: extra model metadata.
        seed: torch seed of the random weights.
        organ_classes: an organ output after the lesion pair (the network gets
            ``2 + organ_classes`` output channels).
    """
    import torch

    from petflare.data.transforms import PreprocessingConfig
    from petflare.inference.model_folder import InferenceSettings, export_model_folder
    from petflare.networks import build_unet

    kwargs = dict(TINY_UNET_KWARGS if network_kwargs is None else network_kwargs)
    if organ_classes:
        kwargs["out_channels"] = 2 + organ_classes
    inference: dict[str, Any] = {"roi_size_vox": tuple(roi_size_vox)}
    if min_component_ml is not None:
        inference["min_component_ml"] = min_component_ml
    torch.manual_seed(seed)
    return export_model_folder(
        Path(path),
        build_unet(**kwargs).state_dict(),
        network_target="petflare.networks.build_unet",
        network_kwargs=kwargs,
        preprocessing=PreprocessingConfig(spacing_mm=spacing_mm),
        inference=InferenceSettings(**inference),
        config_yaml=f"seed: {seed}\n",
        metadata=metadata,
        organ_classes=organ_classes,
    )
