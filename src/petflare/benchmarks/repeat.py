"""Test-retest on a real scan: a scan paired with a simulated repeat of itself must read controlled.

No public dataset labels flare vs nodule-within-mass on real pairs, but one thing is known for
any real scan: paired with a repeat of itself (the patient repositioned, new noise, nothing
changed), the right call is ``controlled``, with no new and no resolved lesion. This pairs a
real FDG-PET scan (default: the STS_001 whole-body DICOM series in ``../shared/data/real``) with
``--n-repeats`` simulated repeats: repeat 0 is the scan itself; each other one moves the body
by up to ``--max-shift-mm`` per axis (the image content moves, the grid stays, as when a patient
lies differently) and multiplies the uptake by ``1 + cv x`` correlated Gaussian noise (``cv``
drawn from ``--noise-cv``, correlation sigma one voxel). Each model folder's full pair pipeline
(segmentation, quantification, registration, matching, learned head) labels every pair.
Reported per pair and model: the label and P(controlled), and the lesion units the matching
made (persisting, resolved, new; "new uptake" counts the new ones the quantification calls new
uptake, not unchanged uptake at a known site). Every resolved or new unit is a segmentation
that did not repeat.

Examples:
    .venv/bin/python scripts/benchmark_repeat.py --model-dir models/phantom-unet \\
        --model-dir models/phantom-unet-gpu --out /tmp/repeat.md
    .venv/bin/python scripts/benchmark_repeat.py --pet SUV.nii.gz --model-dir DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from petflare.benchmarks.common import run_report
from petflare.errors import PetflareInputError
from petflare.inference.pipeline import ScanInput, read_scan
from petflare.io.study import Study
from petflare.paths import project_dir

ROOT = project_dir()
REAL_DIR = Path(os.environ.get("PETFLARE_REAL_DATA", ROOT.parent / "shared" / "data" / "real"))
DEFAULT_PET = REAL_DIR / "sts001_wholebody_fdg_dicom" / "image"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pet", type=Path, default=DEFAULT_PET, help="DICOM PET folder or SUV NIfTI")
    p.add_argument("--ct", type=Path, default=None, help="CT NIfTI for a NIfTI PET (optional)")
    p.add_argument("--model-dir", type=Path, action="append", required=True, help="repeatable")
    p.add_argument("--n-repeats", type=int, default=5, help="pairs per model (repeat 0: itself)")
    p.add_argument("--max-shift-mm", type=float, default=10.0, help="per axis, +-")
    p.add_argument("--noise-cv", type=float, nargs=2, default=(0.05, 0.15), metavar=("LO", "HI"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="Markdown output")
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def simulated_repeat(
    study: Study, rng: np.random.Generator, max_shift_mm: float, noise_cv: tuple[float, float]
) -> tuple[Study, dict[str, Any]]:
    """The same body moved (content shifted on the same grid) with new multiplicative noise.

    The shift is drawn in world millimetres (RAS) and applied through the affine, so it means
    the same on any orientation and spacing; the returned record gives it in RAS mm.
    """
    shift_mm = rng.uniform(-max_shift_mm, max_shift_mm, 3)  # world (RAS) displacement
    cv = float(rng.uniform(*noise_cv))
    shift_vox = np.linalg.solve(np.asarray(study.affine, dtype=np.float64)[:3, :3], shift_mm)
    pet = ndimage.shift(study.pet.astype(np.float32), shift_vox, order=1, mode="nearest")
    noise = ndimage.gaussian_filter(rng.standard_normal(pet.shape).astype(np.float32), 1.0)
    noise /= max(float(noise.std()), 1e-6)
    pet = np.maximum(pet * (1.0 + cv * noise), 0.0).astype(np.float32)
    ct = None
    if study.ct is not None:
        ct = ndimage.shift(study.ct.astype(np.float32), shift_vox, order=1, mode="nearest")
    meta = dataclasses.replace(study.meta, study_id="followup")
    repeat = dataclasses.replace(study, pet=pet, ct=ct, mask=None, meta=meta)
    return repeat, {"shift_mm": [round(float(s), 1) for s in shift_mm], "noise_cv": round(cv, 3)}


def repeats(study: Study, args: argparse.Namespace) -> list[tuple[Study, dict[str, Any]]]:
    """Repeat 0 (the scan itself) and ``n_repeats - 1`` simulated repeats."""
    rng = np.random.default_rng(args.seed)
    meta = dataclasses.replace(study.meta, study_id="followup")
    out = [
        (dataclasses.replace(study, mask=None, meta=meta), {"shift_mm": [0.0] * 3, "noise_cv": 0.0})
    ]
    for _ in range(args.n_repeats - 1):
        out.append(simulated_repeat(study, rng, args.max_shift_mm, tuple(args.noise_cv)))
    return out


def score(
    model_dir: Path, baseline: Study, pairs: list[tuple[Study, dict[str, Any]]]
) -> list[dict]:
    """Label every (scan, repeat) pair with one model folder's network and head."""
    from petflare.inference.pattern import PatternClassifier
    from petflare.inference.predictor import Predictor

    predictor = Predictor.from_folder(model_dir, device="cpu")
    head = PatternClassifier.from_folder(model_dir, device="cpu")
    return score_pairs(predictor, head, baseline, pairs, model_dir.name)


