"""Benchmark petflare.quant on real crops and on the synthetic phantom; prints Markdown tables.

(a) Real data: SUVmax, SUVpeak, SUVmean, volume and TLG within the given GTV masks of the IBSI
    soft-tissue-sarcoma crops (real numbers any other tool can be checked against).
(b) Phantom: the rule-based change-pattern classifier's per-pattern recall and confusion
    matrix against the scenario ground truth, and the automatic liver reference against the
    phantom's true liver SUVmean (fraction of scans within 10%), using ground-truth masks.

Examples:
    .venv/bin/python scripts/benchmark_quant.py --part real
    .venv/bin/python scripts/benchmark_quant.py --part phantom --n-pairs 40 --seed 1000
    python scripts/benchmark_quant.py --part all --out docs/reports/bench_quant.md --overwrite
    .venv/bin/python scripts/benchmark_quant.py --part liver --n-pairs 32 --seed 1000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from petflare.benchmarks.common import run_report
from petflare.constants import PATTERNS
from petflare.errors import PetflareInputError
from petflare.paths import project_dir
from petflare.quant import analyze_study, compare_studies, lesion_instances
from petflare.quant.metrics import suv_peak
from petflare.training.pattern_metrics import format_confusion_matrix, pattern_metrics

DEFAULT_REAL_ROOT = project_dir() / ".." / "shared/data/real/ibsi_sts_crops"


def real_table(root: Path) -> str:
    """Markdown table of the metrics within the GTV mask of every ``STS_*`` crop under root."""
    from petflare.io.loading import load_study

    cases = sorted(p for p in root.glob("STS_*") if p.is_dir())
    if not cases:
        raise PetflareInputError(root, "no STS_* case folders found")
    rows = [
        "| case | grid (orientation, spacing mm) | mask voxels | components (26-conn.) | "
        "volume (ml) | SUVmax | SUVpeak | SUVmean | TLG (SUV*ml) | liver reference |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        study = load_study(case / "PET_image.nii.gz", mask=case / "PET_mask.nii.gz")
        assert study.mask is not None
        mask = study.mask > 0
        vals = study.pet[mask].astype(np.float64)
        volume_ml = mask.sum() * study.voxel_volume_ml
        peak, _ = suv_peak(study.pet, mask, study.affine)
        n_comp = int(lesion_instances(mask.astype(np.uint8), connectivity=26).max())
        liver = analyze_study(study).liver
        liver_txt = f"{liver.suv_mean:.2f}" if liver.found else f"none ({liver.reason})"
        sp = ", ".join(f"{s:.3f}" for s in study.spacing_mm)
        rows.append(
            f"| {case.name} | {study.orientation}, ({sp}) | {int(mask.sum())} | {n_comp} | "
            f"{volume_ml:.2f} | {vals.max():.3f} | {peak:.3f} | {vals.mean():.3f} | "
            f"{vals.mean() * volume_ml:.1f} | {liver_txt} |"
        )
    return "\n".join(rows)


def _confusion_table(truth: list[str], pred: list[str]) -> str:
    idx = {p: i for i, p in enumerate(PATTERNS)}
    m = pattern_metrics(np.array([idx[t] for t in truth]), np.array([idx[p] for p in pred]))
    cm = np.asarray(m["confusion_matrix"])
    return (
        format_confusion_matrix(m, with_recall=True)
        + f"\n\nAccuracy {m['accuracy']:.2f} ({np.trace(cm)}/{cm.sum()}); "
        + f"balanced accuracy {m['balanced_accuracy']:.2f}."
    )


def _true_liver(truth: dict, timepoint: str) -> float | None:
    """The phantom's true liver SUVmean of one scan, from the scenario truth dict."""
    for key in (f"{timepoint}_liver_suv_mean", f"liver_suv_mean_{timepoint}"):
        if key in truth:
            return float(truth[key])
    sub = truth.get(timepoint)
    if isinstance(sub, dict) and "liver_suv_mean" in sub:
        return float(sub["liver_suv_mean"])
    liver = truth.get("liver_suv_mean")
    if isinstance(liver, dict):
        return float(liver[timepoint])
    if isinstance(liver, (list, tuple)):
        return float(liver[0 if timepoint == "baseline" else 1])
    return None


