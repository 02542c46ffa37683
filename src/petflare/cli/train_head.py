"""``petflare-train-head``: train the change-pattern head on top of a segmentation model folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from petflare.cli._common import hydra_command
from petflare.errors import PetflareInputError

#: Training record written into ``output_dir``.
RUN_RECORD_FILE = "head_run.json"


def datamodule_config(cfg: DictConfig) -> tuple[dict[str, Any], bool]:
    """The DataModule's instantiable config and whether training pairs get a variant from the
    model's own masks (``data.train_predicted_variant``, handled here: it needs the Predictor)."""
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    assert isinstance(data_cfg, dict)
    train_predicted = bool(data_cfg.pop("train_predicted_variant", False))
    return {str(k): v for k, v in data_cfg.items()}, train_predicted


def build(cfg: DictConfig) -> dict[str, Any]:
    """Load the segmentation model and build the DataModule, head, LightningModule and Trainer."""
    from hydra.utils import instantiate

    from petflare.data.longitudinal import (
        HEAD_LESION_FEATURE_NAMES,
        PAIR_FEATURE_NAMES,
        PredictedMasks,
    )
    from petflare.inference.model_folder import load_model_folder
    from petflare.networks.encoder import EncoderFeatures

    model_dir = Path(cfg.model_dir)
    loaded = load_model_folder(model_dir)
    net = loaded.net
    data_kwargs: dict[str, Any] = {}
    data_cfg, train_predicted = datamodule_config(cfg)
    if cfg.data.val_mask_source == "predicted" or train_predicted:
        from petflare.inference.predictor import Predictor

        predictor = Predictor.from_folder(model_dir, device=cfg.data.device)
        tag = str(loaded.metadata.get("weights", {}).get("sha256", model_dir.resolve()))
        predicted = PredictedMasks(predictor, tag)
        if cfg.data.val_mask_source == "predicted":
            data_kwargs["val_mask_source"] = predicted
        if train_predicted:
            data_kwargs["train_extra_mask_source"] = predicted
    # objects are passed after instantiation: Hydra would turn a dataclass argument into a config
    make_datamodule = instantiate(data_cfg, _partial_=True, _convert_="all")
    datamodule = make_datamodule(
        segmentation_net=net,
        preprocessing=loaded.preprocessing,
        include_images=cfg.module.mode != "frozen",
        **data_kwargs,
    )
    scales = None if cfg.data.encoder_scales is None else list(cfg.data.encoder_scales)
    channels = EncoderFeatures(net, scales).channels()

    def make_head() -> Any:
        return instantiate(
            cfg.head,
            feature_channels=channels,
            n_lesion_features=len(HEAD_LESION_FEATURE_NAMES),
            n_pair_features=len(PAIR_FEATURE_NAMES),
        )

    trainer = instantiate(cfg.trainer)
    return {
        "datamodule": datamodule,
        "head": make_head(),
        "make_head": make_head,
        "trainer": trainer,
        "net": net,
        "model": loaded,
        "scales": scales,
    }


def export_finetuned(
    model_dir: Path, target_dir: Path, loaded: Any, net: Any, mode: str, overwrite: bool
) -> Path:
    """Write the fine-tuned segmentation network as a new model folder (same format)."""
    from petflare.inference.model_folder import CONFIG_FILE, export_model_folder

    meta = dict(loaded.metadata)
    config_path = model_dir / CONFIG_FILE
    return export_model_folder(
        target_dir,
        net.state_dict(),
        network_target=meta["network"]["target"],
        network_kwargs=meta["network"]["kwargs"],
        preprocessing=loaded.preprocessing,
        inference=loaded.inference,
        config_yaml=config_path.read_text() if config_path.is_file() else "",
        metadata={
            k: v for k, v in meta.items() if k in ("name", "task", "intended_use", "training")
        }
        | {
            "name": target_dir.name,
            "fine_tuned_from": str(model_dir),
            "fine_tuning_mode": mode,
            "metrics": {"note": "segmentation metrics of the original model do not carry over"},
        },
        overwrite=overwrite,
    )


