"""A pair's images and regions on one crop grid: alignment, resampling, region PET statistics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from petflare.constants import Keys
from petflare.data.longitudinal.features import (
    RISE_LOG,
    SHELL_MM,
    LesionUnit,
)
from petflare.data.transforms import PreprocessingConfig, ScaleSuv
from petflare.io.loading import resample_to_grid
from petflare.io.study import Study
from petflare.quant.metrics import SUV_PEAK_RADIUS_MM, ball_kernel, ball_mean_map

# ----------------------------------------------------------------------------- geometry


def registration_matrix(report: Any) -> np.ndarray:
    """Baseline-world -> follow-up-world 4x4 matrix of a pair report."""
    return np.asarray(report.registration.matrix_ras, dtype=np.float64)


def followup_on_baseline(
    followup_array: np.ndarray,
    followup_affine: np.ndarray,
    target_shape: Sequence[int],
    target_affine: np.ndarray,
    matrix_ras: np.ndarray,
    order: int = 1,
) -> np.ndarray:
    """Resample a follow-up array onto a grid in baseline world coordinates.

    The follow-up voxel-to-baseline-world matrix is ``inv(matrix_ras) @ followup_affine``.
    """
    affine_in_baseline = np.linalg.inv(matrix_ras) @ np.asarray(followup_affine, np.float64)
    return resample_to_grid(
        followup_array, affine_in_baseline, tuple(target_shape), target_affine, order=order
    )


def crop_grid(
    points_mm: np.ndarray,
    spacing_mm: Sequence[float],
    margin_mm: float,
    multiple: int,
    max_extent_mm: float = 1200.0,
) -> tuple[tuple[int, int, int], np.ndarray]:
    """A RAS grid at ``spacing_mm`` covering ``points_mm`` plus a margin, shape a ``multiple``.

    Returns:
        (shape, affine): the affine is diagonal (RAS+) so the encoder sees the orientation the
        segmentation model was trained in.
    """
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    lo = points_mm.min(0) - margin_mm
    hi = points_mm.max(0) + margin_mm
    extent = np.minimum(hi - lo, max_extent_mm)
    n = np.ceil(extent / spacing).astype(int) + 1
    n = (np.ceil(n / multiple) * multiple).astype(int)
    centre = (lo + hi) / 2.0
    origin = centre - (n - 1) / 2.0 * spacing
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)
    affine[:3, 3] = origin
    return (int(n[0]), int(n[1]), int(n[2])), affine


def _world_points(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def scale_channels(
    pet: np.ndarray,
    ct: np.ndarray | None,
    preprocessing: PreprocessingConfig,
) -> np.ndarray:
    """Stack and scale the network input channels exactly as the segmentation model does."""
    scaler = ScaleSuv(preprocessing.suv_max, preprocessing.suv_log)
    chans = [scaler(torch.from_numpy(np.ascontiguousarray(pet))).numpy()]
    if Keys.CT in preprocessing.channels:
        if ct is None:
            raise ValueError("this segmentation model needs CT, but a scan has none")
        low, high = preprocessing.ct_window_hu
        chans.append(np.clip((ct - low) / (high - low) * 2.0 - 1.0, -1.0, 1.0))
    return np.stack(chans).astype(np.float32)


@dataclass
class PairImages:
    """Both scans and the unit regions on one crop grid (RAS, the model's spacing)."""

    baseline_image: np.ndarray  # [C, X, Y, Z] scaled network input
    followup_image: np.ndarray  # [C, X, Y, Z], the follow-up aligned to the baseline
    lesion_masks: np.ndarray  # [L, X, Y, Z] uint8
    affine: np.ndarray  # 4x4 of the crop grid


def pair_images(
    baseline: Study,
    followup: Study,
    baseline_labels: np.ndarray,
    followup_labels: np.ndarray,
    units: Sequence[LesionUnit],
    matrix_ras: np.ndarray,
    preprocessing: PreprocessingConfig,
    margin_mm: float = 32.0,
    multiple: int = 16,
) -> PairImages:
    """Resample both scans and the unit regions onto a crop grid around the lesions."""
    f_on_b = followup_on_baseline(
        followup_labels, followup.affine, baseline.shape, baseline.affine, matrix_ras, order=0
    ).astype(np.int64)
    any_lesion = (baseline_labels > 0) | (f_on_b > 0)
    if any_lesion.any():
        points = _world_points(any_lesion, baseline.affine)
    else:  # no lesion anywhere: a small box at the body's centre of uptake
        body = baseline.pet > np.percentile(baseline.pet, 75)
        com = np.array(ndimage.center_of_mass(body if body.any() else np.ones_like(body)))
        points = (baseline.affine[:3, :3] @ com + baseline.affine[:3, 3])[None]
    shape, affine = crop_grid(points, preprocessing.spacing_mm, margin_mm, multiple)

    def on_grid_b(arr: np.ndarray, order: int) -> np.ndarray:
        return resample_to_grid(arr, baseline.affine, shape, affine, order=order)

    def on_grid_f(arr: np.ndarray, order: int) -> np.ndarray:
        return followup_on_baseline(arr, followup.affine, shape, affine, matrix_ras, order)

    b_ct = on_grid_b(baseline.ct, 1) if baseline.ct is not None else None
    f_ct = on_grid_f(followup.ct, 1) if followup.ct is not None else None
    base_img = scale_channels(on_grid_b(baseline.pet, 1), b_ct, preprocessing)
    fol_img = scale_channels(on_grid_f(followup.pet, 1), f_ct, preprocessing)
    b_lab = on_grid_b(baseline_labels.astype(np.float32), 0).astype(np.int64)
    f_lab = on_grid_f(followup_labels.astype(np.float32), 0).astype(np.int64)
    masks = np.zeros((len(units), *shape), dtype=np.uint8)
    for i, unit in enumerate(units):
        region = np.isin(b_lab, unit.baseline_ids) | np.isin(f_lab, unit.followup_ids)
        masks[i] = region
    return PairImages(
        baseline_image=base_img,
        followup_image=fol_img,
        lesion_masks=masks,
        affine=affine,
    )


def peak_filtered(image: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Mean SUV over the SUVpeak ball (1 ml) around every voxel, in the image's units.

    ``image`` is scaled network input (``log1p`` of SUV) on the grid of ``affine``; the average
    is taken in SUV (the quantification's ``ball_mean_map``) and scaled back, so the result is
    ``log1p`` of a local SUVpeak-like value. Averaging over the ball keeps single noisy voxels
    from posing as a focal rise.
    """
    kernel = ball_kernel(affine, SUV_PEAK_RADIUS_MM)
    means, _ = ball_mean_map(np.expm1(image.astype(np.float64)), kernel)
    return np.log1p(np.clip(means, 0.0, None))


def shell_voxels(affine: np.ndarray, thickness_mm: float = SHELL_MM) -> tuple[int, int, int]:
    """Per-axis voxel counts of a shell ``thickness_mm`` thick on the grid of ``affine``."""
    spacing = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
    n = np.maximum(1, np.rint(thickness_mm / spacing)).astype(int)
    return (int(n[0]), int(n[1]), int(n[2]))


def _shell(region: np.ndarray, voxels: tuple[int, int, int]) -> np.ndarray:
    """Voxels within ``voxels`` (per axis, box-shaped) of ``region`` but outside it."""
    size = tuple(2 * v + 1 for v in voxels)
    return ndimage.maximum_filter(region, size=size, mode="constant") & ~region


@dataclass
class RegionChange:
    """Voxelwise comparison of one unit region (:func:`region_change_stats`).

    Attributes:
        features: ``REGION_PET_FEATURE_NAMES`` values (log1p SUV units).
        focus_voxel: the follow-up peak (crop-grid index).
        focus_suv: peak-filtered SUV at the focus, baseline and follow-up.
        region_suv: median SUV of the region, baseline and follow-up.
    """

    features: np.ndarray
    focus_voxel: tuple[int, int, int]
    focus_suv: tuple[float, float]
    region_suv: tuple[float, float]


def region_change_stats(
    baseline: np.ndarray,
    followup: np.ndarray,
    baseline_peak: np.ndarray,
    followup_peak: np.ndarray,
    region: np.ndarray,
    shell_size: tuple[int, int, int] = (3, 3, 3),
) -> RegionChange:
    """Compare both scans in one unit region of the aligned crop (log1p SUV units).

    The region is grown by one voxel so that a focus at a mask's edge (or a few mm of
    registration error) still counts. Voxelwise comparisons use the peak-filtered images
    (:func:`peak_filtered`): a nodule in a responding mass is the follow-up's focal peak, where
    uptake fell much less than in the rest of the region (or rose), and a sharper contrast with
    its host than the baseline had; a flare is a rise over much of the region; controlled
    disease shows neither. A shell ``shell_size`` voxels thick (per axis; :func:`shell_voxels`)
    around the grown region gives the surroundings: a lesion stands out of them and they keep
    their uptake, while a piece of an organ that lit up between the scans (myocardium, brown
    fat, bowel) has hot surroundings that rose with it. The same organ piece is part of a larger
    structure as hot as its focus (``log_hot_extent``: the component at >= 50% of the focus's
    SUVpeak, connected to it, against the grown region's volume), while a lesion's hot
    component is the lesion itself.
    """
    grown = ndimage.binary_dilation(region)
    shell = _shell(grown, shell_size)
    b, f = baseline[region], followup[region]
    bp, fp = baseline_peak[grown], followup_peak[grown]
    med_b, med_f = float(np.median(baseline[grown])), float(np.median(followup[grown]))
    top = int(np.argmax(fp))
    rise = fp - bp
    peak_b, peak_f = float(bp.max()), float(fp[top])
    if shell.any():
        shell_b, shell_f = baseline[shell], followup[shell]
        shell_stats = [
            peak_b - float(np.median(shell_b)),
            peak_f - float(np.median(shell_f)),
            float(np.median(shell_f - shell_b)),
        ]
    else:  # the region fills the crop: no surroundings to compare with
        shell_stats = [0.0, 0.0, 0.0]
    # the structure that is hot with the focus: >= 50% of the focus's SUVpeak, connected to it
    # (the focus itself always qualifies, so its label is never the background's)
    labels, _ = ndimage.label(followup_peak >= np.log1p(0.5 * np.expm1(peak_f)))
    voxel = tuple(int(v[top]) for v in np.nonzero(grown))
    extent = float(np.count_nonzero(labels == labels[voxel]))
    shell_stats.append(float(np.clip(np.log(extent / np.count_nonzero(grown)), -3.0, 5.0)))
    features = np.array(
        [
            b.mean(),
            f.mean(),
            b.max(),
            f.max(),
            peak_b - med_b,
            peak_f - med_f,
            float(rise[top]),
            float(rise[top] - np.median(rise)),
            (peak_f - med_f) - (peak_b - med_b),
            float(rise.max()),
            float(np.mean(rise > RISE_LOG)),
            float(np.mean(rise < -RISE_LOG)),
            float(np.mean(np.expm1(fp) >= 0.5 * np.expm1(peak_f))),
            *shell_stats,
        ],
        dtype=np.float32,
    )
    return RegionChange(
        features,
        (voxel[0], voxel[1], voxel[2]),
        (float(np.expm1(bp[top])), float(np.expm1(peak_f))),
        (float(np.expm1(med_b)), float(np.expm1(med_f))),
    )


def unit_masks_on(
    affine: np.ndarray,
    shape: Sequence[int],
    baseline: Study,
    followup: Study,
    b_lab: np.ndarray,
    f_lab: np.ndarray,
    units: Sequence[LesionUnit],
    matrix: np.ndarray,
) -> np.ndarray:
    b = resample_to_grid(b_lab.astype(np.float32), baseline.affine, tuple(shape), affine, order=0)
    f = followup_on_baseline(f_lab.astype(np.float32), followup.affine, shape, affine, matrix, 0)
    masks = np.zeros((len(units), *shape), dtype=np.uint8)
    for i, unit in enumerate(units):
        masks[i] = np.isin(b.astype(np.int64), unit.baseline_ids) | np.isin(
            f.astype(np.int64), unit.followup_ids
        )
    return masks
