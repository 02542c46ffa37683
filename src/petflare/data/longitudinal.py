"""Baseline/follow-up pairs for the change-pattern head: features, caching and a DataModule.

Per pair, the expensive work is done once and cached to disk (``.npz``):

1. quantification and matching with :func:`petflare.quant.compare_studies` (which registers the
   follow-up to the baseline; the registration is kept and reused for every mask variant and
   mask source of a pair),
2. lesion units: every follow-up lesion with the baseline lesions it matches (persisting or
   new) and every resolved baseline lesion; a unit's region is the union of its lesions' masks
   at both time points, on the baseline grid,
3. the baseline and the aligned follow-up resampled onto the segmentation model's grid (RAS,
   the model's spacing, SUV scaled as in training), cropped around the lesions with a margin,
4. encoder features of both scans pooled inside every unit region and the global regions.

Training pairs get extra *mask variants*: the ground-truth masks randomly dilated, eroded or
with small lesions dropped, so the head learns from masks that look like predictions. Because
the pooling is cheap and the encoder runs once per scan, each variant costs one quantification.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from scipy import ndimage
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from petflare.constants import MANIFEST_PATH_COLUMNS, PATTERN_TO_INDEX, PATTERNS, Keys
from petflare.data.sources import extra_phantom_set, phantom_set_suffix
from petflare.data.transforms import PreprocessingConfig, ScaleSuv, liver_suv_scale
from petflare.errors import PetflareInputError
from petflare.io.atomic import atomic_path, atomic_write_text
from petflare.io.loading import resample_to_grid
from petflare.io.study import Study
from petflare.networks.change_head import global_regions, pool_regions
from petflare.networks.encoder import EncoderFeatures
from petflare.quant.change import NoduleCriteria, nodule_evidence, pct_change
from petflare.quant.metrics import SUV_PEAK_RADIUS_MM, ball_kernel, ball_mean_map
from petflare.quant.rules import RuleThresholds, counts_as_new

log = logging.getLogger(__name__)

#: Version of the cached per-pair feature layout; bump when features change.
FEATURE_VERSION = "9"
#: Version of the cached quantification (reports, predicted masks); independent of the features.
REPORT_VERSION = "3"  # 3: registration blocks per scan and axis (petflare.quant.registration)


class HeadKeys:
    """Batch keys of the change-pattern head's data."""

    LESION_POOLED = "lesion_pooled"
    LESION_FEATURES = "lesion_features"
    LESION_VALID = "lesion_valid"
    GLOBAL_POOLED = "global_pooled"
    PAIR_FEATURES = "pair_features"
    LABEL = "label"


#: Per-lesion-unit CT correlate (all 0 without a CT; see ``PairSampleDataset.ct_dropout``).
CT_FEATURE_NAMES = (
    "has_ct",
    "hu_followup",  # lesion HU / 100 on the follow-up CT (fat density: brown fat)
    "hu_change",  # persisting: Choi's HU change as a fraction (responding GIST: hypodense)
    "followup_shell_hu",  # unmatched: follow-up HU / 100 in a 3-12 mm shell around it
    "baseline_site_hu_contrast",  # unmatched: baseline HU site - shell, / 100
)

#: Per-lesion-unit quantitative change features (log1p of SUVs and volumes keeps scales tame).
LESION_FEATURE_NAMES = (
    "present_baseline",
    "present_followup",
    "log_volume_ml_baseline",
    "log_volume_ml_followup",
    "log_suv_max_baseline",
    "log_suv_max_followup",
    "log_suv_max_ratio",
    "log_suv_peak_ratio",
    "log_suv_mean_ratio",
    "log_volume_ratio",
    "focal_ratio_baseline",
    "focal_ratio_followup",
    "hotspot_change",
    "rest_change",
    "uptake_rose",
    "suv_peak_followup_over_liver",
    "suv_peak_baseline_over_liver",
    "nodule_evidence",  # quant's intratumoural-nodule criteria met (Choi PD / rule R2)
    "real_new_lesion",  # unmatched, above the rules' size/uptake floor, uptake new at its site
    "new_site_uptake_ratio",  # unmatched: baseline SUVmean at the site / the lesion's SUVmean
    "log_n_fragments",  # follow-up lesions sharing this unit's baseline lesion(s) (split mass)
    "fragment_volume_share",  # this follow-up lesion's share of those fragments' volume
    *CT_FEATURE_NAMES,
)

#: Scaled PET (network input units) inside each unit's region, appended to the lesion features:
#: the baseline uptake at a "new" site tells a re-activated known site from a really new one.
#: The voxelwise ones compare both scans on the same (registered) voxels, so they see a focal
#: rise inside a mass whose follow-up mask missed it, or a rise spread through a whole lesion,
#: without depending on how the segmentation cut the follow-up (see :func:`region_change_stats`).
REGION_PET_FEATURE_NAMES = (
    "pet_mean_baseline_in_region",
    "pet_mean_followup_in_region",
    "pet_max_baseline_in_region",
    "pet_max_followup_in_region",
    "peak_contrast_baseline",  # peak (1 ml ball mean) - median, log1p(SUV) units
    "peak_contrast_followup",
    "rise_at_followup_peak",  # follow-up - baseline peak-filtered value at the follow-up peak
    "relative_rise_at_followup_peak",  # the same minus the region's median change
    "contrast_gain",  # peak contrast follow-up - baseline: a focus emerging from its host
    "max_local_rise",  # largest voxelwise rise of the peak-filtered images in the region
    "rise_fraction",  # share of the region whose uptake rose by more than RISE_LOG
    "fall_fraction",  # share of the region whose uptake fell by more than RISE_LOG
    "hot_fraction_followup",  # share of the region at >= 50% of the follow-up peak SUV
    "shell_contrast_baseline",  # region peak - median of a shell around the region, baseline
    "shell_contrast_followup",  # the same at follow-up: a focus vs a hot organ around it
    "shell_rise",  # median follow-up - baseline change in the shell: the neighbourhood lit up
    "log_hot_extent",  # log(volume hot with the focus / region volume): a lesion vs an organ
)

_HOT_EXTENT = REGION_PET_FEATURE_NAMES.index("log_hot_extent")

#: Thickness (mm) of the shell around a unit region whose uptake is the unit's surroundings.
SHELL_MM = 12.0

#: Voxelwise change (log1p SUV) counted as a rise or a fall: about +-35% of SUV + 1.
RISE_LOG = 0.3

#: Every per-lesion input of the head, in order (quantitative, then region PET).
HEAD_LESION_FEATURE_NAMES = (*LESION_FEATURE_NAMES, *REGION_PET_FEATURE_NAMES)

#: Per-pair quantitative change features.
PAIR_FEATURE_NAMES = (
    "log_n_baseline",
    "log_n_followup",
    "log_n_new",
    "log_n_resolved",
    "fraction_baseline_rose",
    "log_new_volume_ml",
    "log_new_max_suv_peak",
    "total_tlg_change",
    "rise_spread_cm",
    "max_focal_ratio_followup",
    "max_hotspot_change",
    "median_suv_peak_change",
    "fraction_units_rose",
    "liver_ratio_followup_baseline",
    *(f"rules_say_{p}" for p in PATTERNS),  # the rule-based call, one-hot (stacking)
)


def _f(value: float | None, default: float = 0.0) -> float:
    return default if value is None or not math.isfinite(float(value)) else float(value)


def _pct(value: float | None, clip: float = 5.0) -> float:
    """Percent change as a clipped fraction (``+30 %`` -> ``0.3``)."""
    return float(np.clip(_f(value) / 100.0, -clip, clip))


# ----------------------------------------------------------------------------- lesion units


