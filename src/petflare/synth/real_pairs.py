"""Semi-synthetic longitudinal pairs on real FDG-PET backgrounds (issue 34).

The baseline is a real whole-body scan (:mod:`petflare.synth.backgrounds`) with its own disease
and, optionally, lesions inserted by :func:`petflare.synth.hybrid.insert_lesions`, plus a fresh
noise realisation. The follow-up is the same scan with one of the four change patterns applied
and, on every pair, physiological nuisance that is no disease change:

- patterns: ``controlled`` (every lesion's uptake above its local background x 0.3-1.0),
  ``diffuse_flare`` (most lesions x 1.6-3.0), ``nodule_within_mass`` (a focal 6-16 mm hot
  nodule inside a lesion whose mean SUV holds or falls), ``new_lesions`` (new focal lesions at
  non-physiological sites, inserted like the hybrid's lesions); lesions not driving the pattern
  stay stable (x 0.85-1.05);
- nuisance: myocardium x 0.3-3 and bladder x 0.5-2 (annotated regions), bowel or brown fat
  appearing (labelled ``bowel`` / ``other_physiological`` in the follow-up's organ map, never
  lesion), a global SUV factor 0.85-1.15, repositioning (shift and a small rotation about the
  body's centre, resampled on the baseline grid), new noise.

Uptake changes of a lesion or organ are applied to its activity ABOVE the local background (the
median of a shell around it) with soft edges (the mask blurred over ``edge_softness_mm``);
inserted structures are blurred with the scan's PSF. :func:`generate_real_pair_dataset` writes
the longitudinal manifest layout of the phantom (``manifest.csv``, ``autopet/<pair>/<visit>/
{SUV,SEG,ORGANS}.nii.gz``, ``truth/<pair>.json``) and ``real_pairs.json`` (backgrounds used and
excluded: leave-one-background-out).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from petflare.constants import ORGAN_TO_INDEX, PATTERNS, Keys
from petflare.errors import PetflareInputError
from petflare.io.atomic import atomic_directory, atomic_write_text
from petflare.io.nifti import save_nifti
from petflare.synth.backgrounds import Background, BackgroundAnalysis, analyse_background
from petflare.synth.dataset import DEFAULT_SPLIT_FRACTIONS, _assign_splits, write_manifest
from petflare.synth.hybrid import (
    _FWHM_TO_SIGMA,
    BLUR_TRUNCATE,
    ORGANS_FILE,
    SEG_FILE,
    SUV_FILE,
    HybridConfig,
    _correlated_noise,
    _organ_map,
    _pair,
    insert_lesions,
)

#: Version of ``real_pairs.json`` and of the per-pair truth JSON.
REAL_PAIRS_SCHEMA_VERSION = "1.0"

#: Organ-map values of the physiological structures that may appear at follow-up.
APPEARING = {"bowel": ORGAN_TO_INDEX["bowel"], "brown_fat": ORGAN_TO_INDEX["other_physiological"]}


@dataclass(frozen=True)
class RealPairConfig:
    """Parameters of the real-background pairs; ranges ``(low, high)`` are drawn per pair/lesion.

    Attributes:
        lesions: how baseline (and new) lesions are inserted; its augmentation fields are unused.
        n_inserted: inclusive range of lesions inserted into the baseline (besides the
            background's own disease).
        response_factor: ``controlled``: factor on each lesion's uptake above background.
        stable_factor: lesions that do not drive the pattern.
        flare_factor: ``diffuse_flare``: factor of the rising lesions ...
        flare_fraction: ... which are at least this share of the lesions.
        nodule_diameter_mm: ``nodule_within_mass``: nodule diameter.
        nodule_peak_ratio: nodule's added peak (blurred) / the host's baseline maximum above
            background (the image's, noise included).
        host_hold: host's mean uptake above background at follow-up / baseline (<= 1).
        host_min_diameter_mm: a mass of this diameter is inserted when no lesion can host one.
        n_new: ``new_lesions``: inclusive range of new lesions ...
        new_diameter_mm: ... of this diameter ...
        new_suvmax: ... and observed SUVmax.
        myocardium_factor: nuisance: myocardium uptake factor (log-uniform).
        bladder_factor: nuisance: bladder uptake factor (log-uniform).
        appearing_probability: chance that bowel or brown fat appears at follow-up.
        appearing_suvmax: observed SUVmax of the appearing structure.
        global_scale: nuisance: SUV factor of the whole follow-up (uptake time, calibration).
        shift_mm: repositioning shift (per axis, uniform in +-).
        rotation_deg: repositioning rotation about a random axis (uniform in +-).
        fresh_noise_scale: extra noise of each visit, in units of the scan's liver noise.
        edge_softness_mm: Gaussian sigma of the soft edge of an uptake change.
        patterns: patterns cycled through (balanced).
    """

    lesions: HybridConfig = field(default_factory=HybridConfig)
    n_inserted: tuple[int, int] = (1, 4)
    response_factor: tuple[float, float] = (0.3, 1.0)
    stable_factor: tuple[float, float] = (0.85, 1.05)
    flare_factor: tuple[float, float] = (1.6, 3.0)
    flare_fraction: float = 0.7
    nodule_diameter_mm: tuple[float, float] = (6.0, 16.0)
    nodule_peak_ratio: tuple[float, float] = (1.1, 1.6)
    host_hold: tuple[float, float] = (0.6, 1.0)
    host_min_diameter_mm: tuple[float, float] = (35.0, 55.0)
    n_new: tuple[int, int] = (1, 3)
    new_diameter_mm: tuple[float, float] = (8.0, 20.0)
    new_suvmax: tuple[float, float] = (4.0, 12.0)
    myocardium_factor: tuple[float, float] = (0.3, 3.0)
    bladder_factor: tuple[float, float] = (0.5, 2.0)
    appearing_probability: float = 0.7
    appearing_suvmax: tuple[float, float] = (3.0, 7.0)
    global_scale: tuple[float, float] = (0.85, 1.15)
    shift_mm: float = 10.0
    rotation_deg: float = 3.0
    fresh_noise_scale: float = 0.5
    edge_softness_mm: float = 3.0
    patterns: tuple[str, ...] = PATTERNS

    def __post_init__(self) -> None:
        lesions = self.lesions
        if isinstance(lesions, dict):
            lesions = HybridConfig(**lesions)
        if not isinstance(lesions, HybridConfig):
            raise ValueError("lesions must be a HybridConfig")
        object.__setattr__(self, "lesions", lesions)
        for name in ("n_inserted", "n_new"):
            low, high = (int(v) for v in getattr(self, name))
            if not 0 <= low <= high:
                raise ValueError(f"{name} must satisfy 0 <= low <= high")
            object.__setattr__(self, name, (low, high))
        for name in (
            "response_factor",
            "stable_factor",
            "flare_factor",
            "nodule_diameter_mm",
            "nodule_peak_ratio",
            "host_hold",
            "host_min_diameter_mm",
            "new_diameter_mm",
            "new_suvmax",
            "myocardium_factor",
            "bladder_factor",
            "appearing_suvmax",
            "global_scale",
        ):
            object.__setattr__(self, name, _pair(getattr(self, name), name))
        if self.flare_factor[0] <= 1.0 or self.response_factor[1] > 1.0:
            raise ValueError("flare_factor must exceed 1 and response_factor must not")
        if self.host_hold[1] > 1.0 or self.n_new[0] < 1:
            raise ValueError("host_hold must be <= 1 and n_new >= 1")
        if min(self.myocardium_factor[0], self.bladder_factor[0], self.global_scale[0]) <= 0:
            raise ValueError("nuisance factors must be positive")
        for name in ("flare_fraction", "appearing_probability"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]")
        if min(self.shift_mm, self.rotation_deg, self.fresh_noise_scale) < 0:
            raise ValueError("shift_mm, rotation_deg and fresh_noise_scale must be >= 0")
        pats = tuple(str(p) for p in self.patterns)
        if not pats or set(pats) - set(PATTERNS):
            raise ValueError(f"patterns must be among {PATTERNS}, got {pats}")
        object.__setattr__(self, "patterns", pats)


@dataclass
class RealPair:
    """One baseline / follow-up pair on the baseline's grid (the follow-up is repositioned)."""

    affine: np.ndarray
    baseline_suv: np.ndarray
    baseline_seg: np.ndarray
    baseline_organs: np.ndarray
    followup_suv: np.ndarray
    followup_seg: np.ndarray
    followup_organs: np.ndarray
    truth: dict[str, Any]


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(*np.log(bounds))))


