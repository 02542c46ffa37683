"""LightningModule for lesion segmentation: injected network, loss, optimizer and schedule.

Validation runs sliding-window inference on whole preprocessed volumes and reports the
autoPET metrics (Dice, false-positive and false-negative volume, lesion detection), computed
on the model's resampled grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer
from torch import nn

from petflare.constants import ORGAN_IGNORE, ORGAN_TO_INDEX, PHYSIOLOGICAL_SITES, Keys
from petflare.networks.segmentation import LESION_CHANNELS, channels_last_input
from petflare.networks.segmentation import channels_last as to_channels_last
from petflare.training.metrics import ScanMetrics, scan_metrics, summarize

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]

#: Names under which validation metrics are logged (``val/<name>``); ``dice`` is monitored.
VAL_METRIC_KEYS = {
    "dice": "mean_dice",
    "fpv_ml": "mean_fpv_ml",
    "fnv_ml": "mean_fnv_ml",
    "sensitivity": "sensitivity",
    "precision": "precision",
}


def voxel_volume_ml_of(tensor: torch.Tensor) -> float:
    """Voxel volume in ml from a MetaTensor's affine (|det| of the 3x3 part / 1000)."""
    affine = getattr(tensor, "affine", None)
    if affine is None:
        raise ValueError("validation images must be MetaTensors carrying an affine")
    affine = torch.as_tensor(affine, dtype=torch.float64)
    if affine.ndim == 3:  # batched
        affine = affine[0]
    return float(abs(torch.linalg.det(affine[:3, :3])) / 1000.0)


