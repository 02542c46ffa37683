"""``petflare-evaluate``: autoPET metrics of a model or of predicted masks, beside baselines.

Thin Hydra entry point: composes the config, builds the typed objects and calls
:mod:`petflare.inference.evaluation` (which holds the logic and works without Hydra).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from petflare.cli._common import hydra_command
from petflare.constants import Keys
from petflare.errors import PetflareInputError
from petflare.inference.evaluation import (
    MODEL_METHOD,
    Segmenter,
    check_output_free,
    dataset_entries,
    evaluate_entries,
    evaluate_patterns,
    summary_markdown_table,
    write_evaluation,
)

__all__ = ["dataset_entries", "evaluate_entries", "main", "run_evaluation"]


# --------------------------------------------------------------------------- CLI


def _load_predictor(cfg: DictConfig) -> tuple[Segmenter, str, bool]:
    """Load the model folder once; returns (predict function, description, needs CT)."""
    try:
        from petflare.inference.predictor import Predictor
    except ImportError as exc:  # the model stack is optional for mask-only evaluation
        raise PetflareInputError(
            cfg.model_dir, f"model evaluation needs petflare.inference.predictor ({exc})"
        ) from exc
    kwargs: dict[str, Any] = {"device": cfg.device, "tta": bool(cfg.tta)}
    if cfg.sw_batch_size is not None:
        kwargs["sw_batch_size"] = int(cfg.sw_batch_size)
    if cfg.min_component_ml is not None:
        kwargs["min_component_ml"] = float(cfg.min_component_ml)
    predictor = Predictor.from_folder(cfg.model_dir, **kwargs)
    metadata = getattr(predictor, "metadata", {}) or {}
    channels = [str(c).lower() for c in metadata.get("channels", ["pet"])]
    needs_ct = any("ct" in c for c in channels)
    return predictor.predict, f"model folder {cfg.model_dir}", needs_ct


def _pattern_evaluation(cfg: DictConfig) -> dict[str, Any]:
    """Change-pattern metrics of the manifest's pairs: rules, plus the model folder's head."""
    from petflare.io import load_manifest

    rows = load_manifest(cfg.dataset)
    if cfg.split is not None:
        rows = [r for r in rows if r.get(Keys.SPLIT) == cfg.split]
    classifier = None
    if cfg.model_dir is not None:
        from petflare.inference.pattern import HEAD_WEIGHTS_FILE, PatternClassifier

        if (Path(cfg.model_dir) / HEAD_WEIGHTS_FILE).is_file():
            classifier = PatternClassifier.from_folder(cfg.model_dir, device=cfg.device)
    return evaluate_patterns(rows, classifier=classifier, progress=bool(cfg.progress))


def run_evaluation(cfg: DictConfig) -> tuple[Path, Path]:
    """Compose the typed calls from the config: list studies, score, write reports."""
    if cfg.dataset is None:
        raise PetflareInputError(None, "dataset=PATH is required (see --help)")
    if cfg.out is None:
        raise PetflareInputError(None, "out=DIR is required (see --help)")
    check_output_free(cfg.out, bool(cfg.overwrite))
    roles = None if cfg.channel_roles is None else OmegaConf.to_container(cfg.channel_roles)
    entries, layout = dataset_entries(cfg.dataset, cfg.layout, cfg.split, roles)  # type: ignore[arg-type]
    if bool(cfg.patterns) and layout != "manifest":
        raise PetflareInputError(cfg.dataset, "patterns=true needs a manifest CSV dataset")
    baselines = list(cfg.baselines or [])
    segmenters: dict[str, Segmenter] = {}
    descriptions: dict[str, str] = {}
    load_ct = False
    if cfg.model_dir is not None:
        predict, description, load_ct = _load_predictor(cfg)
        segmenters[MODEL_METHOD] = predict
        descriptions[MODEL_METHOD] = description
    if not segmenters and cfg.predictions_dir is None and not baselines:
        raise PetflareInputError(
            None, "nothing to evaluate: give model_dir, predictions_dir or baselines"
        )
    evaluation = evaluate_entries(
        entries,
        segmenters=segmenters,
        predictions_dir=cfg.predictions_dir,
        baselines=baselines,
        load_ct=load_ct,
        connectivity=int(cfg.connectivity),
        large_lesion_diameter_mm=float(cfg.large_lesion_diameter_mm),
        progress=bool(cfg.progress),
        method_descriptions=descriptions,
    )
    if bool(cfg.patterns):
        evaluation.patterns = _pattern_evaluation(cfg)
    provenance = {
        "dataset": str(Path(cfg.dataset).resolve()),
        "layout": layout,
        "split": cfg.split,
        "model_dir": None if cfg.model_dir is None else str(Path(cfg.model_dir).resolve()),
        "predictions_dir": (
            None if cfg.predictions_dir is None else str(Path(cfg.predictions_dir).resolve())
        ),
        "command": " ".join(sys.argv),
    }
    paths = write_evaluation(
        evaluation, cfg.out, overwrite=bool(cfg.overwrite), provenance=provenance
    )
    print(summary_markdown_table(evaluation))
    print(f"wrote {paths[0]} and {paths[1]}", file=sys.stderr)
    return paths


@hydra_command("evaluate")
def main(cfg: DictConfig) -> None:
    """Entry point of ``petflare-evaluate`` / ``python scripts/evaluate.py``."""
    run_evaluation(cfg)


if __name__ == "__main__":
    main()
