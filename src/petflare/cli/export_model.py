"""``petflare-export-model``: turn a training run folder into a shippable model folder.

The work (model card included) is :func:`petflare.inference.model_export.export_training_run`.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from petflare.cli._common import hydra_command
from petflare.inference.model_export import DEFAULT_INTENDED_USE, export_training_run

__all__ = ["DEFAULT_INTENDED_USE", "export_run", "main"]


def export_run(cfg: DictConfig) -> Path:
    """Export ``cfg.run_dir`` to ``cfg.out_dir`` with the config's inference settings."""
    out, ckpt = export_training_run(
        cfg.run_dir,
        cfg.out_dir,
        checkpoint=str(cfg.checkpoint),
        overlap=float(cfg.overlap),
        threshold=float(cfg.threshold),
        min_component_ml=float(cfg.min_component_ml),
        physiology_filter=bool(cfg.get("physiology_filter", False)),
        intended_use=None if cfg.intended_use is None else str(cfg.intended_use),
        training_command=None if cfg.training_command is None else str(cfg.training_command),
        overwrite=bool(cfg.overwrite),
    )
    size_mb = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    print(f"petflare-export-model: wrote {out} ({size_mb:.2f} MB) from {ckpt}")
    return out


@hydra_command("export_model")
def main(cfg: DictConfig) -> None:
    """Console entry point ``petflare-export-model``."""
    export_run(cfg)


if __name__ == "__main__":
    main()
