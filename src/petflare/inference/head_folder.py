"""The change-pattern head of a model folder: train it into the folder, or refit its temperature.

Reads the segmentation model folder (network, preprocessing, and a Predictor when the model's
own masks are needed), calls :mod:`petflare.training.head_training` and writes ``head.pt`` /
``head.json`` (:func:`petflare.inference.pattern.save_head`) and the run record.
``petflare-train-head`` composes its config into the settings and factories and calls one of
these.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from petflare.errors import PetflareInputError
from petflare.training.head_training import (
    HeadFactories,
    HeadTrainingSettings,
    head_metadata,
    recalibrate_temperature,
    train_change_head,
    write_run_record,
)


def _predicted_masks(model_dir: Path, loaded: Any, settings: HeadTrainingSettings) -> Any:
    """The model's own masks as a (cached) mask source, when the settings need them."""
    if not settings.uses_predicted_masks:
        return None
    from petflare.data.longitudinal import PredictedMasks
    from petflare.inference.predictor import Predictor

    predictor = Predictor.from_folder(model_dir, device=settings.features.device)
    tag = str(loaded.metadata.get("weights", {}).get("sha256", model_dir.resolve()))
    return PredictedMasks(predictor, tag)


def train_head_into_folder(
    model_dir: str | Path, settings: HeadTrainingSettings, factories: HeadFactories
) -> dict[str, Any]:
    """Train the change-pattern head on ``model_dir``'s network and save it into the folder.

    Returns:
        The run record (also written to ``settings.output_dir``).

    Raises:
        PetflareInputError: bad options, or a head already there without ``overwrite``
            (checked before any work).
    """
    import lightning.pytorch as pl

    from petflare.inference.model_folder import load_model_folder
    from petflare.inference.pattern import HEAD_METADATA_FILE, HEAD_WEIGHTS_FILE, save_head
    from petflare.io.atomic import check_can_write

    model_dir = Path(model_dir)
    for name in (HEAD_WEIGHTS_FILE, HEAD_METADATA_FILE):  # fail before hours of work
        check_can_write(model_dir / name, settings.overwrite)
    settings.check()
    # seeded before the network is built, as the shipped heads were made
    pl.seed_everything(settings.seed, workers=True)
    loaded = load_model_folder(model_dir)
    module, record = train_change_head(
        settings,
        factories,
        loaded.net,
        loaded.preprocessing,
        _predicted_masks(model_dir, loaded, settings),
    )
    save_head(
        model_dir,
        module.head,
        temperature=record["temperature"],
        encoder_scales=settings.encoder_scales,
        margin_mm=settings.margin_mm,
        metadata=head_metadata(settings, record),
        overwrite=settings.overwrite,
    )
    record.pop("epochs", None)  # in head.json's training section
    write_run_record(settings.output_dir, {**record, "data": settings.data_record})
    val = record["val_metrics"] or {}
    bal = val.get("balanced_accuracy", float("nan"))
    ece = float("nan") if val.get("ece") is None else val["ece"]
    print(f"petflare-train-head: head written to {model_dir / HEAD_WEIGHTS_FILE}")
    print(
        f"petflare-train-head: {record['n_train']} train / {record['n_val']} val pairs, "
        f"temperature {record['temperature']:.3f}, val balanced accuracy {bal:.3f}, ECE {ece:.3f}"
    )
    return record


def recalibrate_head_in_folder(
    model_dir: str | Path, settings: HeadTrainingSettings, factories: HeadFactories
) -> dict[str, Any]:
    """Refit the temperature of the head already in ``model_dir`` on the validation split.

    The head's weights are not touched (``head.pt`` and its hash stay as they are); only
    ``head.json`` is rewritten, with the new temperature, the validation metrics at it and a
    ``recalibration`` record (previous temperature, calibration pairs). Use it to calibrate on a
    set as varied as the data the head will meet (extra validation sets), or on one's own
    labelled pairs (a manifest's validation split).

    Raises:
        PetflareInputError: no head in the folder, ``overwrite`` not given, no validation pairs.
    """
    from petflare.inference.model_folder import load_model_folder
    from petflare.inference.pattern import HEAD_METADATA_FILE, load_head
    from petflare.io.atomic import atomic_write_text

    model_dir = Path(model_dir)
    head, meta = load_head(model_dir)  # a missing or foreign head is refused here
    meta_path = model_dir / HEAD_METADATA_FILE
    if not settings.overwrite:
        raise PetflareInputError(
            meta_path, "recalibrate=true rewrites the temperature in head.json: pass overwrite=true"
        )
    loaded = load_model_folder(model_dir)
    updated, record = recalibrate_temperature(
        settings,
        factories,
        head,
        meta,
        loaded.net,
        loaded.preprocessing,
        _predicted_masks(model_dir, loaded, _no_training_pairs(settings)),
    )
    atomic_write_text(meta_path, json.dumps(updated, indent=2) + "\n", overwrite=True)
    write_run_record(settings.output_dir, record)
    val = record["val_metrics"]
    ece = float("nan") if val.get("ece") is None else val["ece"]
    print(
        f"petflare-train-head: {meta_path} recalibrated on {record.get('n_calibration', 0)} "
        f"pairs: temperature {meta['temperature']:.3f} -> {record['temperature']:.3f}, val "
        f"balanced accuracy {val['balanced_accuracy']:.3f}, ECE {ece:.3f}"
    )
    return record


def _no_training_pairs(settings: HeadTrainingSettings) -> HeadTrainingSettings:
    import dataclasses

    return dataclasses.replace(settings, train_predicted_variant=False)
