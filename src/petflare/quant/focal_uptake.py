"""New focal uptake that the lesion masks missed: a check on the registered pair itself.

A pattern call can only rest on what the segmentation found. On real backgrounds the networks
miss small hot foci that a reader sees at once (issue 34: on the STS_001 pairs the follow-up
masks held 3 (default folder) and 0 (anatomy-aware) of 9 nodules and new lesions of 6-15 mm at
SUV 4-12). This module looks for
them without the masks, the way a reader compares two scans: the baseline is mapped onto the
follow-up grid through the pair's registration, and a follow-up voxel is a *new focal uptake*
when

- it is a local maximum of the (lightly smoothed) follow-up SUV, at least ``min_suv`` and at
  least ``min_liver_ratio`` x the follow-up's liver SUVmean where the liver was found;
- it rose: at least ``min_rise_suv`` above, and ``min_ratio`` x, the baseline's highest value
  within ``site_tolerance_mm`` of the same site (registration tolerance). The ratio leaves room
  for a global drift of the uptake level between visits (uptake time, calibration); the scans
  are not rescaled by their liver SUVmeans, because the PET-only liver search errs by up to
  ~20 % on the real-background pairs (a rescaled baseline then "rises" everywhere);
- it is focal: ``min_contrast`` x the follow-up's mean in a shell ``shell_mm`` around it, and
  the *rise* itself is focal (``min_rise_contrast`` x the mean rise in the same shell), so a
  heart, bladder or the whole body taking up more is not a focus;
- it is small: the connected region above half its height over the shell (and the region where
  the rise is above half the focus's rise) holds at most ``max_focus_ml`` and ends within 30 mm,
  so a bladder filling or a heart lighting up as a whole does not pass;
- it is not inside a segmented follow-up lesion (those are the masks' business) nor in a region
  the caller excludes (e.g. the physiological-site components of an anatomy-aware network).

Foci closer than ``merge_mm`` keep the hottest. Each focus is reported with its SUV at both
visits and the distance to the nearest segmented follow-up lesion (a focus next to a mass may be
a nodule the mass's mask did not reach). The foci are evidence for a reader, not lesions: they
do not change the masks, the criteria or the head's features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from petflare.io.study import Study
from petflare.quant.metrics import ball_kernel, voxel_to_world
from petflare.quant.registration import resample_to
from petflare.quant.report import NewFocalUptake


@dataclass(frozen=True)
class FocalUptakeCriteria:
    """Thresholds of :func:`find_new_focal_uptake` (SUV, mm)."""

    min_suv: float = 3.0
    min_liver_ratio: float = 1.5
    min_rise_suv: float = 1.5
    min_ratio: float = 1.8
    min_contrast: float = 1.8
    min_rise_contrast: float = 2.0
    smooth_fwhm_mm: float = 4.0
    site_tolerance_mm: float = 6.0
    shell_mm: tuple[float, float] = (10.0, 20.0)
    merge_mm: float = 15.0
    max_focus_ml: float = 15.0
    max_foci: int = 20


def _shell_offsets(affine: np.ndarray, inner_mm: float, outer_mm: float) -> np.ndarray:
    """Voxel offsets (k, 3) of the shell between ``inner_mm`` and ``outer_mm`` around a voxel,
    from :func:`petflare.quant.metrics.ball_kernel` (true mm on any grid)."""
    outer = ball_kernel(affine, outer_mm)
    inner = ball_kernel(affine, inner_mm)
    pad = [((o - i) // 2, (o - i) // 2) for o, i in zip(outer.shape, inner.shape, strict=True)]
    shell = outer & ~np.pad(inner, pad)
    return np.argwhere(shell) - np.array(outer.shape) // 2


def _compact(
    volume: np.ndarray,
    centre: np.ndarray,
    level: float,
    spacing: np.ndarray,
    reach_mm: float,
    max_ml: float,
) -> bool:
    """Whether the connected region of ``volume >= level`` holding ``centre`` is at most
    ``max_ml`` and stays inside a box ``reach_mm`` around it."""
    reach = np.ceil(reach_mm / spacing).astype(int)
    lo = np.maximum(centre - reach, 0)
    hi = np.minimum(centre + reach + 1, volume.shape)
    crop = volume[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] >= level
    labels, _ = ndimage.label(crop)
    region = labels == labels[tuple(centre - lo)]
    if not region.any():
        return True
    inner = region[1:-1, 1:-1, 1:-1]
    if inner.sum() != region.sum():  # reaches the box's faces: larger than a focus
        return False
    return float(region.sum()) * float(np.prod(spacing)) / 1000.0 <= max_ml


def _mean_at(volume: np.ndarray, centre: np.ndarray, offsets: np.ndarray) -> float:
    idx = centre + offsets
    ok = np.all((idx >= 0) & (idx < np.array(volume.shape)), axis=1)
    if not ok.any():
        return 0.0
    idx = idx[ok]
    return float(volume[idx[:, 0], idx[:, 1], idx[:, 2]].mean())


def find_new_focal_uptake(
    baseline: Study,
    followup: Study,
    matrix_ras: np.ndarray,
    followup_labels: np.ndarray,
    *,
    exclude: np.ndarray | None = None,
    liver_baseline: float | None = None,
    liver_followup: float | None = None,
    criteria: FocalUptakeCriteria | None = None,
) -> list[NewFocalUptake]:
    """Foci of new uptake on the follow-up that no segmented follow-up lesion holds.

    Args:
        baseline, followup: the two scans (SUV).
        matrix_ras: the pair's registration (baseline -> follow-up mapping as
            :func:`petflare.quant.analysis.compare_studies` records it).
        followup_labels: the follow-up's segmented lesions (> 0), on its grid.
        exclude: follow-up voxels never to report (e.g. physiological-site components).
        liver_baseline: the baseline's liver SUVmean when found: each focus says how its site
            compared with it at baseline (quiet, or uptake already there).
        liver_followup: the follow-up's liver SUVmean (PERCIST reference) when found: it sets
            the liver-relative floor.
        criteria: thresholds (defaults: :class:`FocalUptakeCriteria`).

    Returns:
        The foci, hottest first (at most ``criteria.max_foci``).
    """
    c = criteria or FocalUptakeCriteria()
    spacing = np.asarray(followup.spacing_mm, dtype=np.float64)
    sigma = c.smooth_fwhm_mm / 2.3548 / spacing
    follow = ndimage.gaussian_filter(np.asarray(followup.pet, dtype=np.float32), sigma)
    base_on_f = resample_to(
        np.asarray(baseline.pet, dtype=np.float32),
        baseline.affine,
        followup.shape,
        followup.affine,
        np.linalg.inv(np.asarray(matrix_ras, dtype=np.float64)),
    )
    base = ndimage.gaussian_filter(base_on_f.astype(np.float32), sigma)
    tolerance = np.maximum(np.round(c.site_tolerance_mm / spacing).astype(int), 1)
    base_site = ndimage.maximum_filter(base, size=tuple(2 * tolerance + 1))
    floor = c.min_suv
    if liver_followup:
        floor = max(floor, c.min_liver_ratio * liver_followup)
    peaks = (follow == ndimage.maximum_filter(follow, size=3)) & (follow >= floor)
    rise = follow - base_site
    peaks &= (rise >= c.min_rise_suv) & (follow >= c.min_ratio * np.maximum(base_site, 1e-3))
    segmented = ndimage.binary_dilation(np.asarray(followup_labels) > 0)
    peaks &= ~segmented
    if exclude is not None:
        peaks &= ~ndimage.binary_dilation(np.asarray(exclude) > 0)
    candidates = np.argwhere(peaks)
    if not len(candidates):
        return []
    order = np.argsort(-follow[tuple(candidates.T)])
    shell = _shell_offsets(followup.affine, *c.shell_mm)
    labels = np.asarray(followup_labels)
    nearest_map: tuple[np.ndarray, np.ndarray] | None = None  # made for the first kept focus
    kept: list[np.ndarray] = []
    foci: list[NewFocalUptake] = []
    for i in order:
        voxel = candidates[i]
        if any(np.linalg.norm((voxel - k) * spacing) < c.merge_mm for k in kept):
            continue
        value = float(follow[tuple(voxel)])
        surround = _mean_at(follow, voxel, shell)
        if surround > 0 and value < c.min_contrast * surround:
            continue
        rise_here = float(rise[tuple(voxel)])
        rise_around = _mean_at(rise, voxel, shell)
        if rise_around > 0 and rise_here < c.min_rise_contrast * rise_around:
            continue
        reach = c.shell_mm[1] + 10.0
        if not _compact(follow, voxel, (value + surround) / 2, spacing, reach, c.max_focus_ml):
            continue
        if not _compact(rise, voxel, rise_here / 2, spacing, reach, c.max_focus_ml):
            continue
        kept.append(voxel)
        near_mm = near_id = None
        if labels.any():
            if nearest_map is None:
                nearest_map = ndimage.distance_transform_edt(
                    labels == 0, sampling=spacing, return_indices=True
                )
            distance, nearest = nearest_map
            near_mm = float(distance[tuple(voxel)])
            near_id = int(labels[tuple(int(nearest[a][tuple(voxel)]) for a in range(3))])
        base_here = float(base_site[tuple(voxel)])
        foci.append(
            NewFocalUptake(
                centre_mm=[float(v) for v in voxel_to_world(followup.affine, voxel)[0]],
                suv_followup=round(value, 2),
                suv_baseline=round(base_here, 2),
                contrast=round(value / surround, 2) if surround > 0 else None,
                nearest_lesion_mm=None if near_mm is None else round(near_mm, 1),
                nearest_lesion_id=near_id,
                baseline_liver_ratio=(
                    round(base_here / liver_baseline, 2) if liver_baseline else None
                ),
            )
        )
        if len(foci) >= c.max_foci:
            break
    return foci


def describe_focus(focus: NewFocalUptake) -> str:
    """One evidence line for a focus."""
    where = ", ".join(f"{v:.0f}" for v in focus.centre_mm)
    near = (
        f", {focus.nearest_lesion_mm:.0f} mm from follow-up lesion {focus.nearest_lesion_id}"
        if focus.nearest_lesion_mm is not None
        else ""
    )
    site = ""
    ratio = focus.baseline_liver_ratio
    if ratio is not None:
        site = (
            f"; at baseline the site already took up {ratio:.1f}x the liver (uptake that was "
            "there, e.g. a mass or a lesion, rising focally)"
            if ratio >= AVID_SITE_LIVER_RATIO
            else f"; at baseline the site took up {ratio:.1f}x the liver (new uptake)"
        )
    return (
        f"focal uptake rising outside the segmented lesions at ({where}) mm: SUV "
        f"{focus.suv_followup:.1f} (baseline {focus.suv_baseline:.1f} at the same site"
        + (f", {focus.contrast:.1f}x its surroundings" if focus.contrast else "")
        + f"){near}{site}; not counted by the criteria, review it"
    )


#: A focus whose baseline site took up this many times the baseline liver was already avid.
AVID_SITE_LIVER_RATIO = 1.5

#: How many foci, hottest first, the evidence names and mip.png circles (all are in the report).
SHOWN_FOCI = 5


def focal_uptake_evidence(foci: list[NewFocalUptake], limit: int = SHOWN_FOCI) -> list[str]:
    """Evidence lines for the hottest ``limit`` foci, and one line counting the rest (all of
    them are in the report's ``new_focal_uptake``)."""
    lines = [describe_focus(focus) for focus in foci[:limit]]
    if len(foci) > limit:
        lines.append(
            f"{len(foci) - limit} more rising foci outside the segmented lesions "
            "(new_focal_uptake in report.json)"
        )
    return lines
