"""A training run folder to a shippable model folder, with its model card (``metadata.json``).

:func:`export_training_run` reads a ``petflare-train`` run folder (the resolved ``config.yaml``,
``val_metrics.json`` and ``checkpoints/``) and writes a model folder through
:func:`petflare.inference.model_folder.export_model_folder`; ``petflare-export-model`` only
composes its options and calls it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from petflare.errors import PetflareInputError

#: Written into every exported model's metadata.
DEFAULT_INTENDED_USE = (
    "Research only. Segments FDG-avid lesions on whole-body FDG-PET (SUV). Trained on "
    "synthetic phantoms unless the metadata's training data says otherwise; not validated on "
    "patients; not a medical device; not for clinical decisions."
)


def checkpoint_path(run_dir: Path, which: str, record: dict[str, Any]) -> Path:
    """The checkpoint to export: ``best`` (from the run's record), ``last`` or a path."""
    if which == "best":
        best = record.get("checkpoint") or ""
        return Path(best) if best else run_dir / "checkpoints" / "last.ckpt"
    if which == "last":
        return run_dir / "checkpoints" / "last.ckpt"
    return Path(which)


def model_card(
    train_cfg: dict[str, Any],
    record: dict[str, Any],
    *,
    name: str,
    checkpoint: Path,
    global_step: int,
    intended_use: str | None = None,
    training_command: str | None = None,
) -> dict[str, Any]:
    """The model folder's metadata: task, intended use, how it was trained, validation metrics.

    Args:
        train_cfg: the run's resolved training config (plain mapping).
        record: the run's ``val_metrics.json`` (empty when absent).
        name: the model folder's name.
        checkpoint: the exported checkpoint.
        global_step: its optimizer step.
        intended_use: replaces :data:`DEFAULT_INTENDED_USE`.
        training_command: how the run was made, as the user typed it.
    """
    model = train_cfg["model"]
    return {
        "name": name,
        "task": "FDG-avid lesion segmentation on whole-body PET (binary mask)",
        "intended_use": str(intended_use or DEFAULT_INTENDED_USE),
        "training": {
            "run_name": str(train_cfg.get("run_name", "")),
            "seed": int(train_cfg["seed"]),
            "data_source": train_cfg["data"].get("source"),
            "checkpoint": checkpoint.name,
            "global_step": int(global_step),
            "max_steps": int(train_cfg["trainer"]["max_steps"]),
            "loss": str(model["loss"]["_target_"]),
            "optimizer": str(model["optimizer"]["_target_"]),
            "learning_rate": float(model["optimizer"]["lr"]),
            "command": str(training_command or ""),
            # a fine-tune: the weights it started from (path as given, and their hash)
            "init_weights": train_cfg.get("init_weights"),
            "init_weights_sha256": train_cfg.get("init_weights_sha256"),
        },
        "metrics": {
            "validation": record.get("summary", {}),
            "note": (
                "autoPET metrics (Dice over positive scans, FPV/FNV in ml, lesion-wise detection, "
                "18-connectivity) of the exported checkpoint on the validation phantoms, computed "
                "on the model's resampled grid during training"
            ),
        },
    }


#: What a hybrid training set (petflare-hybrid) records about its real backgrounds.
HYBRID_RECORD = "hybrid.json"


def _roots(source: Any) -> list[str]:
    """Every ``root`` folder named anywhere in a data-source config."""
    if isinstance(source, dict):
        own = [str(source["root"])] if isinstance(source.get("root"), str) else []
        return own + [r for value in source.values() for r in _roots(value)]
    if isinstance(source, list):
        return [r for value in source for r in _roots(value)]
    return []


def real_backgrounds(source: Any, run_dir: Path) -> dict[str, list[str]] | None:
    """The real scans a run trained on as hybrid backgrounds, and those it left out.

    Read from the ``hybrid.json`` beside each hybrid set's ``autopet/`` root (a relative root is
    taken from the run's working folder, two levels above ``runs/<name>``), so the real
    benchmark can say exactly which real scans a model saw (leave-one-scan-out). None when the
    run used no hybrid set.
    """
    used: list[str] = []
    not_used: list[str] = []
    found = False
    for root in _roots(source):
        for base in (Path(root), run_dir.resolve().parents[1] / root):
            record = base.parent / HYBRID_RECORD
            if record.is_file():
                info = json.loads(record.read_text())
                used += [str(b["name"]) for b in info.get("backgrounds_used", [])]
                not_used += [str(name) for name in info.get("backgrounds_not_used", {})]
                found = True
                break
    return {"used": sorted(set(used)), "not_used": sorted(set(not_used))} if found else None


def export_training_run(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    checkpoint: str = "best",
    overlap: float = 0.25,
    threshold: float = 0.5,
    min_component_ml: float = 0.1,
    physiology_filter: bool = False,
    intended_use: str | None = None,
    training_command: str | None = None,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write the model folder ``out_dir`` from the training run ``run_dir``.

    Args:
        run_dir: a ``petflare-train`` run folder.
        out_dir: the model folder to write.
        checkpoint: ``best``, ``last`` or a checkpoint path.
        overlap, threshold, min_component_ml, physiology_filter: the inference settings
            stored in the folder.
        intended_use, training_command: recorded in the model card.
        overwrite: replace an existing model folder.

    Returns:
        The model folder and the checkpoint it was made from.

    Raises:
        PetflareInputError: not a run folder, or an unreadable checkpoint.
    """
    from petflare.data.transforms import PreprocessingConfig
    from petflare.inference.model_folder import (
        InferenceSettings,
        export_model_folder,
        network_state_dict,
        safe_torch_load,
    )
    from petflare.training.fit import VAL_METRICS_FILE

    run_dir = Path(run_dir)
    run_config = run_dir / "config.yaml"
    if not run_config.is_file():
        raise PetflareInputError(run_config, "not a training run folder (no config.yaml)")
    # the run config is written resolved (no interpolations left), so plain YAML reads it
    train_cfg = yaml.safe_load(run_config.read_text())
    if not isinstance(train_cfg, dict):
        raise PetflareInputError(run_config, "not a training config (expected a mapping)")
    metrics_path = run_dir / VAL_METRICS_FILE
    record = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    ckpt = checkpoint_path(run_dir, checkpoint, record)
    loaded = safe_torch_load(ckpt)
    state = network_state_dict(loaded, ckpt)

    net_cfg = dict(train_cfg["net"])
    target = str(net_cfg.pop("_target_"))
    prep_cfg = dict(train_cfg["data"]["preprocessing"])
    prep_cfg.pop("_target_", None)
    preprocessing = PreprocessingConfig.from_dict({str(k): v for k, v in prep_cfg.items()})
    inference = InferenceSettings(
        roi_size_vox=tuple(train_cfg["data"]["augmentation"]["patch_size_vox"]),
        overlap=float(overlap),
        threshold=float(threshold),
        min_component_ml=float(min_component_ml),
        physiology_filter=bool(physiology_filter),
    )
    metadata = model_card(
        train_cfg,
        record,
        name=Path(out_dir).name,
        checkpoint=ckpt,
        global_step=int(loaded.get("global_step", -1)),
        intended_use=intended_use,
        training_command=training_command,
    )
    backgrounds = real_backgrounds(train_cfg["data"].get("source"), run_dir)
    if backgrounds is not None:
        metadata["training"]["real_backgrounds"] = backgrounds
    out = export_model_folder(
        out_dir,
        state,
        network_target=target,
        network_kwargs={str(k): v for k, v in net_cfg.items()},
        preprocessing=preprocessing,
        inference=inference,
        config_yaml=run_config.read_text(),
        metadata=metadata,
        overwrite=overwrite,
        organ_classes=int(train_cfg["model"].get("organ_classes", 0) or 0),
    )
    return Path(out), ckpt