@dataclass
class LesionUnit:
    """One matched lesion across time points and its quantitative change.

    Attributes:
        kind: ``persisting``, ``new`` or ``resolved``.
        followup_ids: follow-up instance ids (empty for a resolved lesion).
        baseline_ids: baseline instance ids (empty for a new lesion).
        centre_mm: world (RAS mm) position used in explanations: the follow-up hotspot, else
            the follow-up centroid, else the baseline centroid.
        features: vector in ``LESION_FEATURE_NAMES`` order.
        info: readable values for explanations (SUVs, volumes, focal ratios).
    """

    kind: str
    followup_ids: list[int]
    baseline_ids: list[int]
    centre_mm: list[float]
    features: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (features omitted; they are stored as arrays)."""
        return {
            "kind": self.kind,
            "followup_ids": self.followup_ids,
            "baseline_ids": self.baseline_ids,
            "centre_mm": [float(c) for c in self.centre_mm],
            "info": self.info,
        }


def lesion_units(report: Any) -> list[LesionUnit]:
    """Lesion units of a :class:`petflare.quant.PairReport` (follow-up lesions, then resolved).

    ``features`` holds the ``LESION_FEATURE_NAMES`` values; :func:`sample_from_features`
    appends the ``REGION_PET_FEATURE_NAMES`` measured on the aligned images.
    """
    liver_b = _f(report.baseline.liver.suv_mean, 0.0) or None
    liver_f = _f(report.followup.liver.suv_mean, 0.0) or None
    changes = {c.followup_id: c for c in report.changes}
    units: list[LesionUnit] = []
    for match in report.matches:
        if match.timepoint == "followup":
            fol = report.followup.lesion(match.lesion_id)
            change = changes.get(match.lesion_id)
            base_ids = list(match.matched_ids)
            bases = [report.baseline.lesion(i) for i in base_ids]
            units.append(
                _unit(
                    "persisting" if bases else "new",
                    [match.lesion_id],
                    base_ids,
                    fol,
                    bases,
                    change,
                    liver_b,
                    liver_f,
                    None if bases else match,
                )
            )
        elif match.status == "resolved":
            base = report.baseline.lesion(match.lesion_id)
            units.append(
                _unit("resolved", [], [match.lesion_id], None, [base], None, liver_b, liver_f)
            )
    _mark_fragments(units)
    return units


_N_FRAGMENTS = LESION_FEATURE_NAMES.index("log_n_fragments")
_FRAGMENT_SHARE = LESION_FEATURE_NAMES.index("fragment_volume_share")


def _mark_fragments(units: Sequence[LesionUnit]) -> None:
    """Fill the fragment features of persisting units that share baseline lesions.

    A mass that the follow-up segmentation cut into pieces gives several persisting units
    matched to the same baseline lesion; each piece alone can look like a focus left inside a
    responding mass. Pieces are grouped transitively through shared baseline ids; every piece
    gets log(number of pieces) and its share of the pieces' follow-up volume.
    """
    persisting = [u for u in units if u.kind == "persisting"]
    group = list(range(len(persisting)))

    def root(i: int) -> int:
        while group[i] != i:
            group[i] = group[group[i]]
            i = group[i]
        return i

    owner: dict[int, int] = {}
    for i, unit in enumerate(persisting):
        for b in unit.baseline_ids:
            if b in owner:
                group[root(i)] = root(owner[b])
            else:
                owner[b] = i
    members: dict[int, list[int]] = {}
    for i in range(len(persisting)):
        members.setdefault(root(i), []).append(i)
    for idx in members.values():
        volumes = [float(persisting[i].info["volume_ml_followup"]) for i in idx]
        total = sum(volumes)
        for i, vol in zip(idx, volumes, strict=True):
            persisting[i].features[_N_FRAGMENTS] = float(np.log(len(idx)))
            persisting[i].features[_FRAGMENT_SHARE] = vol / total if total > 0 else 1.0 / len(idx)
            persisting[i].info["n_fragments"] = len(idx)


def _unit(
    kind: str,
    followup_ids: list[int],
    baseline_ids: list[int],
    fol: Any,
    bases: list[Any],
    change: Any,
    liver_b: float | None,
    liver_f: float | None,
    new_match: Any | None = None,
) -> LesionUnit:
    vol_b = sum(b.volume_ml for b in bases)
    vol_f = fol.volume_ml if fol is not None else 0.0
    max_b = max((b.suv_max for b in bases), default=0.0)
    max_f = fol.suv_max if fol is not None else 0.0
    peak_b = max((b.suv_peak for b in bases), default=0.0)
    peak_f = fol.suv_peak if fol is not None else 0.0
    mean_b = (sum(b.suv_mean * b.volume_ml for b in bases) / vol_b) if vol_b > 0 else 0.0
    mean_f = fol.suv_mean if fol is not None else 0.0
    focal_b = max((_f(b.focality.ratio, 1.0) for b in bases if b.focality), default=1.0)
    focal_f = _f(fol.focality.ratio, 1.0) if fol is not None and fol.focality else 1.0
    hot_change = _pct(change.hotspot_change_pct) if change is not None else 0.0
    rest_change = _pct(change.rest_change_pct) if change is not None else 0.0
    rose = float(bool(change.uptake_rose)) if change is not None else 0.0
    site_ratio = 0.0
    if new_match is not None and new_match.baseline_site_suv_mean is not None and mean_f > 0:
        site_ratio = float(np.clip(new_match.baseline_site_suv_mean / mean_f, 0.0, 3.0))
    is_new = new_match is not None and counts_as_new(new_match, fol, RuleThresholds())
    hu_f = None if fol is None else fol.hu_mean
    has_ct = hu_f is not None or any(b.hu_mean is not None for b in bases)

    def hu(value: float | None) -> float:
        return float(np.clip(_f(value) / 100.0, -10.0, 10.0))

    ct_features = [
        float(has_ct),
        hu(hu_f),
        # the raw HU percent change the shipped heads were trained on (the report's
        # hu_change_pct is null below a 20 HU baseline; this feature is clipped to +-500%)
        _pct(pct_change(change.hu_mean_baseline, change.hu_mean_followup))
        if change is not None
        else 0.0,
        hu(new_match.followup_shell_hu_mean) if new_match is not None else 0.0,
        hu(new_match.baseline_site_hu_contrast) if new_match is not None else 0.0,
    ]
    features = np.array(
        [
            float(bool(bases)),
            float(fol is not None),
            np.log1p(vol_b),
            np.log1p(vol_f),
            np.log1p(max_b),
            np.log1p(max_f),
            np.log1p(max_f) - np.log1p(max_b),
            np.log1p(peak_f) - np.log1p(peak_b),
            np.log1p(mean_f) - np.log1p(mean_b),
            np.log1p(vol_f) - np.log1p(vol_b),
            min(focal_b, 10.0),
            min(focal_f, 10.0),
            hot_change,
            rest_change,
            rose,
            peak_f / liver_f if liver_f else 0.0,
            peak_b / liver_b if liver_b else 0.0,
            float(change is not None and nodule_evidence(change, NoduleCriteria()) is not None),
            float(is_new),
            site_ratio,
            0.0,  # log_n_fragments, set by lesion_units
            1.0,  # fragment_volume_share, set by lesion_units
            *ct_features,
        ],
        dtype=np.float32,
    )
    if fol is not None and fol.focality is not None:
        centre = list(fol.focality.centre_mm)
    elif fol is not None:
        centre = list(fol.centroid_mm)
    else:
        centre = list(bases[0].centroid_mm)
    info = {
        "suv_max_baseline": float(max_b),
        "suv_max_followup": float(max_f),
        "suv_peak_baseline": float(peak_b),
        "suv_peak_followup": float(peak_f),
        "suv_mean_followup": float(mean_f),
        "volume_ml_baseline": float(vol_b),
        "volume_ml_followup": float(vol_f),
        "focal_ratio_followup": float(focal_f),
        "hotspot_suv_mean_followup": None if change is None else change.hotspot_suv_mean_followup,
        "rest_suv_mean_followup": None if change is None else change.rest_suv_mean_followup,
        "suv_peak_change_pct": None if change is None else change.suv_peak_change_pct,
        "uptake_rose": bool(rose),
    }
    if new_match is not None:
        info["baseline_site_uptake_ratio"] = (
            None if new_match.baseline_site_suv_mean is None or mean_f <= 0 else site_ratio
        )
        info["counts_as_new"] = is_new
    return LesionUnit(kind, followup_ids, baseline_ids, centre, features, info)


def pair_feature_vector(report: Any, units: Sequence[LesionUnit]) -> np.ndarray:
    """Whole-pair change features in ``PAIR_FEATURE_NAMES`` order."""
    from petflare.quant import classify_pattern_rules

    rules = report.pattern_rules or classify_pattern_rules(report)
    rule_label = rules.label
    d = report.disease
    persisting = [u for u in units if u.kind == "persisting"]
    peak_changes = [float(u.features[7]) for u in persisting]
    liver_b = _f(report.baseline.liver.suv_mean)
    liver_f = _f(report.followup.liver.suv_mean)
    return np.array(
        [
            np.log1p(d.n_baseline_lesions),
            np.log1p(d.n_followup_lesions),
            np.log1p(d.n_new),
            np.log1p(d.n_resolved),
            _f(d.fraction_baseline_rose),
            np.log1p(_f(d.new_volume_ml)),
            np.log1p(_f(d.new_max_suv_peak)),
            _pct(d.total_tlg_change_pct),
            _f(d.rise_spread_mm) / 10.0,
            max((float(u.features[11]) for u in units if u.kind != "resolved"), default=1.0),
            max((float(u.features[12]) for u in persisting), default=0.0),
            float(np.median(peak_changes)) if peak_changes else 0.0,
            float(np.mean([u.features[14] for u in persisting])) if persisting else 0.0,
            np.log(liver_f / liver_b) if liver_b > 0 and liver_f > 0 else 0.0,
            *(float(rule_label == p) for p in PATTERNS),
        ],
        dtype=np.float32,
    )


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
    suv_scale: float = 1.0,
) -> np.ndarray:
    """Stack and scale the network input channels exactly as the segmentation model does.

    ``suv_scale`` is the scan's :func:`~petflare.data.transforms.liver_suv_scale` (1 for a model
    that takes SUV as measured), computed on the whole scan: ``pet`` may be a crop.
    """
    scaler = ScaleSuv(preprocessing.suv_max, preprocessing.suv_log)
    chans = [scaler(torch.from_numpy(pet * np.float32(suv_scale))).numpy()]
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
    b_scale = liver_suv_scale(baseline.pet, baseline.affine, preprocessing, "baseline scan")
    f_scale = liver_suv_scale(followup.pet, followup.affine, preprocessing, "follow-up scan")
    base_img = scale_channels(on_grid_b(baseline.pet, 1), b_ct, preprocessing, b_scale)
    fol_img = scale_channels(on_grid_f(followup.pet, 1), f_ct, preprocessing, f_scale)
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


# ----------------------------------------------------------------------------- mask variants


def perturb_labels(
    labels: np.ndarray,
    rng: np.random.Generator,
    p_dilate: float = 0.3,
    p_erode: float = 0.3,
    p_drop_small: float = 0.3,
    small_voxels: int = 30,
) -> np.ndarray:
    """Make a ground-truth instance mask look like a prediction, keeping the pattern valid.

    Each lesion is independently dilated or eroded by one voxel (an erosion that would remove
    it is skipped); lesions smaller than ``small_voxels`` are dropped with ``p_drop_small``
    unless that would drop the only lesion. Labels stay instance labels.
    """
    out = np.zeros_like(labels)
    ids = [int(i) for i in np.unique(labels) if i != 0]
    struct = ndimage.generate_binary_structure(3, 1)
    kept = 0
    for lid in ids:
        lesion = labels == lid
        size = int(lesion.sum())
        if (
            size < small_voxels
            and len(ids) > 1
            and rng.random() < p_drop_small
            and kept + 1 < len(ids)
        ):
            continue
        r = rng.random()
        if r < p_dilate:
            grown = ndimage.binary_dilation(lesion, struct)
            lesion = grown & ((labels == 0) | lesion) & (out == 0)
        elif r < p_dilate + p_erode:
            shrunk = ndimage.binary_erosion(lesion, struct)
            if shrunk.any():
                lesion = shrunk
        out[lesion] = lid
    return out


# ----------------------------------------------------------------------------- per-pair sample


@dataclass
class PairSample:
    """Precomputed head inputs of one pair (one mask variant), plus what explains them.

    ``label`` is the class index in ``PATTERNS`` (-1 when unknown); ``rule_label`` is the
    rule-based classifier's call on the same masks, kept for side-by-side evaluation.
    """

    lesion_pooled: np.ndarray  # [L, P]
    lesion_features: np.ndarray  # [L, F_lesion]
    global_pooled: np.ndarray  # [2, P]
    pair_features: np.ndarray  # [F_pair]
    label: int
    rule_label: str
    units: list[dict[str, Any]]
    patient_id: str = ""

    def save(self, path: Path) -> None:
        """Write atomically as ``.npz`` (numbers) with the JSON metadata inside."""
        meta = json.dumps(
            {
                "label": self.label,
                "rule_label": self.rule_label,
                "units": self.units,
                "patient_id": self.patient_id,
                "version": FEATURE_VERSION,
            }
        )

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez_compressed(
                    fh,
                    lesion_pooled=self.lesion_pooled,
                    lesion_features=self.lesion_features,
                    global_pooled=self.global_pooled,
                    pair_features=self.pair_features,
                    meta=np.frombuffer(meta.encode(), dtype=np.uint8),
                )

        with atomic_path(path, overwrite=True) as tmp:
            write(tmp)

    @classmethod
    def load(cls, path: Path) -> PairSample:
        """Read a sample written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            return cls(
                lesion_pooled=data["lesion_pooled"],
                lesion_features=data["lesion_features"],
                global_pooled=data["global_pooled"],
                pair_features=data["pair_features"],
                label=int(meta["label"]),
                rule_label=str(meta["rule_label"]),
                units=list(meta["units"]),
                patient_id=str(meta.get("patient_id", "")),
            )