def _shell(mask: np.ndarray, inner: int, outer: int) -> np.ndarray:
    """Voxels between ``inner`` and ``outer`` voxel dilations of ``mask``."""
    return ndimage.binary_dilation(mask, iterations=outer) & ~ndimage.binary_dilation(
        mask, iterations=inner
    )


def local_background(smooth: np.ndarray, mask: np.ndarray, exclude: np.ndarray) -> float:
    """Median smoothed SUV in a 2-4 voxel shell around ``mask`` (other uptake excluded)."""
    shell = _shell(mask, 2, 4) & ~exclude
    if not shell.any():
        shell = _shell(mask, 2, 4)
    return float(np.median(smooth[shell])) if shell.any() else 0.0


def scale_uptake(
    suv: np.ndarray,
    smooth: np.ndarray,
    mask: np.ndarray,
    factor: float,
    background_suv: float,
    sigma_vox: np.ndarray,
) -> np.ndarray:
    """``suv`` with the uptake of ``mask`` above ``background_suv`` multiplied by ``factor``.

    The change is weighted by a soft edge (the mask blurred by ``sigma_vox``, doubled and
    clipped to 1: full inside and on the boundary, fading outside), so the PSF-blurred rim of a
    lesion changes with it and no step appears. The excess is taken from ``suv`` itself inside
    the mask (so a small lesion's mean changes by ``factor``, which smoothing would not give)
    and from ``smooth`` (the image smoothed over a voxel) outside it, where the soft edge must
    not scale noise in the background.
    """
    weight = np.clip(2.0 * ndimage.gaussian_filter(mask.astype(np.float32), sigma_vox), 0, 1)
    excess = np.clip(np.where(mask, suv, smooth) - np.float32(background_suv), 0, None)
    return np.clip(suv + np.float32(factor - 1.0) * weight * excess, 0, None).astype(np.float32)


