"""``petflare-export-model``: turn a training run folder into a shippable model folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from petflare.cli._common import config_dir, exit_on_bad_input
from petflare.errors import PetflareInputError

#: Written into every exported model's metadata.
DEFAULT_INTENDED_USE = (
    "Research only. Segments FDG-avid lesions on whole-body FDG-PET (SUV). Trained on "
    "synthetic phantoms unless the metadata's training data says otherwise; not validated on "
    "patients; not a medical device; not for clinical decisions."
)


def _checkpoint_path(run_dir: Path, which: str, record: dict[str, Any]) -> Path:
    if which == "best":
        best = record.get("checkpoint") or ""
        return Path(best) if best else run_dir / "checkpoints" / "last.ckpt"
    if which == "last":
        return run_dir / "checkpoints" / "last.ckpt"
    return Path(which)


def export_run(cfg: DictConfig) -> Path:
    """Read ``run_dir`` (config.yaml, val_metrics.json, checkpoints/) and write ``out_dir``."""
    run_dir = Path(cfg.run_dir)
    run_config = run_dir / "config.yaml"
    if not run_config.is_file():
        raise PetflareInputError(run_config, "not a training run folder (no config.yaml)")
    from petflare.data.transforms import PreprocessingConfig
    from petflare.inference.model_folder import (
        InferenceSettings,
        export_model_folder,
        network_state_dict,
        safe_torch_load,
    )
    from petflare.training.fit import VAL_METRICS_FILE

    train_cfg = OmegaConf.load(run_config)
    if not isinstance(train_cfg, DictConfig):
        raise PetflareInputError(run_config, "not a training config (expected a mapping)")
    metrics_path = run_dir / VAL_METRICS_FILE
    record = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    ckpt = _checkpoint_path(run_dir, str(cfg.checkpoint), record)
    checkpoint = safe_torch_load(ckpt)
    state = network_state_dict(checkpoint, ckpt)

    net_cfg = OmegaConf.to_container(train_cfg.net, resolve=True)
    assert isinstance(net_cfg, dict)
    target = str(net_cfg.pop("_target_"))
    prep_cfg = OmegaConf.to_container(train_cfg.data.preprocessing, resolve=True)
    assert isinstance(prep_cfg, dict)
    prep_cfg.pop("_target_", None)
    preprocessing = PreprocessingConfig.from_dict({str(k): v for k, v in prep_cfg.items()})
    inference = InferenceSettings(
        roi_size_vox=tuple(train_cfg.data.augmentation.patch_size_vox),
        overlap=float(cfg.overlap),
        threshold=float(cfg.threshold),
        min_component_ml=float(cfg.min_component_ml),
        physiology_filter=bool(cfg.get("physiology_filter", False)),
    )
    source = OmegaConf.to_container(train_cfg.data.source, resolve=True)
    metadata = {
        "name": Path(cfg.out_dir).name,
        "task": "FDG-avid lesion segmentation on whole-body PET (binary mask)",
        "intended_use": str(cfg.intended_use or DEFAULT_INTENDED_USE),
        "training": {
            "run_name": str(train_cfg.get("run_name", "")),
            "seed": int(train_cfg.seed),
            "data_source": source,
            "checkpoint": ckpt.name,
            "global_step": int(checkpoint.get("global_step", -1)),
            "max_steps": int(train_cfg.trainer.max_steps),
            "loss": str(train_cfg.model.loss._target_),
            "optimizer": str(train_cfg.model.optimizer._target_),
            "learning_rate": float(train_cfg.model.optimizer.lr),
            "command": str(cfg.training_command or ""),
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
    out = export_model_folder(
        cfg.out_dir,
        state,
        network_target=target,
        network_kwargs={str(k): v for k, v in net_cfg.items()},
        preprocessing=preprocessing,
        inference=inference,
        config_yaml=run_config.read_text(),
        metadata=metadata,
        overwrite=bool(cfg.overwrite),
        organ_classes=int(train_cfg.model.get("organ_classes", 0) or 0),
    )
    size_mb = sum(p.stat().st_size for p in Path(out).iterdir()) / 1e6
    print(f"petflare-export-model: wrote {out} ({size_mb:.2f} MB) from {ckpt}")
    return Path(out)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="export_model")
def main(cfg: DictConfig) -> None:
    """Console entry point ``petflare-export-model``."""

    @exit_on_bad_input
    def run() -> None:
        export_run(cfg)

    run()


if __name__ == "__main__":
    main()
