"""Image formation: scan geometry, PET point-spread blur and count noise, CT resampling noise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from petflare.synth.anatomy import Anatomy
from petflare.synth.config import ALL_ORIENTATIONS, PhantomConfig
from petflare.synth.geometry import ScanGeometry, grid_affine, rotation_matrix

_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


@dataclass(frozen=True)
class ScanSettings:
    """Acquisition/reconstruction settings of one simulated scan (recorded in the ground truth)."""

    orientation: str
    spacing_xyz_mm: tuple[float, float, float]
    psf_fwhm_mm: float
    noise_cv_liver: float
    noise_corr_mm: float
    ct_noise_hu: float
    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]


def sample_scan(
    rng: np.random.Generator, anatomy: Anatomy, config: PhantomConfig, table_offset_mm: np.ndarray
) -> tuple[ScanGeometry, ScanSettings]:
    """Draw one scan's grid (spacing, axis order/flips), patient pose and image quality.

    The patient is placed at ``table_offset_mm`` (shared by both scans of a pair) plus a random
    repositioning of up to ``config.max_shift_mm`` per axis and a small rotation.
    """
    angles = rng.uniform(-config.max_rotation_deg, config.max_rotation_deg, 3)
    rotation = rotation_matrix(np.deg2rad(angles))
    translation = table_offset_mm + rng.uniform(-config.max_shift_mm, config.max_shift_mm, 3)
    inplane = float(rng.uniform(*config.spacing_inplane_mm))
    slice_lo, slice_hi = config.spacing_slice_mm
    # fine in-plane pixels come with thicker slices (bounded voxel count, generation time)
    slice_lo = min(max(slice_lo, config.min_voxel_volume_mm3 / inplane**2), slice_hi)
    spacing = np.array([inplane, inplane, float(rng.uniform(slice_lo, slice_hi))])
    orientation = str(rng.choice(config.orientations or ALL_ORIENTATIONS))
    lo, hi = anatomy.body_bounds()
    margin = rng.uniform(8.0, 35.0, 3)
    margin[2] = 0.0
    lo, hi = lo - margin, hi + margin
    corners = np.array([[(lo, hi)[(c >> k) & 1][k] for k in range(3)] for c in range(8)])
    world = corners @ rotation.T + translation
    w_lo, w_hi = world.min(axis=0), world.max(axis=0)
    # keep the axial range of the scan exactly the planned one (no slices beyond the FOV)
    w_lo[2] = lo[2] + translation[2]
    w_hi[2] = hi[2] + translation[2]
    affine, shape = grid_affine(w_lo, w_hi, spacing, orientation)
    geometry = ScanGeometry(shape, affine, rotation, translation)
    settings = ScanSettings(
        orientation=orientation,
        spacing_xyz_mm=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        psf_fwhm_mm=float(rng.uniform(*config.psf_fwhm_mm)),
        noise_cv_liver=float(rng.uniform(*config.noise_cv_liver)),
        noise_corr_mm=float(rng.uniform(*config.noise_corr_mm)),
        ct_noise_hu=float(rng.uniform(*config.ct_noise_hu)),
        rotation_deg=(float(angles[0]), float(angles[1]), float(angles[2])),
        translation_mm=(float(translation[0]), float(translation[1]), float(translation[2])),
    )
    return geometry, settings


def form_pet(
    activity_suv: np.ndarray,
    spacing_mm: np.ndarray,
    settings: ScanSettings,
    liver_suv: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Blur the true activity with the PSF and add spatially correlated, count-like noise.

    Noise standard deviation is ``k * sqrt(SUV)`` (Poisson-like: relative noise falls as
    uptake rises), with ``k`` set so the liver has the drawn coefficient of variation; the
    noise is smoothed over ``noise_corr_mm`` as OSEM reconstruction with a post-filter does.
    Negative values are clipped, as reconstructed images are non-negative.
    """
    sigma = settings.psf_fwhm_mm * _FWHM_TO_SIGMA / np.asarray(spacing_mm)
    blurred = ndimage.gaussian_filter(activity_suv, sigma, mode="constant", truncate=3.5)
    white = rng.standard_normal(activity_suv.shape, dtype=np.float32)
    corr = ndimage.gaussian_filter(
        white, settings.noise_corr_mm / np.asarray(spacing_mm), mode="wrap", truncate=3.0
    )
    corr /= max(float(corr.std()), 1e-6)
    k = float(settings.noise_cv_liver * np.sqrt(liver_suv))
    pet = blurred + k * np.sqrt(np.maximum(blurred, 0.02)) * corr
    return np.clip(pet, 0.0, None).astype(np.float32)


def form_ct(
    hu: np.ndarray, spacing_mm: np.ndarray, settings: ScanSettings, rng: np.random.Generator
) -> np.ndarray:
    """CT resampled to the PET grid (slight smoothing) with noise; int16 HU in [-1024, 3071]."""
    smooth = ndimage.gaussian_filter(hu, 1.0 / np.asarray(spacing_mm), mode="nearest", truncate=3.0)
    noisy = smooth + settings.ct_noise_hu * rng.standard_normal(hu.shape, dtype=np.float32)
    return np.clip(np.rint(noisy), -1024, 3071).astype(np.int16)