def phantom_tables(n_pairs: int, seed: int) -> str:
    """Rule classifier confusion matrix and liver-reference accuracy on generated pairs."""
    from petflare.synth import PhantomConfig, generate_pair

    config = PhantomConfig()
    truth_labels: list[str] = []
    pred_labels: list[str] = []
    liver_rows: list[tuple[str, str, float, float | None, str]] = []
    rules_fired: dict[str, int] = {}
    t0 = time.perf_counter()
    for i in range(n_pairs):
        pattern = PATTERNS[i % len(PATTERNS)]
        baseline, followup, truth = generate_pair(seed + i, pattern, config)
        report = compare_studies(baseline, followup)
        assert report.pattern_rules is not None
        truth_labels.append(pattern)
        pred_labels.append(report.pattern_rules.label)
        rules_fired[report.pattern_rules.rule] = rules_fired.get(report.pattern_rules.rule, 0) + 1
        for tp, scan in (("baseline", report.baseline), ("followup", report.followup)):
            true = _true_liver(truth, tp)
            if true is None:
                raise KeyError(f"true liver SUVmean not found in truth keys {sorted(truth)}")
            liver_rows.append((f"{seed + i}", tp, true, scan.liver.suv_mean, scan.liver.method))
        liver_txt = " ".join(
            f"{tp} {'none' if found is None else f'{100 * (found - true) / true:+.1f}%'}"
            for _, tp, true, found, _ in liver_rows[-2:]
        )
        print(
            f"pair {i + 1}/{n_pairs} seed {seed + i} {pattern} -> "
            f"{report.pattern_rules.label} ({report.pattern_rules.rule}); liver {liver_txt}",
            file=sys.stderr,
            flush=True,
        )
    elapsed = time.perf_counter() - t0

    errors = [
        abs(found - true) / true if found is not None else np.inf
        for _, _, true, found, _ in liver_rows
    ]
    within = sum(e <= 0.10 for e in errors)
    n_found = sum(found is not None for _, _, _, found, _ in liver_rows)
    finite = [e for e in errors if np.isfinite(e)]
    methods: dict[str, int] = {}
    for *_, method in liver_rows:
        methods[method] = methods.get(method, 0) + 1
    lines = [
        f"{n_pairs} pairs (seeds {seed}..{seed + n_pairs - 1}, patterns cycled), default "
        f"PhantomConfig, ground-truth masks; {elapsed:.0f} s in total "
        f"({elapsed / max(n_pairs, 1):.1f} s per pair incl. generation).",
        "",
        "Rule-based classifier (`classify_pattern_rules`):",
        "",
        _confusion_table(truth_labels, pred_labels),
        "",
        "Rules fired: " + ", ".join(f"{k} x{v}" for k, v in sorted(rules_fired.items())) + ".",
        "",
        "Automatic liver reference vs the phantom's true liver SUVmean:",
        "",
        "| scans | reference found | within 10% | median abs. error | max abs. error | methods |",
        "|---|---|---|---|---|---|",
        f"| {len(liver_rows)} | {n_found} | {within} ({within / len(liver_rows):.1%}) | "
        f"{np.median(finite) if finite else float('nan'):.1%} | "
        f"{max(finite) if finite else float('nan'):.1%} | "
        + ", ".join(f"{k} x{v}" for k, v in sorted(methods.items()))
        + " |",
    ]
    return "\n".join(lines)


