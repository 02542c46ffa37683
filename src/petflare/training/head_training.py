"""Training and recalibrating the change-pattern head on a frozen segmentation network.

Works on built objects (no Hydra): :class:`HeadFactories` makes the DataModule, heads,
LightningModules and Trainers; :class:`HeadTrainingSettings` holds the run's options. One head,
an ensemble (``n_heads``), or a cross-fit ensemble (``calibration="cross_fit"``) is trained and
its temperature fitted; :func:`head_metadata` is what ``head.json`` records about it.
:mod:`petflare.inference.head_folder` reads the segmentation model folder, calls these and
writes the head into the folder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from petflare.data.longitudinal import MaskVariants, PairFeatures
from petflare.data.transforms import PreprocessingConfig
from petflare.errors import PetflareInputError

#: Training record written into ``output_dir``.
RUN_RECORD_FILE = "head_run.json"
#: Where the temperature comes from: the validation pairs, or validation + out-of-fold logits.
CALIBRATIONS = ("validation", "cross_fit")
#: What head.json says a head is for.
HEAD_INTENDED_USE = (
    "research only: change-pattern classification of FDG-PET pairs; "
    "trained on synthetic phantoms unless stated otherwise; not for clinical use"
)


@dataclass(frozen=True)
class HeadTrainingSettings:
    """The options of one head training (or recalibration) run.

    Attributes:
        output_dir: where the run record (``head_run.json``) is written.
        seed: seed of the first head (ensemble member k uses seed + k).
        n_heads: heads trained, logits averaged (an ensemble when > 1).
        calibration: ``validation`` or ``cross_fit`` (head k skips fold k of the training
            pairs; the temperature is fitted on validation plus out-of-fold logits).
        overwrite: replace an existing head.
        batch_size: pairs per batch of the out-of-fold scoring.
        features: how pair features are computed (encoder levels the head reads, crop margin,
            device, worker processes).
        masks: the masks pairs are seen with; ``val_mask_source="predicted"`` means the
            model's own masks.
        train_predicted_variant: training pairs also get a variant from the model's own masks.
        data_record: what the head is trained on (plain JSON, for head.json and the record).
        config: the run's resolved configuration (plain JSON, recorded in head.json).
    """

    output_dir: Path
    seed: int = 0
    n_heads: int = 1
    calibration: str = "validation"
    overwrite: bool = False
    batch_size: int = 16
    features: PairFeatures = field(default_factory=PairFeatures)
    masks: MaskVariants = field(default_factory=MaskVariants)
    train_predicted_variant: bool = False
    data_record: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def encoder_scales(self) -> list[int] | None:
        """Encoder levels the head reads (None: all)."""
        scales = self.features.encoder_scales
        return None if scales is None else [int(s) for s in scales]

    @property
    def margin_mm(self) -> float:
        """Margin of the encoder crop around the lesions."""
        return float(self.features.margin_mm)

    @property
    def uses_predicted_masks(self) -> bool:
        """Whether the run needs the segmentation model's own masks."""
        return self.masks.val_mask_source == "predicted" or self.train_predicted_variant

    def check(self) -> None:
        """Refuse option combinations that cannot run (before any work).

        Raises:
            PetflareInputError: n_heads < 1, an unknown calibration, cross_fit with one head.
        """
        if self.n_heads < 1:
            raise PetflareInputError(None, f"n_heads must be >= 1, got {self.n_heads}")
        if self.calibration not in CALIBRATIONS:
            raise PetflareInputError(
                None, f"calibration must be validation or cross_fit, got {self.calibration}"
            )
        if self.calibration == "cross_fit" and self.n_heads < 2:
            raise PetflareInputError(
                None, "calibration=cross_fit trains one head per fold: it needs n_heads >= 2"
            )


@dataclass(frozen=True)
class HeadFactories:
    """Builders of the run's objects (e.g. Hydra partials of the ``_target_`` configs).

    Attributes:
        datamodule: ``(segmentation_net=, preprocessing=, masks=, features=) ->
            LongitudinalDataModule``.
        head: ``(feature_channels=, n_lesion_features=, n_pair_features=) -> ChangePatternHead``.
        module: ``(head, class_weights=) -> ChangePatternModule``.
        trainer: ``() -> lightning Trainer``.
    """

    datamodule: Callable[..., Any]
    head: Callable[..., Any]
    module: Callable[..., Any]
    trainer: Callable[[], Any]


