"""Training callbacks."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

#: File name of the resume checkpoint.
LAST_CHECKPOINT_NAME = "last.ckpt"


class LastCheckpoint(Callback):
    """Write ``dirpath/last.ckpt`` after every validation and at the end of training.

    Lightning's ``ModelCheckpoint(save_last=True)`` only refreshes ``last.ckpt`` when it also
    saves a monitored checkpoint, so after a validation that does not improve the score the
    resume point would lag behind; this callback always holds the latest state (weights,
    optimizer, scheduler, step), which is what ``ckpt_path=.../last.ckpt`` resumes from.

    Args:
        dirpath: checkpoint folder.
        every_n_train_steps: also save every N optimizer steps (0: only at validation / end).
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int = 0) -> None:
        super().__init__()
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = int(every_n_train_steps)
        self._saved_step = -1

    @property
    def path(self) -> Path:
        """Location of the resume checkpoint."""
        return self.dirpath / LAST_CHECKPOINT_NAME

    def _save(self, trainer: pl.Trainer) -> None:
        if trainer.sanity_checking or trainer.global_step == self._saved_step:
            return
        # Lightning's save_checkpoint writes through the strategy (rank 0 only under DDP)
        trainer.save_checkpoint(self.path)
        self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object, **kwargs: object) -> None:
        if self.every_n_train_steps > 0 and trainer.global_step % self.every_n_train_steps == 0:
            self._save(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer)
