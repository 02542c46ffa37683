"""Warm-up + polynomial schedule."""

from __future__ import annotations

import pytest
import torch

from petflare.training.schedulers import WarmupPolySchedule


def lrs(steps: int, **kwargs: float) -> list[float]:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = WarmupPolySchedule(opt, **kwargs)  # type: ignore[arg-type]
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_then_poly_decay() -> None:
    values = lrs(12, warmup_steps=3, total_steps=10, power=1.0)
    assert values[:3] == pytest.approx([0.25, 0.5, 0.75])  # rising, never 0 at step 0
    assert values[3] == pytest.approx(1.0)
    assert values[3:10] == sorted(values[3:10], reverse=True)
    assert values[10] == pytest.approx(0.0) and values[11] == pytest.approx(0.0)


def test_bad_total_steps() -> None:
    with pytest.raises(ValueError):
        lrs(1, warmup_steps=0, total_steps=0)