def training_data_record(cfg: DictConfig) -> dict[str, Any]:
    """What the head was trained on, for head.json and the run record (plain JSON types)."""

    def plain(key: str, empty: Any) -> Any:
        value = cfg.data.get(key)
        return OmegaConf.to_container(value, resolve=True) if value else empty

    return {
        "manifest": None if cfg.data.manifest is None else str(cfg.data.manifest),
        "phantom_pairs": None
        if cfg.data.manifest is not None
        else {
            "n_train_pairs": int(cfg.data.n_train_pairs),
            "n_val_pairs": int(cfg.data.n_val_pairs),
            "train_seed": int(cfg.data.train_seed),
            "val_seed": int(cfg.data.val_seed),
            "phantom": plain("phantom", {}),
            "extra_train_sets": plain("extra_train_sets", []),
            "extra_val_sets": plain("extra_val_sets", []),
        },
        "n_mask_variants": int(cfg.data.n_mask_variants),
        "val_mask_source": str(cfg.data.val_mask_source),
        "train_predicted_variant": bool(cfg.data.get("train_predicted_variant", False)),
        "ct_dropout": float(cfg.data.get("ct_dropout", 0.0)),
        "missed_nodule_variant": bool(cfg.data.get("missed_nodule_variant", False)),
    }


def train_members(
    cfg: DictConfig, objects: dict[str, Any], dm: Any, make_module: Any, n_heads: int, folds: bool
) -> tuple[Any, dict[str, Any]]:
    """An ensemble of ``n_heads`` heads (seeds seed..seed+n-1, logits averaged) and its record,
    with one temperature fitted on the averaged logits.

    With ``folds`` (``calibration=cross_fit``), head k trains without fold k of the training
    pairs (stratified by class), and the temperature is fitted on the validation pairs plus every
    training pair scored by the head that did not see it (its model-mask variant when there is
    one: what inference sees). With a few dozen validation pairs the temperature is a noisy
    estimate; the out-of-fold logits add every training pair to it, across all training sets.
    """
    import lightning.pytorch as pl
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    from petflare.data.longitudinal import collate_samples
    from petflare.networks.change_head import HeadEnsemble
    from petflare.training.change_module import (
        calibrate_head,
        fit_change_head,
        stratified_folds,
    )

    dm.setup("fit")
    train = dm.datasets["train"]
    labels = train.labels
    fold_of = stratified_folds(labels, n_heads, seed=int(cfg.seed)) if folds else None
    held_variant = -1 if bool(cfg.data.get("train_predicted_variant", False)) else 0
    oof: np.ndarray | None = None
    members, member_metrics = [], []
    first: dict[str, Any] = {}
    for k in range(n_heads):
        # plain ensembles: member 0 continues from the seed set before the data were built
        # (so earlier heads reproduce); cross-fit heads each start from seed + k
        if k > 0 or fold_of is not None:
            pl.seed_everything(int(cfg.seed) + k, workers=True)
        if fold_of is not None:
            dm.use_train_pairs(np.flatnonzero(fold_of != k))
        member = make_module(objects["head"] if k == 0 else objects["make_head"]())
        trainer = objects["trainer"] if k == 0 else instantiate(cfg.trainer)
        member_record = fit_change_head(trainer, member, dm)
        first = first or member_record
        members.append(member.head)
        member_metrics.append(member_record["val_metrics"])
        if fold_of is None:
            if k > 0:
                print(f"petflare-train-head: ensemble member {k + 1}/{n_heads} trained", flush=True)
            continue
        held = np.flatnonzero(fold_of == k)
        held_samples: Any = [train.variants[i][held_variant] for i in held]
        loader: DataLoader[Any] = DataLoader(
            held_samples,
            batch_size=int(cfg.data.batch_size),
            collate_fn=collate_samples,
        )
        logits, _ = member.predict_logits(loader)
        if oof is None:
            oof = np.zeros((len(labels), logits.shape[1]), np.float32)
        oof[held] = logits
        print(f"petflare-train-head: fold {k + 1}/{n_heads} head trained", flush=True)
    dm.use_train_pairs(None)
    module = make_module(HeadEnsemble(members))
    record = {
        "n_train": first["n_train"],
        "n_val": first["n_val"],
        **calibrate_head(module, dm, held_out=None if oof is None else (oof, labels)),
        "member_val_balanced_accuracy": [
            None if m is None else m["balanced_accuracy"] for m in member_metrics
        ],
    }
    return module, record


