"""``petflare-train-head``: train the change-pattern head on top of a segmentation model folder.

Composes the config into :class:`~petflare.training.head_training.HeadTrainingSettings` and
the ``_target_`` builders (:class:`~petflare.training.head_training.HeadFactories`), then calls
:func:`petflare.inference.head_folder.train_head_into_folder` (or, with ``recalibrate=true``,
:func:`~petflare.inference.head_folder.recalibrate_head_in_folder`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from petflare.cli._common import hydra_command
from petflare.training.head_training import RUN_RECORD_FILE, HeadFactories, HeadTrainingSettings

__all__ = [
    "RUN_RECORD_FILE",
    "compose_head_training",
    "main",
    "train_head",
    "training_data_record",
]


def training_data_record(cfg: DictConfig) -> dict[str, Any]:
    """What the head was trained on, for head.json and the run record (plain JSON types)."""
    pairs, masks = cfg.data.phantom_pairs, cfg.data.masks

    def plain(key: str, empty: Any) -> Any:
        value = pairs.get(key)
        return OmegaConf.to_container(value, resolve=True) if value else empty

    manifest: Any = cfg.data.manifest  # one CSV, or a list of them
    if manifest is not None and not isinstance(manifest, str):
        manifest = [str(m) for m in OmegaConf.to_container(manifest, resolve=True)]  # type: ignore[union-attr]
    return {
        "manifest": manifest,
        "phantom_pairs": None
        if cfg.data.manifest is not None
        else {
            "n_train_pairs": int(pairs.n_train_pairs),
            "n_val_pairs": int(pairs.n_val_pairs),
            "train_seed": int(pairs.train_seed),
            "val_seed": int(pairs.val_seed),
            "phantom": plain("phantom", {}),
            "extra_train_sets": plain("extra_train_sets", []),
            "extra_val_sets": plain("extra_val_sets", []),
        },
        "n_mask_variants": int(masks.n_mask_variants),
        "val_mask_source": str(masks.val_mask_source),
        "train_predicted_variant": bool(masks.get("train_predicted_variant", False)),
        "ct_dropout": float(cfg.data.sampling.get("ct_dropout", 0.0)),
        "missed_nodule_variant": bool(masks.get("missed_nodule_variant", False)),
    }


def compose_head_training(cfg: DictConfig) -> tuple[HeadTrainingSettings, HeadFactories]:
    """The run's typed settings and object builders from the composed config.

    ``data.masks`` and ``data.features`` become settings (the run replaces the mask sources
    by the model's own masks, and a recalibration the encoder levels by the head's);
    ``data.masks.train_predicted_variant`` is not a DataModule option: it needs the Predictor.
    """
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    assert isinstance(data_cfg, dict)
    masks_cfg = data_cfg.pop("masks")
    train_predicted = bool(masks_cfg.pop("train_predicted_variant", False))
    masks = instantiate(masks_cfg, _convert_="all")
    features = instantiate(data_cfg.pop("features"), _convert_="all")
    sampling = instantiate(data_cfg["sampling"], _convert_="all")
    settings = HeadTrainingSettings(
        output_dir=Path(cfg.output_dir),
        seed=int(cfg.seed),
        n_heads=int(cfg.get("n_heads", 1)),
        calibration=str(cfg.get("calibration", "validation")),
        overwrite=bool(cfg.overwrite),
        batch_size=int(sampling.batch_size),
        features=features,
        masks=masks,
        train_predicted_variant=train_predicted,
        data_record=training_data_record(cfg),
        config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
    )
    trainer_cfg = cfg.trainer
    factories = HeadFactories(
        datamodule=instantiate(data_cfg, _partial_=True, _convert_="all"),
        head=instantiate(cfg.head, _partial_=True),
        module=instantiate(cfg.module),
        trainer=lambda: instantiate(trainer_cfg),
    )
    return settings, factories


def train_head(cfg: DictConfig) -> dict[str, Any]:
    """Run one head training job; writes head.pt/head.json into ``model_dir``."""
    from petflare.inference.head_folder import recalibrate_head_in_folder, train_head_into_folder

    settings, factories = compose_head_training(cfg)
    run = (
        recalibrate_head_in_folder
        if bool(cfg.get("recalibrate", False))
        else train_head_into_folder
    )
    return run(Path(cfg.model_dir), settings, factories)


@hydra_command("train_head", log_info=True)
def main(cfg: DictConfig) -> None:
    """Console entry point ``petflare-train-head``."""
    train_head(cfg)


if __name__ == "__main__":
    main()