def compare_pair(
    baseline: Study,
    followup: Study,
    registration: Any | None = None,
    registration_config: Any | None = None,
) -> Any:
    """``petflare.quant.compare_studies`` on two studies carrying instance masks.

    With a known ``registration`` (a ``RegistrationResult`` of the same two scans, e.g. from
    another mask variant of the pair) it is used instead of registering again, so the mask
    variants and mask sources of a pair cost one registration in all; the report is the one
    registering again would give (the registration is deterministic).
    """
    from petflare.quant import compare_studies

    return compare_studies(
        baseline, followup, registration=registration_config, alignment=registration
    )


@torch.no_grad()
def encode_pair(
    encoder: EncoderFeatures, images: PairImages, device: torch.device | str = "cpu"
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Encoder levels of the baseline and the aligned follow-up (one batch of two)."""
    x = torch.from_numpy(np.stack([images.baseline_image, images.followup_image])).to(device)
    feats = encoder(x)
    return [f[:1].float().cpu() for f in feats], [f[1:].float().cpu() for f in feats]


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


def sample_from_features(
    feats_b: Sequence[torch.Tensor],
    feats_f: Sequence[torch.Tensor],
    lesion_masks: np.ndarray,
    units: Sequence[LesionUnit],
    report: Any,
    label: int,
    rule_label: str,
    patient_id: str = "",
    images: PairImages | None = None,
) -> PairSample:
    """Pool encoder features in the unit regions and attach the quantitative features.

    ``images`` (the aligned crops the features came from) give the region PET statistics.
    """
    masks = torch.from_numpy(lesion_masks[None].astype(np.float32))
    valid = torch.ones((1, masks.shape[1]), dtype=torch.bool)
    lesion_pooled = pool_regions(feats_b, feats_f, masks)[0].numpy()
    global_pooled = pool_regions(feats_b, feats_f, global_regions(masks, valid))[0].numpy()
    n_lf = len(HEAD_LESION_FEATURE_NAMES)
    peaks: tuple[np.ndarray, np.ndarray] | None = None
    if images is not None and len(units):
        peaks = (
            peak_filtered(images.baseline_image[0], images.affine),
            peak_filtered(images.followup_image[0], images.affine),
        )
    rows, unit_dicts = [], []
    for i, unit in enumerate(units):
        stats = np.zeros(len(REGION_PET_FEATURE_NAMES), np.float32)
        region = lesion_masks[i] > 0
        as_dict = unit.to_dict()
        if images is not None and peaks is not None and region.any():
            change = region_change_stats(
                images.baseline_image[0],
                images.followup_image[0],
                *peaks,
                region,
                shell_voxels(images.affine),
            )
            stats[:] = change.features
            focus = np.asarray(images.affine) @ np.array([*change.focus_voxel, 1.0])
            as_dict["info"] = {
                **as_dict["info"],
                "focus_mm": [round(float(c), 1) for c in focus[:3]],
                "focus_suv_peak_baseline": change.focus_suv[0],
                "focus_suv_peak_followup": change.focus_suv[1],
                "region_suv_median_baseline": change.region_suv[0],
                "region_suv_median_followup": change.region_suv[1],
                "hot_extent_ratio": round(float(np.exp(stats[_HOT_EXTENT])), 1),
            }
        rows.append(np.concatenate([unit.features, stats]))
        unit_dicts.append(as_dict)
    lesion_features = np.stack(rows) if rows else np.zeros((0, n_lf), np.float32)
    return PairSample(
        lesion_pooled=lesion_pooled.astype(np.float32),
        lesion_features=lesion_features.astype(np.float32),
        global_pooled=global_pooled.astype(np.float32),
        pair_features=pair_feature_vector(report, units),
        label=label,
        rule_label=rule_label,
        units=unit_dicts,
        patient_id=patient_id,
    )


def pair_samples(
    baseline: Study,
    followup: Study,
    encoder: EncoderFeatures,
    preprocessing: PreprocessingConfig,
    label: int = -1,
    label_variants: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    device: torch.device | str = "cpu",
    margin_mm: float = 32.0,
    registration_config: Any | None = None,
    report_cache: Path | None = None,
    alignment: Any | None = None,
    registration_out: list[Any] | None = None,
) -> list[PairSample]:
    """Samples of one pair: its own masks first, then each (baseline, follow-up) mask variant.

    ``report_cache`` is a folder where the quantification of each variant is kept as JSON
    (``report<i>.json``): it does not depend on the encoder, so it survives a new network.
    The pair is registered once for all variants; ``alignment`` is its registration when
    already known (e.g. computed for another mask source of the same scans), which is then
    not computed again. The pair's registration is appended to ``registration_out`` when
    that is a list.

    ``baseline.mask`` and ``followup.mask`` are the masks of the first sample (ground truth or
    predicted). The encoder runs once per scan on a crop covering every variant's lesions.
    """
    from petflare.quant import classify_pattern_rules, lesion_instances, pair_report_from_json

    if baseline.mask is None or followup.mask is None:
        raise ValueError("both studies need a lesion mask")
    variants = [(np.asarray(baseline.mask), np.asarray(followup.mask)), *label_variants]
    # lesions are the connected components of the mask, exactly as the inference pipeline
    # labels a predicted mask, so training on ground truth sees lesions the same way
    variants = [(lesion_instances(b > 0), lesion_instances(f > 0)) for b, f in variants]
    reports, unit_lists, rule_labels = [], [], []
    registration = alignment
    for i, (b_lab, f_lab) in enumerate(variants):
        cached = None if report_cache is None else report_cache / f"report{i}.json"
        if cached is not None and cached.is_file():
            rep = pair_report_from_json(cached.read_text())
            # the measurements are cached; the rules' call is re-derived (rules may change)
            rep.pattern_rules = classify_pattern_rules(rep)
        else:
            rep = compare_pair(
                _with_mask(baseline, b_lab),
                _with_mask(followup, f_lab),
                registration,
                registration_config,
            )
            if cached is not None:
                atomic_write_text(cached, rep.to_json(indent=None), overwrite=True)
        if i == 0:  # the variants reuse the pair's own registration
            registration = rep.registration
        reports.append(rep)
        unit_lists.append(lesion_units(rep))
        rule_labels.append((rep.pattern_rules or classify_pattern_rules(rep)).label)
    matrix = registration_matrix(reports[0])
    if registration_out is not None:
        registration_out.append(reports[0].registration)
    # one crop that holds the lesions of all variants (dilations reach one voxel further)
    union_b = np.maximum.reduce([b for b, _ in variants])
    union_f = np.maximum.reduce([f for _, f in variants])
    images = pair_images(baseline, followup, union_b, union_f, [], matrix, preprocessing, margin_mm)
    feats_b, feats_f = encode_pair(encoder, images, device)
    out = []
    for (b_lab, f_lab), rep, units, rule_label in zip(
        variants, reports, unit_lists, rule_labels, strict=True
    ):
        masks = _unit_masks_on(
            images.affine,
            images.lesion_masks.shape[1:],
            baseline,
            followup,
            b_lab,
            f_lab,
            units,
            matrix,
        )
        out.append(
            sample_from_features(
                feats_b,
                feats_f,
                masks,
                units,
                rep,
                label,
                rule_label,
                baseline.meta.patient_id,
                images,
            )
        )
    return out


def _unit_masks_on(
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


def _with_mask(study: Study, mask: np.ndarray) -> Study:
    return Study(pet=study.pet, affine=study.affine, ct=study.ct, mask=mask, meta=study.meta)


# ----------------------------------------------------------------------------- batching


def collate_samples(samples: Sequence[PairSample]) -> dict[str, torch.Tensor]:
    """Pad a list of samples to the largest lesion count; ``lesion_valid`` marks real lesions."""
    n = max((s.lesion_pooled.shape[0] for s in samples), default=0)
    b = len(samples)
    p = samples[0].global_pooled.shape[1]
    fl = samples[0].lesion_features.shape[1]
    lesion_pooled = torch.zeros(b, n, p)
    lesion_features = torch.zeros(b, n, fl)
    valid = torch.zeros(b, n, dtype=torch.bool)
    for i, s in enumerate(samples):
        k = s.lesion_pooled.shape[0]
        lesion_pooled[i, :k] = torch.from_numpy(s.lesion_pooled)
        lesion_features[i, :k] = torch.from_numpy(s.lesion_features)
        valid[i, :k] = True
    return {
        HeadKeys.LESION_POOLED: lesion_pooled,
        HeadKeys.LESION_FEATURES: lesion_features,
        HeadKeys.LESION_VALID: valid,
        HeadKeys.GLOBAL_POOLED: torch.from_numpy(np.stack([s.global_pooled for s in samples])),
        HeadKeys.PAIR_FEATURES: torch.from_numpy(np.stack([s.pair_features for s in samples])),
        HeadKeys.LABEL: torch.tensor([s.label for s in samples], dtype=torch.long),
    }


#: Columns of ``PairSample.lesion_features`` that come from the CT.
CT_FEATURE_COLUMNS = tuple(HEAD_LESION_FEATURE_NAMES.index(n) for n in CT_FEATURE_NAMES)


def without_ct(sample: PairSample) -> PairSample:
    """A copy of ``sample`` with its CT features zeroed (what a PET-only study gives)."""
    feats = sample.lesion_features.copy()
    feats[:, list(CT_FEATURE_COLUMNS)] = 0.0
    return dataclasses.replace(sample, lesion_features=feats)


class PairSampleDataset(Dataset):
    """Pairs, each with one or more precomputed mask variants; a random variant per access.

    Args:
        variants: per pair, its samples (variant 0 = the pair's own masks).
        random_variant: draw a variant at random (training) or always take variant 0.
        seed: seed of the variant draws.
        ct_dropout: probability that a drawn sample is shown without its CT features (the
            ``CT_FEATURE_NAMES`` columns zeroed, as for a PET-only study), so that a head trained
            on PET/CT still works on PET alone.
    """

    def __init__(
        self,
        variants: Sequence[Sequence[PairSample]],
        random_variant: bool,
        seed: int = 0,
        ct_dropout: float = 0.0,
    ) -> None:
        if not 0.0 <= ct_dropout <= 1.0:
            raise ValueError(f"ct_dropout must be in [0, 1], got {ct_dropout}")
        self.variants = [list(v) for v in variants]
        self.random_variant = random_variant
        self.ct_dropout = float(ct_dropout)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.variants)

    def __getitem__(self, index: int) -> PairSample:
        options = self.variants[index]
        sample = options[0]
        if self.random_variant and len(options) > 1:
            sample = options[int(self.rng.integers(len(options)))]
        if self.ct_dropout > 0 and self.rng.random() < self.ct_dropout:
            sample = without_ct(sample)
        return sample

    @property
    def labels(self) -> np.ndarray:
        """Class index of every pair."""
        return np.array([v[0].label for v in self.variants], dtype=np.int64)


def class_weights(labels: np.ndarray, n_classes: int = len(PATTERNS)) -> np.ndarray:
    """Inverse-frequency class weights normalised to mean 1 (absent classes get weight 1)."""
    counts = np.bincount(labels[labels >= 0], minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n_classes, 1.0)
    return (w / w.mean()).astype(np.float32)


# ----------------------------------------------------------------------------- data module


def _set_args(extra: Mapping[str, Any]) -> tuple[int, int, dict[str, Any], list[str] | None]:
    """``(n_pairs, seed, phantom, patterns)`` of a validated extra phantom set."""
    return extra["n_pairs"], extra["seed"], extra["phantom"], extra.get("patterns")


def _cache_key(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _file_stamp(path: str | None) -> list[Any] | None:
    if path is None:
        return None
    p = Path(path)
    return [str(p.resolve()), p.stat().st_size, int(p.stat().st_mtime)]


def weights_digest(net: nn.Module) -> str:
    """Short hash of a network's weights (part of the feature cache key)."""
    h = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


MaskSource = Callable[[Study], np.ndarray]
#: One unit of cached work: (manifest row, number of mask variants, mask source, seed).
RowTask = tuple[Mapping[str, Any], int, str | MaskSource, int]


def _present(paths: Sequence[Path]) -> bool:
    """Whether a row's cached samples are all on disk."""
    return all(p.is_file() for p in paths)


@dataclass
class _WorkerState:
    """What a feature worker process holds: the DataModule and the tasks' mask sources."""

    datamodule: Any
    sources: list[Any]


_WORKER: _WorkerState | None = None


def _init_worker(state: _WorkerState) -> None:
    """Worker start: one thread each (the workers share the machine's cores), then the state."""
    global _WORKER
    import SimpleITK as sitk

    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    _WORKER = state


def _compute_job(job: Sequence[tuple[dict[str, Any], int, int, int]]) -> None:
    """Compute one pair's tasks into the cache (in a worker set up by :func:`_init_worker`)."""
    assert _WORKER is not None, "worker not initialised"
    for row, n_variants, source, seed in job:
        _WORKER.datamodule.samples_for_row(row, n_variants, _WORKER.sources[source], seed)


class LongitudinalDataModule(pl.LightningDataModule):
    """Labelled baseline/follow-up pairs for the change-pattern head (precomputed features).

    Reads a longitudinal manifest (``patient_id, baseline_pet, baseline_ct, baseline_mask,
    followup_pet, followup_ct, followup_mask, pattern, split``). Without a manifest, phantom
    pairs are generated with :func:`petflare.synth.generate_dataset` into ``data_dir`` (train
    and val from different seeds). Each pair is quantified, aligned and encoded once; the
    results are cached under ``cache_dir`` keyed by the files, the encoder weights and the
    settings, so a second run reads them back.

    Args:
        segmentation_net: the (frozen) segmentation network whose encoder is used.
        preprocessing: the segmentation model's preprocessing (spacing, SUV scaling, channels).
        cache_dir: folder for the per-pair feature cache.
        manifest: manifest CSV; None generates phantom pairs.
        data_dir: where phantom pairs are generated (when ``manifest`` is None).
        n_train_pairs, n_val_pairs: phantom pairs per split.
        train_seed, val_seed: phantom generator seeds (must differ).
        phantom: keyword arguments of ``petflare.synth.PhantomConfig``.
        extra_train_sets: more phantom training sets, each ``{n_pairs, seed, phantom}`` with
            its own PhantomConfig overrides (e.g. wider voxel sizes and noise than the main set),
            appended to the training pairs.
        extra_val_sets: more phantom validation sets, the same way, appended to the validation
            pairs (the temperature is fitted on all of them: a calibration set as varied as the
            training data). No seed may serve both splits.
        n_mask_variants: perturbed ground-truth mask variants per training pair.
        val_mask_source: ``"ground_truth"``, or a callable ``study -> mask`` (e.g. a
            ``Predictor.predict``) used for validation pairs.
        train_extra_mask_source: optional callable ``study -> mask`` (the segmentation
            model's own predictions); each training pair gains one more variant computed from
            its masks, so the head also learns from the errors it meets at inference.
        batch_size: pairs per batch.
        balance: ``"sampler"`` (class-balanced sampling), ``"weights"`` (expose
            ``class_weights`` for the loss) or ``"none"``.
        encoder_scales: encoder levels pooled (None: all).
        margin_mm: margin of the encoder crop around the lesions.
        seed: seed of the mask perturbations and variant draws.
        device: device of the encoder during precomputation.
        ct_dropout: probability that a training sample is shown without its CT features (a
            PET-only study); 0 keeps them always.
        missed_nodule_variant: give each ``nodule_within_mass`` training pair one more variant
            whose follow-up mask lost the nodule (:class:`MissedNoduleMasks`; phantom pairs).
        workers: processes that generate phantom pairs and compute the pairs missing from the
            cache (each with one thread; they write the cache files one process would). 1
            does everything in this process.
    """

    def __init__(
        self,
        segmentation_net: nn.Module,
        preprocessing: PreprocessingConfig,
        cache_dir: str | Path,
        manifest: str | Path | None = None,
        data_dir: str | Path = "data/phantom_pairs",
        n_train_pairs: int = 40,
        n_val_pairs: int = 20,
        train_seed: int = 3100,
        val_seed: int = 3200,
        phantom: Mapping[str, Any] | None = None,
        extra_train_sets: Sequence[Mapping[str, Any]] = (),
        extra_val_sets: Sequence[Mapping[str, Any]] = (),
        n_mask_variants: int = 3,
        val_mask_source: str | MaskSource = "ground_truth",
        train_extra_mask_source: MaskSource | None = None,
        batch_size: int = 16,
        balance: str = "weights",
        encoder_scales: Sequence[int] | None = None,
        margin_mm: float = 32.0,
        seed: int = 0,
        device: str = "cpu",
        ct_dropout: float = 0.0,
        missed_nodule_variant: bool = False,
        workers: int = 1,
    ) -> None:
        super().__init__()
        if int(workers) < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if not 0.0 <= ct_dropout <= 1.0:
            raise ValueError(f"ct_dropout must be in [0, 1], got {ct_dropout}")
        if balance not in ("sampler", "weights", "none"):
            raise ValueError(f"balance must be sampler, weights or none, got {balance!r}")
        if manifest is None and train_seed == val_seed:
            raise ValueError("train_seed and val_seed must differ")
        self.net = segmentation_net.eval()
        self.encoder = EncoderFeatures(segmentation_net, encoder_scales).eval()
        self.preprocessing = preprocessing
        self.cache_dir = Path(cache_dir)
        self.manifest = None if manifest is None else Path(manifest)
        self.data_dir = Path(data_dir)
        self.n_train_pairs = int(n_train_pairs)
        self.n_val_pairs = int(n_val_pairs)
        self.train_seed = int(train_seed)
        self.val_seed = int(val_seed)
        self.phantom = dict(phantom or {})
        self.extra_val_sets = [
            extra_phantom_set(e, "validation", {int(train_seed): "training"})
            for e in extra_val_sets
        ]
        val_seeds = {int(val_seed): "validation"} | {
            e["seed"]: "validation" for e in self.extra_val_sets
        }
        self.extra_train_sets = [
            extra_phantom_set(e, "training", val_seeds) for e in extra_train_sets
        ]
        if (self.extra_train_sets or self.extra_val_sets) and manifest is not None:
            raise ValueError("extra phantom sets are phantom pairs: not used with a manifest")
        self.n_mask_variants = int(n_mask_variants)
        self.val_mask_source = val_mask_source
        self.train_extra_mask_source = train_extra_mask_source
        self.batch_size = int(batch_size)
        self.balance = balance
        self.encoder_scales = None if encoder_scales is None else list(encoder_scales)
        self.margin_mm = float(margin_mm)
        self.seed = int(seed)
        self.device = device
        self.ct_dropout = float(ct_dropout)
        if missed_nodule_variant and manifest is not None:
            raise ValueError("missed_nodule_variant needs phantom pairs (their truth records)")
        self.missed_nodule_variant = bool(missed_nodule_variant)
        self.workers = int(workers)
        self.datasets: dict[str, PairSampleDataset] = {}
        self._train_pairs: list[int] | None = None
        self._loaded: tuple[str, tuple[Study, Study]] | None = None  # the last pair read

    # -- rows
    def _phantom_set(
        self,
        split: str,
        n: int,
        seed: int,
        phantom: Mapping[str, Any],
        patterns: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """The first ``n`` pairs of one phantom set, generated once into ``data_dir``."""
        from petflare.io import load_manifest
        from petflare.synth import PhantomConfig, generate_dataset

        if n <= 0:
            return []
        suffix = phantom_set_suffix(seed, phantom, patterns)
        folder = self.data_dir / f"{split}_n{n}{suffix}"
        manifest = folder / "manifest.csv"
        # pair i depends only on (seed, i): a larger set of the same seed holds this one
        larger = sorted(
            (int(m.parent.name[len(split) + 2 : -len(suffix)]), m)
            for m in self.data_dir.glob(f"{split}_n*{suffix}/manifest.csv")
            if m.parent.name[len(split) + 2 : -len(suffix)].isdigit()
        )
        larger = [(size, m) for size, m in larger if size >= n]
        if not manifest.is_file() and larger:
            manifest = larger[0][1]
        if not manifest.is_file():
            log.info("generating %d phantom pairs (seed %d) into %s", n, seed, folder)
            manifest = generate_dataset(
                folder,
                n,
                seed,
                config=PhantomConfig(**phantom),
                patterns=patterns,
                overwrite=True,
                workers=self.workers,
            )
        return load_manifest(manifest)[:n]

    def _phantom_rows(self) -> dict[str, list[dict[str, Any]]]:
        train = self._phantom_set("train", self.n_train_pairs, self.train_seed, self.phantom)
        for extra in self.extra_train_sets:
            train += self._phantom_set("train", *_set_args(extra))
        val = self._phantom_set("val", self.n_val_pairs, self.val_seed, self.phantom)
        for extra in self.extra_val_sets:
            val += self._phantom_set("val", *_set_args(extra))
        return {"train": train, "val": val}

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        """Manifest rows per split (``train``, ``val``; ``test`` rows are not used here)."""
        if self.manifest is None:
            return self._phantom_rows()
        from petflare.io import load_manifest, split_by_patient

        rows = load_manifest(self.manifest)
        for row in rows:
            if row.get(Keys.PATTERN) is None:
                raise PetflareInputError(
                    self.manifest, f"patient {row[Keys.PATIENT_ID]}: no pattern label"
                )
        return split_by_patient(rows, {"train": 0.8, "val": 0.2, "test": 0.0}, seed=self.seed)

    # -- features
    def _settings(self) -> dict[str, Any]:
        return {
            "version": FEATURE_VERSION,
            "reports": REPORT_VERSION,  # features are computed from the quantification
            "weights": weights_digest(self.net),
            "preprocessing": self.preprocessing.to_dict(),
            "scales": self.encoder_scales,
            "margin_mm": self.margin_mm,
        }

    def row_folder(
        self,
        row: Mapping[str, Any],
        n_variants: int,
        mask_source: str | MaskSource,
        seed: int,
        with_encoder: bool = True,
    ) -> Path:
        """Cache folder of one row's samples, keyed by files, encoder, settings and masks.

        With ``with_encoder=False``, the folder of what does not depend on the encoder
        (predicted masks, quantification reports) under ``cache_dir/reports``.
        """
        files = [row.get(k) for k in MANIFEST_PATH_COLUMNS]
        source = (
            mask_source
            if isinstance(mask_source, str)
            else getattr(mask_source, "cache_tag", repr(mask_source))
        )
        key = _cache_key(
            {
                "files": [_file_stamp(f) for f in files],
                "settings": self._settings() if with_encoder else REPORT_VERSION,
                "n_variants": n_variants,
                "mask_source": source,
                "seed": seed,
                "pattern": row.get(Keys.PATTERN),
            }
        )
        return self.cache_dir / key if with_encoder else self.cache_dir / "reports" / key

    def _cached_paths(
        self, row: Mapping[str, Any], n_variants: int, mask_source: str | MaskSource, seed: int
    ) -> list[Path]:
        folder = self.row_folder(row, n_variants, mask_source, seed)
        return [folder / f"variant{i}.npz" for i in range(n_variants + 1)]

    def is_cached(
        self, row: Mapping[str, Any], n_variants: int, mask_source: str | MaskSource, seed: int
    ) -> bool:
        """Whether :meth:`samples_for_row` would read these samples from the cache."""
        return _present(self._cached_paths(row, n_variants, mask_source, seed))

    def warm_cache(self, tasks: Sequence[RowTask], desc: str = "pair features") -> int:
        """Compute the samples of the ``tasks`` missing from the cache, pair by pair.

        Each task is ``(row, n_variants, mask_source, seed)`` as :meth:`samples_for_row` takes
        them. The tasks of one pair run together (its scans' liver search is then done once
        for all its mask sources), in ``workers`` processes when ``workers > 1``; they write
        the same cache files, which :meth:`samples_for_row` then reads. Returns the number of
        tasks computed.
        """
        from tqdm.auto import tqdm

        jobs: dict[str, list[RowTask]] = {}
        for task in tasks:
            if not self.is_cached(*task):
                row = task[0]
                key = json.dumps([row.get(k) for k in MANIFEST_PATH_COLUMNS], default=str)
                jobs.setdefault(key, []).append(task)
        n_tasks = sum(len(job) for job in jobs.values())
        if self.workers <= 1 or len(jobs) < 2:
            for job in tqdm(list(jobs.values()), desc=desc, unit="pair", disable=not jobs):
                for task in job:
                    self.samples_for_row(*task)
            return n_tasks
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # mask sources travel once per worker (a predictor holds a network), tasks by index
        sources: list[str | MaskSource] = []
        indexed_jobs = []
        for job in jobs.values():
            indexed = []
            for row, n_variants, source, seed in job:
                match = next((i for i, s in enumerate(sources) if s is source), None)
                if match is None:
                    sources.append(source)
                    match = len(sources) - 1
                indexed.append((dict(row), int(n_variants), match, int(seed)))
            indexed_jobs.append(indexed)
        state = _WorkerState(self._worker_copy(), sources)
        n_proc = min(self.workers, len(indexed_jobs))
        with ProcessPoolExecutor(
            max_workers=n_proc,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(state,),
        ) as pool:
            futures = [pool.submit(_compute_job, job) for job in indexed_jobs]
            try:
                for future in tqdm(
                    as_completed(futures),
                    total=len(futures),
                    desc=f"{desc} ({n_proc} processes)",
                    unit="pair",
                ):
                    future.result()  # a worker's error is raised here, naming its file
            except BaseException:
                # stop at the first error (or Ctrl-C): the pairs not started are dropped
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return n_tasks

    def _worker_copy(self) -> LongitudinalDataModule:
        """This DataModule without its trainer or datasets (what a worker process needs)."""
        import copy

        clone = copy.copy(self)
        clone.trainer = None
        clone.datasets = {}
        clone._loaded = None
        return clone

    def samples_for_row(
        self, row: Mapping[str, Any], n_variants: int, mask_source: str | MaskSource, seed: int
    ) -> list[PairSample]:
        """Cached samples of one manifest row (variant 0, then ``n_variants`` perturbed)."""
        paths = self._cached_paths(row, n_variants, mask_source, seed)
        if _present(paths):
            return [PairSample.load(p) for p in paths]
        from petflare.quant.report import registration_from_json, registration_to_json

        registration_path = self.registration_file(row)
        alignment = (
            registration_from_json(registration_path.read_text())
            if registration_path.is_file()
            else None
        )
        registrations: list[Any] = []
        samples = compute_row_samples(
            row,
            self.encoder,
            self.preprocessing,
            n_variants,
            mask_source,
            seed,
            self.device,
            self.margin_mm,
            report_cache=self.row_folder(row, n_variants, mask_source, seed, with_encoder=False),
            studies=self._row_studies(row),
            alignment=alignment,
            registration_out=registrations if alignment is None else None,
        )
        if registrations:
            text = registration_to_json(registrations[0])
            atomic_write_text(registration_path, text, overwrite=True)
        for sample, path in zip(samples, paths, strict=True):
            sample.save(path)
        return samples

    def registration_file(self, row: Mapping[str, Any]) -> Path:
        """Where the registration of a row's scans is kept, keyed by the images and settings.

        It depends on neither the masks nor the encoder, so every mask source of a pair (and
        every later network) reuses the pair's first registration: the same reports as
        registering again (the registration is deterministic), at no cost.
        """
        from petflare.quant import RegistrationConfig

        scans = (Keys.BASELINE_PET, Keys.BASELINE_CT, Keys.FOLLOWUP_PET, Keys.FOLLOWUP_CT)
        key = _cache_key(
            {
                "files": [_file_stamp(row.get(k)) for k in scans],
                "registration": dataclasses.asdict(RegistrationConfig()),
                "version": REPORT_VERSION,
            }
        )
        return self.cache_dir / "registrations" / f"{key}.json"

    def _row_studies(self, row: Mapping[str, Any]) -> tuple[Study, Study]:
        """The row's studies, loaded once for consecutive calls on the same pair."""
        key = json.dumps([_file_stamp(row.get(k)) for k in MANIFEST_PATH_COLUMNS])
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = (key, load_row_studies(row))
        return self._loaded[1]

    def setup(self, stage: str | None = None) -> None:
        """Compute (or read from the cache) the samples of every pair."""
        if self.datasets:
            return
        from tqdm.auto import tqdm

        rows = self.rows()
        train_rows, val_rows = rows.get("train", []), rows.get("val", [])
        # Quantification, registration and encoding take seconds per pair (cached afterwards).
        self.warm_cache(self._setup_tasks(train_rows, val_rows))
        train = [
            self.samples_for_row(r, self.n_mask_variants, "ground_truth", self.seed + i)
            for i, r in enumerate(tqdm(train_rows, desc="pair features (train)", unit="pair"))
        ]

        def add_variant(desc: str, source_for: Callable[[Mapping[str, Any]], Any]) -> None:
            # one more sample per training pair whose source_for(row) is not None
            for r, variants in zip(tqdm(train_rows, desc=desc, unit="pair"), train, strict=True):
                source = source_for(r)
                if source is not None:
                    variants.extend(self.samples_for_row(r, 0, source, 0))

        if self.train_extra_mask_source is not None:
            add_variant(
                "pair features (train, model masks)", lambda r: self.train_extra_mask_source
            )
        if self.missed_nodule_variant:
            add_variant(
                "pair features (train, nodule missed)",
                lambda r: (
                    MissedNoduleMasks.for_row(r)
                    if r.get(Keys.PATTERN) == "nodule_within_mass"
                    else None
                ),
            )
        val = self._val_samples(val_rows)
        self.datasets = {
            "train": PairSampleDataset(
                train, random_variant=True, seed=self.seed, ct_dropout=self.ct_dropout
            ),
            "val": PairSampleDataset(val, random_variant=False),
        }

    def _val_samples(self, val_rows: Sequence[Mapping[str, Any]]) -> list[list[PairSample]]:
        from tqdm.auto import tqdm

        return [
            self.samples_for_row(r, 0, self.val_mask_source, 0)
            for r in tqdm(val_rows, desc="pair features (val)", unit="pair")
        ]

    def setup_validation(self) -> None:
        """Compute (or read from the cache) the validation pairs' samples only, e.g. to refit
        a trained head's temperature; the training split is left unbuilt."""
        if self.datasets:
            return
        val_rows = self.rows().get("val", [])
        self.warm_cache(self._setup_tasks([], val_rows))
        self.datasets = {
            "val": PairSampleDataset(self._val_samples(val_rows), random_variant=False)
        }

    def _setup_tasks(
        self, train_rows: Sequence[Mapping[str, Any]], val_rows: Sequence[Mapping[str, Any]]
    ) -> list[RowTask]:
        """Every (row, n_variants, mask source, seed) that :meth:`setup` reads."""
        tasks: list[RowTask] = [
            (r, self.n_mask_variants, "ground_truth", self.seed + i)
            for i, r in enumerate(train_rows)
        ]
        if self.train_extra_mask_source is not None:
            tasks += [(r, 0, self.train_extra_mask_source, 0) for r in train_rows]
        if self.missed_nodule_variant:
            tasks += [
                (r, 0, MissedNoduleMasks.for_row(r), 0)
                for r in train_rows
                if r.get(Keys.PATTERN) == "nodule_within_mass"
            ]
        return tasks + [(r, 0, self.val_mask_source, 0) for r in val_rows]

    def use_train_pairs(self, indices: Sequence[int] | None) -> None:
        """Train on these training pairs only (None: all), e.g. one fold of a cross-fit.

        Restricts :meth:`train_dataloader` and :meth:`all_train_samples` (pooled-feature path);
        ``datasets["train"]`` keeps every pair. Class weights stay those of all pairs.
        """
        if indices is None:
            self._train_pairs = None
            return
        n = len(self.datasets["train"])
        chosen = sorted({int(i) for i in indices})
        if not chosen or chosen[0] < 0 or chosen[-1] >= n:
            raise ValueError(f"training pair indices must be in [0, {n}), got {list(indices)}")
        self._train_pairs = chosen

    def _train_dataset(self) -> PairSampleDataset:
        ds = self.datasets["train"]
        if self._train_pairs is None:
            return ds
        return PairSampleDataset(
            [ds.variants[i] for i in self._train_pairs],
            random_variant=True,
            seed=self.seed,
            ct_dropout=self.ct_dropout,
        )

    @property
    def class_weights(self) -> np.ndarray | None:
        """Loss weights for ``balance="weights"`` (None otherwise); needs :meth:`setup`."""
        if self.balance != "weights":
            return None
        return class_weights(self.datasets["train"].labels)

    def train_dataloader(self) -> DataLoader:
        ds = self._train_dataset()
        if self.balance == "sampler":
            w = class_weights(ds.labels)[ds.labels]
            sampler = WeightedRandomSampler(
                [float(x) for x in w],
                num_samples=len(ds),
                replacement=True,
                generator=torch.Generator().manual_seed(self.seed),
            )
            return DataLoader(
                ds, batch_size=self.batch_size, sampler=sampler, collate_fn=collate_samples
            )
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=True,
            collate_fn=collate_samples,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def val_dataloader(self) -> DataLoader | list[Any]:
        ds = self.datasets.get("val")
        if ds is None or len(ds) == 0:
            return []
        return DataLoader(ds, batch_size=self.batch_size, shuffle=False, collate_fn=collate_samples)

    def all_train_samples(self) -> list[PairSample]:
        """Every training sample (all variants) of the pairs trained on (see
        :meth:`use_train_pairs`), e.g. to fit the head's input normalisation."""
        return [s for v in self._train_dataset().variants for s in v]


def load_row_studies(row: Mapping[str, Any]) -> tuple[Study, Study]:
    """Load both studies (PET, CT, mask) of a manifest row with :func:`petflare.io.load_study`."""
    from petflare.io import load_study
    from petflare.io.study import StudyMeta

    pid = str(row.get(Keys.PATIENT_ID) or "")
    base = load_study(
        row[Keys.BASELINE_PET],
        row.get(Keys.BASELINE_CT),
        row.get(Keys.BASELINE_MASK),
        meta=StudyMeta(patient_id=pid, study_id="baseline"),
    )
    fol = load_study(
        row[Keys.FOLLOWUP_PET],
        row.get(Keys.FOLLOWUP_CT),
        row.get(Keys.FOLLOWUP_MASK),
        meta=StudyMeta(patient_id=pid, study_id="followup"),
    )
    return base, fol


def compute_row_samples(
    row: Mapping[str, Any],
    encoder: EncoderFeatures,
    preprocessing: PreprocessingConfig,
    n_variants: int,
    mask_source: str | MaskSource,
    seed: int,
    device: str = "cpu",
    margin_mm: float = 32.0,
    report_cache: Path | None = None,
    studies: tuple[Study, Study] | None = None,
    alignment: Any | None = None,
    registration_out: list[Any] | None = None,
) -> list[PairSample]:
    """Samples of one manifest row: its masks, then perturbed variants.

    ``report_cache`` keeps what does not depend on the encoder (predicted masks, the
    quantification of every variant) so a new encoder or head reuses it. ``studies`` are the
    row's studies when already loaded (:func:`load_row_studies`); ``alignment`` and
    ``registration_out`` are :func:`pair_samples`'.
    """
    base, fol = studies or load_row_studies(row)
    pattern = row.get(Keys.PATTERN)
    label = PATTERN_TO_INDEX[pattern] if pattern in PATTERN_TO_INDEX else -1
    if not isinstance(mask_source, str):
        masks_path = None if report_cache is None else report_cache / "masks.npz"
        if masks_path is not None and masks_path.is_file():
            with np.load(masks_path, allow_pickle=False) as data:
                b_mask, f_mask = data["baseline"], data["followup"]
        else:
            b_mask = np.asarray(mask_source(base)).astype(np.uint8)
            f_mask = np.asarray(mask_source(fol)).astype(np.uint8)
            if masks_path is not None:
                with atomic_path(masks_path, overwrite=True) as tmp, open(tmp, "wb") as fh:
                    np.savez_compressed(fh, baseline=b_mask, followup=f_mask)
        base, fol = _with_mask(base, b_mask), _with_mask(fol, f_mask)
    elif mask_source != "ground_truth":
        raise ValueError(f"unknown mask source {mask_source!r}")
    for study, col in ((base, Keys.BASELINE_MASK), (fol, Keys.FOLLOWUP_MASK)):
        if study.mask is None:
            raise PetflareInputError(row.get(Keys.BASELINE_PET), f"no {col} for this pair")
    rng = np.random.default_rng(seed)
    variants = [
        (perturb_labels(np.asarray(base.mask), rng), perturb_labels(np.asarray(fol.mask), rng))
        for _ in range(n_variants)
    ]
    return pair_samples(
        base,
        fol,
        encoder,
        preprocessing,
        label,
        variants,
        device,
        margin_mm,
        report_cache=report_cache,
        alignment=alignment,
        registration_out=registration_out,
    )


class PredictedMasks:
    """Mask source for pairs: the segmentation model's own predictions (as at inference).

    Args:
        predictor: anything with ``predict(study) -> mask`` on the study's grid (a
            :class:`petflare.inference.predictor.Predictor`).
        cache_tag: identifies the model in the feature cache key (e.g. its weights hash). The
            predictor's ``mask_settings`` (threshold, minimum component, TTA) are added to it, so
            that features cached for one setting (or an earlier export of the same weights with
            other settings) are never served for masks made with another.
    """

    def __init__(self, predictor: Any, cache_tag: str) -> None:
        self.predictor = predictor
        settings = getattr(predictor, "mask_settings", None) or {}
        suffix = "".join(f":{k}={settings[k]}" for k in sorted(settings))
        self.cache_tag = f"predicted:{cache_tag}{suffix}"

    def __call__(self, study: Study) -> np.ndarray:
        return np.asarray(self.predictor.predict(study))


class MissedNoduleMasks:
    """Mask source for phantom training pairs: the ground truth, less the follow-up's nodule.

    A ``nodule_within_mass`` pair whose follow-up mask lost the nodule is what the head meets
    when the U-Net misses it: the responding mass is then "resolved" and only the voxelwise
    region features still see the focal rise. The images are untouched, so the label stays
    valid. The nodule is found in the phantom's truth record (``<set>/truth/<patient>.json``
    beside the layout folder: lesions whose follow-up ``in_mask`` is ``"nodule"``); baseline
    masks are returned unchanged.
    """

    cache_tag = "ground_truth_without_nodule"

    def __init__(self, truth_dir: str | Path) -> None:
        self.truth_dir = Path(truth_dir)

    @classmethod
    def for_row(cls, row: Mapping[str, Any]) -> MissedNoduleMasks:
        """The source for a phantom set row (``<set>/<layout>/<patient>/followup/<mask>``)."""
        mask = row.get(Keys.FOLLOWUP_MASK)
        if not mask:
            raise PetflareInputError(row.get(Keys.FOLLOWUP_PET), "no follow-up mask for this pair")
        from petflare.synth.dataset import TRUTH_DIR

        return cls(Path(mask).parents[3] / TRUTH_DIR)

    def nodule_ids(self, patient_id: str) -> list[int]:
        """Lesion ids labelled as a nodule (only the nodule part) in the follow-up mask."""
        path = self.truth_dir / f"{patient_id}.json"
        if not path.is_file():
            raise PetflareInputError(path, "no phantom truth record for this pair")
        truth = json.loads(path.read_text())
        return [
            int(les["id"])
            for les in truth.get("lesions", [])
            if (les.get("followup") or {}).get("in_mask") == "nodule"
        ]

    def __call__(self, study: Study) -> np.ndarray:
        if study.mask is None:
            raise PetflareInputError(study.meta.patient_id, "no ground-truth mask")
        mask = np.array(study.mask)
        if study.meta.study_id == "followup":
            mask[np.isin(mask, self.nodule_ids(study.meta.patient_id))] = 0
        return mask