def _sphere_occupancy(
    shape: tuple[int, ...], affine: np.ndarray, centre_world: np.ndarray, radius_mm: float
) -> np.ndarray:
    """Partial-volume occupancy (3 x 3 x 3 subsamples) of a sphere on the grid."""
    linear = np.asarray(affine)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    centre = np.linalg.solve(linear, centre_world - affine[:3, 3])
    reach = np.ceil(radius_mm / spacing).astype(int) + 1
    lo = np.maximum(np.floor(centre).astype(int) - reach, 0)
    hi = np.minimum(np.ceil(centre).astype(int) + reach + 1, np.asarray(shape))
    out = np.zeros(shape, dtype=np.float32)
    if (hi <= lo).any():
        return out
    idx = np.stack(
        np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
    ).astype(np.float64)
    box = np.zeros(idx.shape[1:], dtype=np.float32)
    for offset in np.stack(np.meshgrid(*[np.array([-1, 0, 1]) / 3.0] * 3), -1).reshape(-1, 3):
        pts = idx + (offset - centre)[:, None, None, None]
        dist = np.sqrt((np.einsum("ij,j...->i...", linear, pts) ** 2).sum(axis=0))
        box += dist <= radius_mm
    out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = box / 27.0
    return out


def _blur(image: np.ndarray, psf_fwhm_mm: float, spacing: np.ndarray) -> np.ndarray:
    return ndimage.gaussian_filter(
        image, psf_fwhm_mm * _FWHM_TO_SIGMA / spacing, mode="constant", truncate=BLUR_TRUNCATE
    )


def _world(affine: np.ndarray, voxel: np.ndarray) -> np.ndarray:
    return np.asarray(affine)[:3, :3] @ np.asarray(voxel, dtype=np.float64) + affine[:3, 3]


def _fresh_noise(
    suv: np.ndarray, spacing: np.ndarray, k: float, corr_mm: float, rng: np.random.Generator
) -> np.ndarray:
    if k <= 0:
        return suv
    noise = _correlated_noise(suv.shape, spacing, corr_mm, rng)
    return np.clip(suv + k * np.sqrt(np.maximum(suv, 0)) * noise, 0, None).astype(np.float32)


def _without_forbidden(analysis: BackgroundAnalysis, extra: np.ndarray) -> BackgroundAnalysis:
    return replace(analysis, forbidden=analysis.forbidden | extra)