def physiological_site_dice(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean Dice over the physiological-uptake organs (``postprocess.PHYSIOLOGICAL_SITES``) that
    the truth map holds; NaN when it holds none. Voxels valued ``ORGAN_IGNORE`` in the truth are
    left out of both maps."""
    known = truth != ORGAN_IGNORE
    scores = []
    for name in PHYSIOLOGICAL_SITES:
        index = ORGAN_TO_INDEX[name]
        t = (truth == index) & known
        if not t.any():
            continue
        f = (found == index) & known
        scores.append(2.0 * float((t & f).sum()) / float(t.sum() + f.sum()))
    return float(np.mean(scores)) if scores else float("nan")


def organ_dice_loss(logits: torch.Tensor, organs: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice (batch-wise) averaged over the organ classes (not background, index 0)
    present in ``organs`` (B, X, Y, Z); voxels valued ``ORGAN_IGNORE`` count for neither side.
    Zero when no organ is present (cross-entropy alone then teaches the background)."""
    classes = logits.shape[1]
    known = organs != ORGAN_IGNORE
    target = torch.where(known, organs, torch.zeros_like(organs))
    weight = known[:, None].to(logits.dtype)
    probs = torch.softmax(logits, dim=1) * weight
    onehot = nn.functional.one_hot(target, classes).permute(0, 4, 1, 2, 3).to(logits.dtype)
    onehot = onehot * weight
    dims = (0, 2, 3, 4)
    present = onehot.sum(dims)[1:] > 0
    if not bool(present.any()):
        return logits.sum() * 0.0
    inter = (probs * onehot).sum(dims)[1:]
    denom = probs.sum(dims)[1:] + onehot.sum(dims)[1:]
    dice = (2.0 * inter + 1e-5) / (denom + 1e-5)
    return 1.0 - dice[present].mean()


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """Drop MONAI metadata (faster forward passes, no affine bookkeeping in the network)."""
    return tensor.as_tensor() if isinstance(tensor, MetaTensor) else tensor


class SegmentationModule(pl.LightningModule):
    """Train a lesion segmentation network on patches; validate on whole volumes.

    Args:
        net: network returning logits with 2 channels (background, lesion).
        loss: loss on (logits, integer label of shape (B, 1, ...)), e.g. MONAI ``DiceCELoss``
            with ``to_onehot_y=True, softmax=True``.
        optimizer: partial optimizer, called with ``params=``.
        scheduler: partial scheduler called with ``optimizer=``, stepped every training step;
            None for a constant learning rate.
        roi_size: sliding-window size (voxels) for validation; usually the patch size.
        sw_batch_size: windows per forward pass in validation.
        sw_overlap: window overlap in validation.
        connectivity: connectivity of lesion components in the metrics (autoPET: 18).
        channels_last: keep the network's weights and its inputs in the channels-last 3D memory
            layout (``torch.channels_last_3d``). The arithmetic is the same up to the order of
            floating-point sums, so a run is not bit-identical to one without it; oneDNN's 3D
            convolutions run faster in it (``synthetic_cpu``'s training steps about 1.5 times
            as fast on 2 CPU cores, docs/training.md).
        organ_classes: number of organ classes of an auxiliary organ output (0: none). The
            network then returns ``2 + organ_classes`` channels: the lesion pair first (the
            loss above), then organ logits trained with cross-entropy against the batch's
            ``organs`` map (voxels valued ``ORGAN_IGNORE`` are ignored). The organ output teaches
            the shared features what physiological uptake looks like (autoPET III/IV winners'
            organ supervision) and names each predicted lesion's site at inference.
        organ_loss_weight: weight of the organ cross-entropy in the training loss.
        organ_dice_weight: weight of a soft Dice term over the organ classes present in the
            batch, added to the organ cross-entropy (0: cross-entropy alone). Small organs
            (kidneys, bladder, the heart wall at a coarse grid) are a sliver of the voxels, and
            cross-entropy alone learns to leave them out.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        roi_size: Sequence[int] = (64, 64, 64),
        sw_batch_size: int = 2,
        sw_overlap: float = 0.25,
        connectivity: int = 18,
        channels_last: bool = False,
        organ_classes: int = 0,
        organ_loss_weight: float = 0.5,
        organ_dice_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.net = net
        self.loss_fn = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.roi_size = tuple(int(s) for s in roi_size)
        self.inferer = SlidingWindowInferer(
            roi_size=self.roi_size,
            sw_batch_size=int(sw_batch_size),
            overlap=float(sw_overlap),
            mode="gaussian",
        )
        self.connectivity = int(connectivity)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.net = to_channels_last(self.net)
        self.organ_classes = int(organ_classes)
        self.organ_loss_weight = float(organ_loss_weight)
        self.organ_dice_weight = float(organ_dice_weight)
        if self.organ_classes < 0 or self.organ_classes == 1:
            raise ValueError(f"organ_classes must be 0 or >= 2, got {organ_classes}")
        self.organ_loss = nn.CrossEntropyLoss(ignore_index=ORGAN_IGNORE)
        self._val_scans: list[ScanMetrics] = []
        self._val_organ_dice: list[float] = []
        self.last_val_summary: dict[str, Any] = {}

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits of the network (lesion pair, then organ logits when configured)."""
        logits = self.net(self._layout(image))
        expected = LESION_CHANNELS + self.organ_classes
        if logits.shape[1] != expected:
            raise ValueError(
                f"the network returns {logits.shape[1]} channels; {expected} expected "
                f"(2 lesion + {self.organ_classes} organ classes: set net.out_channels)"
            )
        return logits

    def lesion_logits(self, image: torch.Tensor) -> torch.Tensor:
        """The (background, lesion) logits only (validation, sliding-window inference)."""
        return self(image)[:, :LESION_CHANNELS]

    def _layout(self, image: torch.Tensor) -> torch.Tensor:
        """The input in the network's memory layout (channels-last 3D when configured)."""
        image = _plain(image)
        return channels_last_input(image) if self.channels_last else image

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Dice+CE (or the injected loss) on a batch of patches."""
        image, label = batch[Keys.IMAGE], batch[Keys.LABEL]
        logits = self(image)
        loss = self.loss_fn(logits[:, :LESION_CHANNELS], _plain(label))
        if self.organ_classes:
            organs = _plain(batch[Keys.ORGANS])[:, 0].long()
            organ_loss = self.organ_loss(logits[:, LESION_CHANNELS:].float(), organs)
            if self.organ_dice_weight:
                organ_loss = organ_loss + self.organ_dice_weight * organ_dice_loss(
                    logits[:, LESION_CHANNELS:].float(), organs
                )
            if torch.isfinite(organ_loss):  # NaN when every voxel of the batch is ignored
                self.log(
                    "train/organ_loss",
                    organ_loss,
                    on_step=True,
                    on_epoch=True,
                    batch_size=image.shape[0],
                )
                loss = loss + self.organ_loss_weight * organ_loss
        self.log(
            "train/loss",
            loss,
            prog_bar=True,
            on_step=True,
            on_epoch=True,
            batch_size=image.shape[0],
        )
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_scans = []
        self._val_organ_dice = []

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Sliding-window prediction of one whole volume and its autoPET metrics."""
        image, label = batch[Keys.IMAGE], batch[Keys.LABEL]
        voxel_ml = voxel_volume_ml_of(image)
        with_organs = bool(self.organ_classes) and Keys.ORGANS in batch
        # one sliding-window pass: the organ logits come with the lesion pair when scored
        logits = self.inferer(_plain(image), self if with_organs else self.lesion_logits)
        assert isinstance(logits, torch.Tensor)
        pred = torch.argmax(logits[:, :LESION_CHANNELS], dim=1)[0].cpu().numpy().astype(np.uint8)
        gt = (label[0, 0] > 0).cpu().numpy().astype(np.uint8)
        self._val_scans.append(scan_metrics(pred, gt, voxel_ml, connectivity=self.connectivity))
        if with_organs:
            found = torch.argmax(logits[:, LESION_CHANNELS:], dim=1)[0].cpu().numpy()
            truth = _plain(batch[Keys.ORGANS])[0, 0].cpu().numpy().astype(np.int64)
            self._val_organ_dice.append(physiological_site_dice(found, truth))

    def on_validation_epoch_end(self) -> None:
        """Log the summary; an undefined Dice (no positive scan) is logged as 0 to keep the
        checkpoint monitor finite."""
        summary = summarize(self._val_scans) if self._val_scans else {}
        self.last_val_summary = summary
        for name, key in VAL_METRIC_KEYS.items():
            value = float(summary.get(key, float("nan")))
            if name == "dice" and not math.isfinite(value):
                value = 0.0
            self.log(f"val/{name}", value, prog_bar=name == "dice", sync_dist=True)
        if self._val_organ_dice:
            value = (
                float(np.nanmean(self._val_organ_dice))
                if np.isfinite(self._val_organ_dice).any()
                else 0.0
            )
            self.log("val/organ_dice", value, sync_dist=True)

    def configure_optimizers(self) -> Any:
        """Optimizer from the partial; scheduler stepped per training step."""
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }
