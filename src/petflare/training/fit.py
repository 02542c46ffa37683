"""Run a training job: fit (or resume), then re-validate the best checkpoint and record it."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from petflare.io.atomic import atomic_write_text
from petflare.training.callbacks import LastCheckpoint
from petflare.training.module import SegmentationModule

log = logging.getLogger(__name__)

#: File (in the run folder) holding the validation summary of the best checkpoint.
VAL_METRICS_FILE = "val_metrics.json"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def fit_segmentation(
    trainer: pl.Trainer,
    module: SegmentationModule,
    datamodule: pl.LightningDataModule,
    run_dir: str | Path,
    ckpt_path: str | Path | None = None,
) -> dict[str, Any]:
    """Fit ``module`` (resuming from ``ckpt_path`` when given) and record the best checkpoint.

    After fitting, the best checkpoint (by validation Dice; the last one when there is no
    validation set) is validated again and its autoPET summary is written to
    ``run_dir/val_metrics.json`` together with the checkpoint path and step.

    Returns:
        The record written to ``val_metrics.json``.
    """
    run_dir = Path(run_dir)
    # a checkpoint is untrusted input: resuming and re-validating read tensors and plain
    # containers only (Lightning's torch.load with weights_only=True)
    trainer.fit(
        module,
        datamodule=datamodule,
        ckpt_path=None if ckpt_path is None else str(ckpt_path),
        weights_only=True,
    )
    checkpoint = trainer.checkpoint_callback
    best = ""
    if isinstance(checkpoint, ModelCheckpoint):
        best = checkpoint.best_model_path
    if not best:  # no validation set: the final state
        last = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)  # type: ignore[attr-defined]
        best = str(last.path) if last is not None and last.path.is_file() else ""
    record: dict[str, Any] = {
        "checkpoint": best,
        "global_step": int(trainer.global_step),
        "summary": {},
    }
    if best and trainer.is_global_zero and datamodule.val_dataloader():
        trainer.validate(
            module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True
        )
        record["summary"] = {k: _json_safe(v) for k, v in module.last_val_summary.items()}
    if trainer.is_global_zero:
        atomic_write_text(
            run_dir / VAL_METRICS_FILE, json.dumps(record, indent=2) + "\n", overwrite=True
        )
        log.info("best checkpoint %s: %s", best, record["summary"])
    return record
