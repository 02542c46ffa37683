"""The learned change-pattern classifier at inference: calibrated probabilities and explanations.

The head lives in the segmentation model's folder next to the network it reads::

    model_dir/
      model.pt, config.yaml, metadata.json   the segmentation model (inference.model_folder)
      head.pt     {"state_dict": {name: tensor}} of the head (one ChangePatternHead, or a
                  HeadEnsemble of several), loaded with weights_only
      head.json   head constructor arguments, temperature, encoder levels, crop margin, feature
                  names and version, training data and validation metrics

``PatternClassifier`` is callable as the pipeline's ``pattern_head(baseline, followup,
pair_report)`` and returns a :class:`petflare.inference.results.PatternCall` whose evidence
names the lesions that drove the call.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from petflare.constants import PATTERNS
from petflare.data.longitudinal import (
    FEATURE_VERSION,
    HEAD_LESION_FEATURE_NAMES,
    PAIR_FEATURE_NAMES,
    PairSample,
    collate_samples,
    compare_pair,
    encode_pair,
    lesion_units,
    pair_images,
    registration_matrix,
    sample_from_features,
    with_mask,
)
from petflare.data.transforms import PreprocessingConfig
from petflare.errors import PetflareInputError
from petflare.io.atomic import atomic_path, atomic_write_text, check_can_write
from petflare.io.study import Study
from petflare.networks.change_head import ChangePatternHead, HeadEnsemble, build_head
from petflare.networks.encoder import EncoderFeatures
from petflare.training.calibration import apply_temperature

HEAD_WEIGHTS_FILE = "head.pt"
HEAD_METADATA_FILE = "head.json"
HEAD_SCHEMA_VERSION = "1.0"


def save_head(
    model_dir: str | Path,
    head: ChangePatternHead | HeadEnsemble,
    *,
    temperature: float,
    encoder_scales: Sequence[int] | None,
    margin_mm: float,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``head.pt`` and ``head.json`` into a segmentation model folder (atomically).

    The head's feature layout depends on the segmentation network, so it is saved into the
    folder of the network it was trained with; the network's weight hash is recorded.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "metadata.json").is_file():
        raise PetflareInputError(model_dir, "not a model folder (no metadata.json)")
    weights_path = check_can_write(model_dir / HEAD_WEIGHTS_FILE, overwrite)
    meta_path = check_can_write(model_dir / HEAD_METADATA_FILE, overwrite)
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    seg_meta = json.loads((model_dir / "metadata.json").read_text())
    seg_sha = seg_meta.get("weights", {}).get("sha256")
    with atomic_path(weights_path, overwrite) as tmp:
        torch.save({"state_dict": state}, tmp)
    record = {
        "schema_version": HEAD_SCHEMA_VERSION,
        **dict(metadata or {}),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "head": head.config(),
        "n_parameters": sum(int(p.numel()) for p in head.parameters()),
        "temperature": float(temperature),
        "encoder_scales": None if encoder_scales is None else [int(s) for s in encoder_scales],
        "margin_mm": float(margin_mm),
        "feature_version": FEATURE_VERSION,
        "lesion_feature_names": list(HEAD_LESION_FEATURE_NAMES),
        "pair_feature_names": list(PAIR_FEATURE_NAMES),
        "classes": list(PATTERNS),
        # the head reads this network's encoder: a retrained network needs a retrained head
        "segmentation_weights_sha256": seg_sha,
        "weights": {
            "file": HEAD_WEIGHTS_FILE,
            "sha256": hashlib.sha256(weights_path.read_bytes()).hexdigest(),
        },
    }
    atomic_write_text(meta_path, json.dumps(record, indent=2) + "\n", overwrite=overwrite)
    return meta_path


def load_head(model_dir: str | Path) -> tuple[ChangePatternHead | HeadEnsemble, dict[str, Any]]:
    """Read ``head.pt``/``head.json`` of a model folder (weights_only loading)."""
    from petflare.inference.model_folder import safe_torch_load

    model_dir = Path(model_dir)
    meta_path = model_dir / HEAD_METADATA_FILE
    if not meta_path.is_file():
        raise PetflareInputError(
            meta_path,
            "this model folder has no change-pattern head (train one with petflare-train-head)",
        )
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("feature_version") != FEATURE_VERSION:
            raise ValueError(f"feature version {meta.get('feature_version')} != {FEATURE_VERSION}")
        head = build_head(meta["head"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PetflareInputError(meta_path, f"malformed head metadata ({exc})") from exc
    expected = meta.get("segmentation_weights_sha256")
    seg_meta_path = model_dir / "metadata.json"
    if expected is not None and seg_meta_path.is_file():
        current = json.loads(seg_meta_path.read_text()).get("weights", {}).get("sha256")
        if current is not None and current != expected:
            raise PetflareInputError(
                meta_path,
                "the change-pattern head was trained on another version of this folder's "
                "segmentation network (weights hash differs); retrain it with "
                "petflare-train-head",
            )
    weights_path = model_dir / meta.get("weights", {}).get("file", HEAD_WEIGHTS_FILE)
    checkpoint = safe_torch_load(weights_path)
    state = checkpoint.get("state_dict") if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise PetflareInputError(weights_path, "no 'state_dict' in the head checkpoint")
    try:
        head.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise PetflareInputError(weights_path, f"weights do not match head.json ({exc})") from exc
    return head.eval(), meta


@dataclass
class PatternPrediction:
    """A pattern call: label, calibrated probabilities, lesion weights and explanations."""

    label: str
    probabilities: dict[str, float]
    lesion_weights: list[float]
    explanations: list[str]
    units: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "label": self.label,
            "probabilities": self.probabilities,
            "explanations": self.explanations,
            "lesions": [
                {**u, "weight": float(w)}
                for u, w in zip(self.units, self.lesion_weights, strict=False)
            ],
        }


def _lesion_name(unit: Mapping[str, Any]) -> str:
    if unit["followup_ids"]:
        return f"follow-up lesion {unit['followup_ids'][0]}"
    return f"baseline lesion {unit['baseline_ids'][0]}"


def _mm(point: Sequence[float]) -> str:
    return "(" + ", ".join(f"{c:.0f}" for c in point) + ") mm"


def _at(unit: Mapping[str, Any]) -> str:
    return _mm(unit["centre_mm"])


#: A new lesion whose hot structure (>= 50% of its SUVpeak, connected) is at least this many
#: times its own region is flagged as possibly physiological in the explanation (feature
#: ``log_hot_extent``). On the 100 held-out main-set phantom pairs, 86-89% of the unmatched
#: lesions the U-Net found in controlled pairs (myocardium, brown fat, bowel) reached it, and 17%
#: of the really new lesions of new-lesion pairs (median ratio 0.6): a prompt to look, not a rule.
ORGAN_EXTENT_RATIO = 8.0


def explain(label: str, units: Sequence[Mapping[str, Any]], weights: Sequence[float]) -> list[str]:
    """Readable reasons for ``label`` from the lesion units and the head's lesion weights.

    The lesions are ranked by the head's attention; the sentences quote the measured values
    of the lesions that carry the pattern (focal hotspot, re-activation, new lesion).
    """
    order = sorted(range(len(units)), key=lambda i: -float(weights[i]) if weights else 0.0)
    persisting = [u for u in units if u["kind"] == "persisting"]
    rose = [u for u in persisting if u["info"].get("uptake_rose")]
    new = [u for u in units if u["kind"] == "new"]
    lines: list[str] = []
    if not units:
        return ["no lesion at either time point"]
    if label == "nodule_within_mass":
        # a nodule the follow-up mask missed leaves its host "resolved": both kinds can carry it
        cands = [units[i] for i in order if units[i]["kind"] != "new"][:2]
        for u in cands:
            info = u["info"]
            pieces = int(info.get("n_fragments", 1))
            piece_txt = (
                f" ({_lesion_name(u)} is one of {pieces} follow-up pieces of the same baseline "
                "mass)"
                if pieces > 1
                else ""
            )
            if info.get("focus_mm") is not None:
                lines.append(
                    f"focal uptake in {_lesion_name(u)} at {_mm(info['focus_mm'])}: SUVpeak "
                    f"{info['focus_suv_peak_followup']:.1f} ({info['focus_suv_peak_baseline']:.1f} "
                    f"there at baseline) against a median SUV of "
                    f"{info['region_suv_median_followup']:.1f} in the lesion's region "
                    f"({info['region_suv_median_baseline']:.1f} at baseline){piece_txt}"
                )
                continue
            hot, rest = info.get("hotspot_suv_mean_followup"), info.get("rest_suv_mean_followup")
            detail = (
                f"hotspot SUVmean {hot:.1f} vs rest of the mass {rest:.1f}"
                if hot is not None and rest is not None
                else f"focal ratio {info['focal_ratio_followup']:.1f}"
            )
            lines.append(
                f"focal nodule in {_lesion_name(u)} at {_at(u)}: {detail} "
                f"(lesion SUVmax {info['suv_max_followup']:.1f}, SUVpeak "
                f"{info['suv_peak_baseline']:.1f} at baseline){piece_txt}"
            )
    elif label == "diffuse_flare":
        lines.append(
            f"{len(rose)} of {len(persisting)} persisting lesions re-activated "
            "(SUVpeak rise above the rule threshold)"
        )
    elif label == "new_lesions":
        lines.append(f"{len(new)} new lesion(s) at follow-up")
        for u in [units[i] for i in order if units[i]["kind"] == "new"][:3]:
            info = u["info"]
            site = info.get("baseline_site_uptake_ratio")
            site_txt = (
                ""
                if site is None
                else f"; the same site had {100 * site:.0f}% of this uptake at baseline"
            )
            extent = info.get("hot_extent_ratio")
            organ_txt = (
                f"; hot together with a structure {extent:.0f} times its size (physiological "
                "uptake such as heart, bowel or brown fat?)"
                if extent is not None and extent >= ORGAN_EXTENT_RATIO
                else ""
            )
            lines.append(
                f"new {_lesion_name(u)} at {_at(u)}: {info['volume_ml_followup']:.1f} ml, "
                f"SUVmax {info['suv_max_followup']:.1f}{site_txt}{organ_txt}"
            )
    else:
        falling = [u for u in persisting if (u["info"].get("suv_peak_change_pct") or 0) < 0]
        n_res = sum(1 for u in units if u["kind"] == "resolved")
        unchanged = sum(1 for u in new if u["info"].get("counts_as_new") is False)
        lines.append(
            f"{len(falling)} of {len(persisting)} persisting lesions with falling SUVpeak, "
            f"{n_res} resolved, {len(new)} unmatched"
            + (f" ({unchanged} of them not new uptake or below the floor)" if unchanged else "")
        )
    top = [units[i] for i in order[:3]]
    lines.append(
        "lesions weighted most by the classifier: "
        + "; ".join(f"{_lesion_name(u)} ({u['kind']}, {_peak_change(u)})" for u in top)
    )
    return lines


def _peak_change(unit: Mapping[str, Any]) -> str:
    """SUVpeak at both time points; where a mask is empty, the uptake measured at the site.

    A lesion that is "resolved" only lost its follow-up mask: the SUVpeak of its segmented
    volume is 0 by definition, while the site may still be as hot as before (a structure the
    segmentation kept at one time point only). The region's focus SUVpeak says which.
    """
    info = unit["info"]
    before, after = info["suv_peak_baseline"], info["suv_peak_followup"]
    site = {
        "resolved": info.get("focus_suv_peak_followup"),
        "new": info.get("focus_suv_peak_baseline"),
    }.get(unit["kind"])
    if site is None:
        return f"SUVpeak {before:.1f} -> {after:.1f}"
    if unit["kind"] == "resolved":
        return f"SUVpeak {before:.1f} -> not segmented, {site:.1f} at the site"
    return f"SUVpeak not segmented, {site:.1f} at the site -> {after:.1f}"


class PatternClassifier:
    """Load once, classify many pairs (baseline + follow-up with lesion masks).

    Args:
        head: the trained head.
        segmentation_net: the segmentation network whose encoder the head reads.
        preprocessing: that network's preprocessing.
        temperature: calibration temperature (fitted on the validation split).
        encoder_scales: encoder levels the head was trained on (None: all).
        margin_mm: crop margin around the lesions, as in training.
        metadata: ``head.json``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
    """

    def __init__(
        self,
        head: ChangePatternHead | HeadEnsemble,
        segmentation_net: nn.Module,
        preprocessing: PreprocessingConfig,
        temperature: float = 1.0,
        encoder_scales: Sequence[int] | None = None,
        margin_mm: float = 32.0,
        metadata: Mapping[str, Any] | None = None,
        device: str | torch.device = "auto",
    ) -> None:
        from petflare.inference.predictor import resolve_device

        self.device = resolve_device(device)
        self.head = head.to(self.device).eval()
        self.encoder = EncoderFeatures(segmentation_net, encoder_scales).to(self.device).eval()
        self.preprocessing = preprocessing
        self.temperature = float(temperature)
        self.margin_mm = float(margin_mm)
        self.metadata = dict(metadata or {})

    @classmethod
    def from_folder(
        cls, model_dir: str | Path, device: str | torch.device = "auto"
    ) -> PatternClassifier:
        """Load the segmentation network and the head from one model folder (safe loading)."""
        from petflare.inference.model_folder import load_model_folder

        loaded = load_model_folder(model_dir)
        head, meta = load_head(model_dir)
        return cls(
            head,
            loaded.net,
            loaded.preprocessing,
            temperature=float(meta.get("temperature", 1.0)),
            encoder_scales=meta.get("encoder_scales"),
            margin_mm=float(meta.get("margin_mm", 32.0)),
            metadata=meta,
            device=device,
        )

    @torch.no_grad()
    def predict_samples(self, samples: Sequence[PairSample]) -> list[PatternPrediction]:
        """Classify precomputed samples (as cached by the LongitudinalDataModule)."""
        if not samples:
            return []
        batch = {k: v.to(self.device) for k, v in collate_samples(list(samples)).items()}
        out = self.head.forward_pooled(
            batch["lesion_pooled"],
            batch["lesion_features"],
            batch["lesion_valid"],
            batch["global_pooled"],
            batch["pair_features"],
        )
        probs = apply_temperature(out.logits.float(), self.temperature).cpu().numpy()
        attn = out.attention.float().cpu().numpy()
        preds = []
        for i, sample in enumerate(samples):
            label = PATTERNS[int(probs[i].argmax())]
            weights = [float(w) for w in attn[i, : len(sample.units)]]
            preds.append(
                PatternPrediction(
                    label=label,
                    probabilities={p: float(probs[i, j]) for j, p in enumerate(PATTERNS)},
                    lesion_weights=weights,
                    explanations=explain(label, sample.units, weights),
                    units=list(sample.units),
                )
            )
        return preds

    def sample(
        self,
        baseline: Study,
        followup: Study,
        baseline_labels: np.ndarray,
        followup_labels: np.ndarray,
        pair_report: Any | None = None,
    ) -> PairSample:
        """The head's inputs for one pair (instance masks on each study's grid)."""
        from petflare.quant import classify_pattern_rules

        if pair_report is None:
            pair_report = compare_pair(
                with_mask(baseline, baseline_labels), with_mask(followup, followup_labels)
            )
        units = lesion_units(pair_report)
        matrix = registration_matrix(pair_report)
        images = pair_images(
            baseline,
            followup,
            baseline_labels,
            followup_labels,
            units,
            matrix,
            self.preprocessing,
            self.margin_mm,
        )
        feats_b, feats_f = encode_pair(self.encoder, images, self.device)
        rules = pair_report.pattern_rules or classify_pattern_rules(pair_report)
        return sample_from_features(
            feats_b,
            feats_f,
            images.lesion_masks,
            units,
            pair_report,
            -1,
            rules.label,
            baseline.meta.patient_id,
            images,
        )

    def predict(
        self, baseline: Study, followup: Study, pair_report: Any | None = None
    ) -> PatternPrediction:
        """Classify a pair whose studies carry lesion masks (ground truth or predicted)."""
        from petflare.quant import lesion_instances

        if baseline.mask is None or followup.mask is None:
            raise ValueError("both studies need a lesion mask (segment them first)")
        b_lab = np.asarray(lesion_instances(np.asarray(baseline.mask) > 0))
        f_lab = np.asarray(lesion_instances(np.asarray(followup.mask) > 0))
        return self.predict_samples([self.sample(baseline, followup, b_lab, f_lab, pair_report)])[0]

    def __call__(self, baseline: Any, followup: Any, pair_report: Any) -> Any:
        """The pipeline's ``pattern_head``: TimepointResults + PairReport -> PatternCall."""
        from petflare.inference.results import PatternCall

        sample = self.sample(
            baseline.study,
            followup.study,
            np.asarray(baseline.instances),
            np.asarray(followup.instances),
            pair_report,
        )
        pred = self.predict_samples([sample])[0]
        return PatternCall(
            label=pred.label,
            source="learned_head",
            probabilities=pred.probabilities,
            rule=None,
            evidence={
                "explanations": pred.explanations,
                "lesions": pred.to_dict()["lesions"],
                "temperature": self.temperature,
            },
        )
