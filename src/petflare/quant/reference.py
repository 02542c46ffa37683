"""Liver reference region (PERCIST): SUVmean and SD in a 3 cm sphere in the right liver lobe.

Three ways, in order of preference:

1. ``mask``: a given liver mask. The sphere centre is the voxel deepest inside the mask
   (largest distance to its border, in mm) among voxels on the patient's right half of the
   liver, i.e. the right lobe; known lesions (with a margin) are cut out of the mask first.
2. ``auto_ct``: the liver found on CT as the largest soft-tissue region (smoothed HU in
   ``liver_hu``) on the patient's right, just below the right lung base, that can hold the
   sphere. PET must look like liver inside the sphere (SUV in ``pet_suv`` and homogeneous).
3. ``auto_pet``: without CT, the largest homogeneous region of intermediate uptake
   (Gaussian-smoothed SUV in ``pet_suv``, local coefficient of variation below ``max_cov / 2``)
   on the patient's right, below the right lung base when the lungs are seen on PET
   (FDG lungs are often no darker than fat, so they may not be), else anywhere in a
   field of view that spans at least ``min_trunk_mm`` and only if that region is at least
   ``min_liver_ml`` (a lesion crop or a limb has no liver to offer).

Automatic routes then keep the sphere in *normal* liver: voxels near known lesions
(``lesion_margin_mm``), hot or cold foci (SUV smoothed over ``focus_sigma_mm`` outside
``focus_band`` x the region's median: unmasked metastases, hot nodules) and, with CT, voxels
whose smoothed HU differs from the region's median by more than ``max_hu_offset`` (hypodense
lesions, hepatic vessels on a non-contrast CT) are removed, and the sphere goes to the deepest
point of the right half of what remains, i.e. as far as possible from the liver border
(partial volume) and from every excluded voxel. When none succeeds the result has
``found=False`` and a reason; nothing is guessed. The patient's right is +x in the NIfTI
RAS+ world frame (x grows towards the patient's right, as in nibabel's 'R' axis code),
superior is +z; both come from the affine, so any array orientation works. See
docs/report.md for the method and docs/reports/bench_quant.md for its validation on the phantom.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import cc3d
import numpy as np
from scipy import ndimage

from petflare.io.study import Study
from petflare.quant.metrics import (
    ball_kernel,
    ball_mask,
    crop_slices,
    voxel_to_world,
    world_to_voxel,
)
from petflare.quant.report import LiverReference

#: PERCIST liver reference: a 3 cm diameter sphere.
LIVER_SPHERE_RADIUS_MM = 15.0


@dataclass(frozen=True)
class LiverSearchConfig:
    """Thresholds of the automatic liver search (defaults: adult FDG PET/CT).

    ``n_spheres`` > 1 pools several non-overlapping 3 cm spheres of the right lobe (deepest
    first); PERCIST specifies one, which is the default. ``focus_band`` (x the liver's median
    SUV smoothed over ``focus_sigma_mm``) and ``max_hu_offset`` (HU from its median smoothed
    CT) define normal liver; ``min_trunk_mm``, ``min_liver_ml`` and ``lateral_mm`` (distance
    right of the body's centre) guard the PET route when no lung base is seen;
    PET lungs count only when at least ``min_pet_lungs_ml`` of low-uptake cavity is found.
    The automatic search runs on the scan averaged over blocks of whole voxels to at most
    ``search_spacing_mm`` (a 3 cm sphere needs no finer grid; a 2 mm whole-body scan would
    take minutes); the sphere's SUVmean and SD are then read on the scan's own voxels.
    """

    radius_mm: float = LIVER_SPHERE_RADIUS_MM
    liver_hu: tuple[float, float] = (30.0, 85.0)
    pet_suv: tuple[float, float] = (1.0, 4.0)
    max_cov: float = 0.35
    body_hu: float = -300.0
    lung_hu: float = -400.0
    body_suv: float = 0.15
    lung_suv: float = 0.6
    min_lung_ml: float = 100.0
    below_lung_mm: float = 250.0
    above_lung_base_mm: float = 20.0
    smooth_sigma_mm: float = 4.0
    lesion_margin_mm: float = 10.0
    focus_band: tuple[float, float] = (0.75, 1.3)
    focus_sigma_mm: float = 8.0
    max_hu_offset: float = 15.0
    min_trunk_mm: float = 300.0
    min_liver_ml: float = 200.0
    min_pet_lungs_ml: float = 1000.0
    lateral_mm: float = 40.0
    n_spheres: int = 1
    search_spacing_mm: float = 6.0


def _world_grid(affine: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """World coordinate ``axis`` (0=x, 1=y, 2=z RAS) of every voxel centre (float32)."""
    ii = [np.arange(n, dtype=np.float32) for n in shape]
    out = np.full(shape, affine[axis, 3], dtype=np.float32)
    for ax in range(3):
        coef = float(affine[axis, ax])
        if coef != 0.0:
            bshape = [1, 1, 1]
            bshape[ax] = shape[ax]
            out = out + coef * ii[ax].reshape(bshape)
    return out


def _sphere_stats(
    pet: np.ndarray,
    affine: np.ndarray,
    centres: list[tuple[int, ...]],
    radius_mm: float,
    within=None,
) -> tuple[float, float, int]:
    """Mean, SD and voxel count of PET in the union of balls around ``centres`` (∩ ``within``)."""
    kernel = ball_kernel(affine, radius_mm)
    ball = np.zeros(pet.shape, dtype=bool)
    for centre in centres:
        ball |= ball_mask(pet.shape, kernel, centre)
    if within is not None:
        ball &= within
    vals = pet[ball].astype(np.float64)
    return float(vals.mean()), float(vals.std(ddof=1)) if vals.size > 1 else 0.0, int(vals.size)


def _found(pet, affine, centre, radius_mm, method, reason, within=None) -> LiverReference:
    centres = centre if isinstance(centre, list) else [centre]
    centre = centres[0]
    mean, sd, n = _sphere_stats(pet, affine, centres, radius_mm, within)
    return LiverReference(
        found=True,
        method=method,
        reason=reason,
        radius_mm=float(radius_mm),
        suv_mean=mean,
        suv_sd=sd,
        centre_mm=voxel_to_world(affine, np.array(centre, dtype=float))[0].tolist(),
        n_voxels=n,
    )


def _not_found(method: str, reason: str, radius_mm: float) -> LiverReference:
    return LiverReference(found=False, method=method, reason=reason, radius_mm=float(radius_mm))


def _inside_distance(region: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Distance (mm) from each voxel of ``region`` to the nearest voxel outside it; 0 outside.

    Equal to ``ndimage.distance_transform_edt(region, sampling=spacing)``, computed only on the
    region's bounding box grown by one voxel: every voxel of that margin lies outside the
    region, and for a point inside the box the nearest outside voxel beyond the box is never
    closer than its projection onto the margin. A liver search region is a small part of a
    whole-body scan, so this saves most of the transform's time.
    """
    edt = np.zeros(region.shape, dtype=np.float64)
    if not region.any():
        return edt
    box, _ = crop_slices(region, (1, 1, 1))
    edt[box] = ndimage.distance_transform_edt(region[box], sampling=spacing)
    return edt


def _deepest_point(
    region: np.ndarray, spacing: tuple[float, float, float]
) -> tuple[tuple[int, ...], float]:
    """Voxel of ``region`` farthest from its border (mm) and that distance."""
    edt = _inside_distance(region, spacing)
    idx = np.unravel_index(int(np.argmax(edt)), edt.shape)
    return tuple(int(i) for i in idx), float(edt[idx])


def liver_from_mask(
    study: Study, liver_mask: np.ndarray, radius_mm: float, avoid: np.ndarray | None = None
) -> LiverReference:
    """Liver reference from a given liver mask (sphere in the right lobe, clipped to the mask).

    ``avoid`` (known lesions with a margin) is removed from the mask: the sphere samples
    normal liver only.
    """
    liver = np.asarray(liver_mask) > 0
    if liver.shape != study.shape:
        return _not_found("mask", f"liver mask shape {liver.shape} != PET {study.shape}", radius_mm)
    if avoid is not None:
        liver = liver & ~avoid
    if not liver.any():
        return _not_found("mask", "liver mask is empty (or all lesion)", radius_mm)
    x = _world_grid(study.affine, study.shape, 0)
    right = liver & (x >= np.median(x[liver]))  # RAS+: x grows towards the patient's right
    region = right if right.any() else liver
    centre, depth = _deepest_point(region, study.spacing_mm)
    reason = "sphere at the deepest point of the right half of the given liver mask"
    if depth < radius_mm:
        reason += f" (liver only {depth:.1f} mm deep there: sphere clipped to the mask)"
    return _found(study.pet, study.affine, centre, radius_mm, "mask", reason, within=liver)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    if not mask.any():
        return mask
    labels = cc3d.connected_components(mask, connectivity=6)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return labels == int(np.argmax(counts))


def _lung_base_z(lungs: np.ndarray, affine: np.ndarray, right_of: float) -> float | None:
    """Lowest world z of the lung voxels on the patient's right (the right hemidiaphragm)."""
    if not lungs.any():
        return None
    ijk = np.argwhere(lungs)
    world = voxel_to_world(affine, ijk.astype(float))
    right = world[:, 0] >= right_of
    pts = world[right] if right.any() else world
    return float(np.percentile(pts[:, 2], 2.0))


def _inner_cavities(low: np.ndarray, voxel_ml: float, min_ml: float) -> np.ndarray:
    """Components of ``low`` that do not touch the array border and are at least ``min_ml``."""
    labels = cc3d.connected_components(low, connectivity=6)
    border = np.unique(
        np.concatenate(
            [
                labels[0].ravel(),
                labels[-1].ravel(),
                labels[:, 0].ravel(),
                labels[:, -1].ravel(),
                labels[:, :, 0].ravel(),
                labels[:, :, -1].ravel(),
            ]
        )
    )
    counts = np.bincount(labels.ravel())
    keep = np.flatnonzero(counts * voxel_ml >= min_ml)
    keep = np.setdiff1d(keep, np.append(border, 0))
    return np.isin(labels, keep)


def _component_with(region: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The connected components (6-connectivity) of ``region`` that overlap ``seed``."""
    labels = cc3d.connected_components(region, connectivity=6)
    keep = np.unique(labels[seed & region])
    return np.isin(labels, keep[keep > 0])


def _deep_right_core(
    region: np.ndarray, x: np.ndarray, spacing: tuple[float, float, float], radius_mm: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """(distance map, right half of the largest sphere-holding core) of ``region``, or None."""
    edt = _inside_distance(region, spacing)
    deep = edt >= radius_mm
    if not deep.any():
        return None
    core = _largest_component(deep)
    core &= x >= np.median(x[core])  # its right half: the right lobe, away from the stomach
    return edt, core


def _pick_liver(
    study: Study,
    scene: _Scene,
    candidate: np.ndarray,
    cfg: LiverSearchConfig,
    stats_study: Study | None = None,
) -> LiverReference:
    """Restrict candidates to the right upper abdomen, keep normal liver, place the sphere.

    ``scene``: what the search derived from ``study`` alone; ``candidate``: its liver-like
    tissue without the voxels near known lesions. ``stats_study``: the same scan on a finer
    grid (``study`` is its block average); the sphere's statistics are read there.
    """
    method = scene.method
    body, lungs, smooth_ct = scene.body, scene.lungs, scene.smooth_ct
    affine = study.affine
    x, z, body_x, base_z = scene.x, scene.z, scene.body_x, scene.base_z
    region = candidate & (x > body_x) & ~lungs
    if base_z is not None:
        region &= (z <= base_z + cfg.above_lung_base_mm) & (z >= base_z - cfg.below_lung_mm)
        where = (
            f"on the patient's right within {cfg.below_lung_mm:.0f} mm below the right lung "
            f"base (z={base_z:.0f} mm)"
        )
    elif method == "auto_pet":
        z_body = z[body]
        if float(z_body.max() - z_body.min()) < cfg.min_trunk_mm:
            return _not_found(
                method,
                f"no lungs seen and the body spans less than {cfg.min_trunk_mm:.0f} mm: "
                "not a trunk field of view",
                cfg.radius_mm,
            )
        # Without a lung base only the lateral right trunk is searched: the right lobe lies
        # well right of the midline, the mediastinal blood pool and the heart do not.
        region &= x >= body_x + cfg.lateral_mm
        where = (
            f"at least {cfg.lateral_mm:.0f} mm right of the body's centre "
            "(no lung base seen on PET)"
        )
    else:
        return _not_found(
            method,
            "no lungs in the field of view: the right upper abdomen cannot be located",
            cfg.radius_mm,
        )
    if not region.any():
        return _not_found(
            method, "no liver-like tissue on the right below the lungs", cfg.radius_mm
        )
    placed = _deep_right_core(region, x, study.spacing_mm, cfg.radius_mm)
    if placed is None:
        return _not_found(
            method,
            f"no liver-like region on the right can hold a {2 * cfg.radius_mm:.0f} mm sphere",
            cfg.radius_mm,
        )
    # Normal liver: the region holding the core, without hot/cold foci (and CT outliers).
    liver = _component_with(region, placed[1])
    liver_ml = float(liver.sum()) * study.voxel_volume_ml
    if base_z is None and liver_ml < cfg.min_liver_ml:
        return _not_found(
            method,
            f"largest liver-like region is {liver_ml:.0f} ml (< {cfg.min_liver_ml:.0f} ml) "
            "and no lung base is seen: no liver in the field of view",
            cfg.radius_mm,
        )
    focus_pet = scene.focus_pet
    level = float(np.median(focus_pet[liver]))
    normal = (
        liver & (focus_pet >= cfg.focus_band[0] * level) & (focus_pet <= cfg.focus_band[1] * level)
    )
    if smooth_ct is not None:
        normal &= np.abs(smooth_ct - float(np.median(smooth_ct[liver]))) <= cfg.max_hu_offset
    placed = _deep_right_core(normal, x, study.spacing_mm, cfg.radius_mm)
    if placed is None:
        return _not_found(
            method,
            f"the liver has no homogeneous part that can hold a {2 * cfg.radius_mm:.0f} mm "
            "sphere away from lesions and foci",
            cfg.radius_mm,
        )
    edt, core = placed
    masked = np.where(core, edt, -1.0)
    centres: list[tuple[int, ...]] = []
    y = scene.y
    for _ in range(cfg.n_spheres):
        if masked.max() < 0:
            break
        centre = tuple(int(i) for i in np.unravel_index(int(np.argmax(masked)), masked.shape))
        centres.append(centre)
        c_mm = voxel_to_world(affine, np.array(centre, dtype=float))[0]
        near = (x - c_mm[0]) ** 2 + (y - c_mm[1]) ** 2 + (z - c_mm[2]) ** 2
        masked[near < (2.0 * cfg.radius_mm) ** 2] = -1.0  # next sphere does not overlap
    depth_mm = float(edt[centres[0]])
    if stats_study is not None:
        fine_affine = stats_study.affine
        world = voxel_to_world(affine, np.array(centres, dtype=float))
        # A block of an even size has its centre between voxels: take the upper one, whatever
        # the rounding noise of the affine products.
        fine = np.floor(world_to_voxel(fine_affine, world) + 0.5 + 1e-6).astype(int)
        fine = np.clip(fine, 0, np.asarray(stats_study.shape) - 1)
        centres = [tuple(int(i) for i in c) for c in fine]
        ref = _found(stats_study.pet, fine_affine, centres, cfg.radius_mm, method, "")
    else:
        ref = _found(study.pet, affine, centres, cfg.radius_mm, method, "")
    assert ref.suv_mean is not None and ref.suv_sd is not None
    cov = ref.suv_sd / ref.suv_mean if ref.suv_mean > 0 else np.inf
    lo, hi = cfg.pet_suv
    if not (lo <= ref.suv_mean <= hi) or cov > cfg.max_cov:
        return _not_found(
            method,
            f"best candidate (SUVmean {ref.suv_mean:.2f}, CoV {cov:.2f}) does not look like liver",
            cfg.radius_mm,
        )
    ref.reason = (
        f"largest liver-like region {where}, without lesions and foci outside "
        f"{cfg.focus_band[0]:g}-{cfg.focus_band[1]:g} x its median SUV {level:.2f}"
        + (f" or {cfg.max_hu_offset:g} HU from its median HU" if smooth_ct is not None else "")
        + "; "
        + (
            f"sphere at its deepest point ({depth_mm:.0f} mm from the nearest excluded voxel)"
            if len(centres) == 1
            else f"{len(centres)} non-overlapping spheres at its deepest points (pooled)"
        )
    )
    return ref


@dataclass(eq=False)
class _Scene:
    """What an automatic search derives from one scan alone, whatever its lesion mask: kept
    (see :func:`_scene`) for the next lesion mask of the same scan, e.g. the mask variants of
    one training pair, which quantify each scan several times. It holds only arrays computed
    from the scan (never the caller's own arrays, which the caller may change afterwards)."""

    method: str  # "auto_ct" or "auto_pet"
    affine: np.ndarray
    shape: tuple[int, ...]
    body: np.ndarray
    lungs: np.ndarray
    candidate: np.ndarray  # liver-like tissue, before the margin around lesions is removed
    smooth_ct: np.ndarray | None
    focus_pet: np.ndarray  # SUV smoothed over focus_sigma_mm: hot and cold foci

    @cached_property
    def x(self) -> np.ndarray:
        return _world_grid(self.affine, self.shape, 0)

    @cached_property
    def y(self) -> np.ndarray:
        return _world_grid(self.affine, self.shape, 1)

    @cached_property
    def z(self) -> np.ndarray:
        return _world_grid(self.affine, self.shape, 2)

    @cached_property
    def body_x(self) -> float:
        return float(np.mean(self.x[self.body]))

    @cached_property
    def base_z(self) -> float | None:
        return _lung_base_z(self.lungs, self.affine, self.body_x)


def _new_scene(
    study: Study,
    cfg: LiverSearchConfig,
    method: str,
    body: np.ndarray,
    lungs: np.ndarray,
    candidate: np.ndarray,
    smooth_ct: np.ndarray | None,
) -> _Scene:
    # Foci are judged at the scale that biases a 3 cm sphere (``focus_sigma_mm``): at 4 mm,
    # the noise of a low-count scan alone would punch holes everywhere.
    sigma = [cfg.focus_sigma_mm / s for s in study.spacing_mm]
    focus_pet = ndimage.gaussian_filter(study.pet.astype(np.float32), sigma)
    affine = np.array(study.affine, dtype=np.float64)
    return _Scene(method, affine, tuple(study.shape), body, lungs, candidate, smooth_ct, focus_pet)


#: Scenes of the last few scans searched (an LRU keyed by content; see :func:`_scene`).
_SCENES: OrderedDict[bytes, _Scene] = OrderedDict()
_MAX_SCENES = 4


def _scene(
    study: Study, cfg: LiverSearchConfig, method: str, build: Callable[[], _Scene | str]
) -> _Scene | str:
    """The scene of ``study`` for ``method``: ``build()`` (a scene, or why there is none),
    computed once per scan content, affine and settings and then reused."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{method}|{cfg!r}|{study.shape}".encode())
    h.update(np.ascontiguousarray(study.affine, dtype=np.float64).tobytes())
    for arr in (study.pet, study.ct):
        if arr is not None:
            a = np.ascontiguousarray(arr)
            h.update(str(a.dtype).encode())
            h.update(a.data)
    key = h.digest()
    if key in _SCENES:
        _SCENES.move_to_end(key)
        return _SCENES[key]
    scene = build()
    if isinstance(scene, _Scene):
        _SCENES[key] = scene
        while len(_SCENES) > _MAX_SCENES:
            _SCENES.popitem(last=False)
    return scene


def _ct_scene(study: Study, cfg: LiverSearchConfig) -> _Scene | str:
    assert study.ct is not None
    ct = study.ct.astype(np.float32)
    body = _largest_component(ct > cfg.body_hu)
    if not body.any():
        return "no body found on CT"
    lungs = _inner_cavities(ct < cfg.lung_hu, study.voxel_volume_ml, cfg.min_lung_ml)
    lo, hi = cfg.liver_hu
    sigma = [cfg.smooth_sigma_mm / s for s in study.spacing_mm]
    smooth_ct = ndimage.gaussian_filter(ct, sigma)
    smooth_pet = ndimage.gaussian_filter(study.pet.astype(np.float32), sigma)
    candidate = (
        (smooth_ct >= lo)
        & (smooth_ct <= hi)
        & body
        & (smooth_pet >= cfg.pet_suv[0])
        & (smooth_pet <= cfg.pet_suv[1])
    )
    return _new_scene(study, cfg, "auto_ct", body, lungs, candidate, smooth_ct)


def _pet_scene(study: Study, cfg: LiverSearchConfig) -> _Scene | str:
    pet = study.pet.astype(np.float32)
    sigma = [cfg.smooth_sigma_mm / s for s in study.spacing_mm]
    smooth = ndimage.gaussian_filter(pet, sigma)
    body = _largest_component(smooth > cfg.body_suv)
    if not body.any():
        return "no body found on PET"
    # Lungs: low-uptake cavities enclosed by the body (the body is filled slice by slice).
    filled = body.copy()
    zaxis = int(np.argmax(np.abs(study.affine[2, :3])))
    for k in range(study.shape[zaxis]):
        sl = [slice(None)] * 3
        sl[zaxis] = k  # type: ignore[call-overload]
        filled[tuple(sl)] = ndimage.binary_fill_holes(body[tuple(sl)])
    low = filled & (smooth < cfg.lung_suv)
    lungs = _inner_cavities(low, study.voxel_volume_ml, cfg.min_lung_ml)
    if float(lungs.sum()) * study.voxel_volume_ml < cfg.min_pet_lungs_ml:
        lungs = np.zeros_like(lungs)  # a pocket of fat, not lungs: FDG lungs often look like fat
    # Homogeneity: local coefficient of variation in a ~1 cm box.
    size = [max(3, int(round(10.0 / s)) | 1) for s in study.spacing_mm]
    m1 = ndimage.uniform_filter(smooth, size)
    m2 = ndimage.uniform_filter(smooth * smooth, size)
    local_cov = np.sqrt(np.maximum(m2 - m1 * m1, 0.0)) / np.maximum(m1, 1e-6)
    lo, hi = cfg.pet_suv
    candidate = body & (smooth >= lo) & (smooth <= hi) & (local_cov <= cfg.max_cov / 2)
    return _new_scene(study, cfg, "auto_pet", body, lungs, candidate, None)


def _automatic(
    study: Study,
    cfg: LiverSearchConfig,
    method: str,
    avoid: np.ndarray | None,
    stats_study: Study | None,
) -> LiverReference:
    """Automatic liver reference from CT (``auto_ct``, with a PET plausibility check) or from
    PET alone (``auto_pet``); ``stats_study`` as in :func:`_pick_liver`."""
    build = _ct_scene if method == "auto_ct" else _pet_scene
    scene = _scene(study, cfg, method, lambda: build(study, cfg))
    if isinstance(scene, str):
        return _not_found(method, scene, cfg.radius_mm)
    candidate = scene.candidate if avoid is None else scene.candidate & ~avoid
    return _pick_liver(study, scene, candidate, cfg, stats_study)


def liver_reference(
    study: Study,
    liver_mask: np.ndarray | None = None,
    config: LiverSearchConfig | None = None,
    lesion_mask: np.ndarray | None = None,
) -> LiverReference:
    """Liver SUVmean/SD in a 3 cm sphere in the right lobe, or ``found=False`` with a reason.

    Args:
        study: the scan (PET in SUV, optional CT in HU on the PET grid).
        liver_mask: optional liver segmentation on the PET grid; used when given.
        config: thresholds of the automatic search.
        lesion_mask: known lesions; the automatic search keeps ``lesion_margin_mm`` away
            from them (PERCIST places the liver sphere in normal liver).
    """
    cfg = config or LiverSearchConfig()
    lesions = None if lesion_mask is None else np.asarray(lesion_mask) > 0
    if liver_mask is not None:
        avoid = _near_lesions(study.affine, lesions, cfg.lesion_margin_mm)
        return liver_from_mask(study, liver_mask, cfg.radius_mm, avoid)
    search, factors = search_grid(study, cfg.search_spacing_mm)
    stats = None if search is study else study
    if lesions is not None and stats is not None:
        lesions = _block_pool(lesions, factors, np.max)  # a block with any lesion voxel
    avoid = _near_lesions(search.affine, lesions, cfg.lesion_margin_mm)
    if search.ct is not None:
        ref = _automatic(search, cfg, "auto_ct", avoid, stats)
        if ref.found:
            return ref
        pet_ref = _automatic(search, cfg, "auto_pet", avoid, stats)
        if pet_ref.found:
            pet_ref.reason += f" (CT search failed: {ref.reason})"
            return pet_ref
        ref.reason += f"; PET search failed too: {pet_ref.reason}"
        return ref
    return _automatic(search, cfg, "auto_pet", avoid, stats)


def _near_lesions(
    affine: np.ndarray, lesions: np.ndarray | None, margin_mm: float
) -> np.ndarray | None:
    """Lesion voxels grown by ``margin_mm`` (a ball), or None without lesions.

    On a grid whose axes follow the world axes (any order and sign) this is a distance
    transform of the lesions' box grown by the margin: the same voxels as a dilation with
    :func:`ball_kernel` (a voxel is within the margin of its nearest lesion voxel), at a
    fraction of the cost of a large kernel on a whole-body grid. Oblique grids are dilated.
    """
    if lesions is None or not lesions.any():
        return None
    lin = np.asarray(affine, dtype=np.float64)[:3, :3]
    if np.count_nonzero(lin) != 3 or not np.all(np.count_nonzero(lin, axis=0) == 1):
        return ndimage.binary_dilation(lesions, structure=ball_kernel(affine, margin_mm))
    spacing = np.abs(lin).sum(axis=0)
    pad = tuple(int(p) for p in np.ceil(margin_mm / spacing))
    box, _ = crop_slices(lesions, pad)  # type: ignore[arg-type]
    near = np.zeros(lesions.shape, dtype=bool)
    distance = ndimage.distance_transform_edt(~lesions[box], sampling=spacing)
    near[box] = distance <= margin_mm + 1e-9
    return near


def _block_pool(
    arr: np.ndarray, factors: tuple[int, ...], reduce: Callable[..., np.ndarray]
) -> np.ndarray:
    """``reduce`` (np.mean, np.max) over blocks of ``factors`` voxels; a partial block at the
    far end of an axis is dropped."""
    shape = [n // f for n, f in zip(arr.shape, factors, strict=True)]
    cut = arr[tuple(slice(0, n * f) for n, f in zip(shape, factors, strict=True))]
    blocks = cut.reshape(shape[0], factors[0], shape[1], factors[1], shape[2], factors[2])
    return reduce(blocks, axis=(1, 3, 5))


def search_grid(study: Study, spacing_mm: float) -> tuple[Study, tuple[int, ...]]:
    """The study averaged over blocks of whole voxels to at most ``spacing_mm`` (PET and CT
    averaged; the affine moves to the blocks' centres), and the block size per axis. A study
    already that coarse (or smaller than a block) is returned as it is."""
    factors = tuple(
        max(1, min(int(np.floor(spacing_mm / s + 1e-6)), n))
        for s, n in zip(study.spacing_mm, study.shape, strict=True)
    )
    if all(f == 1 for f in factors):
        return study, (1, 1, 1)
    f = np.asarray(factors, dtype=np.float64)
    affine = study.affine.copy()
    affine[:3, 3] = study.affine[:3, :3] @ ((f - 1.0) / 2.0) + study.affine[:3, 3]
    affine[:3, :3] = study.affine[:3, :3] * f[None, :]
    pet = _block_pool(study.pet.astype(np.float32), factors, np.mean)
    ct = None if study.ct is None else _block_pool(study.ct.astype(np.float32), factors, np.mean)
    return Study(pet=pet, affine=affine, ct=ct, meta=study.meta), factors
