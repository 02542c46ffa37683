"""LightningModule for the change-pattern head on a frozen segmentation encoder.

The segmentation network is fixed; only the head trains, on the region features pooled once
per pair (``lesion_pooled``/``global_pooled``, precomputed and cached by
:class:`petflare.data.longitudinal.LongitudinalDataModule`). The loss is cross-entropy with
optional class weights (class-balanced loss).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F

from petflare.data.longitudinal import HeadKeys
from petflare.networks.change_head import ChangePatternHead, HeadEnsemble, HeadOutput
from petflare.training.pattern_metrics import pattern_metrics

OptimizerFactory = Callable[..., torch.optim.Optimizer]


class ChangePatternModule(pl.LightningModule):
    """Train a :class:`ChangePatternHead` on baseline/follow-up pairs (pooled features).

    Args:
        head: the change-pattern head (or an ensemble, for calibration and scoring).
        optimizer: partial optimizer, called with ``params=``.
        class_weights: cross-entropy weight per class in ``PATTERNS`` order, or None.
        label_smoothing: cross-entropy label smoothing.
    """

    class_weights: torch.Tensor | None

    def __init__(
        self,
        head: ChangePatternHead | HeadEnsemble,
        optimizer: OptimizerFactory,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.head = head
        self.optimizer_factory = optimizer
        weights = None if class_weights is None else torch.as_tensor(class_weights).float()
        self.register_buffer("class_weights", weights, persistent=False)
        self.label_smoothing = float(label_smoothing)
        self._val_logits: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []
        self.last_val_metrics: dict[str, Any] = {}

    def forward(self, batch: dict[str, torch.Tensor]) -> HeadOutput:
        """Head output for a batch of pooled pair features."""
        k = HeadKeys
        return self.head.forward_pooled(
            batch[k.LESION_POOLED],
            batch[k.LESION_FEATURES],
            batch[k.LESION_VALID],
            batch[k.GLOBAL_POOLED],
            batch[k.PAIR_FEATURES],
        )

    def _ce(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits, labels, weight=self.class_weights, label_smoothing=self.label_smoothing
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Cross-entropy of the head's logits."""
        labels = batch[HeadKeys.LABEL]
        loss = self._ce(self(batch).logits, labels)
        n = int(labels.shape[0])
        self.log("train/ce", loss, on_step=False, on_epoch=True, batch_size=n)
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
        """The head's parameters, as one parameter group."""
        return self.optimizer_factory(params=[{"params": list(self.head.parameters())}])

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
