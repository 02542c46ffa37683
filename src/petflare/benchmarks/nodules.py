"""Does the segmentation network find the nodule of each nodule-within-mass phantom pair?

The pattern head can only call a nodule within a mass when the follow-up scan shows it; the
nodule is small (8-22 mm) and sits inside a mass that otherwise responds, the hardest lesion
for a network trained on whole lesions. For every ``nodule_within_mass`` pair of a phantom set
(``truth/<patient>.json`` from ``petflare-synth``), each model folder's network segments the
follow-up scan, and the nodule counts as found when the lesion probability reaches the
model's threshold (before small-component removal) at a voxel within its radius (a ball in
world mm, ``petflare.quant.metrics.ball_kernel``) of the voxel nearest its true centre, so any
orientation and spacing work. Reported per nodule: diameter,
true SUV, the measured SUVmax within its radius (partial volume included), the network's
largest lesion probability there, and found or not; then the share found per model, overall
and by diameter.

Examples:
    .venv/bin/python scripts/benchmark_nodules.py \\
        --data-dir data/phantom_pairs/test_n100_seed3900 --model-dir models/phantom-unet
    .venv/bin/python scripts/benchmark_nodules.py --data-dir DIR --model-dir A --model-dir B \\
        --out /tmp/nodules.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from petflare.benchmarks.common import run_report
from petflare.errors import PetflareInputError

#: Diameter bins (mm) of the summary.
BINS = ((0.0, 12.0), (12.0, 16.0), (16.0, 1000.0))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", type=Path, required=True, help="phantom set (truth/, autopet/)")
    p.add_argument("--model-dir", type=Path, action="append", required=True, help="repeatable")
    p.add_argument("--threshold", type=float, default=None, help="default: each model's own")
    p.add_argument("--limit", type=int, default=None, help="first N nodule pairs only")
    p.add_argument("--out", type=Path, default=None, help="Markdown output")
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def nodule_cases(data_dir: Path, limit: int | None) -> list[dict[str, Any]]:
    """Truth of the nodule pairs: patient, follow-up folder and the nodule's record."""
    from petflare.synth.dataset import TRUTH_DIR

    truth = sorted((data_dir / TRUTH_DIR).glob("*.json"))
    if not truth:
        raise PetflareInputError(data_dir, "no truth/*.json: not a petflare-synth phantom set")
    cases = []
    for path in truth:
        record = json.loads(path.read_text())
        if record.get("pattern") != "nodule_within_mass" or not record.get("nodule"):
            continue
        pid = record["patient_id"]
        cases.append(
            {
                "patient": pid,
                "followup": data_dir / "autopet" / pid / "followup",
                "nodule": record["nodule"],
            }
        )
    return cases[:limit] if limit else cases


def ball(
    shape: tuple[int, ...], affine: np.ndarray, centre_mm: Any, radius_mm: float
) -> np.ndarray:
    """Voxels within ``radius_mm`` (world mm) of the voxel nearest a world point."""
    from petflare.quant.metrics import ball_kernel, ball_mask

    ijk = np.linalg.solve(affine, np.append(np.asarray(centre_mm, dtype=np.float64), 1.0))[:3]
    return ball_mask(shape, ball_kernel(affine, radius_mm), tuple(np.rint(ijk).astype(int)))


def score(model_dir: Path, cases: list[dict[str, Any]], threshold: float | None) -> list[dict]:
    from tqdm.auto import tqdm

    from petflare.inference.predictor import Predictor
    from petflare.io import load_study

    predictor = Predictor.from_folder(model_dir, device="cpu")
    thr = predictor.inference.threshold if threshold is None else threshold
    rows = []
    for case in tqdm(cases, desc=f"nodules ({model_dir.name})", unit="scan"):
        folder = case["followup"]
        ct = folder / "CTres.nii.gz"
        study = load_study(folder / "SUV.nii.gz", ct=ct if ct.is_file() else None)
        nod = case["nodule"]
        inside = ball(study.shape, study.affine, nod["center_world_mm"], nod["diameter_mm"] / 2)
        if not inside.any():
            raise PetflareInputError(folder, "the nodule's centre lies outside the follow-up grid")
        prob = predictor.predict_proba(study)
        rows.append(
            {
                "patient": case["patient"],
                "diameter_mm": float(nod["diameter_mm"]),
                "suv": float(nod["suv"]),
                "host_suv": float(nod["host_suv"]),
                "measured_suv_max": float(study.pet[inside].max()),
                "max_probability": float(prob[inside].max()),
                "found": bool((prob[inside] >= thr).any()),
            }
        )
    return rows


def summary(rows: list[dict]) -> tuple[int, int, dict[str, tuple[int, int]]]:
    """Found, total, and (found, total) per diameter bin."""
    bins = {}
    for lo, hi in BINS:
        sel = [r for r in rows if lo <= r["diameter_mm"] < hi]
        name = f"{lo:g}-{hi:g} mm" if hi < 1000 else f">= {lo:g} mm"
        bins[name] = (sum(r["found"] for r in sel), len(sel))
    return sum(r["found"] for r in rows), len(rows), bins


def markdown(data_dir: Path, results: dict[str, list[dict]]) -> str:
    names = list(results)
    bin_names = list(summary(results[names[0]])[2])
    lines = [
        f"# Nodule detection at follow-up: {data_dir}",
        "",
        "| model | found | " + " | ".join(bin_names) + " |",
        "|---|---|" + "---|" * len(bin_names),
    ]
    for name in names:
        found, n, bins = summary(results[name])
        cells = " | ".join(f"{a} / {b}" for a, b in bins.values())
        lines.append(f"| {name} | {found} / {n} | {cells} |")
    lines += [
        "",
        "| patient | diameter (mm) | true SUV | host SUV | measured SUVmax | "
        + " | ".join(f"p max / found ({n})" for n in names)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(names),
    ]
    for i, r in enumerate(results[names[0]]):
        cells = " | ".join(
            f"{results[n][i]['max_probability']:.3f} / {'yes' if results[n][i]['found'] else 'no'}"
            for n in names
        )
        lines.append(
            f"| {r['patient']} | {r['diameter_mm']:.1f} | {r['suv']:.2f} | "
            f"{r['host_suv']:.2f} | {r['measured_suv_max']:.2f} | {cells} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def report() -> str:
        cases = nodule_cases(args.data_dir, args.limit)
        if not cases:
            raise PetflareInputError(args.data_dir, "no nodule_within_mass pair in this set")
        results = {str(m): score(m, cases, args.threshold) for m in args.model_dir}
        return markdown(args.data_dir, results)

    return run_report("benchmark_nodules", args.out, args.overwrite, report)


if __name__ == "__main__":
    sys.exit(main())
