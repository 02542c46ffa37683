"""Where a pair's lesion masks come from: perturbed truth, the model's masks, a missed nodule."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from petflare.constants import Keys
from petflare.errors import PetflareInputError
from petflare.io.study import Study

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


MaskSource = Callable[[Study], np.ndarray]


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
        # masks as a pair compares them (physiological sites out) where the predictor has an
        # organ map (an anatomy-aware network, or a lesion-only one with a site network)
        self.disease = callable(getattr(predictor, "disease_mask", None)) and bool(
            getattr(predictor, "has_organs", getattr(predictor, "organ_classes", 0))
        )
        self.cache_tag = f"predicted:{cache_tag}{suffix}" + (":disease" if self.disease else "")

    def __call__(self, study: Study) -> np.ndarray:
        if self.disease:
            return np.asarray(self.predictor.disease_mask(study))
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
