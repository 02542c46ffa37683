"""Per-lesion SUV metrics in physical units: volume, SUVmax/peak/mean, TLG, geometry, focality.

All distances use the full affine (any orientation, anisotropic or oblique voxels): a voxel
offset ``d`` has the physical length ``|A[:3, :3] @ d|`` mm. World coordinates are RAS+ mm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from petflare.quant.report import FocalHotspot, LesionMetrics

#: Radius (mm) of the PERCIST SUVpeak sphere: a 1 cm^3 = 1000 mm^3 ball.
SUV_PEAK_RADIUS_MM = (3.0 * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)  # 6.2035 mm

#: Default radius (mm) of the focal-hotspot ball: 15 mm diameter, about 1.8 ml.
FOCAL_RADIUS_MM = 7.5


def voxel_to_world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Map voxel indices (N, 3) to world RAS mm (N, 3)."""
    ijk = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def world_to_voxel(affine: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Map world RAS mm (N, 3) to continuous voxel indices (N, 3)."""
    xyz = np.atleast_2d(np.asarray(xyz, dtype=np.float64))
    inv = np.linalg.inv(affine)
    return xyz @ inv[:3, :3].T + inv[:3, 3]


def ball_kernel(affine: np.ndarray, radius_mm: float) -> np.ndarray:
    """Boolean ball: voxel offsets whose centre lies within ``radius_mm`` of the centre voxel.

    Built in mm from the affine's linear part, so anisotropic and oblique grids get a true ball.
    """
    lin = np.asarray(affine, dtype=np.float64)[:3, :3]
    # Half-size per axis: enough to cover the radius even for oblique grids.
    inv = np.linalg.inv(lin)
    half = np.ceil(radius_mm * np.linalg.norm(inv, axis=1)).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij")
    offsets = np.stack([g.ravel() for g in grids], axis=1).astype(np.float64)
    dist = np.linalg.norm(offsets @ lin.T, axis=1)
    kernel = (dist <= radius_mm + 1e-9).reshape(grids[0].shape)
    return kernel


def crop_slices(
    mask: np.ndarray, pad: tuple[int, int, int]
) -> tuple[tuple[slice, ...], tuple[tuple[int, int], ...]]:
    """Bounding box of ``mask`` grown by ``pad`` voxels, clipped to the array, plus the pad
    needed outside the array to keep the full growth."""
    idx = np.nonzero(mask)
    slices, outside = [], []
    for ax in range(3):
        lo = int(idx[ax].min()) - pad[ax]
        hi = int(idx[ax].max()) + pad[ax] + 1
        slices.append(slice(max(lo, 0), min(hi, mask.shape[ax])))
        outside.append((max(-lo, 0), max(hi - mask.shape[ax], 0)))
    return tuple(slices), tuple(outside)


def ball_mask(shape: tuple[int, ...], kernel: np.ndarray, centre: tuple[int, ...]) -> np.ndarray:
    """Boolean volume of ``shape`` holding ``kernel`` centred on voxel ``centre`` (clipped)."""
    out = np.zeros(shape, dtype=bool)
    src, dst = [], []
    for ax in range(3):
        lo = int(centre[ax]) - kernel.shape[ax] // 2
        d0, d1 = max(lo, 0), min(lo + kernel.shape[ax], shape[ax])
        if d1 <= d0:
            return out
        dst.append(slice(d0, d1))
        src.append(slice(d0 - lo, d1 - lo))
    out[tuple(dst)] = kernel[tuple(src)]
    return out


def ball_mean_map(
    values: np.ndarray, kernel: np.ndarray, weight: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``values`` over the ball around every voxel, and the number of voxels averaged.

    Voxels outside the array do not count (the mean is renormalised), and when ``weight`` (a
    boolean mask) is given only its voxels count: the mean of ``values`` over ball ∩ weight.
    """
    vals = np.asarray(values, dtype=np.float64)
    w = np.ones_like(vals) if weight is None else np.asarray(weight, dtype=np.float64)
    k = kernel.astype(np.float64)
    sums = ndimage.correlate(vals * w, k, mode="constant", cval=0.0)
    counts = ndimage.correlate(w, k, mode="constant", cval=0.0)
    counts = np.rint(counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return means, counts


def suv_peak(
    pet: np.ndarray,
    lesion: np.ndarray,
    affine: np.ndarray,
    radius_mm: float = SUV_PEAK_RADIUS_MM,
) -> tuple[float, tuple[int, int, int]]:
    """PERCIST SUVpeak: the highest mean SUV of a 1 cm^3 ball whose centre is in the lesion.

    The ball averages every image voxel it covers (lesion or not), as PERCIST defines it.
    Returns the value and the voxel index of the best centre.
    """
    kernel = ball_kernel(affine, radius_mm)
    pad = tuple(s // 2 for s in kernel.shape)
    sl, _ = crop_slices(lesion, pad)  # type: ignore[arg-type]
    means, _ = ball_mean_map(pet[sl], kernel)
    inside = lesion[sl]
    masked = np.where(inside, means, -np.inf)
    best = np.unravel_index(int(np.argmax(masked)), masked.shape)
    centre = tuple(int(b + s.start) for b, s in zip(best, sl, strict=True))
    return float(masked[best]), centre  # type: ignore[return-value]


def focal_hotspot(
    pet: np.ndarray,
    lesion: np.ndarray,
    affine: np.ndarray,
    radius_mm: float = FOCAL_RADIUS_MM,
    min_fill: float = 0.5,
) -> FocalHotspot | None:
    """Hottest ball-shaped sub-region of a lesion compared with the rest of the same lesion.

    The ball (radius ``radius_mm``) is intersected with the lesion and placed where the mean
    SUV of that intersection is highest, among centres whose ball is at least ``min_fill``
    inside the lesion (so a rim sliver cannot win). ``ratio`` = hotspot mean / rest mean; it is
    None when the rest is smaller than the hotspot (a lesion this small has no "rest").
    Returns None when no centre satisfies the fill condition (lesion smaller than half a ball).
    """
    kernel = ball_kernel(affine, radius_mm)
    pad = tuple(s // 2 for s in kernel.shape)
    sl, _ = crop_slices(lesion, pad)  # type: ignore[arg-type]
    les = lesion[sl]
    vals = pet[sl]
    means, counts = ball_mean_map(vals, kernel, weight=les)
    ok = les & (counts >= min_fill * kernel.sum())
    if not np.any(ok):
        return None
    masked = np.where(ok, means, -np.inf)
    best = np.unravel_index(int(np.argmax(masked)), masked.shape)
    ball = ball_mask(les.shape, kernel, tuple(int(b) for b in best))
    hot = ball & les
    rest = les & ~ball
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    hot_mean = float(vals[hot].mean())
    n_rest = int(rest.sum())
    rest_mean = float(vals[rest].mean()) if n_rest > 0 else None
    ratio = None
    if rest_mean is not None and n_rest >= int(hot.sum()) and rest_mean > 0:
        ratio = hot_mean / rest_mean
    centre_idx = np.array([b + s.start for b, s in zip(best, sl, strict=True)], dtype=float)
    return FocalHotspot(
        radius_mm=float(radius_mm),
        centre_mm=voxel_to_world(affine, centre_idx)[0].tolist(),
        hotspot_volume_ml=float(hot.sum()) * voxel_ml,
        hotspot_suv_mean=hot_mean,
        rest_volume_ml=n_rest * voxel_ml,
        rest_suv_mean=rest_mean,
        ratio=ratio,
    )


def longest_diameter_mm(points_mm: np.ndarray) -> float:
    """Largest distance between two points (voxel centres, mm), via their convex hull."""
    pts = np.asarray(points_mm, dtype=np.float64)
    if len(pts) < 2:
        return 0.0
    if len(pts) > 4:
        try:
            pts = pts[ConvexHull(pts).vertices]
        except QhullError:  # flat or collinear lesion: fall back to all points (few)
            pass
    if len(pts) > 4000:  # degenerate fallback with many points: subsample deterministically
        pts = pts[:: int(math.ceil(len(pts) / 4000))]
    diff = pts[:, None, :] - pts[None, :, :]
    return float(np.sqrt((diff**2).sum(-1)).max())


def ball_mean_at(
    pet: np.ndarray, affine: np.ndarray, centre_mm: np.ndarray, radius_mm: float
) -> float | None:
    """Mean SUV of the image voxels within ``radius_mm`` of a world point (None if outside)."""
    centre = world_to_voxel(affine, np.asarray(centre_mm))[0]
    lin = affine[:3, :3]
    half = np.ceil(radius_mm * np.linalg.norm(np.linalg.inv(lin), axis=1)).astype(int) + 1
    lo = np.maximum(np.floor(centre).astype(int) - half, 0)
    hi = np.minimum(np.floor(centre).astype(int) + half + 1, np.array(pet.shape))
    if np.any(hi <= lo):
        return None
    grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
    idx = np.stack([g.ravel() for g in grids], axis=1)
    dist = np.linalg.norm((idx - centre) @ lin.T, axis=1)
    inside = dist <= radius_mm
    if not np.any(inside):
        return None
    sel = idx[inside]
    return float(pet[sel[:, 0], sel[:, 1], sel[:, 2]].mean())


@dataclass(frozen=True)
class LesionContext:
    """What per-lesion measurement needs besides the lesion: images, geometry, options."""

    pet: np.ndarray
    affine: np.ndarray
    ct: np.ndarray | None = None
    sul_factor: float | None = None
    peak_radius_mm: float = SUV_PEAK_RADIUS_MM
    focal_radius_mm: float = FOCAL_RADIUS_MM


def measure_lesion(
    ctx: LesionContext,
    labels: np.ndarray,
    lesion_id: int,
    bbox: tuple[slice, ...] | None = None,
) -> LesionMetrics:
    """All per-lesion metrics of instance ``lesion_id`` in ``labels``.

    ``bbox``: the lesion's bounding box (e.g. from ``scipy.ndimage.find_objects``), which
    spares a pass over the whole volume per lesion.
    """
    affine = ctx.affine
    kernel = ball_kernel(affine, max(ctx.peak_radius_mm, ctx.focal_radius_mm))
    pad = tuple(s // 2 + 1 for s in kernel.shape)
    if bbox is None:
        sl, _ = crop_slices(labels == lesion_id, pad)  # type: ignore[arg-type]
    else:
        sl = tuple(
            slice(max(int(b.start) - p, 0), min(int(b.stop) + p, n))
            for b, p, n in zip(bbox, pad, labels.shape, strict=True)
        )
    lesion = labels[sl] == lesion_id
    pet = ctx.pet[sl].astype(np.float64)
    offset = np.array([s.start for s in sl], dtype=float)
    vals = pet[lesion]
    n = int(vals.size)
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    volume_ml = n * voxel_ml
    suv_mean = float(vals.mean())
    suv_sd = float(vals.std(ddof=1)) if n > 1 else 0.0
    peak, peak_idx = suv_peak(pet, lesion, affine, ctx.peak_radius_mm)
    ijk = np.argwhere(lesion).astype(float) + offset
    world = voxel_to_world(affine, ijk)
    surface = lesion & ~ndimage.binary_erosion(lesion)
    surf_world = voxel_to_world(affine, np.argwhere(surface).astype(float) + offset)
    voxel_extent = np.abs(affine[:3, :3]).sum(axis=1)  # world size of one voxel along x, y, z
    extent = (world.max(axis=0) - world.min(axis=0)) + voxel_extent
    hu_mean = float(ctx.ct[sl][lesion].mean()) if ctx.ct is not None else None
    focality = focal_hotspot(pet, lesion, affine, ctx.focal_radius_mm)
    if focality is not None:
        focality.centre_mm = (
            np.asarray(focality.centre_mm) + affine[:3, :3] @ offset
        ).tolist()  # crop offset back to the full grid
    f = ctx.sul_factor
    suv_max = float(vals.max())
    return LesionMetrics(
        lesion_id=int(lesion_id),
        n_voxels=n,
        volume_ml=volume_ml,
        suv_max=suv_max,
        suv_peak=peak,
        suv_mean=suv_mean,
        suv_sd=suv_sd,
        tlg=suv_mean * volume_ml,
        heterogeneity_cov=suv_sd / suv_mean if suv_mean > 0 else float("nan"),
        centroid_mm=world.mean(axis=0).tolist(),
        peak_centre_mm=voxel_to_world(affine, np.array(peak_idx, dtype=float) + offset)[0].tolist(),
        extent_mm=extent.tolist(),
        longest_diameter_mm=longest_diameter_mm(surf_world),
        hu_mean=hu_mean,
        sul_max=None if f is None else suv_max * f,
        sul_peak=None if f is None else peak * f,
        sul_mean=None if f is None else suv_mean * f,
        focality=focality,
    )


def lean_body_mass_kg(sex: str, height_m: float, weight_kg: float) -> float:
    """Lean body mass by Janmahasatian et al. (Clin Pharmacokinet 2005;44:1051-65).

    LBM = 9270 W / (6680 + 216 BMI) for men, 9270 W / (8780 + 244 BMI) for women
    (W in kg, BMI in kg/m^2).
    """
    bmi = weight_kg / height_m**2
    s = sex.strip().upper()[:1]
    if s == "M":
        return 9270.0 * weight_kg / (6680.0 + 216.0 * bmi)
    if s == "F":
        return 9270.0 * weight_kg / (8780.0 + 244.0 * bmi)
    raise ValueError(f"sex must be 'M' or 'F' for the Janmahasatian formula, got {sex!r}")


def sul_factor(
    sex: str | None, height_m: float | None, weight_kg: float | None
) -> tuple[float | None, str]:
    """Factor that turns SUVbw into SUL (LBM / body weight), or None and the reason why not."""
    missing = [
        n for n, v in (("sex", sex), ("height_m", height_m), ("weight_kg", weight_kg)) if v is None
    ]
    if missing:
        return None, f"SUL not computed: {', '.join(missing)} unknown; SUVbw used"
    assert sex is not None and height_m is not None and weight_kg is not None
    if not (0.5 <= height_m <= 2.6 and 1.0 <= weight_kg <= 400.0):
        return None, f"SUL not computed: implausible height {height_m} m / weight {weight_kg} kg"
    try:
        lbm = lean_body_mass_kg(sex, height_m, weight_kg)
    except ValueError as exc:
        return None, f"SUL not computed: {exc}"
    return lbm / weight_kg, "SUL = SUVbw x LBM/weight (Janmahasatian 2005)"