@dataclass
class HeadObjects:
    """The built objects of a run (see :func:`build_head_objects`)."""

    datamodule: Any
    head: Any
    trainer: Any
    make_head: Callable[[], Any]


def build_head_objects(
    settings: HeadTrainingSettings,
    factories: HeadFactories,
    net: nn.Module,
    preprocessing: PreprocessingConfig,
    predicted_masks: Any = None,
) -> HeadObjects:
    """Build the DataModule, the first head and its Trainer on the segmentation network.

    Args:
        settings: the run's options.
        factories: the object builders.
        net: the segmentation network whose encoder the head reads.
        preprocessing: its preprocessing.
        predicted_masks: the model's own masks (a mask source), used for validation pairs with
            ``val_mask_source="predicted"`` and as a training variant with
            ``train_predicted_variant``.
    """
    from petflare.data.longitudinal import HEAD_LESION_FEATURE_NAMES, PAIR_FEATURE_NAMES
    from petflare.networks.encoder import EncoderFeatures

    masks = settings.masks
    if settings.uses_predicted_masks:
        if predicted_masks is None:
            raise ValueError("the settings use the model's own masks: give predicted_masks")
        if masks.val_mask_source == "predicted":
            masks = dataclasses.replace(masks, val_mask_source=predicted_masks)
        if settings.train_predicted_variant:
            masks = dataclasses.replace(masks, train_extra_mask_source=predicted_masks)
    datamodule = factories.datamodule(
        segmentation_net=net, preprocessing=preprocessing, masks=masks, features=settings.features
    )
    channels = EncoderFeatures(net, settings.encoder_scales).channels()

    def make_head() -> Any:
        return factories.head(
            feature_channels=channels,
            n_lesion_features=len(HEAD_LESION_FEATURE_NAMES),
            n_pair_features=len(PAIR_FEATURE_NAMES),
        )

    trainer = factories.trainer()
    return HeadObjects(
        datamodule=datamodule, head=make_head(), trainer=trainer, make_head=make_head
    )


def train_members(
    settings: HeadTrainingSettings,
    factories: HeadFactories,
    objects: HeadObjects,
    make_module: Callable[[Any], Any],
) -> tuple[Any, dict[str, Any]]:
    """An ensemble of ``n_heads`` heads (seeds seed..seed+n-1, logits averaged) and its record,
    with one temperature fitted on the averaged logits.

    With ``calibration="cross_fit"``, head k trains without fold k of the training pairs
    (stratified by class), and the temperature is fitted on the validation pairs plus every
    training pair scored by the head that did not see it (its model-mask variant when there is
    one: what inference sees). With a few dozen validation pairs the temperature is a noisy
    estimate; the out-of-fold logits add every training pair to it, across all training sets.
    """
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from petflare.data.longitudinal import collate_samples
    from petflare.networks.change_head import HeadEnsemble
    from petflare.training.change_module import (
        calibrate_head,
        fit_change_head,
        stratified_folds,
    )

    n_heads = settings.n_heads
    dm = objects.datamodule
    dm.setup("fit")
    train = dm.datasets["train"]
    labels = train.labels
    folds = settings.calibration == "cross_fit"
    fold_of = stratified_folds(labels, n_heads, seed=settings.seed) if folds else None
    held_variant = -1 if settings.train_predicted_variant else 0
    oof: np.ndarray | None = None
    members, member_metrics = [], []
    first: dict[str, Any] = {}
    for k in range(n_heads):
        # plain ensembles: member 0 continues from the seed set before the data were built
        # (so earlier heads reproduce); cross-fit heads each start from seed + k
        if k > 0 or fold_of is not None:
            pl.seed_everything(settings.seed + k, workers=True)
        if fold_of is not None:
            dm.use_train_pairs(np.flatnonzero(fold_of != k))
        member = make_module(objects.head if k == 0 else objects.make_head())
        trainer = objects.trainer if k == 0 else factories.trainer()
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
            held_samples, batch_size=settings.batch_size, collate_fn=collate_samples
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