def liver_table(n_pairs: int, seed: int) -> str:
    """Liver reference only, on the same generated pairs: the PERCIST sphere found from CT and
    from PET alone, and three pooled spheres, against the phantom's true liver SUVmean
    (``liver_suv_mean``: visible liver, noise-free) and its parenchymal level
    (``physiology[tp]['liver']``)."""
    import dataclasses

    from petflare.quant import LiverSearchConfig, liver_reference
    from petflare.synth import PhantomConfig, generate_pair

    rows: list[tuple[Any, ...]] = []  # (CT, truth, parenchyma, 3 spheres, PET-only) SUVmean
    t0 = time.perf_counter()
    for i in range(n_pairs):
        pattern = PATTERNS[i % len(PATTERNS)]
        baseline, followup, truth = generate_pair(seed + i, pattern, PhantomConfig())
        for tp, study in (("baseline", baseline), ("followup", followup)):
            mask = None if study.mask is None else study.mask > 0
            ref = liver_reference(study, lesion_mask=mask)
            ref_pet = liver_reference(dataclasses.replace(study, ct=None), lesion_mask=mask)
            ref3 = liver_reference(study, lesion_mask=mask, config=LiverSearchConfig(n_spheres=3))
            true_mean = _true_liver(truth, tp)
            parenchyma = float(truth["physiology"][tp]["liver"])
            rows.append((ref.suv_mean, true_mean, parenchyma, ref3.suv_mean, ref_pet.suv_mean))
            assert true_mean is not None
            errors = {
                name: "none" if v is None else f"{100 * (v - true_mean) / true_mean:+.1f}%"
                for name, v in (
                    ("CT", ref.suv_mean),
                    ("PET", ref_pet.suv_mean),
                    ("3x", ref3.suv_mean),
                )
            }
            print(
                f"liver pair {i + 1}/{n_pairs} seed {seed + i} {tp}: noise CoV "
                f"{truth['scans'][tp]['noise_cv_liver']:.2f}, truth {true_mean:.3f}, "
                + ", ".join(f"{k} {v}" for k, v in errors.items()),
                file=sys.stderr,
                flush=True,
            )
    elapsed = time.perf_counter() - t0
    n = len(rows)

    def summary(est: int, idx: int, name: str) -> str:
        errs = [(r[est] - r[idx]) / r[idx] if r[est] is not None else np.inf for r in rows]
        fin = np.array([e for e in errs if np.isfinite(e)])
        within = sum(abs(e) <= 0.10 for e in errs)
        if fin.size == 0:
            return f"| {name} | {n} | 0 | 0 (0.0%) | - | - | - | - |"
        return (
            f"| {name} | {n} | {fin.size} | {within} ({within / n:.1%}) | "
            f"{100 * fin.mean():+.1f}% / {100 * fin.std(ddof=1):.1f}% | "
            f"{np.median(np.abs(fin)):.1%} | {np.percentile(np.abs(fin), 90):.1%} | "
            f"{np.abs(fin).max():.1%} |"
        )

    return "\n".join(
        [
            f"{n_pairs} pairs (seeds {seed}..{seed + n_pairs - 1}), {n} scans, default "
            f"PhantomConfig, ground-truth lesion masks excluded; {elapsed:.0f} s in total.",
            "",
            "| estimate vs truth | scans | found | within 10% | signed error mean / SD | "
            "median abs. error | 90th pct | max |",
            "|---|---|---|---|---|---|---|---|",
            summary(0, 1, "1 sphere (PERCIST, default; CT route) vs `liver_suv_mean`"),
            summary(0, 2, "1 sphere (PERCIST, default; CT route) vs `physiology.liver`"),
            summary(4, 1, "1 sphere, PET only (CT removed) vs `liver_suv_mean`"),
            summary(3, 1, "3 pooled spheres (`n_spheres=3`, CT route) vs `liver_suv_mean`"),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmark parts and print (or write) the Markdown result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("real", "phantom", "liver", "all"), default="all")
    parser.add_argument("--real-root", type=Path, default=DEFAULT_REAL_ROOT.resolve())
    parser.add_argument("--n-pairs", type=int, default=40, help="phantom pairs (default 40)")
    parser.add_argument("--seed", type=int, default=1000, help="first phantom seed")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)

    command = (
        "`.venv/bin/python scripts/benchmark_quant.py "
        + " ".join(sys.argv[1:] if argv is None else argv)
        + "`"
    )

    def report() -> str:
        parts = [f"Command: {command}", ""]
        if args.part in ("real", "all"):
            if not args.real_root.is_dir():
                raise PetflareInputError(args.real_root, "real-data folder not found")
            parts += ["## (a) Real IBSI STS crops: metrics within the GTV masks", ""]
            parts += [real_table(args.real_root), ""]
        if args.part in ("phantom", "all"):
            parts += ["## (b) Phantom: rule-based classifier and liver reference", ""]
            parts += [phantom_tables(args.n_pairs, args.seed), ""]
        if args.part == "liver":
            parts += ["## Liver reference against the phantom truth", ""]
            parts += [liver_table(args.n_pairs, args.seed), ""]
        return "\n".join(parts)

    return run_report("benchmark_quant", args.out, args.overwrite, report)


if __name__ == "__main__":
    sys.exit(main())