def _insert(
    bg: Background,
    suv: np.ndarray,
    seg: np.ndarray,
    analysis: BackgroundAnalysis,
    config: HybridConfig,
    n: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Insert ``n`` lesions into ``suv`` away from the labelled ``seg``; new labels after it."""
    spacing = bg.spacing_mm
    margin = ndimage.distance_transform_edt(seg == 0, sampling=spacing) <= config.avoid_margin_mm
    current = replace(bg, suv=suv, disease=None, avoid=None)
    scan = insert_lesions(current, _without_forbidden(analysis, margin), config, rng, n_lesions=n)
    offset = int(seg.max(initial=0))
    out = seg.copy()
    out[scan.seg > 0] = scan.seg[scan.seg > 0].astype(seg.dtype) + offset
    lesions = [{**asdict(les), "label": les.label + offset} for les in scan.lesions]
    return scan.suv, out, lesions


def _rigid(
    centre_world: np.ndarray,
    shift_mm: np.ndarray,
    rotation: np.ndarray,
) -> np.ndarray:
    """World 4x4 matrix moving the patient: rotate about ``centre_world``, then shift."""
    move = np.eye(4)
    move[:3, :3] = rotation
    move[:3, 3] = centre_world - rotation @ centre_world + shift_mm
    return move


def reposition(image: np.ndarray, affine: np.ndarray, move: np.ndarray, order: int) -> np.ndarray:
    """The image of a patient moved by the world matrix ``move``, on the same grid.

    ``order`` 0 for labels; 3 (cubic spline, clipped at 0) for the PET, which keeps a small
    lesion's peak where trilinear interpolation would blur it (a ~30 % loss for a 7 mm focus at
    4.7 mm voxels, measured on STS_001).
    """
    voxel = np.linalg.inv(affine) @ np.linalg.inv(move) @ affine  # output voxel -> input voxel
    out = ndimage.affine_transform(
        image.astype(np.float32 if order else image.dtype),
        voxel[:3, :3],
        offset=voxel[:3, 3],
        order=order,
        mode="constant",
        cval=0.0,
    )
    return out.astype(image.dtype) if order == 0 else np.clip(out, 0, None).astype(np.float32)


def _appearing_structure(
    kind: str,
    shape: tuple[int, ...],
    affine: np.ndarray,
    allowed: np.ndarray,
    liver: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[list[float]]]:
    """Occupancy of an appearing bowel loop (a chain of 10-14 mm spheres) or brown fat (3-8
    foci of 5-9 mm), centred below (bowel) or 120-300 mm above (brown fat) the liver's centre.
    """
    world_z = np.asarray(affine)[2, :3] @ np.indices(shape, dtype=np.float32).reshape(3, -1)
    world_z = world_z.reshape(shape) + affine[2, 3]
    pool = allowed
    if liver.any():
        z0 = float(world_z[liver].mean())
        band = (
            (world_z < z0 - 40) if kind == "bowel" else (world_z > z0 + 120) & (world_z < z0 + 300)
        )
        pool = allowed & band if (allowed & band).any() else allowed
    candidates = np.argwhere(pool)
    start = _world(affine, candidates[int(rng.integers(len(candidates)))])
    centres: list[np.ndarray] = [start]
    if kind == "bowel":
        radius = float(rng.uniform(5.0, 7.0))
        direction = rng.standard_normal(3)
        for _ in range(int(rng.integers(8, 20))):
            direction = direction / np.linalg.norm(direction) + 0.5 * rng.standard_normal(3)
            centres.append(centres[-1] + 6.0 * direction / np.linalg.norm(direction))
        radii = [radius] * len(centres)
    else:
        count = int(rng.integers(3, 9))
        centres += [start + rng.uniform(-25, 25, 3) for _ in range(count - 1)]
        radii = [float(rng.uniform(2.5, 4.5)) for _ in centres]
    occupancy = np.zeros(shape, dtype=np.float32)
    for c, r in zip(centres, radii, strict=True):
        occupancy = np.maximum(occupancy, _sphere_occupancy(shape, affine, c, r))
    occupancy *= allowed  # never on a lesion, an excluded organ or outside the body
    return occupancy, [[round(float(v), 1) for v in c] for c in centres]


# --------------------------------------------------------------------------------------------
# One pair
# --------------------------------------------------------------------------------------------


def generate_real_pair(
    background: Background,
    pattern: str,
    config: RealPairConfig,
    seed: int,
    analysis: BackgroundAnalysis | None = None,
) -> RealPair:
    """One baseline / follow-up pair of ``pattern`` on ``background`` (reproducible: ``seed``)."""
    if pattern not in PATTERNS:
        raise PetflareInputError(None, f"unknown pattern {pattern!r}; expected one of {PATTERNS}")
    rng = np.random.default_rng(np.random.SeedSequence(int(seed)))
    analysis = analysis or analyse_background(background, config.lesions.avoid_margin_mm)
    affine = np.asarray(background.affine, dtype=np.float64)
    spacing = background.spacing_mm
    shape = background.suv.shape
    psf = background.psf_fwhm_mm
    sigma_soft = config.edge_softness_mm / spacing
    lesion_cfg = config.lesions

    # ---- baseline: the real scan, its disease, inserted lesions (a host mass for a nodule)
    seg = np.zeros(shape, dtype=np.uint16)
    if background.disease is not None:
        comps, _ = ndimage.label(background.disease, structure=np.ones((3, 3, 3)))
        seg[comps > 0] = comps[comps > 0]
    suv = background.suv.astype(np.float32).copy()
    inserted: list[dict[str, Any]] = []
    nodule_r_mm = float(rng.uniform(*config.nodule_diameter_mm)) / 2.0
    if pattern == "nodule_within_mass":
        inner = _max_inner_mm(seg, spacing)
        if not inner or max(inner.values()) < nodule_r_mm + 4.0:
            mass_cfg = replace(
                lesion_cfg,
                mass_probability=1.0,
                mass_diameter_mm=config.host_min_diameter_mm,
                site_weights={"soft_tissue": 1.0},
                faint_probability=0.0,
                necrosis_probability=0.0,
                irregularity=(0.05, 0.15),
            )
            suv, seg, new = _insert(background, suv, seg, analysis, mass_cfg, 1, rng)
            inserted += new
    n_ins = int(rng.integers(config.n_inserted[0], config.n_inserted[1] + 1))
    if n_ins:
        suv, seg, new = _insert(background, suv, seg, analysis, lesion_cfg, n_ins, rng)
        inserted += new
    labels = [int(v) for v in np.unique(seg) if v > 0]
    if not labels:
        raise PetflareInputError(None, f"{background.name}: no lesion could be placed")
    base_organs = _organ_map(background, analysis, seg)
    k_noise = (
        config.fresh_noise_scale * analysis.noise_cv * np.sqrt(max(analysis.liver_suv_mean, 1e-3))
    )

    # ---- follow-up: pattern on the lesions
    smooth = ndimage.gaussian_filter(suv, 1.0)
    anything = (seg > 0) | (
        (background.organs > 0) if background.organs is not None else np.zeros(shape, bool)
    )
    follow = suv.copy()
    lesion_truth: list[dict[str, Any]] = []
    rising: set[int] = set()
    if pattern == "diffuse_flare":
        n_rise = max(1, int(np.ceil(config.flare_fraction * len(labels))))
        rising = {int(v) for v in rng.permutation(labels)[:n_rise]}
    host = None
    if pattern == "nodule_within_mass":
        inner = _max_inner_mm(seg, spacing)
        host = max(inner, key=lambda k: inner[k])
        nodule_r_mm = min(nodule_r_mm, max(inner[host] - 4.0, 3.0))
    for label in labels:
        mask = seg == label
        b = local_background(smooth, mask, anything & ~mask)
        if pattern == "controlled":
            factor, role = float(rng.uniform(*config.response_factor)), "response"
        elif label in rising:
            factor, role = float(rng.uniform(*config.flare_factor)), "flare"
        else:
            factor, role = float(rng.uniform(*config.stable_factor)), "stable"
        entry: dict[str, Any] = {"label": label, "local_background_suv": round(b, 3)}
        if label == host:
            entry.update(_nodule(follow, smooth, mask, b, nodule_r_mm, config, affine, psf, rng))
            follow = entry.pop("_image")
            role, factor = "nodule_host", entry["host_factor"]
        else:
            follow = scale_uptake(follow, smooth, mask, factor, b, sigma_soft)
        base_mean = float(suv[mask].mean())
        entry.update(
            {
                "role": role,
                "factor_above_background": round(factor, 3),
                "baseline_suvmean": round(base_mean, 3),
                "volume_ml": round(float(mask.sum() * np.prod(spacing)) / 1000.0, 2),
            }
        )
        lesion_truth.append(entry)
    follow_seg = seg.copy()
    new_lesions: list[dict[str, Any]] = []
    if pattern == "new_lesions":
        new_cfg = replace(
            lesion_cfg,
            diameter_mm=config.new_diameter_mm,
            mass_probability=0.0,
            faint_probability=0.0,
            avid_suvmax=config.new_suvmax,
            necrosis_probability=0.0,
        )
        n_new = int(rng.integers(config.n_new[0], config.n_new[1] + 1))
        follow, follow_seg, new_lesions = _insert(
            background, follow, follow_seg, analysis, new_cfg, n_new, rng
        )
        if not new_lesions:
            raise PetflareInputError(None, f"{background.name}: no site left for a new lesion")

    # ---- nuisance on every pair
    follow_organs = _organ_map(background, analysis, follow_seg)
    nuisance: dict[str, Any] = {}
    fsmooth = ndimage.gaussian_filter(follow, 1.0)
    for organ, bounds in (
        ("myocardium", config.myocardium_factor),
        ("bladder", config.bladder_factor),
    ):
        factor = _log_uniform(rng, bounds)
        region = (
            background.organs == ORGAN_TO_INDEX[organ]
            if background.organs is not None
            else np.zeros(shape, bool)
        )
        if region.any():
            b = local_background(fsmooth, region, anything & ~region)
            follow = scale_uptake(follow, fsmooth, region, factor, b, sigma_soft)
            nuisance[f"{organ}_factor"] = round(factor, 3)
        else:
            nuisance[f"{organ}_factor"] = None  # not annotated in this background: unchanged
    if rng.random() < config.appearing_probability:
        kind = str(rng.choice(list(APPEARING)))
        near = ndimage.distance_transform_edt(follow_seg == 0, sampling=spacing) <= 15.0
        allowed = analysis.sites["soft_tissue"] & ~near
        if allowed.any():
            occupancy, centres = _appearing_structure(
                kind, shape, affine, allowed, analysis.liver, rng
            )
            blurred = _blur(occupancy, psf, spacing)
            local = float(np.median(fsmooth[occupancy > 0.5])) if (occupancy > 0.5).any() else 0
            target = float(rng.uniform(*config.appearing_suvmax))
            amplitude = max(target - local, 0.5) / max(float(blurred.max()), 1e-6)
            follow = (follow + np.float32(amplitude) * blurred).astype(np.float32)
            follow_organs[(blurred >= 0.3 * blurred.max()) & (follow_seg == 0)] = APPEARING[kind]
            nuisance["appearing"] = {"kind": kind, "suvmax": round(target, 2), "centres": centres}
    scale = _log_uniform(rng, config.global_scale)
    follow = follow * np.float32(scale)
    nuisance["global_scale"] = round(scale, 4)

    # ---- new noise at both visits, then the repositioned follow-up
    corr = lesion_cfg.noise_corr_mm
    baseline = _fresh_noise(suv, spacing, k_noise, corr, rng)
    follow = _fresh_noise(follow, spacing, k_noise * np.sqrt(scale), corr, rng)
    shift = rng.uniform(-config.shift_mm, config.shift_mm, 3)
    angle = float(rng.uniform(-config.rotation_deg, config.rotation_deg))
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    rotation = Rotation.from_rotvec(np.deg2rad(angle) * axis).as_matrix()
    centre = _world(affine, np.argwhere(analysis.body).mean(axis=0))
    move = _rigid(centre, shift, rotation)
    follow = reposition(follow, affine, move, order=3)
    follow_seg = reposition(follow_seg, affine, move, order=0)
    follow_organs = reposition(follow_organs, affine, move, order=0)
    nuisance["reposition"] = {
        "shift_mm": [round(float(v), 2) for v in shift],
        "rotation_deg": round(angle, 3),
        "rotation_axis": [round(float(v), 4) for v in axis],
        "centre_mm": [round(float(v), 1) for v in centre],
        "followup_from_baseline_world": np.round(move, 6).tolist(),
    }
    truth = {
        "schema_version": REAL_PAIRS_SCHEMA_VERSION,
        "pattern": pattern,
        "background": background.name,
        "seed": int(seed),
        "lesions": lesion_truth,
        "inserted_at_baseline": inserted,
        "new_lesions": new_lesions,
        "nuisance": nuisance,
        "fresh_noise_k": round(float(k_noise), 4),
        "liver_suv_mean": round(float(analysis.liver_suv_mean), 3),
        "psf_fwhm_mm": psf,
    }
    return RealPair(
        affine=affine,
        baseline_suv=baseline,
        baseline_seg=seg,
        baseline_organs=base_organs,
        followup_suv=follow.astype(np.float32),
        followup_seg=follow_seg,
        followup_organs=follow_organs,
        truth=truth,
    )


def _max_inner_mm(seg: np.ndarray, spacing: np.ndarray) -> dict[int, float]:
    """Per label: the largest distance (mm) from an inside voxel to the label's boundary."""
    out: dict[int, float] = {}
    for label in (int(v) for v in np.unique(seg) if v > 0):
        mask = seg == label
        sl = ndimage.find_objects(mask.astype(np.uint8))[0]
        padded = np.pad(mask[sl], 1)
        out[label] = float(ndimage.distance_transform_edt(padded, sampling=spacing).max())
    return out


