"""ChangePatternModule: a few steps end to end on tiny pairs, and a tiny head that learns."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from petflare.cli._common import config_dir
from petflare.constants import PATTERN_TO_INDEX, PATTERNS
from petflare.data.longitudinal import (
    HEAD_LESION_FEATURE_NAMES,
    PAIR_FEATURE_NAMES,
    HeadKeys,
    PairSampleDataset,
    collate_samples,
    pair_samples,
)
from petflare.data.transforms import PreprocessingConfig
from petflare.networks import build_unet
from petflare.networks.change_head import ChangePatternHead
from petflare.networks.encoder import EncoderFeatures
from petflare.training.change_module import (
    ChangePatternModule,
    fit_head_normalization,
    stratified_folds,
)
from petflare_testing import HEAD_EXPERIMENTS, REPO, load_module

_tiny = load_module("_tiny_pairs", REPO / "tests" / "data" / "test_longitudinal.py")
make_pair = _tiny.make_pair

PRE = PreprocessingConfig(spacing_mm=(4.0, 4.0, 4.0))


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_unet(channels=(4, 8, 16), strides=(2, 2))


@pytest.fixture(scope="module")
def tiny_samples() -> list:
    """Two pairs of each pattern with their precomputed samples (one perturbed variant)."""
    enc = EncoderFeatures(_net()).eval()
    out = []
    for seed in range(2):
        for pattern in PATTERNS:
            base, fol = make_pair(pattern, seed=seed)
            out.append(pair_samples(base, fol, enc, PRE, label=PATTERN_TO_INDEX[pattern]))
    return out


def _trainer(steps: int) -> pl.Trainer:
    return pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def _head(channels: list[int]) -> ChangePatternHead:
    return ChangePatternHead(
        channels,
        len(HEAD_LESION_FEATURE_NAMES),
        len(PAIR_FEATURE_NAMES),
        hidden_dim=16,
        dropout=0.0,
    )


@pytest.mark.slow
def test_a_trained_tiny_head_beats_chance_on_its_training_pairs(tiny_samples: list) -> None:
    torch.manual_seed(0)
    channels = EncoderFeatures(_net()).channels()
    head = _head(channels)
    fit_head_normalization(head, [s for v in tiny_samples for s in v])
    module = ChangePatternModule(head, partial(torch.optim.AdamW, lr=1e-2))
    ds = PairSampleDataset(tiny_samples, random_variant=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True, collate_fn=collate_samples)
    _trainer(60).fit(module, train_dataloaders=loader)
    logits, labels = module.predict_logits(
        torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=collate_samples)
    )
    accuracy = float((logits.argmax(1) == labels).mean())
    assert accuracy >= 0.75, f"training accuracy {accuracy} (chance 0.25)"


def test_stratified_folds_spread_every_class() -> None:
    labels = np.array([0] * 10 + [1] * 10 + [2] * 3 + [3] * 7)
    folds = stratified_folds(labels, 5, seed=1)
    assert set(folds.tolist()) == set(range(5))
    for c in range(4):
        counts = np.bincount(folds[labels == c], minlength=5)
        assert counts.max() - counts.min() <= 1, (c, counts)
    assert np.bincount(folds).max() - np.bincount(folds).min() <= 1
    assert np.array_equal(folds, stratified_folds(labels, 5, seed=1))
    with pytest.raises(ValueError, match="n_folds"):
        stratified_folds(labels, 1)


def test_training_can_skip_a_fold_of_pairs(tiny_samples: list, tmp_path: Path) -> None:
    """use_train_pairs restricts the loader and the normalisation samples, not the dataset."""
    from petflare.data.longitudinal import LongitudinalDataModule

    dm = LongitudinalDataModule(_net(), PRE, tmp_path, manifest=tmp_path / "unused.csv")
    dm.datasets = {
        "train": PairSampleDataset(tiny_samples, random_variant=True),
        "val": PairSampleDataset([], random_variant=False),
    }
    dm.use_train_pairs([0, 2])
    seen = [int(x) for batch in dm.train_dataloader() for x in batch[HeadKeys.LABEL]]
    assert sorted(seen) == sorted([tiny_samples[0][0].label, tiny_samples[2][0].label])
    assert len(dm.all_train_samples()) == len(tiny_samples[0]) + len(tiny_samples[2])
    assert len(dm.datasets["train"]) == len(tiny_samples)
    with pytest.raises(ValueError, match="indices"):
        dm.use_train_pairs([len(tiny_samples)])
    dm.use_train_pairs(None)
    assert len(dm.all_train_samples()) == sum(len(v) for v in tiny_samples)


@pytest.mark.parametrize("experiment", HEAD_EXPERIMENTS)
def test_head_experiment_configs_instantiate(experiment: str, tmp_path: Path) -> None:
    """Every head experiment composes and builds its objects (head_debug also trains in
    tests/inference/test_pattern.py)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from petflare.data.longitudinal import LongitudinalDataModule, MaskVariants

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train_head", overrides=[f"experiment={experiment}"])
    net = _net()
    head = instantiate(
        cfg.head,
        feature_channels=EncoderFeatures(net).channels(),
        n_lesion_features=len(HEAD_LESION_FEATURE_NAMES),
        n_pair_features=len(PAIR_FEATURE_NAMES),
    )
    assert isinstance(head, ChangePatternHead)
    from petflare.cli.train_head import compose_head_training

    settings, factories = compose_head_training(cfg)
    dm = factories.datamodule(
        segmentation_net=net,
        preprocessing=PRE,
        cache_dir=tmp_path,
        masks=MaskVariants(n_mask_variants=settings.masks.n_mask_variants),
        features=settings.features,
    )
    assert isinstance(dm, LongitudinalDataModule)
    assert isinstance(factories.trainer(), pl.Trainer)
    module = factories.module(
        factories.head(
            feature_channels=EncoderFeatures(net).channels(),
            n_lesion_features=len(HEAD_LESION_FEATURE_NAMES),
            n_pair_features=len(PAIR_FEATURE_NAMES),
        )
    )
    assert isinstance(module, ChangePatternModule)
    assert isinstance(module.configure_optimizers(), torch.optim.Optimizer)
    assert settings.output_dir == Path(cfg.output_dir)
    assert dm.n_mask_variants == cfg.data.masks.n_mask_variants
    assert dm.batch_size == cfg.data.sampling.batch_size == settings.batch_size
    if experiment == "head_synthetic_cpu":
        assert cfg.data.phantom_pairs.n_train_pairs >= 32 and dm.n_train_pairs >= 32
        assert settings.masks.val_mask_source == "predicted" and settings.uses_predicted_masks
        assert dm.workers == 2
