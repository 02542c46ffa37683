"""``petflare-synth``: write a synthetic longitudinal FDG-PET/CT dataset and one MIP picture."""

from __future__ import annotations

import csv
import time
from collections import Counter
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from petflare.cli._common import exit_on_bad_input, hydra_command
from petflare.constants import Keys
from petflare.errors import PetflareInputError
from petflare.inference.figures import mip_pair_figure
from petflare.io.nifti import load_nifti
from petflare.io.study import Study, StudyMeta
from petflare.synth import PhantomConfig, generate_dataset


def _study(root: Path, row: dict[str, str], timepoint: str) -> Study:
    """Read back one written study (PET and mask) for the example figure."""
    pet, affine = load_nifti(root / row[f"{timepoint}_pet"])
    mask, _ = load_nifti(root / row[f"{timepoint}_mask"])
    return Study(pet, affine, mask=mask, meta=StudyMeta(row[Keys.PATIENT_ID], timepoint))


@exit_on_bad_input
def run(cfg: DictConfig) -> Path:
    """Compose the phantom config, generate the dataset, draw the example MIP, report."""
    if cfg.out is None:
        raise PetflareInputError(None, "out=DIR is required (the folder to write the dataset to)")
    try:
        config = instantiate(cfg.synth, _convert_="all")
    except Exception as exc:  # bad synth.* values
        raise PetflareInputError(None, f"invalid phantom parameters: {exc}") from exc
    if not isinstance(config, PhantomConfig):
        raise PetflareInputError(None, "synth must instantiate petflare.synth.PhantomConfig")
    patterns = None
    if cfg.patterns is not None:
        value = (
            OmegaConf.to_container(cfg.patterns)
            if OmegaConf.is_config(cfg.patterns)
            else cfg.patterns
        )
        patterns = [str(p) for p in (value if isinstance(value, list) else [value])]
    out = Path(cfg.out)
    start = time.perf_counter()
    manifest = generate_dataset(
        out,
        int(cfg.n_pairs),
        int(cfg.seed),
        config=config,
        patterns=patterns,
        overwrite=bool(cfg.overwrite),
        workers=int(cfg.workers),
        id_prefix=str(cfg.id_prefix),
    )
    elapsed = time.perf_counter() - start
    with manifest.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    print(f"petflare-synth: {len(rows)} pairs in {elapsed:.1f} s")
    print(f"  manifest: {manifest}")
    studies = "<patient>/<baseline|followup>/{SUV,CTres,SEG,ORGANS}.nii.gz"
    print(f"  autoPET:  {out / 'autopet'}/{studies}")
    print(f"  truth:    {out / 'truth'}/<patient>.json")
    patterns_count = Counter(r[Keys.PATTERN] for r in rows)
    splits_count = Counter(r[Keys.SPLIT] for r in rows)
    print(f"  patterns: {dict(sorted(patterns_count.items()))}")
    print(f"  splits:   {dict(sorted(splits_count.items()))}")
    if cfg.figure:
        row = rows[0]
        figure = mip_pair_figure(
            _study(out, row, "baseline"),
            _study(out, row, "followup"),
            out / "mip_example.png",
            title=f"{row[Keys.PATIENT_ID]}: {row[Keys.PATTERN]} (phantom ground-truth contours)",
            overwrite=True,
        )
        print(f"  figure:   {figure}")
    return manifest


@hydra_command("synthesize")
def main(cfg: DictConfig) -> None:
    """Entry point of ``petflare-synth`` / ``python scripts/synthesize.py``."""
    run(cfg)
