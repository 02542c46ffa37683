"""``petflare-hybrid``: synthetic lesions inserted into real FDG-PET backgrounds."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from petflare.cli._common import exit_on_bad_input, hydra_command, instantiate_settings
from petflare.errors import PetflareInputError
from petflare.inference.figures import mip_row_figure
from petflare.io.nifti import load_nifti
from petflare.io.study import Study
from petflare.synth.backgrounds import load_backgrounds
from petflare.synth.hybrid import HybridConfig, generate_hybrid_dataset


def _names(value: object) -> list[str]:
    if value is None:
        return []
    items = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return [str(v) for v in (items if isinstance(items, list) else [items])]


def _figure(out: Path, meta: dict, background: Study, name: str) -> Path:
    """The first real background beside the first hybrid scan of every background used."""
    panels: list[tuple[Study, np.ndarray | None, str]] = [
        (background, background.mask, f"{name}: real background")
    ]
    colors: dict[int, str] = {}
    for record in [r for r in meta["scans"] if r["study_id"] == "v0000"]:
        suv, affine = load_nifti(out / record["suv"])
        seg, _ = load_nifti(out / record["seg"])
        truth = json.loads(
            (out / "truth" / f"{record['patient_id']}_{record['study_id']}.json").read_text()
        )
        disease = {int(v) for v in truth["disease_labels"]}
        # one colour per label value across panels: known disease blue, inserted red
        colors.update({int(v): "#1f5fd6" for v in disease})
        seg = seg.astype(np.int32)
        seg = np.where(np.isin(seg, list(disease)), seg, np.where(seg > 0, 1000 + seg, 0))
        panels.append((Study(suv, affine), seg, f"{record['patient_id']} {record['study_id']}"))
    return mip_row_figure(
        panels,
        out / "mip_example.png",
        title="hybrid scans: inserted lesions (red), known disease (blue)",
        overwrite=True,
        label_colors=colors,
    )


@exit_on_bad_input
def run(cfg: DictConfig) -> Path:
    """Read the backgrounds, write the hybrid set and its example MIP, report."""
    if cfg.out is None:
        raise PetflareInputError(None, "out=DIR is required (the folder to write the scans to)")
    config = instantiate_settings(cfg.hybrid, HybridConfig, "hybrid")
    start = time.perf_counter()
    backgrounds, skipped = load_backgrounds(
        _names(cfg.backgrounds),
        cfg.data_root,
        cfg.annotations_root,
        exclude=_names(cfg.exclude),
    )
    read_s = time.perf_counter() - start
    out = Path(cfg.out)
    meta_path = generate_hybrid_dataset(
        out,
        backgrounds,
        int(cfg.n_variants),
        int(cfg.seed),
        config=config,
        skipped=skipped,
        overwrite=bool(cfg.overwrite),
    )
    meta = json.loads(meta_path.read_text())
    n = len(meta["scans"])
    per_scan = [r["seconds"] for r in meta["scans"]]
    per_scan_cpu = [r["cpu_seconds"] for r in meta["scans"]]
    print(
        f"petflare-hybrid: {n} scans from {len(backgrounds)} backgrounds in "
        f"{time.perf_counter() - start:.1f} s (reading {read_s:.1f} s; per scan "
        f"{np.median(per_scan):.1f} s wall, {np.median(per_scan_cpu):.1f} s CPU median)"
    )
    print(f"  used:     {', '.join(b.name for b in backgrounds)}")
    for name, reason in skipped.items():
        print(f"  not used: {name}: {reason}")
    print(f"  autoPET:  {out / 'autopet'}/<background>/v<NNNN>/{{SUV,SEG,ORGANS}}.nii.gz")
    print(f"  metadata: {meta_path}")
    if cfg.figure:
        first = backgrounds[0]
        study = Study(
            first.suv,
            first.affine,
            mask=None if first.disease is None else first.disease.astype(np.uint8),
        )
        print(f"  figure:   {_figure(out, meta, study, first.name)}")
    return meta_path


@hydra_command("synthesize_hybrid")
def main(cfg: DictConfig) -> None:
    """Entry point of ``petflare-hybrid`` / ``python scripts/synthesize_hybrid.py``."""
    run(cfg)
