"""Every experiment config composes and instantiates; every group option names a ``_target_``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

import petflare.cli._common  # noqa: F401  (registers the ${len:...} resolver)
from petflare.cli._common import config_dir
from petflare.data import SegmentationDataModule
from petflare.training.module import SegmentationModule
from petflare_testing import HEAD_EXPERIMENTS

CONFIGS = Path(config_dir())
#: Experiments of train.yaml; ``head_*`` experiments belong to train_head.yaml (tested there).
EXPERIMENTS = sorted(
    p.stem for p in (CONFIGS / "experiment").glob("*.yaml") if not p.stem.startswith("head_")
)
CPU_TRAINER = {
    "accelerator": "cpu",
    "devices": 1,
    "num_nodes": 1,
    "precision": "32-true",
    "strategy": "auto",
}


def compose_train(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_expected_experiments_exist() -> None:
    assert {"debug", "synthetic_cpu", "autopet_fdg"} <= set(EXPERIMENTS)
    assert {"head_debug", "head_synthetic_cpu"} <= set(HEAD_EXPERIMENTS)


@pytest.mark.parametrize("group", ["data", "net", "model", "trainer"], ids=lambda g: f"group={g}")
def test_every_group_option_names_a_target(group: str) -> None:
    for path in sorted((CONFIGS / group).glob("*.yaml")):
        cfg = OmegaConf.load(path)
        assert "_target_" in cfg or "defaults" in cfg, f"{path} names no _target_"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_instantiates(experiment: str, tmp_path: Path) -> None:
    cfg = compose_train(
        [
            f"experiment={experiment}",
            f"paths.data_dir={tmp_path}",
            f"paths.output_dir={tmp_path}/run",
        ]
    )
    OmegaConf.resolve(cfg)
    assert cfg.model.optimizer._partial_ and cfg.model.scheduler._partial_

    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule, SegmentationDataModule)
    net = instantiate(cfg.net, _convert_="all")
    n_channels = len(cfg.data.preprocessing.channels)
    assert cfg.net.in_channels == n_channels
    module = instantiate(cfg.model, net=net, _convert_="all")
    assert isinstance(module, SegmentationModule)
    optimizers = module.configure_optimizers()
    assert optimizers["lr_scheduler"]["interval"] == "step"

    # one forward pass on a tiny input (multiple of every stride) proves the net is consistent
    with torch.no_grad():
        out = net(torch.zeros(1, n_channels, 32, 32, 32))
    assert out.shape == (1, 2 + int(cfg.model.get("organ_classes", 0)), 32, 32, 32)

    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    loggers = [instantiate(c) for c in cfg.logger.values()]
    assert get_class(cfg.trainer._target_).__name__ == "Trainer"
    trainer_cfg = cfg.trainer
    if cfg.trainer.accelerator != "cpu":  # GPU/DDP settings: instantiate on CPU for the test
        trainer_cfg = OmegaConf.create({**OmegaConf.to_container(cfg.trainer), **CPU_TRAINER})
    trainer = instantiate(trainer_cfg, callbacks=callbacks, logger=loggers)
    assert trainer.max_steps == cfg.trainer.max_steps


def test_autopet_experiment_matches_the_issue() -> None:
    cfg = compose_train(["experiment=autopet_fdg"])
    assert list(cfg.data.preprocessing.channels) == ["pet", "ct"]
    assert list(cfg.data.preprocessing.spacing_mm) == pytest.approx([2.04, 2.04, 3.0])
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.precision in ("bf16-mixed", "16-mixed")
    assert min(cfg.data.augmentation.patch_size_vox) >= 96


def test_synthetic_cpu_trains_pet_only_on_cpu() -> None:
    cfg = compose_train(["experiment=synthetic_cpu"])
    assert cfg.trainer.accelerator == "cpu"
    assert list(cfg.data.preprocessing.channels) == ["pet"]
    assert cfg.data.source._target_ == "petflare.data.SyntheticSource"
    assert cfg.data.source.train_seed != cfg.data.source.val_seed


@pytest.mark.parametrize("experiment", HEAD_EXPERIMENTS)
def test_head_training_record_is_plain_json(experiment: str) -> None:
    """head.json's training record: plain types, with or without extra phantom sets."""
    import json

    from petflare.cli.train_head import training_data_record

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="train_head", overrides=[f"experiment={experiment}"])
    record = training_data_record(cfg)
    json.dumps(record)
    if cfg.data.manifest is not None:  # manifest pairs (one CSV or several): no phantom record
        assert record["phantom_pairs"] is None
        manifests = record["manifest"]
        listed = manifests if isinstance(manifests, list) else [manifests]
        assert listed and all(isinstance(m, str) and m.endswith(".csv") for m in listed)
        assert not any("${" in m for m in listed)  # resolved paths, not interpolations
        return
    pairs = record["phantom_pairs"]
    assert isinstance(pairs["extra_train_sets"], list)
    assert isinstance(pairs["extra_val_sets"], list)
    assert pairs["train_seed"] != pairs["val_seed"]


def test_anatomy_experiment_trains_organs_on_phantom_v2_and_hybrids() -> None:
    """The anatomy-aware recipe: organ output wired end to end, hybrids train only."""
    cfg = compose_train(["experiment=anatomy_cpu"])
    assert cfg.model.organ_classes == 9 and cfg.net.out_channels == 11
    assert cfg.data.with_organs
    sources = cfg.data.source.sources
    assert sources.phantoms.phantom.brain_suv[1] >= 10  # phantom v2, not the default phantom
    assert sources.hybrid.fractions == {"train": 1.0}
    assert str(sources.hybrid.root).endswith("hybrid_train/autopet")