def score_pairs(
    predictor: Any,
    head: Any,
    baseline: Study,
    pairs: list[tuple[Study, dict[str, Any]]],
    name: str = "model",
) -> list[dict]:
    """Run the pair pipeline (``head`` None: the rules) on every (scan, repeat) pair.

    Lesion counts are the quantification's: baseline lesions left without a follow-up match
    (resolved) and follow-up lesions without a baseline match (new), of which "new uptake" are
    those the rules count as new disease (not unchanged uptake at a known site).
    """
    from tqdm.auto import tqdm

    from petflare.inference.pipeline import run_pair
    from petflare.quant.rules import RuleThresholds, counts_as_new

    base = dataclasses.replace(baseline, mask=None)
    rows = []
    for i, (followup, how) in enumerate(tqdm(pairs, desc=f"repeats ({name})", unit="pair")):
        result = run_pair(base, followup, predictor, pattern_head=head)
        pair = result.pair_report
        call = result.pattern
        assert call is not None  # run_pair always calls a pattern (the rules without a head)
        probabilities = call.probabilities
        new = [m for m in pair.matches if m.timepoint == "followup" and m.status == "new"]
        rows.append(
            {
                "repeat": i,
                **how,
                "label": call.label,
                "rules": pair.pattern_rules.label,
                "p_controlled": None if not probabilities else float(probabilities["controlled"]),
                "persisting": pair.disease.n_persisting_baseline,
                "resolved": pair.disease.n_resolved,
                "new": len(new),
                "new_uptake": sum(
                    counts_as_new(m, pair.followup.lesion(m.lesion_id), RuleThresholds())
                    for m in new
                ),
                "n_baseline": pair.disease.n_baseline_lesions,
                "n_followup": pair.disease.n_followup_lesions,
            }
        )
    return rows


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _mean_p(rows: list[dict]) -> str:
    values = [r["p_controlled"] for r in rows if r["p_controlled"] is not None]
    return _p(float(np.mean(values)) if values else None)


def markdown(command: str, pet: Path, results: dict[str, list[dict]]) -> str:
    lines = [
        f"# Test-retest on a real scan: {pet}",
        "",
        f"Command: `{command}`",
        "",
        "| model | called controlled | mean P(controlled) | rules on its masks: controlled "
        "| resolved lesions | new lesions (new uptake) |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        ok = sum(r["label"] == "controlled" for r in rows)
        lines.append(
            f"| {name} | {ok} / {len(rows)} | {_mean_p(rows)} | "
            f"{sum(r['rules'] == 'controlled' for r in rows)} / {len(rows)} | "
            f"{sum(r['resolved'] for r in rows)} | {sum(r['new'] for r in rows)} "
            f"({sum(r['new_uptake'] for r in rows)}) |"
        )
    lines += [
        "",
        "| model | repeat | shift (RAS mm) | noise CV | lesions base / repeat | label "
        "| P(controlled) | rules | persisting (baseline) | resolved | new (new uptake) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        for r in rows:
            shift = ", ".join(f"{s:+.1f}" for s in r["shift_mm"])
            lines.append(
                f"| {name} | {r['repeat']} | ({shift}) | {r['noise_cv']:.2f} | "
                f"{r['n_baseline']} / {r['n_followup']} | {r['label']} | "
                f"{_p(r['p_controlled'])} | {r['rules']} | {r['persisting']} | {r['resolved']} | "
                f"{r['new']} ({r['new_uptake']}) |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python scripts/benchmark_repeat.py " + shlex.join(argv or sys.argv[1:])

    def report() -> str:
        if args.n_repeats < 1:
            raise PetflareInputError("--n-repeats", f"must be >= 1, got {args.n_repeats}")
        study = read_scan(ScanInput(pet=args.pet, ct=args.ct), study_id="baseline")
        pairs = repeats(study, args)
        results = {str(m): score(m, study, pairs) for m in args.model_dir}
        return markdown(command.strip(), args.pet, results)

    return run_report("benchmark_repeat", args.out, args.overwrite, report)


if __name__ == "__main__":
    sys.exit(main())
