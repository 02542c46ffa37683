"""Fine-tuning: ``init_weights`` starts a run from a checkpoint's or model folder's weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from petflare.cli._common import config_dir
from petflare.cli.export_model import export_run
from petflare.cli.train import train
from petflare.errors import PetflareInputError
from petflare.inference.model_folder import load_network_weights
from petflare.networks import build_unet


class Payload:
    """An arbitrary Python object in a checkpoint: it must never be unpickled."""


def tiny_unet(channels: tuple[int, ...] = (4, 8)) -> torch.nn.Module:
    return build_unet(channels=channels, strides=[2] * (len(channels) - 1))


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].float(), b[k].float()) for k in a)


def test_loads_lightning_checkpoint_and_model_folder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = tiny_unet()
    ckpt = tmp_path / "run.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in source.state_dict().items()}}, ckpt)
    target = tiny_unet()
    assert not same_weights(target.state_dict(), source.state_dict())
    assert load_network_weights(target, ckpt) == ckpt
    assert same_weights(target.state_dict(), source.state_dict())

    folder = tmp_path / "model"
    folder.mkdir()
    half = {k: v.half() if v.is_floating_point() else v for k, v in source.state_dict().items()}
    torch.save({"state_dict": half}, folder / "weights.pt")
    (folder / "metadata.json").write_text(json.dumps({"weights": {"file": "weights.pt"}}))
    other = tiny_unet()
    assert load_network_weights(other, folder) == folder / "weights.pt"
    floats = [v for v in other.state_dict().values() if v.is_floating_point()]
    assert all(v.dtype == torch.float32 for v in floats)
    for k, v in other.state_dict().items():
        assert torch.equal(v, half[k].to(v.dtype)), k


def test_mismatched_or_unsafe_weights_are_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "small.pt"
    torch.save({"state_dict": tiny_unet((4, 8)).state_dict()}, ckpt)
    with pytest.raises(PetflareInputError, match="do not fit the configured network") as info:
        load_network_weights(tiny_unet((8, 16)), ckpt)
    assert str(ckpt) in str(info.value)

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"state_dict": tiny_unet().state_dict(), "extra": Payload()}, unsafe)
    with pytest.raises(PetflareInputError, match="refused to load"):
        load_network_weights(tiny_unet(), unsafe)
    with pytest.raises(PetflareInputError, match="not found"):
        load_network_weights(tiny_unet(), tmp_path / "missing.ckpt")


def debug_config(root: Path, run: str, max_steps: int, *extra: str):  # noqa: ANN201
    overrides = [
        "experiment=debug",
        f"paths.data_dir={root}",
        f"paths.output_dir={root}/{run}",
        f"trainer.max_steps={max_steps}",
        "trainer.val_check_interval=2",
        "callbacks.progress_bar.refresh_rate=0",
        *extra,
    ]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.mark.slow
def test_train_starts_from_init_weights(tmp_path: Path) -> None:
    train(debug_config(tmp_path, "first", 2))
    first_last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    first = torch.load(first_last, map_location="cpu", weights_only=True)

    # lr 0: the fine-tuned run's weights stay exactly those it was initialised with, and its
    # step count starts afresh (resuming would continue at step 2)
    cfg = debug_config(
        tmp_path, "second", 2, f"init_weights={first_last}", "model.optimizer.lr=0.0"
    )
    train(cfg)
    second = torch.load(
        tmp_path / "second" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert second["global_step"] == 2
    net = {k: v for k, v in first["state_dict"].items() if k.startswith("net.")}
    assert net and same_weights(net, {k: second["state_dict"][k] for k in net})

    # provenance: the run config and the exported folder name the starting weights and hash
    digest = hashlib.sha256(first_last.read_bytes()).hexdigest()
    run_cfg = OmegaConf.load(tmp_path / "second" / "config.yaml")
    assert run_cfg.init_weights_sha256 == digest
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        export_cfg = compose(
            config_name="export_model",
            overrides=[f"run_dir={tmp_path / 'second'}", f"out_dir={tmp_path / 'model'}"],
        )
    export_run(export_cfg)
    meta = json.loads((tmp_path / "model" / "metadata.json").read_text())
    assert meta["training"]["init_weights"] == str(first_last)
    assert meta["training"]["init_weights_sha256"] == digest


def test_init_weights_and_resume_exclude_each_other(tmp_path: Path) -> None:
    ckpt = tmp_path / "x.ckpt"
    torch.save({"state_dict": tiny_unet().state_dict()}, ckpt)
    cfg = debug_config(tmp_path, "run", 2, f"init_weights={ckpt}", f"ckpt_path={ckpt}")
    with pytest.raises(PetflareInputError, match="exclude each other"):
        train(cfg)
