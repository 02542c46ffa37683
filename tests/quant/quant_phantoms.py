"""Helpers for analytic phantoms on non-RAS, anisotropic grids (quantification tests)."""

from __future__ import annotations

import numpy as np


def make_affine(
    spacing_mm: tuple[float, float, float],
    axes: tuple[int, int, int] = (2, 0, 1),
    signs: tuple[int, int, int] = (-1, 1, -1),
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """Affine whose array axis ``a`` runs along world axis ``axes[a]`` with sign ``signs[a]``.

    The default is a permuted, flipped (non-RAS) and anisotropic grid.
    """
    aff = np.eye(4)
    aff[:3, :3] = 0.0
    for a, (w, s, sp) in enumerate(zip(axes, signs, spacing_mm, strict=True)):
        aff[w, a] = s * sp
    aff[:3, 3] = origin_mm
    return aff


def world_coords(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """World RAS coordinates (mm) of every voxel centre, shape (*shape, 3)."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def centred_affine(
    shape: tuple[int, int, int], spacing_mm: tuple[float, float, float], **kw
) -> np.ndarray:
    """``make_affine`` with the origin chosen so the grid centre is at world (0, 0, 0)."""
    aff = make_affine(spacing_mm, **kw)
    centre = aff[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    aff[:3, 3] = -centre
    return aff


def lesion(
    lesion_id: int,
    suv_peak: float,
    *,
    volume_ml: float = 10.0,
    suv_mean: float | None = None,
    sul_factor: float | None = None,
    hu_mean: float | None = None,
    longest_diameter_mm: float = 30.0,
    centroid_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
):
    """A LesionMetrics with chosen values (for criteria and rule tests)."""
    from petflare.quant.report import LesionMetrics

    mean = suv_peak * 0.6 if suv_mean is None else suv_mean
    f = sul_factor
    return LesionMetrics(
        lesion_id=lesion_id,
        n_voxels=100,
        volume_ml=volume_ml,
        suv_max=suv_peak * 1.2,
        suv_peak=suv_peak,
        suv_mean=mean,
        suv_sd=0.1,
        tlg=mean * volume_ml,
        heterogeneity_cov=0.1,
        centroid_mm=list(centroid_mm),
        peak_centre_mm=list(centroid_mm),
        extent_mm=[30.0, 30.0, 30.0],
        longest_diameter_mm=longest_diameter_mm,
        hu_mean=hu_mean,
        sul_max=None if f is None else suv_peak * 1.2 * f,
        sul_peak=None if f is None else suv_peak * f,
        sul_mean=None if f is None else mean * f,
    )


def scan(
    lesions: list,
    *,
    liver: tuple[float, float] | None = (2.0, 0.2),
    sul_factor: float | None = None,
    has_ct: bool = False,
    uptake_time_min: float | None = None,
):
    """A ScanReport around the given lesions, with a liver reference (mean, sd) or none."""
    from petflare.quant.report import LiverReference, ScanReport

    ref = (
        LiverReference(True, "mask", "test", 15.0, liver[0], liver[1], [0.0, 0.0, 0.0], 100)
        if liver
        else LiverReference(False, "auto_pet", "no lungs", 15.0)
    )
    hottest = max(lesions, key=lambda x: x.suv_peak, default=None)
    return ScanReport(
        patient_id="P",
        study_id="s",
        shape=[10, 10, 10],
        spacing_mm=[2.0, 2.0, 2.0],
        orientation="LPS",
        voxel_volume_ml=0.008,
        connectivity=26,
        has_ct=has_ct,
        peak_sphere_volume_ml=1.0,
        n_lesions=len(lesions),
        total_mtv_ml=sum(x.volume_ml for x in lesions),
        total_tlg=sum(x.tlg for x in lesions),
        hottest_lesion_id=hottest.lesion_id if hottest else None,
        hottest_suv_peak=hottest.suv_peak if hottest else None,
        sul_factor=sul_factor,
        sul_reason="test",
        liver=ref,
        lesions=lesions,
        uptake_time_min=uptake_time_min,
    )
