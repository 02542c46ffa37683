"""LightningModule for the change-pattern head: frozen encoder, fine-tuned encoder, or joint.

Modes:
    ``frozen``: the segmentation network is fixed; only the head trains. Batches may carry the
        region features pooled once per pair (``lesion_pooled``/``global_pooled``; the cheap,
        default path) or the images, in which case the encoder runs without gradients.
    ``finetune``: the encoder trains too (learning rate scaled by ``encoder_lr_scale``).
    ``joint``: as ``finetune`` plus the segmentation loss on both time points, so the encoder
        stays a good segmenter while it learns the change.

The loss is cross-entropy with optional class weights (class-balanced loss).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from petflare.data.longitudinal import HeadKeys
from petflare.networks.change_head import ChangePatternHead, HeadEnsemble, HeadOutput
from petflare.networks.encoder import EncoderFeatures
from petflare.training.pattern_metrics import pattern_metrics

OptimizerFactory = Callable[..., torch.optim.Optimizer]
Mode = Literal["frozen", "finetune", "joint"]
MODES: tuple[str, ...] = ("frozen", "finetune", "joint")


class ChangePatternModule(pl.LightningModule):
    """Train a :class:`ChangePatternHead` on baseline/follow-up pairs.

    Args:
        head: the change-pattern head.
        optimizer: partial optimizer, called with ``params=`` (a list of parameter groups).
        segmentation_net: the segmentation network whose encoder feeds the head; None is
            allowed in ``frozen`` mode when every batch carries pooled features.
        mode: ``frozen``, ``finetune`` or ``joint`` (see the module docstring).
        class_weights: cross-entropy weight per class in ``PATTERNS`` order, or None.
        seg_loss: loss on (logits, label (B, 1, ...)) for ``joint`` mode, e.g. MONAI DiceCELoss.
        seg_loss_weight: weight of the segmentation loss in ``joint`` mode.
        encoder_lr_scale: learning-rate factor of the encoder parameters (finetune/joint).
        encoder_scales: encoder levels fed to the head (None: all).
        label_smoothing: cross-entropy label smoothing.
    """

    class_weights: torch.Tensor | None

    def __init__(
        self,
        head: ChangePatternHead | HeadEnsemble,
        optimizer: OptimizerFactory,
        segmentation_net: nn.Module | None = None,
        mode: Mode = "frozen",
        class_weights: Sequence[float] | None = None,
        seg_loss: nn.Module | None = None,
        seg_loss_weight: float = 0.5,
        encoder_lr_scale: float = 0.1,
        encoder_scales: Sequence[int] | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode != "frozen" and segmentation_net is None:
            raise ValueError(f"mode {mode!r} needs the segmentation network")
        if mode == "joint" and seg_loss is None:
            raise ValueError("mode 'joint' needs seg_loss")
        self.head = head
        self.mode = mode
        self.net = segmentation_net
        self.encoder = (
            EncoderFeatures(segmentation_net, encoder_scales) if segmentation_net else None
        )
        if mode == "frozen" and segmentation_net is not None:
            segmentation_net.requires_grad_(False)
        self.optimizer_factory = optimizer
        weights = None if class_weights is None else torch.as_tensor(class_weights).float()
        self.register_buffer("class_weights", weights, persistent=False)
        self.seg_loss = seg_loss
        self.seg_loss_weight = float(seg_loss_weight)
        self.encoder_lr_scale = float(encoder_lr_scale)
        self.label_smoothing = float(label_smoothing)
        self._val_logits: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []
        self.last_val_metrics: dict[str, Any] = {}

    def train(self, mode: bool = True) -> ChangePatternModule:
        """Keep a frozen segmentation network in eval mode (its norm statistics stay fixed)."""
        super().train(mode)
        if self.mode == "frozen" and self.net is not None:
            self.net.eval()
        return self

    def _features(
        self, image: torch.Tensor, with_seg: bool
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        assert self.encoder is not None and self.net is not None
        if with_seg:
            with self.encoder.capture() as feats:
                seg_logits = self.net(image)
            return feats, seg_logits
        if self.mode == "frozen":
            with torch.no_grad():
                return self.encoder(image), None
        return self.encoder(image), None

    def forward(self, batch: dict[str, torch.Tensor]) -> HeadOutput:
        """Head output for a batch (pooled features, or images through the encoder)."""
        out, _ = self._forward_with_seg(batch, with_seg=False)
        return out

    def _forward_with_seg(
        self, batch: dict[str, torch.Tensor], with_seg: bool
    ) -> tuple[HeadOutput, torch.Tensor | None]:
        k = HeadKeys
        if k.LESION_POOLED in batch and not with_seg and self.mode == "frozen":
            out = self.head.forward_pooled(
                batch[k.LESION_POOLED],
                batch[k.LESION_FEATURES],
                batch[k.LESION_VALID],
                batch[k.GLOBAL_POOLED],
                batch[k.PAIR_FEATURES],
            )
            return out, None
        if self.encoder is None:
            raise RuntimeError("batch has no pooled features and the module has no encoder")
        fb, seg_b = self._features(batch[k.BASELINE_IMAGE], with_seg)
        ff, seg_f = self._features(batch[k.FOLLOWUP_IMAGE], with_seg)
        out = self.head(
            fb,
            ff,
            batch[k.LESION_MASKS],
            batch[k.LESION_VALID],
            batch[k.LESION_FEATURES],
            batch[k.PAIR_FEATURES],
        )
        seg_loss = None
        if with_seg:
            assert self.seg_loss is not None
            seg_loss = 0.5 * (
                self.seg_loss(seg_b, batch[k.BASELINE_SEG])
                + self.seg_loss(seg_f, batch[k.FOLLOWUP_SEG])
            )
        return out, seg_loss

    def _ce(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits, labels, weight=self.class_weights, label_smoothing=self.label_smoothing
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Cross-entropy (plus the segmentation loss in joint mode)."""
        labels = batch[HeadKeys.LABEL]
        out, seg_loss = self._forward_with_seg(batch, with_seg=self.mode == "joint")
        loss = self._ce(out.logits, labels)
        n = int(labels.shape[0])
        self.log("train/ce", loss, on_step=False, on_epoch=True, batch_size=n)
        if seg_loss is not None:
            self.log("train/seg_loss", seg_loss, on_step=False, on_epoch=True, batch_size=n)
            loss = loss + self.seg_loss_weight * seg_loss
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_logits, self._val_labels = [], []

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Collect logits; the metrics are computed over the whole split at epoch end."""
        out = self(batch)
        self._val_logits.append(out.logits.detach().float().cpu())
        self._val_labels.append(batch[HeadKeys.LABEL].detach().cpu())

    def on_validation_epoch_end(self) -> None:
        """Log validation cross-entropy, accuracy and balanced accuracy."""
        if not self._val_logits:
            return
        logits = torch.cat(self._val_logits)
        labels = torch.cat(self._val_labels)
        probs = torch.softmax(logits, -1).numpy()
        metrics = pattern_metrics(labels.numpy(), probs.argmax(1), probs)
        metrics["loss"] = float(F.cross_entropy(logits, labels))
        self.last_val_metrics = metrics
        self.log("val/loss", metrics["loss"], prog_bar=True)
        self.log("val/accuracy", metrics["accuracy"])
        bal = metrics["balanced_accuracy"]
        self.log("val/balanced_accuracy", 0.0 if not np.isfinite(bal) else bal, prog_bar=True)

    def configure_optimizers(self) -> Any:
        """Head parameters at the base rate; encoder at ``encoder_lr_scale`` when it trains."""
        groups: list[dict[str, Any]] = [{"params": list(self.head.parameters())}]
        if self.mode != "frozen" and self.net is not None:
            probe = self.optimizer_factory(params=[nn.Parameter(torch.zeros(1))])
            base_lr = float(probe.defaults.get("lr", 1e-3))
            groups.append(
                {"params": list(self.net.parameters()), "lr": base_lr * self.encoder_lr_scale}
            )
        return self.optimizer_factory(params=groups)

    @torch.no_grad()
    def predict_logits(self, loader: Any) -> tuple[np.ndarray, np.ndarray]:
        """Logits and labels over a dataloader (eval mode), e.g. for temperature fitting."""
        was_training = self.training
        self.eval()
        logits, labels = [], []
        try:
            for batch in loader:
                batch = {
                    k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                    for k, v in batch.items()
                }
                logits.append(self(batch).logits.float().cpu())
                labels.append(batch[HeadKeys.LABEL].cpu())
        finally:
            self.train(was_training)
        if not logits:
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
        return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def fit_head_normalization(head: ChangePatternHead | HeadEnsemble, samples: Sequence[Any]) -> None:
    """Fit the head's input standardisation on precomputed training samples (all variants);
    every member of an ensemble gets the same statistics."""
    from petflare.data.longitudinal import collate_samples

    if not samples:
        return
    batch = collate_samples(list(samples))
    for member in head.heads() if isinstance(head, HeadEnsemble) else [head]:
        member.fit_normalization(
            batch[HeadKeys.LESION_POOLED],
            batch[HeadKeys.LESION_FEATURES],
            batch[HeadKeys.LESION_VALID],
            batch[HeadKeys.GLOBAL_POOLED],
            batch[HeadKeys.PAIR_FEATURES],
        )


def fit_change_head(
    trainer: pl.Trainer, module: ChangePatternModule, datamodule: Any
) -> dict[str, Any]:
    """Train the head, then fit the temperature on the validation split.

    Steps: set up the data (precomputing or reading cached pair features), fit the head's input
    standardisation on the training samples, ``trainer.fit``, then temperature scaling on the
    validation logits (T = 1 without a validation split; see :func:`calibrate_head`).

    Returns:
        ``{"temperature", "val_metrics_uncalibrated", "val_metrics", "n_train", "n_val"}``.
    """
    datamodule.setup("fit")
    fit_head_normalization(module.head, datamodule.all_train_samples())
    trainer.fit(module, datamodule=datamodule)
    return {
        "n_train": len(datamodule.datasets["train"]),
        "n_val": len(datamodule.datasets.get("val", [])),
        **calibrate_head(module, datamodule),
    }


def calibrate_head(
    module: ChangePatternModule,
    datamodule: Any,
    held_out: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Temperature scaling of ``module``'s head on the validation split, with the metrics
    before and after (``temperature`` 1 and metrics None without any calibration pair).

    ``held_out`` adds (logits, labels) of pairs that the model scoring them never trained on,
    e.g. the out-of-fold logits of a cross-fit (:func:`stratified_folds`): the temperature is
    fitted on them and the validation logits together, and ``held_out_metrics`` reports them.
    """
    from petflare.training.calibration import apply_temperature, fit_temperature

    val_loader = datamodule.val_dataloader()
    record: dict[str, Any] = {
        "temperature": 1.0,
        "val_metrics_uncalibrated": None,
        "val_metrics": None,
    }
    logits, labels = (
        module.predict_logits(val_loader)
        if val_loader
        else (np.zeros((0, 4), np.float32), np.zeros((0,), np.int64))
    )
    fit_logits, fit_labels = logits, labels
    if held_out is not None:
        fit_logits = np.concatenate([logits, np.asarray(held_out[0], np.float32)])
        fit_labels = np.concatenate([labels, np.asarray(held_out[1], np.int64)])
    if len(fit_labels) == 0:
        return record
    temperature = fit_temperature(fit_logits, fit_labels)
    record["temperature"] = temperature
    record["n_calibration"] = int(len(fit_labels))
    if held_out is not None:
        cal = apply_temperature(torch.from_numpy(np.asarray(held_out[0])), temperature).numpy()
        record["held_out_metrics"] = pattern_metrics(held_out[1], cal.argmax(1), cal)
    if len(labels):
        raw = torch.softmax(torch.from_numpy(logits), -1).numpy()
        cal = apply_temperature(torch.from_numpy(logits), temperature).numpy()
        record["val_metrics_uncalibrated"] = pattern_metrics(labels, raw.argmax(1), raw)
        record["val_metrics"] = pattern_metrics(labels, cal.argmax(1), cal)
    return record


def stratified_folds(labels: np.ndarray, n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold index (0..n_folds-1) of every pair, each class spread evenly over the folds.

    Within a class the pairs are shuffled (``seed``) and dealt round-robin; each class starts
    where the previous one stopped, so small classes do not all land in the first folds.
    """
    labels = np.asarray(labels)
    if n_folds < 2 or n_folds > len(labels):
        raise ValueError(f"need 2 <= n_folds <= {len(labels)} pairs, got {n_folds}")
    rng = np.random.default_rng(seed)
    folds = np.zeros(len(labels), dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        folds[idx] = (np.arange(len(idx)) + offset) % n_folds
        offset += len(idx)
    return folds
