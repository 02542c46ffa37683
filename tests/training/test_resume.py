"""An interrupted run resumed from last.ckpt continues the step count and the LR schedule."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from monai.optimizers import WarmupCosineSchedule

from petflare.cli._common import config_dir
from petflare.cli.train import train

BASE_LR = 1e-2
TOTAL_STEPS = 12  # the schedule's length, fixed while max_steps interrupts the run


def debug_config(root: Path, max_steps: int, ckpt_path: str | None = None):  # noqa: ANN201
    overrides = [
        "experiment=debug",
        f"paths.data_dir={root}",
        f"paths.output_dir={root}/run",
        f"trainer.max_steps={max_steps}",
        "trainer.val_check_interval=4",
        f"model.scheduler.t_total={TOTAL_STEPS}",
        "model.scheduler.warmup_steps=3",
        "model.scheduler.end_lr=0.0",
        f"model.optimizer.lr={BASE_LR}",
        "callbacks.progress_bar.refresh_rate=0",
        # no monitored checkpoint is ever written: last.ckpt must still be kept current
        "callbacks.model_checkpoint.save_top_k=0",
    ]
    if ckpt_path is not None:
        overrides.append(f"ckpt_path={ckpt_path}")
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def expected_lr(step: int) -> float:
    """Learning rate the schedule gives after ``step`` optimizer steps."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=BASE_LR)
    sched = WarmupCosineSchedule(opt, warmup_steps=3, t_total=TOTAL_STEPS, end_lr=0.0)
    for _ in range(step):
        opt.step()
        sched.step()
    return opt.param_groups[0]["lr"]


def logged_lrs(run: Path) -> dict[int, float]:
    """Step -> learning rate from every CSV log of the run (the resumed run adds a version)."""
    out: dict[int, float] = {}
    for path in sorted(run.glob("logs/version_*/metrics.csv")):
        with path.open() as handle:
            for row in csv.DictReader(handle):
                if row.get("lr-AdamW"):
                    out[int(row["step"])] = float(row["lr-AdamW"])
    return out


@pytest.mark.slow
def test_resume_continues_the_schedule(tmp_path: Path) -> None:
    record = train(debug_config(tmp_path, max_steps=4))
    assert record["checkpoint"].endswith("last.ckpt")  # no best: the final state is recorded
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    first = torch.load(last, map_location="cpu", weights_only=True)
    assert first["global_step"] == 4

    train(debug_config(tmp_path, max_steps=8, ckpt_path=str(last)))
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 8
    assert resumed["lr_schedulers"][0]["last_epoch"] == 8
    assert resumed["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(expected_lr(8))
    # logged LRs after the restart follow the same curve (a fresh start would warm up again)
    lrs = logged_lrs(tmp_path / "run")
    for step in range(4, 8):
        assert lrs[step] == pytest.approx(expected_lr(step)), step


class _Payload:
    """Unpickling this runs code (touches a file): what a hostile checkpoint could carry."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.flag,))


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_that_runs_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torch's own default is safe, but an environment can flip it for calls that do not ask
    # explicitly (this variable); resuming must ask explicitly
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    train(debug_config(tmp_path, max_steps=2))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    flag = tmp_path / "code_ran"
    state["payload"] = _Payload(flag)
    hostile = tmp_path / "hostile.ckpt"
    torch.save(state, hostile)

    with pytest.raises(Exception, match="[Ww]eights only load failed|weights_only"):
        train(debug_config(tmp_path, max_steps=4, ckpt_path=str(hostile)))
    assert not flag.exists()
