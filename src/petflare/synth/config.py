"""Parameters of the synthetic whole-body FDG-PET/CT phantom (every range is sampled per scan)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

_AXIS_LETTERS = ("RL", "AP", "SI")  # world axis x, y, z; first letter = positive direction


def _all_orientations() -> tuple[str, ...]:
    """The 48 axis-code strings of axis-aligned grids ("RAS", "LPS", "SAL", ...)."""
    codes = []
    for a in "RLAPSI":
        for b in "RLAPSI":
            for c in "RLAPSI":
                axes = {
                    next(i for i, pair in enumerate(_AXIS_LETTERS) if x in pair) for x in a + b + c
                }
                if len(axes) == 3:
                    codes.append(a + b + c)
    return tuple(codes)


#: Every orientation an axis-aligned voxel grid can have, in nibabel's axis-code convention.
ALL_ORIENTATIONS: tuple[str, ...] = _all_orientations()


def _pair(value: Any, name: str) -> tuple[float, float]:
    """Coerce a (low, high) range given as list/tuple/scalar into a sorted float tuple."""
    if isinstance(value, (int, float)):
        return (float(value), float(value))
    low, high = (float(v) for v in value)
    if low > high:
        raise ValueError(f"{name}: low {low} > high {high}")
    return (low, high)


@dataclass(frozen=True)
class PhantomConfig:
    """How the phantom's scans are formed; ranges are ``(low, high)`` sampled uniformly per scan.

    The ``*_suv`` uptake ranges are drawn per patient (per scan where uptake changes between
    scans); their defaults are the original phantom's levels, which phantom v2
    (configs/synth/v2.yaml, docs/phantom.md) widens to what real scans show. The v2 options
    (extra physiology, deformation, faint lesions) are off at their defaults and draw from
    random streams of their own, so the default config's images do not change.

    Attributes:
        spacing_inplane_mm: transaxial voxel size (x = y) range. Real scanners: 2-5 mm.
        spacing_slice_mm: slice spacing range (z).
        min_voxel_volume_mm3: smallest voxel volume: with fine in-plane pixels the slice
            spacing is drawn from ``[max(low, this / inplane^2), high]`` (a scan's generation
            time grows with its voxel count); 0 (default) keeps the two draws independent.
        psf_fwhm_mm: isotropic Gaussian point-spread function FWHM range (reconstructed resolution).
        noise_cv_liver: coefficient of variation of the noise in the liver (Poisson-like noise,
            standard deviation grows with sqrt of the local SUV).
        noise_corr_mm: correlation length (Gaussian sigma) of the reconstructed noise.
        ct_noise_hu: CT noise standard deviation range (HU) after resampling to the PET grid.
        orientations: axis codes the stored arrays may have (one drawn per scan); None means any
            of the 48 axis-aligned orientations, ``("RAS",)`` gives canonical arrays only.
        max_shift_mm: per-axis repositioning of the patient between the two scans (+-).
        max_rotation_deg: per-axis patient rotation in each scan (+-).
        height_m: patient height range; the field of view runs from above the vertex to the thighs.
        girth: body-girth factor range (1 = average adult; 1.3 = obese).
        arms_up_probability: probability that the arms are raised above the head.
        avid_liver_ratio: a lesion (or a nodule) is FDG-avid when its true viable-tissue SUV is
            at least this multiple of the true liver SUVmean (PERCIST's 1.5: the scenarios'
            respond / active states are defined against it).
        mask_liver_ratio: a lesion (or a nodule) is drawn into the lesion mask when its true
            viable-tissue SUV is at least this multiple of the true liver SUVmean; None: the same
            as ``avid_liver_ratio``. A lower value (e.g. 1.0) labels moderately avid tumour
            tissue too, as a reader contouring every visible tumour does (autoPET-style labels,
            real GTVs); it changes masks only, never the scenario or the images.
        heterogeneity_scale: factor on every lesion's uptake heterogeneity (texture standard
            deviation); real sarcomas and large GIST masses are more heterogeneous than 1.
        lesion_falloff: range of the share of a lesion's viable uptake lost from its centre
            to its edge, drawn once per lesion (both timepoints); ``(0, 0)`` (default) gives
            uniform lesions with a sharp edge, larger values the gradual falloff of many real
            tumours, whose GTV (the mask) reaches well below the hottest part. Drawn from a
            stream of its own: images of the default config do not change.
        n_baseline_lesions: inclusive range of the number of lesions at baseline.
        max_lesion_diameter_mm: largest baseline mass diameter.
        brown_fat_probability: probability of physiologic brown-fat uptake in a scan (a distractor).
        myocardium_suv: SUV range of a left-ventricular myocardium that takes up FDG (65% of
            scans, drawn afresh at each scan; the other 35% are suppressed by fasting, SUV
            0.8-2). The default 2-8 is a moderate heart; real non-fasted hearts reach 10-20,
            hotter than most lesions, and a network that never saw one calls it a lesion.
        brain_suv: grey-matter level (the brain's SUVmax before blur and noise).
        myocardium_fasted_probability: share of scans with a suppressed (fasted) heart.
        kidney_suv: renal parenchyma.
        urine_suv: urine in the renal pelvis (and ureters).
        bladder_suv: bladder urine.
        bowel_suv: bowel wall level (loops reach ~2.5 x it).
        salivary_suv: parotid (and, with vocal cords, submandibular) glands.
        tonsil_suv: palatine tonsils.
        brown_fat_suv: activated brown fat.
        myocardium_patchy_probability: share of visible hearts with patchy, regionally
            uneven uptake (a smooth field scales the wall by 0.15-2).
        bladder_fill: range of a per-scan factor on the bladder's radii (any filling).
        ureter_probability: per scan and side, the chance of urine in the ureter (segments of
            it, as peristalsis leaves them).
        vocal_cords_probability: per scan, the chance of vocal-cord (and submandibular
            gland) uptake.
        exercised_muscle_probability: per scan, the chance of muscles that worked before the
            scan (1-3 of psoas, thighs, paraspinal, neck, upper arms).
        exercised_muscle_suv: their SUV range.
        joint_probability: per scan, the chance of inflamed joints (shoulders and/or hips).
        joint_suv: their SUV range.
        injection_site_probability: per scan, the chance of a hot injection-site spot
            (tracer left in an arm vein or extravasated).
        injection_site_suv: its SUV range.
        organ_deformation_mm: amplitude (mm) of a smooth random displacement of the body and
            organ coordinates, the same in both scans of a patient, so organ shapes are not
            fixed ellipsoids; 0 disables it.
        n_faint_lesions: inclusive range of extra faint lesions per patient (stable, in both
            scans, always in the lesion mask whatever ``mask_liver_ratio``).
        faint_lesion_suv: their viable-tissue SUV range (at least 1.3 x the liver in the liver).
    """

    spacing_inplane_mm: tuple[float, float] = (3.6, 4.4)
    spacing_slice_mm: tuple[float, float] = (3.3, 4.5)
    min_voxel_volume_mm3: float = 0.0
    psf_fwhm_mm: tuple[float, float] = (5.0, 8.0)
    noise_cv_liver: tuple[float, float] = (0.06, 0.3)
    noise_corr_mm: tuple[float, float] = (2.0, 4.0)
    ct_noise_hu: tuple[float, float] = (5.0, 20.0)
    orientations: tuple[str, ...] | None = None
    max_shift_mm: float = 10.0
    max_rotation_deg: float = 3.0
    height_m: tuple[float, float] = (1.55, 1.95)
    girth: tuple[float, float] = (0.85, 1.35)
    arms_up_probability: float = 0.6
    avid_liver_ratio: float = 1.5
    mask_liver_ratio: float | None = None
    heterogeneity_scale: float = 1.0
    lesion_falloff: tuple[float, float] = (0.0, 0.0)
    n_baseline_lesions: tuple[int, int] = (2, 7)
    max_lesion_diameter_mm: float = 120.0
    brown_fat_probability: float = 0.08
    myocardium_suv: tuple[float, float] = (2.0, 8.0)
    brain_suv: tuple[float, float] = (6.0, 10.0)
    myocardium_fasted_probability: float = 0.35
    kidney_suv: tuple[float, float] = (2.5, 4.0)
    urine_suv: tuple[float, float] = (5.0, 40.0)
    bladder_suv: tuple[float, float] = (8.0, 50.0)
    bowel_suv: tuple[float, float] = (1.0, 2.4)
    salivary_suv: tuple[float, float] = (1.5, 2.8)
    tonsil_suv: tuple[float, float] = (2.0, 4.5)
    brown_fat_suv: tuple[float, float] = (2.0, 5.0)
    myocardium_patchy_probability: float = 0.0
    bladder_fill: tuple[float, float] = (1.0, 1.0)
    ureter_probability: float = 0.0
    vocal_cords_probability: float = 0.0
    exercised_muscle_probability: float = 0.0
    exercised_muscle_suv: tuple[float, float] = (1.5, 6.0)
    joint_probability: float = 0.0
    joint_suv: tuple[float, float] = (1.5, 4.0)
    injection_site_probability: float = 0.0
    injection_site_suv: tuple[float, float] = (5.0, 60.0)
    organ_deformation_mm: float = 0.0
    n_faint_lesions: tuple[int, int] = (0, 0)
    faint_lesion_suv: tuple[float, float] = (2.0, 4.0)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "orientations":
                if value is not None:
                    codes = tuple(str(v).upper() for v in value)
                    bad = [c for c in codes if c not in ALL_ORIENTATIONS]
                    if bad:
                        raise ValueError(f"orientations: not axis codes: {bad}")
                    object.__setattr__(self, f.name, codes)
            elif f.name in ("n_baseline_lesions", "n_faint_lesions"):
                low, high = (int(v) for v in value)
                least = 1 if f.name == "n_baseline_lesions" else 0
                if not least <= low <= high:
                    raise ValueError(f"{f.name} must satisfy {least} <= low <= high")
                object.__setattr__(self, f.name, (low, high))
            elif isinstance(value, Sequence) and not isinstance(value, str):
                object.__setattr__(self, f.name, _pair(value, f.name))  # also OmegaConf lists
        if min(self.spacing_inplane_mm + self.spacing_slice_mm) <= 0:
            raise ValueError("spacings must be positive")
        if self.mask_liver_ratio is not None and self.mask_liver_ratio <= 0:
            raise ValueError("mask_liver_ratio must be positive (or None)")
        if not 0.0 <= self.lesion_falloff[0] <= self.lesion_falloff[1] < 1.0:
            raise ValueError("lesion_falloff must satisfy 0 <= low <= high < 1")
        if self.heterogeneity_scale < 0:
            raise ValueError("heterogeneity_scale must be >= 0")
        if self.myocardium_suv[0] <= 0:
            raise ValueError("myocardium_suv must be positive")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_probability") and not 0.0 <= value <= 1.0:
                raise ValueError(f"{f.name} must lie in [0, 1]")
            if f.name.endswith("_suv") and value[0] <= 0:
                raise ValueError(f"{f.name} must be positive")
        if self.bladder_fill[0] <= 0:
            raise ValueError("bladder_fill must be positive")
        if self.organ_deformation_mm < 0:
            raise ValueError("organ_deformation_mm must be >= 0")


def _tag_value(value: Any) -> str:
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "-".join(_tag_value(v) for v in value)
    return re.sub(r"[^A-Za-z0-9.+-]", "", str(value))


#: Longest readable cache-key part; longer ones (e.g. phantom v2's) become a hash of it.
MAX_TAG_CHARS = 200


def phantom_tag(overrides: Mapping[str, Any]) -> str:
    """File-name-safe cache-key part for PhantomConfig overrides ('' for none).

    ``{"psf_fwhm_mm": [4.5, 9.0]}`` -> ``"psf_fwhm_mm-4.5-9.0"`` (no spaces or brackets, so the
    folder name is also a valid glob pattern). A tag longer than ``MAX_TAG_CHARS`` becomes
    ``"h"`` + 16 hex digits of its SHA-1, so folder names stay within file-system limits.
    """
    tag = "_".join(f"{k}-{_tag_value(v)}" for k, v in sorted(overrides.items()))
    if len(tag) > MAX_TAG_CHARS:
        return "h" + hashlib.sha1(tag.encode()).hexdigest()[:16]
    return tag


def phantom_overrides(config: PhantomConfig) -> dict[str, Any]:
    """The fields of ``config`` that differ from the defaults (``PhantomConfig(**them)``
    rebuilds it), e.g. to name a cache folder after a preset such as configs/synth/v2.yaml."""
    default = PhantomConfig()
    return {
        f.name: getattr(config, f.name)
        for f in fields(config)
        if getattr(config, f.name) != getattr(default, f.name)
    }
