"""Brief training on tiny blob volumes beats a randomly initialised network (a test that can fail).

Training and evaluation go through the real pipeline: the debug experiment's config, the
train CLI's ``train``, the best checkpoint, and the Predictor on a scan it never saw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from petflare.cli._common import config_dir
from petflare.cli.train import train
from petflare.data import BlobSource, PreprocessingConfig
from petflare.inference.model_folder import InferenceSettings, network_state_dict, safe_torch_load
from petflare.inference.predictor import Predictor
from petflare.io.loading import load_study


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = float(pred.sum() + truth.sum())
    return 2.0 * float(np.logical_and(pred, truth).sum()) / total if total else 1.0


@pytest.mark.slow
def test_training_beats_a_random_model(tmp_path: Path) -> None:
    overrides = [
        "experiment=debug",
        f"paths.data_dir={tmp_path}",
        f"paths.output_dir={tmp_path}/run",
        "data.source.n_train=4",
        "trainer.max_steps=40",
        "trainer.val_check_interval=20",
        "model.optimizer.lr=1e-2",
        "model.scheduler.warmup_steps=4",
        "callbacks.progress_bar.refresh_rate=0",
        "seed=7",
    ]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    record = train(cfg)

    OmegaConf.resolve(cfg)
    prep_cfg = OmegaConf.to_container(cfg.data.preprocessing)
    assert isinstance(prep_cfg, dict)
    prep_cfg.pop("_target_")
    preprocessing = PreprocessingConfig.from_dict({str(k): v for k, v in prep_cfg.items()})
    settings = InferenceSettings(roi_size_vox=(16, 16, 16), min_component_ml=0.0)

    trained = instantiate(cfg.net, _convert_="all")
    ckpt = Path(record["checkpoint"])
    trained.load_state_dict(network_state_dict(safe_torch_load(ckpt), ckpt))
    torch.manual_seed(123)
    random_net = instantiate(cfg.net, _convert_="all")

    # an unseen scan from the same generator family (another seed)
    entry = BlobSource(tmp_path / "unseen", n_train=1, n_val=0, shape=(24, 24, 16), seed=99)
    item = entry.datalists()["train"][0]
    study = load_study(item["pet"], mask=item["label"])
    assert study.mask is not None
    truth = study.mask > 0

    scores = {}
    for name, net in (("trained", trained), ("random", random_net)):
        predictor = Predictor(net, preprocessing, settings, device="cpu")
        scores[name] = dice(predictor.predict(study) > 0, truth)
    assert scores["trained"] > scores["random"] + 0.2, scores
    assert scores["trained"] > 0.5, scores
