"""``petflare-train``: compose the Hydra config, build the objects, fit the segmentation model."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from petflare.cli._common import hydra_command
from petflare.errors import PetflareInputError

#: Resolved config written into every run folder (and copied into an exported model folder).
RUN_CONFIG_FILE = "config.yaml"


def build_training(cfg: DictConfig) -> dict[str, Any]:
    """Instantiate the DataModule, network, LightningModule, callbacks, loggers and Trainer."""
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data)
    net = instantiate(cfg.net, _convert_="all")
    module = instantiate(cfg.model, net=net, _convert_="all")
    if bool(getattr(module, "organ_classes", 0)) != bool(getattr(datamodule, "with_organs", False)):
        raise ValueError(
            "an organ output (model.organ_classes > 0) needs organ label maps "
            "(data.with_organs=true), and the reverse"
        )
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return {"datamodule": datamodule, "net": net, "module": module, "trainer": trainer}


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (AVX512-BF16 or AMX, via oneDNN)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def check_cpu_precision(cfg: DictConfig) -> None:
    """Fall back to fp32 when a CPU run asks for bfloat16 that the CPU would only emulate.

    ``bf16-mixed`` on a CPU with native bfloat16 (oneDNN on AVX512-BF16/AMX) trains about 1.4
    times faster than fp32 (docs/experiments.md); without it, the same run would be several times
    slower. The fallback is logged and written into the run's config.
    """
    trainer = cfg.get("trainer") or {}
    if str(trainer.get("accelerator", "")) != "cpu":
        return
    if not str(trainer.get("precision", "")).startswith("bf16") or cpu_bf16_supported():
        return
    logging.getLogger("petflare").warning(
        "trainer.precision=%s asked for on a CPU without native bfloat16: training in fp32 "
        "(32-true) instead",
        trainer.get("precision"),
    )
    with open_dict(cfg):
        cfg.trainer.precision = "32-true"


def check_run_folder(output_dir: Path, ckpt_path: str | None, overwrite: bool) -> None:
    """Refuse to start afresh over an existing run (its checkpoints would be replaced)."""
    if ckpt_path is not None:
        if not Path(ckpt_path).is_file():
            raise PetflareInputError(ckpt_path, "checkpoint to resume from not found")
        return
    last = output_dir / "checkpoints" / "last.ckpt"
    if last.exists() and not overwrite:
        raise PetflareInputError(
            output_dir,
            f"run folder already has checkpoints; resume with ckpt_path={last} "
            "or start afresh with overwrite=true (or choose another run_name)",
        )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job from a composed config; returns the best-checkpoint record."""
    import lightning.pytorch as pl

    from petflare.io.atomic import atomic_write_text
    from petflare.training.fit import fit_segmentation

    output_dir = Path(cfg.paths.output_dir)
    check_run_folder(output_dir, cfg.get("ckpt_path"), bool(cfg.get("overwrite", False)))
    init_weights = cfg.get("init_weights")
    if init_weights and cfg.get("ckpt_path"):
        raise PetflareInputError(
            init_weights,
            "init_weights (fine-tune: weights only) and ckpt_path (resume: weights, optimizer "
            "and step) exclude each other; give one",
        )
    check_cpu_precision(cfg)
    pl.seed_everything(int(cfg.seed), workers=True)
    objects = build_training(cfg)
    if init_weights:
        from petflare.inference.model_folder import load_network_weights

        # an anatomy-aware network may start from a lesion-only one (wider output layers)
        read = load_network_weights(
            objects["net"], init_weights, widen=bool(objects["module"].organ_classes)
        )
        print(f"petflare-train: network initialised from {read}")
        # provenance: the starting weights may be overwritten later (e.g. a model folder that
        # this run's export replaces), so the run config records their hash
        with open_dict(cfg):
            cfg.init_weights_sha256 = hashlib.sha256(read.read_bytes()).hexdigest()
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        output_dir / RUN_CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True), overwrite=True
    )
    record = fit_segmentation(
        objects["trainer"],
        objects["module"],
        objects["datamodule"],
        run_dir=output_dir,
        ckpt_path=cfg.get("ckpt_path"),
    )
    print(f"petflare-train: best checkpoint {record['checkpoint']}")
    print(f"petflare-train: validation {record['summary']}")
    return record


@hydra_command("train", log_info=True)
def main(cfg: DictConfig) -> None:
    """Console entry point ``petflare-train``."""
    train(cfg)


if __name__ == "__main__":
    main()