def _nodule(
    image: np.ndarray,
    smooth: np.ndarray,
    mask: np.ndarray,
    background_suv: float,
    radius_mm: float,
    config: RealPairConfig,
    affine: np.ndarray,
    psf: float,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """A focal hot nodule inside ``mask`` while the host's mean uptake holds or falls."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    depth = ndimage.distance_transform_edt(mask, sampling=spacing)
    inside = np.argwhere(depth >= min(radius_mm + 2.0, float(depth.max())))
    centre_vox = inside[int(rng.integers(len(inside)))]
    centre = _world(affine, centre_vox)
    blurred = _blur(_sphere_occupancy(mask.shape, affine, centre, radius_mm), psf, spacing)
    host_excess = float(np.clip(smooth[mask] - background_suv, 0, None).mean())
    # the nodule must outshine the host's hottest voxel as the image shows it (noise included)
    host_peak = float(np.clip(image[mask] - background_suv, 0, None).max())
    ratio = float(rng.uniform(*config.nodule_peak_ratio))
    amplitude = ratio * max(host_peak, 0.5) / max(float(blurred.max()), 1e-6)
    hold = float(rng.uniform(*config.host_hold))
    added_mean = amplitude * float(blurred[mask].mean())
    # the host's mean excess at follow-up, f E + A, must not exceed hold x E (f >= 0.2)
    allowed = (hold - 0.2) * host_excess
    if added_mean > allowed > 0:
        amplitude *= allowed / added_mean
        added_mean = allowed
    host_factor = (hold * host_excess - added_mean) / max(host_excess, 1e-6)
    sigma_soft = config.edge_softness_mm / spacing
    out = scale_uptake(image, smooth, mask, host_factor, background_suv, sigma_soft)
    out = out + np.float32(amplitude) * blurred
    return {
        "_image": out.astype(np.float32),
        "host_factor": round(float(host_factor), 3),
        "host_hold": round(hold, 3),
        "nodule": {
            "diameter_mm": round(2 * radius_mm, 1),
            "centre_voxel": [int(v) for v in centre_vox],
            "centre_world_mm": [round(float(v), 1) for v in centre],
            "added_peak_suv": round(float(amplitude * blurred.max()), 3),
            "host_baseline_max_above_background": round(host_peak, 3),
        },
    }


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


def _pair_seed(seed: int, background: str, index: int) -> int:
    key = [int(seed), int(index), 34, *background.encode()]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def _write_pair(root: Path, pair_id: str, pair: RealPair) -> dict[str, str]:
    row = {Keys.PATIENT_ID: pair_id, Keys.PATTERN: str(pair.truth["pattern"])}
    for tp, suv, seg, organs in (
        ("baseline", pair.baseline_suv, pair.baseline_seg, pair.baseline_organs),
        ("followup", pair.followup_suv, pair.followup_seg, pair.followup_organs),
    ):
        rel = Path("autopet") / pair_id / tp
        save_nifti(suv.astype(np.float32), pair.affine, root / rel / SUV_FILE)
        dtype = np.uint8 if int(seg.max(initial=0)) < 256 else np.uint16
        save_nifti(seg.astype(dtype), pair.affine, root / rel / SEG_FILE)
        save_nifti(organs.astype(np.uint8), pair.affine, root / rel / ORGANS_FILE)
        row[f"{tp}_pet"] = (rel / SUV_FILE).as_posix()
        row[f"{tp}_mask"] = (rel / SEG_FILE).as_posix()
        row[f"{tp}_organs"] = (rel / ORGANS_FILE).as_posix()
    return row


def generate_real_pair_dataset(
    out_dir: str | Path,
    backgrounds: Sequence[Background],
    n_pairs_per_background: int,
    seed: int,
    *,
    config: RealPairConfig | None = None,
    skipped: dict[str, str] | None = None,
    overwrite: bool = False,
    split_fractions: dict[str, float] | None = None,
    first_index: int = 0,
) -> Path:
    """Write ``n_pairs_per_background`` pairs per background (patterns cycled, balanced).

    Layout: ``out_dir/manifest.csv`` (the longitudinal manifest: ``baseline_pet``,
    ``followup_pet``, masks, organ maps, ``pattern``, ``split``), ``out_dir/autopet/<pair>/
    {baseline,followup}/{SUV,SEG,ORGANS}.nii.gz``, ``out_dir/truth/<pair>.json`` and
    ``out_dir/real_pairs.json`` (backgrounds used / not used, config, seed, timing). Pair ids
    are ``<background>_p<NNNN>``, numbered from ``first_index`` (sets that are read together,
    e.g. in one head's manifest list, need distinct ids; pair ``NNNN``'s seed depends on its
    number); splits are drawn by pair, so for a held-out background generate it into another
    folder (``skipped`` records what was excluded).

    Returns:
        Path of the manifest.
    """
    config = config or RealPairConfig()
    out_dir = Path(out_dir)
    if n_pairs_per_background < 1:
        raise PetflareInputError(out_dir, f"n_pairs must be >= 1, got {n_pairs_per_background}")
    if not backgrounds:
        raise PetflareInputError(out_dir, "no background to build pairs on")
    if first_index < 0 or first_index + n_pairs_per_background > 10000:
        raise PetflareInputError(
            out_dir, f"pair numbers {first_index}.. must lie in 0-9999 (first_index {first_index})"
        )
    rows: list[dict[str, str]] = []
    records: list[dict[str, Any]] = []
    used: list[dict[str, Any]] = []
    start = time.perf_counter()
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        for bg in backgrounds:
            t0 = time.perf_counter()
            analysis = analyse_background(bg, config.lesions.avoid_margin_mm)
            used.append(
                {
                    "name": bg.name,
                    "source": bg.source,
                    "shape": list(bg.suv.shape),
                    "spacing_mm": [round(float(v), 4) for v in bg.spacing_mm],
                    "organs_annotated": bg.organs is not None,
                    "analysis_seconds": round(time.perf_counter() - t0, 2),
                }
            )
            for local in range(n_pairs_per_background):
                index = first_index + local
                t1, cpu1 = time.perf_counter(), time.process_time()
                pattern = config.patterns[local % len(config.patterns)]
                pair_id = f"{bg.name}_p{index:04d}"
                pair_seed = _pair_seed(seed, bg.name, index)
                pair = generate_real_pair(bg, pattern, config, pair_seed, analysis)
                rows.append(_write_pair(tmp, pair_id, pair))
                seconds = time.perf_counter() - t1
                pair.truth.update({"pair_id": pair_id, "seconds": round(seconds, 2)})
                atomic_write_text(
                    tmp / "truth" / f"{pair_id}.json", json.dumps(pair.truth, indent=1)
                )
                records.append(
                    {
                        "pair_id": pair_id,
                        "background": bg.name,
                        "pattern": pattern,
                        "seconds": round(seconds, 2),
                        "cpu_seconds": round(time.process_time() - cpu1, 2),
                    }
                )
        splits = _assign_splits(
            [r[Keys.PATTERN] for r in rows], seed, split_fractions or DEFAULT_SPLIT_FRACTIONS
        )
        for row, split in zip(rows, splits, strict=True):
            row[Keys.SPLIT] = split
        write_manifest(rows, tmp / "manifest.csv")
        meta = {
            "schema_version": REAL_PAIRS_SCHEMA_VERSION,
            "generator": "petflare.synth.real_pairs",
            "seed": int(seed),
            "n_pairs_per_background": int(n_pairs_per_background),
            "backgrounds_used": used,
            "backgrounds_not_used": dict(skipped or {}),
            "config": asdict(config),
            "pairs": records,
            "total_seconds": round(time.perf_counter() - start, 1),
        }
        atomic_write_text(tmp / "real_pairs.json", json.dumps(meta, indent=1))
    return out_dir / "manifest.csv"