def train_change_head(
    settings: HeadTrainingSettings,
    factories: HeadFactories,
    net: nn.Module,
    preprocessing: PreprocessingConfig,
    predicted_masks: Any = None,
) -> tuple[Any, dict[str, Any]]:
    """Train the head (or the ensemble) and fit its temperature.

    Seed first (``lightning.pytorch.seed_everything(settings.seed)``, before the network is
    built) for a reproducible head.

    Returns:
        The trained LightningModule (``.head`` is the head) and the run record (temperature,
        validation metrics before and after calibration, class weights, epochs).
    """
    import torch

    from petflare.training.change_module import fit_change_head

    settings.check()
    objects = build_head_objects(settings, factories, net, preprocessing, predicted_masks)
    dm = objects.datamodule
    dm.setup("fit")
    weights = dm.class_weights

    def make_module(head: Any) -> Any:
        return factories.module(head, class_weights=None if weights is None else weights.tolist())

    if settings.n_heads > 1:
        module, record = train_members(settings, factories, objects, make_module)
    else:
        module = make_module(objects.head)
        record = fit_change_head(objects.trainer, module, dm)
    record["class_weights"] = None if weights is None else [float(w) for w in weights]
    record["epochs"] = int(objects.trainer.current_epoch)
    torch.set_grad_enabled(True)
    return module, record


def head_metadata(settings: HeadTrainingSettings, record: Mapping[str, Any]) -> dict[str, Any]:
    """What head.json records about a trained head: its training data and run, its metrics."""
    return {
        "training": {
            **settings.data_record,
            "mode": "frozen",
            "seed": settings.seed,
            "n_heads": settings.n_heads,
            "calibration": settings.calibration,
            "epochs": int(record["epochs"]),
        },
        "validation": record["val_metrics"],
        "cross_fit": record.get("held_out_metrics"),
        "validation_uncalibrated": record["val_metrics_uncalibrated"],
        "intended_use": HEAD_INTENDED_USE,
        "config": settings.config,
    }


def recalibrate_temperature(
    settings: HeadTrainingSettings,
    factories: HeadFactories,
    head: Any,
    head_meta: Mapping[str, Any],
    net: nn.Module,
    preprocessing: PreprocessingConfig,
    predicted_masks: Any = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Refit the temperature of a trained head on the validation split.

    The head's weights are not touched. The pairs' features come from the head's own encoder
    scales and margin (``head_meta``), whatever ``settings`` say.

    Returns:
        The updated head metadata (new temperature, validation metrics at it, and a
        ``recalibration`` record: previous temperature, calibration pairs) and the run record.

    Raises:
        PetflareInputError: no validation pairs to fit on.
    """
    from petflare.training.change_module import calibrate_head

    features = dataclasses.replace(
        settings.features,
        encoder_scales=head_meta.get("encoder_scales"),
        margin_mm=float(head_meta.get("margin_mm", settings.margin_mm)),
    )
    # no training pairs are built
    settings = dataclasses.replace(settings, features=features, train_predicted_variant=False)
    objects = build_head_objects(settings, factories, net, preprocessing, predicted_masks)
    dm = objects.datamodule
    dm.setup_validation()
    module = factories.module(head)
    record = calibrate_head(module, dm)
    if record["val_metrics"] is None:
        raise PetflareInputError(None, "recalibrate=true found no validation pairs to fit on")
    data = settings.data_record
    phantom_pairs = data.get("phantom_pairs")
    calibration_data = {
        "manifest": data.get("manifest"),
        "phantom_pairs": None
        if phantom_pairs is None
        else {
            k: phantom_pairs[k] for k in ("n_val_pairs", "val_seed", "phantom", "extra_val_sets")
        },
        "val_mask_source": data.get("val_mask_source"),
    }
    updated = {
        **head_meta,
        "temperature": float(record["temperature"]),
        "validation": record["val_metrics"],
        "validation_uncalibrated": record["val_metrics_uncalibrated"],
        "recalibration": {
            "previous_temperature": float(head_meta["temperature"]),
            "n_calibration": int(record.get("n_calibration", 0)),
            "data": calibration_data,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    }
    return updated, {**record, "recalibration": updated["recalibration"]}


def write_run_record(output_dir: Path, record: Mapping[str, Any]) -> Path:
    """Write ``head_run.json`` (the training or recalibration record) into ``output_dir``."""
    import json

    from petflare.io.atomic import atomic_write_text

    return atomic_write_text(
        Path(output_dir) / RUN_RECORD_FILE,
        json.dumps(dict(record), indent=2) + "\n",
        overwrite=True,
    )
