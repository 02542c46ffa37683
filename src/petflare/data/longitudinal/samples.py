"""One pair as head samples: quantify and match, crop, encode and pool, per mask variant."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from petflare.constants import PATTERN_TO_INDEX, Keys
from petflare.data.longitudinal.features import (
    FEATURE_VERSION,
    HEAD_LESION_FEATURE_NAMES,
    HOT_EXTENT,
    REGION_PET_FEATURE_NAMES,
    LesionUnit,
    lesion_units,
    pair_feature_vector,
)
from petflare.data.longitudinal.mask_sources import MaskSource, perturb_labels
from petflare.data.longitudinal.regions import (
    PairImages,
    pair_images,
    peak_filtered,
    region_change_stats,
    registration_matrix,
    shell_voxels,
    unit_masks_on,
)
from petflare.data.transforms import PreprocessingConfig
from petflare.errors import PetflareInputError
from petflare.io.atomic import atomic_path, atomic_write_text
from petflare.io.study import Study
from petflare.networks.change_head import global_regions, pool_regions
from petflare.networks.encoder import EncoderFeatures

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
                "hot_extent_ratio": round(float(np.exp(stats[HOT_EXTENT])), 1),
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
                with_mask(baseline, b_lab),
                with_mask(followup, f_lab),
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
        masks = unit_masks_on(
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


def with_mask(study: Study, mask: np.ndarray) -> Study:
    return Study(pet=study.pet, affine=study.affine, ct=study.ct, mask=mask, meta=study.meta)


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
        base, fol = with_mask(base, b_mask), with_mask(fol, f_mask)
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
