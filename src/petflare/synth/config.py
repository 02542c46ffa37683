"""Parameters of the synthetic whole-body FDG-PET/CT phantom (every range is sampled per scan)."""

from __future__ import annotations

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

    Attributes:
        spacing_inplane_mm: transaxial voxel size (x = y) range. Real scanners: 2-5 mm.
        spacing_slice_mm: slice spacing range (z).
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
    """

    spacing_inplane_mm: tuple[float, float] = (3.6, 4.4)
    spacing_slice_mm: tuple[float, float] = (3.3, 4.5)
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
            elif f.name == "n_baseline_lesions":
                low, high = (int(v) for v in value)
                if not 1 <= low <= high:
                    raise ValueError("n_baseline_lesions must satisfy 1 <= low <= high")
                object.__setattr__(self, f.name, (low, high))
            elif isinstance(value, (list, tuple)):
                object.__setattr__(self, f.name, _pair(value, f.name))
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
        if not 0.0 <= self.arms_up_probability <= 1.0:
            raise ValueError("arms_up_probability must lie in [0, 1]")


def _tag_value(value: Any) -> str:
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "-".join(_tag_value(v) for v in value)
    return re.sub(r"[^A-Za-z0-9.+-]", "", str(value))


def phantom_tag(overrides: Mapping[str, Any]) -> str:
    """File-name-safe cache-key part for PhantomConfig overrides ('' for none).

    ``{"psf_fwhm_mm": [4.5, 9.0]}`` -> ``"psf_fwhm_mm-4.5-9.0"`` (no spaces or brackets, so the
    folder name is also a valid glob pattern).
    """
    return "_".join(f"{k}-{_tag_value(v)}" for k, v in sorted(overrides.items()))