def recalibrate_head(cfg: DictConfig) -> dict[str, Any]:
    """Refit the temperature of the head already in ``model_dir`` on the validation split.

    The head's weights are not touched (``head.pt`` and its hash stay as they are); only
    ``head.json`` is rewritten, with the new temperature, the validation metrics at it and a
    ``recalibration`` record (previous temperature, calibration pairs). Use it to calibrate on a
    set as varied as the data the head will meet (``data.extra_val_sets``), or on one's own
    labelled pairs (``data.manifest``: its validation split). The pairs' features come from the
    head's own encoder scales and margin, whatever ``data.encoder_scales`` / ``margin_mm`` say.
    """
    from datetime import datetime, timezone

    from hydra.utils import instantiate

    from petflare.inference.pattern import HEAD_METADATA_FILE, load_head
    from petflare.io.atomic import atomic_write_text
    from petflare.training.change_module import ChangePatternModule, calibrate_head

    model_dir = Path(cfg.model_dir)
    head, meta = load_head(model_dir)  # a missing or foreign head is refused here
    meta_path = model_dir / HEAD_METADATA_FILE
    if not bool(cfg.overwrite):
        raise PetflareInputError(
            meta_path, "recalibrate=true rewrites the temperature in head.json: pass overwrite=true"
        )
    if str(cfg.module.mode) != "frozen":
        raise PetflareInputError(None, "recalibrate=true needs module.mode=frozen")
    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.data.encoder_scales = meta.get("encoder_scales")
    cfg.data.margin_mm = float(meta.get("margin_mm", cfg.data.margin_mm))
    cfg.data.train_predicted_variant = False  # no training pairs are built
    objects = build(cfg)
    dm = objects["datamodule"]
    dm.setup_validation()
    module = ChangePatternModule(
        head,
        instantiate(cfg.module.optimizer),
        mode="frozen",
        encoder_scales=objects["scales"],
    )
    record = calibrate_head(module, dm)
    if record["val_metrics"] is None:
        raise PetflareInputError(None, "recalibrate=true found no validation pairs to fit on")
    previous = float(meta["temperature"])
    data = training_data_record(cfg)
    calibration_data = {
        "manifest": data["manifest"],
        "phantom_pairs": None
        if data["phantom_pairs"] is None
        else {
            k: data["phantom_pairs"][k]
            for k in ("n_val_pairs", "val_seed", "phantom", "extra_val_sets")
        },
        "val_mask_source": data["val_mask_source"],
    }
    updated = {
        **meta,
        "temperature": float(record["temperature"]),
        "validation": record["val_metrics"],
        "validation_uncalibrated": record["val_metrics_uncalibrated"],
        "recalibration": {
            "previous_temperature": previous,
            "n_calibration": int(record.get("n_calibration", 0)),
            "data": calibration_data,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    }
    atomic_write_text(meta_path, json.dumps(updated, indent=2) + "\n", overwrite=True)
    out = Path(cfg.output_dir)
    atomic_write_text(
        out / RUN_RECORD_FILE,
        json.dumps({**record, "recalibration": updated["recalibration"]}, indent=2) + "\n",
        overwrite=True,
    )
    val = record["val_metrics"]
    ece = float("nan") if val.get("ece") is None else val["ece"]
    print(
        f"petflare-train-head: {meta_path} recalibrated on {record.get('n_calibration', 0)} "
        f"pairs: temperature {previous:.3f} -> {record['temperature']:.3f}, val balanced "
        f"accuracy {val['balanced_accuracy']:.3f}, ECE {ece:.3f}"
    )
    return record


def train_head(cfg: DictConfig) -> dict[str, Any]:
    """Run one head training job; writes head.pt/head.json into ``model_dir``."""
    if bool(cfg.get("recalibrate", False)):
        return recalibrate_head(cfg)
    import lightning.pytorch as pl
    import torch
    from hydra.utils import instantiate

    from petflare.inference.pattern import HEAD_METADATA_FILE, HEAD_WEIGHTS_FILE, save_head
    from petflare.io.atomic import atomic_write_text, check_can_write
    from petflare.training.change_module import (
        ChangePatternModule,
        fit_change_head,
    )

    model_dir = Path(cfg.model_dir)
    overwrite = bool(cfg.overwrite)
    mode = str(cfg.module.mode)
    if mode not in ("frozen", "finetune", "joint"):
        raise PetflareInputError(None, f"module.mode must be frozen, finetune or joint, got {mode}")
    # a fine-tuned encoder is a new segmentation model: it goes to its own folder with the head
    target_dir = model_dir
    if mode != "frozen":
        if cfg.get("out_model_dir") is None:
            raise PetflareInputError(
                None,
                f"module.mode={mode} changes the segmentation network: give out_model_dir=DIR "
                "for the new model folder (the original is left untouched)",
            )
        target_dir = Path(cfg.out_model_dir)
        if target_dir.exists() and any(target_dir.iterdir()) and not overwrite:
            raise PetflareInputError(target_dir, "exists; pass overwrite=true to replace it")
    else:
        for name in (HEAD_WEIGHTS_FILE, HEAD_METADATA_FILE):  # fail before hours of work
            check_can_write(model_dir / name, overwrite)
    n_heads = int(cfg.get("n_heads", 1))
    if n_heads < 1:
        raise PetflareInputError(None, f"n_heads must be >= 1, got {n_heads}")
    if n_heads > 1 and mode != "frozen":
        raise PetflareInputError(None, "n_heads > 1 (an ensemble) needs module.mode=frozen")
    calibration = str(cfg.get("calibration", "validation"))
    if calibration not in ("validation", "cross_fit"):
        raise PetflareInputError(
            None, f"calibration must be validation or cross_fit, got {calibration}"
        )
    if calibration == "cross_fit" and n_heads < 2:
        raise PetflareInputError(
            None, "calibration=cross_fit trains one head per fold: it needs n_heads >= 2"
        )
    pl.seed_everything(int(cfg.seed), workers=True)
    objects = build(cfg)
    dm = objects["datamodule"]
    dm.setup("fit")
    weights = dm.class_weights

    def make_module(head: Any) -> Any:
        return ChangePatternModule(
            head,
            instantiate(cfg.module.optimizer),
            segmentation_net=objects["net"],
            mode=mode,  # type: ignore[arg-type]
            class_weights=None if weights is None else weights.tolist(),
            seg_loss=instantiate(cfg.module.seg_loss) if mode == "joint" else None,
            seg_loss_weight=float(cfg.module.seg_loss_weight),
            encoder_lr_scale=float(cfg.module.encoder_lr_scale),
            encoder_scales=objects["scales"],
            label_smoothing=float(cfg.module.label_smoothing),
        )

    if n_heads > 1:
        module, record = train_members(
            cfg, objects, dm, make_module, n_heads, folds=calibration == "cross_fit"
        )
    else:
        module = make_module(objects["head"])
        record = fit_change_head(objects["trainer"], module, dm)
    record["class_weights"] = None if weights is None else [float(w) for w in weights]
    data_info = training_data_record(cfg)
    torch.set_grad_enabled(True)
    if mode != "frozen":
        export_finetuned(model_dir, target_dir, objects["model"], module.net, mode, overwrite)
    save_head(
        target_dir,
        module.head,
        temperature=record["temperature"],
        encoder_scales=objects["scales"],
        margin_mm=float(cfg.data.margin_mm),
        metadata={
            "training": {
                **data_info,
                "mode": mode,
                "seed": int(cfg.seed),
                "n_heads": n_heads,
                "calibration": calibration,
                "epochs": int(objects["trainer"].current_epoch),
            },
            "validation": record["val_metrics"],
            "cross_fit": record.get("held_out_metrics"),
            "validation_uncalibrated": record["val_metrics_uncalibrated"],
            "intended_use": "research only: change-pattern classification of FDG-PET pairs; "
            "trained on synthetic phantoms unless stated otherwise; not for clinical use",
            "config": OmegaConf.to_container(cfg, resolve=True),
        },
        overwrite=overwrite,
    )
    out = Path(cfg.output_dir)
    atomic_write_text(
        out / RUN_RECORD_FILE,
        json.dumps({**record, "data": data_info}, indent=2) + "\n",
        overwrite=True,
    )
    val = record["val_metrics"] or {}
    bal = val.get("balanced_accuracy", float("nan"))
    ece = float("nan") if val.get("ece") is None else val["ece"]
    print(f"petflare-train-head: head written to {target_dir / HEAD_WEIGHTS_FILE}")
    print(
        f"petflare-train-head: {record['n_train']} train / {record['n_val']} val pairs, "
        f"temperature {record['temperature']:.3f}, val balanced accuracy {bal:.3f}, ECE {ece:.3f}"
    )
    return record


@hydra_command("train_head", log_info=True)
def main(cfg: DictConfig) -> None:
    """Console entry point ``petflare-train-head``."""
    train_head(cfg)


if __name__ == "__main__":
    main()
