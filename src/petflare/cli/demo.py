"""``petflare-demo`` / ``scripts/demo.py``: the main job on the embedded synthetic phantom.

Calls :func:`petflare.inference.demo.run_demo` (one phantom pair per change pattern, inferred
with the default model loaded once) and prints a table of true vs predicted pattern, probability
and seconds, and where the HTML reports are.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from petflare.cli._common import exit_on_bad_input, hydra_command
from petflare.inference.demo import format_table, run_demo


@exit_on_bad_input
def demo(cfg: DictConfig) -> None:
    """Run the demo from a composed config."""
    rows = run_demo(
        out=Path(str(cfg.out)),
        seed=int(cfg.seed),
        model=Path(str(cfg.model_dir)) if cfg.get("model_dir") else None,
        device=str(cfg.device),
        workers=int(cfg.workers),
        overwrite=bool(cfg.overwrite),
    )
    print(format_table(rows))
    sys.stdout.flush()


@hydra_command("demo")
def _hydra_main(cfg: DictConfig) -> None:
    demo(cfg)


def main() -> None:
    """Console entry point."""
    _hydra_main()
