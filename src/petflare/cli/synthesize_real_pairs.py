"""``petflare-real-pairs``: semi-synthetic longitudinal pairs on real FDG-PET backgrounds."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from petflare.cli._common import exit_on_bad_input, hydra_command, instantiate_settings
from petflare.cli.synthesize_hybrid import _names
from petflare.errors import PetflareInputError
from petflare.synth.backgrounds import load_backgrounds
from petflare.synth.real_pairs import RealPairConfig, generate_real_pair_dataset


@exit_on_bad_input
def run(cfg: DictConfig) -> Path:
    """Read the backgrounds, write the pairs and their manifest, report the timing."""
    if cfg.out is None:
        raise PetflareInputError(None, "out=DIR is required (the folder to write the pairs to)")
    config = instantiate_settings(cfg.real_pairs, RealPairConfig, "real_pairs")
    start = time.perf_counter()
    backgrounds, skipped = load_backgrounds(
        _names(cfg.backgrounds), cfg.data_root, cfg.annotations_root, exclude=_names(cfg.exclude)
    )
    read_s = time.perf_counter() - start
    out = Path(cfg.out)
    manifest = generate_real_pair_dataset(
        out,
        backgrounds,
        int(cfg.n_pairs),
        int(cfg.seed),
        config=config,
        skipped=skipped,
        overwrite=bool(cfg.overwrite),
        first_index=int(cfg.first_index),
    )
    meta = json.loads((out / "real_pairs.json").read_text())
    wall = [r["seconds"] for r in meta["pairs"]]
    cpu = [r["cpu_seconds"] for r in meta["pairs"]]
    print(
        f"petflare-real-pairs: {len(wall)} pairs from {len(backgrounds)} backgrounds in "
        f"{time.perf_counter() - start:.1f} s (reading {read_s:.1f} s; per pair "
        f"{np.median(wall):.1f} s wall, {np.median(cpu):.1f} s CPU median)"
    )
    print(f"  used:     {', '.join(b.name for b in backgrounds)}")
    for name, reason in skipped.items():
        print(f"  not used: {name}: {reason}")
    print(f"  manifest: {manifest}")
    return manifest


@hydra_command("synthesize_real_pairs")
def main(cfg: DictConfig) -> None:
    """Entry point of ``petflare-real-pairs`` / ``python scripts/synthesize_real_pairs.py``."""
    run(cfg)
