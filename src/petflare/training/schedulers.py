"""Learning-rate schedules with linear warm-up, stepped once per optimizer step.

Warm-up + cosine is MONAI's ``monai.optimizers.WarmupCosineSchedule``; the nnU-Net-style
polynomial decay with a warm-up is here.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR


class WarmupPolySchedule(LambdaLR):
    """Linear warm-up over ``warmup_steps``, then ``(1 - progress) ** power`` decay to 0.

    Resuming from a Lightning checkpoint restores ``last_epoch`` (the step count), so an
    interrupted run continues on the same curve.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: int,
        total_steps: int,
        power: float = 0.9,
        last_epoch: int = -1,
    ) -> None:
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        self.warmup_steps = max(0, min(int(warmup_steps), int(total_steps)))
        self.total_steps = int(total_steps)
        self.power = float(power)
        super().__init__(optimizer, self.factor, last_epoch)

    def factor(self, step: int) -> float:
        """Multiplier of the base learning rate at ``step``."""
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return (1.0 - progress) ** self.power
