"""Hybrid training scans: synthetic lesions inserted into real FDG-PET backgrounds.

A real whole-body scan keeps its physiology (brain, myocardium, bladder, kidneys, bowel, ...)
as labelled negatives; synthetic lesions are added on top of it:

- sites: candidate centres from :func:`petflare.synth.backgrounds.analyse_background`
  (soft tissue, lung, liver), never within the avoid margin of hot uptake, brain, myocardium,
  bladder, kidneys, known disease, or another inserted lesion, and inside the body;
- shape: an ellipsoid of random axes and orientation whose surface is perturbed by smooth
  random lobes (irregular), 5-60 mm, supersampled 3x per axis for partial volume;
- uptake: an observed (noise-free) SUVmax drawn from a faint range (2-4, just above the local
  background) or an avid one; a smooth texture (heterogeneity) and, sometimes, a necrotic core;
- image formation: the lesion's activity ABOVE the local background is blurred with the scan's
  PSF and added to the real image, with extra noise ``k sqrt(added)`` so that the total noise
  stays Poisson-like (``k`` from the noise CV measured in the scan's liver);
- label: the voxels at least half inside the lesion whose true (unblurred) added uptake is at
  least ``label_fraction`` of the lesion's peak (necrotic cores below it are not labelled; a
  lesion smaller than half a voxel labels its most-occupied voxel). Existing disease of the
  background (an RTSTRUCT GTV, the annotation's known disease) is labelled as lesion too.

Backgrounds may be augmented first (global SUV scale, extra blur, extra noise) and the result
resampled to another voxel size. :func:`generate_hybrid_dataset` writes the autoPET layout the
phantom writes (``autopet/<background>/<variant>/{SUV,SEG,ORGANS}.nii.gz``) and a metadata
JSON that records which backgrounds were used (leave-one-background-out: ``exclude``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from petflare.constants import ORGAN_IGNORE
from petflare.errors import PetflareInputError
from petflare.io.atomic import atomic_directory, atomic_write_text
from petflare.io.layouts import AUTOPET_LABEL_STEM, AUTOPET_ORGANS_STEM, AUTOPET_PET_STEM
from petflare.io.loading import resample_to_grid
from petflare.io.nifti import save_nifti
from petflare.synth.backgrounds import Background, BackgroundAnalysis, analyse_background

#: Version of ``hybrid.json`` and of the per-scan truth JSON.
HYBRID_SCHEMA_VERSION = "1.0"

#: File names of one hybrid scan in the autoPET layout (the phantom's names).
SUV_FILE = f"{AUTOPET_PET_STEM}.nii.gz"
SEG_FILE = f"{AUTOPET_LABEL_STEM}.nii.gz"
ORGANS_FILE = f"{AUTOPET_ORGANS_STEM}.nii.gz"

#: Site kinds a lesion may be drawn at.
SITE_KINDS = ("soft_tissue", "lung", "liver")

_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
#: Gaussian kernels are truncated here (sigmas): the blur support and the margin of the tests.
BLUR_TRUNCATE = 3.5
#: Sub-voxel samples per axis for a lesion's partial-volume occupancy.
_SUPERSAMPLE = 3


def _pair(value: Any, name: str, low_bound: float = 0.0) -> tuple[float, float]:
    low, high = (float(v) for v in (value if isinstance(value, (list, tuple)) else (value, value)))
    if not low_bound <= low <= high:
        raise ValueError(f"{name}: need {low_bound} <= low <= high, got ({low}, {high})")
    return (low, high)


@dataclass(frozen=True)
class HybridConfig:
    """How lesions are inserted and backgrounds augmented; ranges are drawn per lesion/scan.

    Attributes:
        n_lesions: inclusive range of inserted lesions per scan.
        diameter_mm: lesion diameter range (log-uniform), for non-mass lesions.
        mass_probability: share of lesions that are masses (``mass_diameter_mm``, soft tissue).
        mass_diameter_mm: diameter range of masses.
        site_weights: relative frequency of the site kinds (``soft_tissue``, ``lung``,
            ``liver``); a kind without candidates in a background falls back to soft tissue.
        faint_probability: share of faint lesions (observed SUVmax in ``faint_suvmax``).
        faint_suvmax: observed SUVmax range of faint lesions.
        avid_suvmax: observed SUVmax range of the other lesions (log-uniform).
        min_contrast: the observed SUVmax is at least ``(1 + min_contrast)`` x the local
            background (so every labelled lesion is visible above its surroundings).
        irregularity: amplitude range of the surface lobes (fraction of the radius).
        heterogeneity: standard deviation range of the uptake texture (fraction).
        necrosis_probability: chance of a necrotic core in lesions of at least
            ``necrosis_min_diameter_mm``.
        necrosis_min_diameter_mm: smallest lesion that may have a necrotic core.
        label_fraction: a voxel is labelled when at least half inside and its true added uptake
            is at least this fraction of the lesion's peak.
        label_necrotic_core: also label the necrotic core (the gross-tumour-volume convention
            of the sarcoma crops, whose GTV contains necrosis), not only the avid part.
        noise_corr_mm: correlation length (Gaussian sigma) of the added noise.
        noise_scale: factor on the added noise (1: consistent with the scan; 0: none).
        avoid_margin_mm: distance kept from hot uptake, excluded organs and known disease.
        lesion_gap_mm: distance kept between inserted lesions.
        suv_scale: global SUV factor range of the background (log-uniform; (1, 1): off).
        resample_probability: chance of resampling the scan to ``spacing_mm``.
        spacing_mm: voxel size range (isotropic in-plane, drawn separately for slices).
        blur_probability: chance of extra background blur.
        blur_fwhm_mm: extra blur FWHM range (the inserted lesions get the combined PSF).
        extra_noise_probability: chance of extra background noise.
        extra_noise_cv: liver CV range of the extra noise.
    """

    n_lesions: tuple[int, int] = (1, 6)
    diameter_mm: tuple[float, float] = (5.0, 40.0)
    mass_probability: float = 0.15
    mass_diameter_mm: tuple[float, float] = (30.0, 60.0)
    site_weights: dict[str, float] = field(
        default_factory=lambda: {"soft_tissue": 0.5, "lung": 0.2, "liver": 0.3}
    )
    faint_probability: float = 0.3
    faint_suvmax: tuple[float, float] = (2.0, 4.0)
    avid_suvmax: tuple[float, float] = (4.0, 25.0)
    min_contrast: float = 0.3
    irregularity: tuple[float, float] = (0.05, 0.3)
    heterogeneity: tuple[float, float] = (0.0, 0.3)
    necrosis_probability: float = 0.4
    necrosis_min_diameter_mm: float = 20.0
    label_fraction: float = 0.3
    label_necrotic_core: bool = False
    noise_corr_mm: float = 3.0
    noise_scale: float = 1.0
    avoid_margin_mm: float = 10.0
    lesion_gap_mm: float = 5.0
    suv_scale: tuple[float, float] = (0.8, 1.25)
    resample_probability: float = 0.3
    spacing_mm: tuple[float, float] = (2.0, 5.5)
    blur_probability: float = 0.3
    blur_fwhm_mm: tuple[float, float] = (2.0, 5.0)
    extra_noise_probability: float = 0.3
    extra_noise_cv: tuple[float, float] = (0.05, 0.15)

    def __post_init__(self) -> None:
        low, high = (int(v) for v in self.n_lesions)
        if not 0 <= low <= high:
            raise ValueError("n_lesions must satisfy 0 <= low <= high")
        object.__setattr__(self, "n_lesions", (low, high))
        for name in (
            "diameter_mm",
            "mass_diameter_mm",
            "faint_suvmax",
            "avid_suvmax",
            "irregularity",
            "heterogeneity",
            "suv_scale",
            "spacing_mm",
            "blur_fwhm_mm",
            "extra_noise_cv",
        ):
            object.__setattr__(self, name, _pair(getattr(self, name), name))
        if self.diameter_mm[0] <= 0 or self.suv_scale[0] <= 0 or self.spacing_mm[0] <= 0:
            raise ValueError("diameters, SUV scales and spacings must be positive")
        weights = {str(k): float(v) for k, v in dict(self.site_weights).items()}
        if set(weights) - set(SITE_KINDS) or sum(weights.values()) <= 0:
            raise ValueError(f"site_weights: keys among {SITE_KINDS}, positive sum; got {weights}")
        object.__setattr__(self, "site_weights", weights)
        for name in (
            "mass_probability",
            "faint_probability",
            "necrosis_probability",
            "resample_probability",
            "blur_probability",
            "extra_noise_probability",
        ):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]")
        if not 0.0 < self.label_fraction < 1.0:
            raise ValueError("label_fraction must lie in (0, 1)")
        if self.noise_scale < 0 or self.min_contrast < 0:
            raise ValueError("noise_scale and min_contrast must be >= 0")


@dataclass(frozen=True)
class InsertedLesion:
    """One inserted lesion, as recorded in the truth JSON."""

    label: int
    site: str
    center_voxel: tuple[int, int, int]
    center_world_mm: tuple[float, float, float]
    diameter_mm: float
    suvmax: float
    local_background_suv: float
    faint: bool
    necrotic: bool
    volume_ml: float


@dataclass
class HybridScan:
    """A background with inserted lesions.

    Attributes:
        suv: float32 SUV volume.
        affine: its voxel-to-world matrix (the background's unless resampled).
        seg: instance labels: known disease first (1..n), inserted lesions after them.
        organs: organ label map: ``ORGAN_TO_INDEX`` values where the background's annotation
            outlines an organ, ``ORGAN_IGNORE`` (unknown) elsewhere in the body, 0 outside the
            body and at every labelled lesion (inserted or known disease), as in the phantom.
        added_suv: the noise-free added activity (before resampling; for checks and figures).
        lesions: the inserted lesions.
        disease_labels: the labels of the background's own disease.
        settings: the scan's drawn augmentation and image-formation values.
    """

    suv: np.ndarray
    affine: np.ndarray
    seg: np.ndarray
    organs: np.ndarray
    added_suv: np.ndarray
    lesions: list[InsertedLesion]
    disease_labels: list[int]
    settings: dict[str, Any]


# --------------------------------------------------------------------------------------------
# One lesion
# --------------------------------------------------------------------------------------------


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


@dataclass
class _LesionTemplate:
    """A lesion rendered in a box of the scan's grid: true uptake (peak 1) and label."""

    box: tuple[slice, slice, slice]
    uptake: np.ndarray  # true relative uptake x occupancy, peak 1
    label: np.ndarray  # bool
    footprint: np.ndarray  # occupancy > 0


def _render_template(
    center: np.ndarray,
    diameter_mm: float,
    shape: tuple[int, int, int],
    linear: np.ndarray,
    pad_vox: np.ndarray,
    config: HybridConfig,
    rng: np.random.Generator,
    necrotic: bool,
) -> _LesionTemplate | None:
    """Occupancy, texture and core of one irregular lesion around voxel ``center``."""
    spacing = np.linalg.norm(linear, axis=0)
    radius = diameter_mm / 2.0
    axes = radius * rng.uniform(0.7, 1.3, 3)
    axes *= radius / np.cbrt(np.prod(axes))  # keep the equivalent diameter
    irregular = float(rng.uniform(*config.irregularity))
    reach = np.ceil(axes.max() * (1 + irregular) / spacing).astype(int) + 1
    half = reach + pad_vox
    lo = np.asarray(center) - half
    hi = np.asarray(center) + half + 1
    if (lo < 0).any() or (hi > np.asarray(shape)).any():
        return None
    box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    n = hi - lo
    rot = _random_rotation(rng)
    lobes = rng.standard_normal((6, 3)) * 1.5
    phases = rng.uniform(0, 2 * np.pi, 6)
    weights = rng.standard_normal(6) / np.sqrt(6)
    idx = np.stack(
        np.meshgrid(*[np.arange(k) - h for k, h in zip(n, half, strict=True)], indexing="ij")
    ).astype(np.float64)

    def normalised_radius(offsets: np.ndarray) -> np.ndarray:
        """Radius in units of the lobed surface (<= 1 inside) at voxel-index offsets."""
        local = np.einsum("ij,jk,k...->i...", rot.T, linear, offsets) / axes[:, None, None, None]
        rho = np.sqrt((local**2).sum(axis=0))
        direction = local / np.maximum(rho, 1e-6)
        angles = np.einsum("kj,j...->k...", lobes, direction) + phases[:, None, None, None]
        bump = np.einsum("k,k...->...", weights, np.cos(angles))
        return rho / np.maximum(1.0 + irregular * bump, 0.2)

    sub = (np.arange(_SUPERSAMPLE) + 0.5) / _SUPERSAMPLE - 0.5
    occupancy = np.zeros(tuple(n), dtype=np.float32)
    for a in sub:
        for b in sub:
            for c in sub:
                occupancy += normalised_radius(idx + np.array([a, b, c])[:, None, None, None]) <= 1
    rho_centre = normalised_radius(idx)
    occupancy /= _SUPERSAMPLE**3
    if not occupancy.any():
        return None
    texture = np.ones(tuple(n), dtype=np.float32)
    hetero = float(rng.uniform(*config.heterogeneity))
    if hetero > 0:
        field_ = ndimage.gaussian_filter(
            rng.standard_normal(tuple(n)).astype(np.float32), max(radius / 3.0, 3.0) / spacing
        )
        field_ /= max(float(field_.std()), 1e-6)
        texture = np.clip(1.0 + hetero * field_, 0.4, None)
    core = np.zeros(tuple(n), dtype=bool)
    if necrotic:
        core_radius = float(rng.uniform(0.3, 0.6))
        core_uptake = float(rng.uniform(0.0, 0.2))
        core = rho_centre < core_radius
        texture = np.where(core, core_uptake, texture).astype(np.float32)
    uptake = occupancy * texture
    inner = occupancy >= 0.5
    peak = float(texture[inner].max()) if inner.any() else float(uptake.max())
    uptake = uptake / max(peak, 1e-6)
    label = inner & (texture / max(peak, 1e-6) >= config.label_fraction)
    if config.label_necrotic_core:
        label |= inner & core
    if not label.any():
        label = np.zeros_like(inner)
        label[np.unravel_index(int(np.argmax(uptake)), uptake.shape)] = True
    return _LesionTemplate(box, uptake.astype(np.float32), label, occupancy > 0)


def _correlated_noise(
    shape: tuple[int, ...], spacing: np.ndarray, corr_mm: float, rng: np.random.Generator
) -> np.ndarray:
    """Unit-variance Gaussian noise smoothed over ``corr_mm`` (reconstructed PET noise)."""
    white = rng.standard_normal(shape).astype(np.float32)
    if corr_mm <= 0:
        return white
    smooth = ndimage.gaussian_filter(white, corr_mm / spacing, mode="wrap", truncate=3.0)
    return smooth / max(float(smooth.std()), 1e-6)


# --------------------------------------------------------------------------------------------
# One scan
# --------------------------------------------------------------------------------------------


def insert_lesions(
    background: Background,
    analysis: BackgroundAnalysis,
    config: HybridConfig,
    rng: np.random.Generator,
    *,
    psf_fwhm_mm: float | None = None,
    n_lesions: int | None = None,
) -> HybridScan:
    """Insert synthetic lesions into ``background`` on its own grid (no augmentation).

    Args:
        background: the real scan.
        analysis: its :func:`analyse_background` result.
        config: insertion parameters.
        rng: random generator (all draws come from it).
        psf_fwhm_mm: blur of the inserted lesions (default: the background's PSF).
        n_lesions: number of lesions (default: drawn from ``config.n_lesions``).

    Returns:
        The hybrid scan; ``seg`` holds the background's disease (labels 1..n, components of
        the known-disease mask) and the inserted lesions (labels after them).
    """
    shape = background.suv.shape
    linear = np.asarray(background.affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    psf = background.psf_fwhm_mm if psf_fwhm_mm is None else psf_fwhm_mm
    sigma_vox = psf * _FWHM_TO_SIGMA / spacing
    pad = np.ceil(BLUR_TRUNCATE * sigma_vox).astype(int) + 1
    smooth_bg = ndimage.gaussian_filter(background.suv.astype(np.float32), 1.0)
    # Poisson-like noise: sd = k sqrt(SUV) with the liver's measured CV
    k_noise = config.noise_scale * analysis.noise_cv * np.sqrt(max(analysis.liver_suv_mean, 1e-3))

    seg = np.zeros(shape, dtype=np.uint16)
    disease_labels: list[int] = []
    if background.disease is not None:
        comps, n_comp = ndimage.label(background.disease, structure=np.ones((3, 3, 3)))
        seg[comps > 0] = comps[comps > 0]
        disease_labels = list(range(1, n_comp + 1))
    suv = background.suv.astype(np.float32).copy()
    added_total = np.zeros(shape, dtype=np.float32)
    taken = np.zeros(shape, dtype=bool)
    weights = np.array([config.site_weights.get(k, 0.0) for k in SITE_KINDS])
    clearance_mm = ndimage.distance_transform_edt(~analysis.forbidden, sampling=spacing)
    count = int(rng.integers(config.n_lesions[0], config.n_lesions[1] + 1))
    count = count if n_lesions is None else int(n_lesions)
    lesions: list[InsertedLesion] = []
    next_label = len(disease_labels) + 1
    voxel_ml = float(np.prod(spacing)) / 1000.0
    for _ in range(count):
        site = str(rng.choice(SITE_KINDS, p=weights / weights.sum()))
        mass = site == "soft_tissue" and rng.random() < config.mass_probability
        diameter = float(
            np.exp(rng.uniform(*np.log(config.mass_diameter_mm if mass else config.diameter_mm)))
        )
        candidates = analysis.sites.get(site)
        if candidates is None or not candidates.any():
            site, candidates = "soft_tissue", analysis.sites["soft_tissue"]
        allowed = candidates & ~taken
        if not allowed.any():
            break
        necrotic = diameter >= config.necrosis_min_diameter_mm and (
            rng.random() < config.necrosis_probability
        )
        template = None
        for _attempt in range(16):
            # cheap pre-filter (no forbidden voxel within most of the radius), then the exact
            # check of the rendered footprint
            pool = np.flatnonzero(allowed & (clearance_mm >= 0.4 * diameter))
            if pool.size == 0:
                if diameter <= config.diameter_mm[0]:
                    break
                diameter = max(diameter * 0.8, config.diameter_mm[0])
                continue
            center = np.array(np.unravel_index(int(rng.choice(pool)), shape))
            template = _render_template(center, diameter, shape, linear, pad, config, rng, necrotic)
            if (
                template is not None
                and not (analysis.forbidden[template.box] | taken[template.box])[
                    template.footprint
                ].any()
            ):
                break
            template = None
            diameter = max(diameter * 0.9, config.diameter_mm[0])
        if template is None:
            continue
        box = template.box
        blurred = ndimage.gaussian_filter(
            template.uptake, sigma_vox, mode="constant", truncate=BLUR_TRUNCATE
        )
        ring = ndimage.binary_dilation(template.footprint, iterations=2) & ~template.footprint
        local_bg = float(np.median(smooth_bg[box][ring])) if ring.any() else 0.0
        faint = bool(rng.random() < config.faint_probability)
        if faint:
            target = float(rng.uniform(*config.faint_suvmax))
        else:
            target = float(np.exp(rng.uniform(*np.log(config.avid_suvmax))))
        target = max(target, (1.0 + config.min_contrast) * local_bg, local_bg + 0.3)
        amplitude = (target - local_bg) / max(float(blurred.max()), 1e-6)
        added = (amplitude * blurred).astype(np.float32)
        noise = np.zeros_like(added)
        if k_noise > 0:
            noise = (
                k_noise
                * np.sqrt(added)
                * _correlated_noise(added.shape, spacing, config.noise_corr_mm, rng)
            )
        region = suv[box]
        suv[box] = np.clip(region + added + noise, 0.0, None)
        added_total[box] += added
        label = next_label
        next_label += 1
        seg_box = seg[box]
        seg_box[template.label & (seg_box == 0)] = label
        gap = ndimage.binary_dilation(
            template.footprint, iterations=int(np.ceil(config.lesion_gap_mm / spacing.min()))
        )
        taken[box] |= gap
        centre_vox = tuple(
            int(v)
            for v in (
                np.array([s.start for s in box]) + np.argwhere(template.label).mean(axis=0)
            ).round()
        )
        world = background.affine @ np.array([*centre_vox, 1.0])
        lesions.append(
            InsertedLesion(
                label=label,
                site="mass" if mass else site,
                center_voxel=(centre_vox[0], centre_vox[1], centre_vox[2]),
                center_world_mm=(
                    round(float(world[0]), 1),
                    round(float(world[1]), 1),
                    round(float(world[2]), 1),
                ),
                diameter_mm=round(diameter, 1),
                suvmax=round(target, 2),
                local_background_suv=round(local_bg, 2),
                faint=faint,
                necrotic=bool(necrotic),
                volume_ml=round(float(template.label.sum()) * voxel_ml, 2),
            )
        )
    return HybridScan(
        suv=suv,
        affine=np.asarray(background.affine, dtype=np.float64).copy(),
        seg=seg,
        organs=_organ_map(background, analysis, seg),
        added_suv=added_total,
        lesions=lesions,
        disease_labels=disease_labels,
        settings={
            "psf_fwhm_mm": round(float(psf), 2),
            "noise_cv_liver": round(float(analysis.noise_cv), 4),
            "liver_suv_mean": round(float(analysis.liver_suv_mean), 3),
            "noise_k": round(float(k_noise), 4),
        },
    )


def _organ_map(background: Background, analysis: BackgroundAnalysis, seg: np.ndarray) -> np.ndarray:
    """Annotated organs; other body voxels unknown (``ORGAN_IGNORE``); lesions and air 0.

    A region map names the physiological regions it outlines, not every organ (its 0 may be an
    unannotated liver or spleen), so only air and disease are taught as organ class 0 here.
    """
    organs = np.where(analysis.body, ORGAN_IGNORE, 0).astype(np.uint8)
    if background.organs is not None:
        annotated = background.organs > 0
        organs[annotated] = background.organs[annotated]
    organs[seg > 0] = 0  # labelled lesion voxels are disease, never organ
    return organs


def _resampled_grid(
    affine: np.ndarray, shape: tuple[int, ...], spacing_new: np.ndarray
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Same axes and field of view, another voxel size (first voxel corner kept)."""
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    factor = spacing_new / spacing
    new = np.eye(4)
    new[:3, :3] = linear * factor
    corner = affine[:3, 3] - linear @ np.full(3, 0.5)
    new[:3, 3] = corner + new[:3, :3] @ np.full(3, 0.5)
    new_shape = np.maximum(np.floor(np.asarray(shape) / factor), 1).astype(int)
    return new, (int(new_shape[0]), int(new_shape[1]), int(new_shape[2]))


def generate_hybrid_scan(
    background: Background,
    config: HybridConfig,
    seed: int,
    analysis: BackgroundAnalysis | None = None,
) -> HybridScan:
    """One augmented hybrid scan of ``background``, reproducible from ``seed``.

    The background is scaled, blurred and noised first (each with its probability), the noise
    CV is measured again on the augmented image, lesions are inserted with the combined PSF, and
    the result is resampled to another voxel size with its probability (SUV trilinear, labels
    nearest neighbour).
    """
    rng = np.random.default_rng(np.random.SeedSequence(int(seed)))
    analysis = analysis or analyse_background(background, config.avoid_margin_mm)
    spacing = background.spacing_mm
    suv = background.suv.astype(np.float32)
    scale = float(np.exp(rng.uniform(*np.log(config.suv_scale))))
    suv = suv * np.float32(scale)
    psf = background.psf_fwhm_mm
    settings: dict[str, Any] = {"suv_scale": round(scale, 4)}
    if rng.random() < config.blur_probability:
        extra = float(rng.uniform(*config.blur_fwhm_mm))
        suv = ndimage.gaussian_filter(suv, extra * _FWHM_TO_SIGMA / spacing, truncate=BLUR_TRUNCATE)
        psf = float(np.hypot(psf, extra))
        settings["extra_blur_fwhm_mm"] = round(extra, 2)
    if rng.random() < config.extra_noise_probability:
        cv = float(rng.uniform(*config.extra_noise_cv))
        level = analysis.liver_suv_mean * scale
        noise = _correlated_noise(suv.shape, spacing, config.noise_corr_mm, rng)
        suv = np.clip(suv + cv * np.sqrt(level) * np.sqrt(np.maximum(suv, 0.0)) * noise, 0, None)
        settings["extra_noise_cv"] = round(cv, 3)
    augmented = Background(
        name=background.name,
        suv=suv.astype(np.float32),
        affine=background.affine,
        psf_fwhm_mm=psf,
        disease=background.disease,
        avoid=background.avoid,
        organs=background.organs,
        source=background.source,
    )
    if analysis.liver.any():
        core = ndimage.binary_erosion(analysis.liver, iterations=2)
        core = core if core.sum() > 50 else analysis.liver
        values = suv[core].astype(np.float64)
        analysis = BackgroundAnalysis(
            body=analysis.body,
            liver=analysis.liver,
            liver_suv_mean=float(values.mean()),
            noise_cv=float(values.std() / max(values.mean(), 1e-6)),
            forbidden=analysis.forbidden,
            sites=analysis.sites,
        )
    scan = insert_lesions(augmented, analysis, config, rng, psf_fwhm_mm=psf)
    scan.settings = {**settings, **scan.settings}
    if rng.random() < config.resample_probability:
        inplane = float(rng.uniform(*config.spacing_mm))
        new_spacing = np.array([inplane, inplane, float(rng.uniform(*config.spacing_mm))])
        axial = int(np.argmax(np.abs(np.asarray(background.affine)[2, :3]) / spacing))
        order = [a for a in range(3) if a != axial]
        target = np.empty(3)
        target[order[0]] = target[order[1]] = new_spacing[0]
        target[axial] = new_spacing[2]
        affine, shape = _resampled_grid(scan.affine, scan.suv.shape, target)
        scan.suv = np.clip(resample_to_grid(scan.suv, scan.affine, shape, affine), 0, None)
        scan.seg = resample_to_grid(scan.seg, scan.affine, shape, affine, order=0).astype(np.uint16)
        scan.organs = resample_to_grid(scan.organs, scan.affine, shape, affine, order=0).astype(
            np.uint8
        )
        scan.affine = affine
        scan.settings["resampled_spacing_mm"] = [round(float(v), 3) for v in target]
    return scan


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


def _variant_seed(seed: int, background: str, index: int) -> int:
    """Independent, reproducible seed of variant ``index`` of ``background``."""
    key = [int(seed), int(index), *background.encode()]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def _write_scan(folder: Path, scan: HybridScan) -> dict[str, str]:
    save_nifti(scan.suv.astype(np.float32), scan.affine, folder / SUV_FILE)
    dtype = np.uint8 if int(scan.seg.max(initial=0)) < 256 else np.uint16
    save_nifti(scan.seg.astype(dtype), scan.affine, folder / SEG_FILE)
    save_nifti(scan.organs.astype(np.uint8), scan.affine, folder / ORGANS_FILE)
    return {"suv": SUV_FILE, "seg": SEG_FILE, "organs": ORGANS_FILE}


def generate_hybrid_dataset(
    out_dir: str | Path,
    backgrounds: Sequence[Background],
    n_variants: int,
    seed: int,
    *,
    config: HybridConfig | None = None,
    skipped: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``n_variants`` hybrid scans per background in the autoPET layout.

    Layout: ``out_dir/autopet/<background>/v<NNNN>/{SUV,SEG,ORGANS}.nii.gz`` (the background
    is the patient, so a split by patient never puts one background in two splits),
    ``out_dir/truth/<background>_v<NNNN>.json`` (inserted lesions, settings) and
    ``out_dir/hybrid.json`` (backgrounds used and not used, config, seed, timing).

    Returns:
        Path of ``hybrid.json``.
    """
    config = config or HybridConfig()
    out_dir = Path(out_dir)
    if n_variants < 1:
        raise PetflareInputError(out_dir, f"n_variants must be >= 1, got {n_variants}")
    if not backgrounds:
        raise PetflareInputError(out_dir, "no background to insert lesions into")
    records: list[dict[str, Any]] = []
    used: list[dict[str, Any]] = []
    start = time.perf_counter()
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        for bg in backgrounds:
            t0, cpu0 = time.perf_counter(), time.process_time()
            analysis = analyse_background(bg, config.avoid_margin_mm)
            analyse_s, analyse_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
            used.append(
                {
                    "name": bg.name,
                    "source": bg.source,
                    "shape": list(bg.suv.shape),
                    "spacing_mm": [round(float(v), 4) for v in bg.spacing_mm],
                    "psf_fwhm_mm": bg.psf_fwhm_mm,
                    "liver_suv_mean": round(analysis.liver_suv_mean, 3),
                    "noise_cv_liver": round(analysis.noise_cv, 4),
                    "liver_source": "annotation" if bg.organs is not None else "heuristic",
                    "known_disease_labelled": bg.disease is not None,
                    "organ_labels": (
                        "annotation" if bg.organs is not None else f"unknown ({ORGAN_IGNORE})"
                    ),
                    "analysis_seconds": round(analyse_s, 2),
                    "analysis_cpu_seconds": round(analyse_cpu_s, 2),
                }
            )
            for index in range(n_variants):
                t1, cpu1 = time.perf_counter(), time.process_time()
                variant = f"v{index:04d}"
                scan_seed = _variant_seed(seed, bg.name, index)
                scan = generate_hybrid_scan(bg, config, scan_seed, analysis)
                rel = Path("autopet") / bg.name / variant
                files = _write_scan(tmp / rel, scan)
                seconds = time.perf_counter() - t1
                cpu_seconds = time.process_time() - cpu1
                truth = {
                    "schema_version": HYBRID_SCHEMA_VERSION,
                    "background": bg.name,
                    "variant": variant,
                    "seed": scan_seed,
                    "settings": scan.settings,
                    "disease_labels": scan.disease_labels,
                    "lesions": [asdict(les) for les in scan.lesions],
                    "labels_present": sorted(int(v) for v in np.unique(scan.seg) if v > 0),
                    "seconds": round(seconds, 2),
                }
                atomic_write_text(
                    tmp / "truth" / f"{bg.name}_{variant}.json", json.dumps(truth, indent=1)
                )
                records.append(
                    {
                        "patient_id": bg.name,
                        "study_id": variant,
                        **{k: (rel / v).as_posix() for k, v in files.items()},
                        "n_inserted": len(scan.lesions),
                        "seconds": round(seconds, 2),
                        "cpu_seconds": round(cpu_seconds, 2),
                    }
                )
        meta = {
            "schema_version": HYBRID_SCHEMA_VERSION,
            "generator": "petflare.synth.hybrid",
            "seed": int(seed),
            "n_variants": int(n_variants),
            "backgrounds_used": used,
            "backgrounds_not_used": dict(skipped or {}),
            "config": asdict(config),
            "label_rule": (
                "inserted lesion: voxels at least half inside whose true added uptake is >= "
                f"{config.label_fraction} x the lesion's peak; background disease (RTSTRUCT GTV, "
                "annotated known disease) labelled as lesion"
            ),
            "scans": records,
            "total_seconds": round(time.perf_counter() - start, 1),
        }
        atomic_write_text(tmp / "hybrid.json", json.dumps(meta, indent=1))
    return out_dir / "hybrid.json"
