"""Benchmark the learned change-pattern head against the rule-based classifier on held-out phantoms.

For every pair of a held-out phantom set (a generator seed never used in training), both
scans are segmented by the model folder's own network (``--masks predicted``; or the phantom's
ground-truth masks), quantified and matched once; the learned head (calibrated probabilities)
and the rules (``petflare.quant.classify_pattern_rules``) then label the same pair from the
same masks. Robustness sets (shift20, noise, spacing) change one acquisition property beyond
the head's training range; pet_only reads main-set pairs without their CT; the scanners set
varies voxel size, PSF and noise at once over the range petflare is meant for (3-5 mm voxels).
Each title says how a set relates to the head's recorded training phantoms.

Prints Markdown and, with ``--out``, writes it (with the raw metrics as a JSON block).

Examples:
    .venv/bin/python scripts/benchmark_pattern.py --model-dir models/phantom-unet --n-pairs 100
    .venv/bin/python scripts/benchmark_pattern.py --sets main scanners shift20 noise spacing \\
        --n-pairs 100 --robust-pairs 40 --out docs/reports/bench_pattern.md --overwrite
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from petflare.constants import PATTERN_TO_INDEX, PATTERNS, Keys
from petflare.errors import PetflareInputError
from petflare.io.atomic import atomic_write_text, check_can_write
from petflare.paths import project_dir
from petflare.training.pattern_metrics import (
    format_confusion_matrix,
    format_metrics_table,
    pattern_metrics,
)

#: Phantom settings of each evaluation set (PhantomConfig keyword arguments). Each robustness
#: set lies outside the head's training phantoms (the shipped head: PhantomConfig defaults,
#: voxels 3.6-4.4 mm in-plane, noise CV 0.06-0.30, repositioning 10 mm) in one property; the
#: report checks this against the overrides recorded in head.json and flags an overlap.
SETS: dict[str, dict[str, Any]] = {
    "main": {},
    "shift20": {"max_shift_mm": 20.0},  # repositioning up to 2 cm per axis
    "noise": {"noise_cv_liver": (0.45, 0.55)},  # noisier than any training scan
    "spacing": {"spacing_inplane_mm": (5.2, 6.0), "spacing_slice_mm": (5.2, 6.0)},
    # not a one-property shift: the range of scanners petflare is meant for (voxels 3-5 mm on
    # every axis, PSF 4.5-9 mm FWHM, liver noise CV 0.06-0.40), all at once
    "scanners": {
        "spacing_inplane_mm": (3.0, 5.0),
        "spacing_slice_mm": (3.0, 5.0),
        "psf_fwhm_mm": (4.5, 9.0),
        "noise_cv_liver": (0.06, 0.40),
    },
    # the main set's first pairs read without their CT (PET-only studies): the head's CT
    # features are zero, the registration and the rules use PET alone
    "pet_only": {},
    # lesions unlike the training phantoms' uniform blobs: uptake falls from the centre to the
    # edge by 0-70% (as in many real tumours; the masks and mean SUVs follow the same rules)
    "graded": {"lesion_falloff": (0.0, 0.7)},
    # coarser noise texture than any training scan (correlation 5-8 mm vs 2-4 mm: heavily
    # post-filtered reconstructions), at the default noise level
    "texture": {"noise_corr_mm": (5.0, 8.0)},
    # non-fasted hearts as hot as real ones (myocardium SUV 9-18 in the two thirds of scans
    # whose heart is not suppressed; default phantoms 2-8), redrawn at each scan as fasting
    # changes: a heart cold at baseline and hot at follow-up is physiological, not new disease
    "heart": {"myocardium_suv": (9.0, 18.0)},
}


def preset_overrides(name: str) -> dict[str, Any]:
    """The PhantomConfig overrides of a phantom preset in ``configs/synth/<name>.yaml`` (its
    keys beside the defaults it inherits; lists as tuples)."""
    from omegaconf import OmegaConf

    path = project_dir() / "configs" / "synth" / f"{name}.yaml"
    if not path.is_file():
        raise PetflareInputError(path, "phantom preset not found")
    raw = OmegaConf.to_container(OmegaConf.load(path))
    assert isinstance(raw, dict)
    raw.pop("defaults", None)
    return {str(k): tuple(v) if isinstance(v, list) else v for k, v in raw.items()}


#: Phantom v2 (configs/synth/v2.yaml, docs/phantom.md): physiology, organ shapes and scanners
#: randomised as widely as real scans show; issue 34's own-phantom target set.
SETS["v2"] = preset_overrides("v2")
#: Sets whose rows drop the CT columns.
PET_ONLY_SETS = frozenset({"pet_only"})


def training_phantom(meta: dict[str, Any]) -> Any:
    """PhantomConfig spanning the head's training pairs: the recorded overrides of its main set
    and of each extra training set, as one range per setting (the union)."""
    from dataclasses import replace

    from petflare.synth import PhantomConfig

    pairs = (meta.get("training") or {}).get("phantom_pairs") or {}
    overrides = pairs.get("phantom")
    if overrides is None:  # heads trained before the overrides were recorded: the config
        overrides = ((meta.get("config") or {}).get("data") or {}).get("phantom") or {}
    configs = [PhantomConfig(**overrides)]
    configs += [
        PhantomConfig(**(e.get("phantom") or {})) for e in pairs.get("extra_train_sets") or []
    ]

    def span(name: str) -> tuple[float, float]:
        values = [getattr(c, name) for c in configs]
        return (min(v[0] for v in values), max(v[1] for v in values))

    names = (
        "spacing_inplane_mm",
        "spacing_slice_mm",
        "psf_fwhm_mm",
        "noise_cv_liver",
        "noise_corr_mm",
        "lesion_falloff",
        "myocardium_suv",
    )
    spans: dict[str, Any] = {name: span(name) for name in names}
    return replace(configs[0], max_shift_mm=max(c.max_shift_mm for c in configs), **spans)


def _outside(lo: float, hi: float, train: tuple[float, float]) -> str:
    return "" if lo > train[1] or hi < train[0] else " **(overlaps the training range)**"


def set_title(name: str, train: Any) -> str:
    """What an evaluation set changes, beside the head's training range (a PhantomConfig)."""
    if name == "main":
        return "held-out phantoms (training distribution)"
    if name == "pet_only":
        return "the main set's pairs without CT (PET only; training pairs all had a CT)"
    if name == "shift20":
        shift = SETS[name]["max_shift_mm"]
        note = "" if shift > train.max_shift_mm else " **(overlaps the training range)**"
        return (
            f"repositioning up to {shift:.0f} mm per axis between scans "
            f"(training: {train.max_shift_mm:.0f} mm){note}"
        )
    if name == "noise":
        lo, hi = SETS[name]["noise_cv_liver"]
        tlo, thi = train.noise_cv_liver
        return f"liver noise CV {lo:.2f}-{hi:.2f} (training: {tlo:.2f}-{thi:.2f})" + _outside(
            lo, hi, train.noise_cv_liver
        )
    if name == "spacing":
        lo, hi = SETS[name]["spacing_inplane_mm"]
        return (
            f"{lo:.1f}-{hi:.1f} mm voxels (training: in-plane {train.spacing_inplane_mm[0]:.1f}-"
            f"{train.spacing_inplane_mm[1]:.1f} mm, slices {train.spacing_slice_mm[0]:.1f}-"
            f"{train.spacing_slice_mm[1]:.1f} mm)" + _outside(lo, hi, train.spacing_inplane_mm)
        )
    if name == "graded":
        lo, hi = SETS[name]["lesion_falloff"]
        # the set starts at uniform lesions: it lies beyond training where it grades more
        note = "" if hi > train.lesion_falloff[1] else " **(within the training range)**"
        return (
            f"graded lesions: uptake falls {lo:.0%}-{hi:.0%} from centre to edge (training: "
            f"{train.lesion_falloff[0]:.0%}-{train.lesion_falloff[1]:.0%}){note}"
        )
    if name == "texture":
        lo, hi = SETS[name]["noise_corr_mm"]
        return (
            f"noise correlation {lo:.0f}-{hi:.0f} mm (training: {train.noise_corr_mm[0]:.0f}-"
            f"{train.noise_corr_mm[1]:.0f} mm)" + _outside(lo, hi, train.noise_corr_mm)
        )
    if name == "heart":
        lo, hi = SETS[name]["myocardium_suv"]
        tlo, thi = train.myocardium_suv
        return (
            f"non-fasted myocardium SUV {lo:.0f}-{hi:.0f} (training: {tlo:.0f}-{thi:.0f})"
            + _outside(lo, hi, train.myocardium_suv)
        )
    if name == "v2":
        st = SETS[name]
        ranges = {k: v for k, v in st.items() if hasattr(train, k) and isinstance(v, tuple)}
        inside = all(
            getattr(train, k)[0] <= lo and getattr(train, k)[1] >= hi
            for k, (lo, hi) in ranges.items()
        )
        return (
            "phantom v2 (configs/synth/v2.yaml): brain SUV {0[0]:.1f}-{0[1]:.1f}, myocardium "
            "{1[0]:.0f}-{1[1]:.0f} (fasted or patchy in part), bladder {2[0]:.0f}-{2[1]:.0f}, "
            "brown fat, bowel, injection sites, deformed organs, voxels {3[0]:.1f}-{3[1]:.1f} mm"
        ).format(
            st["brain_suv"], st["myocardium_suv"], st["bladder_suv"], st["spacing_inplane_mm"]
        ) + (
            " **(within the recorded phantom training range)**"
            if inside
            else " (wider than the head's recorded phantom training; a head trained from "
            "manifests records no phantom range: see its head.json)"
        )
    if name == "scanners":
        st = SETS[name]
        (slo, shi), (plo, phi), (nlo, nhi) = (
            st["spacing_inplane_mm"],
            st["psf_fwhm_mm"],
            st["noise_cv_liver"],
        )
        inside = (
            train.spacing_inplane_mm[0] <= slo
            and train.spacing_inplane_mm[1] >= shi
            and train.psf_fwhm_mm[0] <= plo
            and train.psf_fwhm_mm[1] >= phi
            and train.noise_cv_liver[0] <= nlo
            and train.noise_cv_liver[1] >= nhi
        )
        return (
            f"mixed scanners: voxels {slo:.0f}-{shi:.0f} mm, PSF {plo:.1f}-{phi:.1f} mm, noise CV "
            f"{nlo:.2f}-{nhi:.2f} (training: voxels {train.spacing_inplane_mm[0]:.1f}-"
            f"{train.spacing_inplane_mm[1]:.1f} mm in-plane, PSF {train.psf_fwhm_mm[0]:.1f}-"
            f"{train.psf_fwhm_mm[1]:.1f} mm, noise CV {train.noise_cv_liver[0]:.2f}-"
            f"{train.noise_cv_liver[1]:.2f})"
            + (" **(within the training range)**" if inside else " (wider than training)")
        )
    raise KeyError(name)


def seeds_seen(meta: dict[str, Any]) -> set[int]:
    """Phantom seeds a head's ``head.json`` says it was trained or calibrated on: its training
    and validation sets and, for a recalibrated head (``petflare-train-head recalibrate=true``),
    the calibration sets. A benchmark seed among them would score the head on pairs it saw."""
    records = [(meta.get("training") or {}).get("phantom_pairs") or {}]
    recal = meta.get("recalibration") or {}
    records.append((recal.get("data") or {}).get("phantom_pairs") or {})
    seeds = set()
    for rec in records:
        seeds |= {rec.get("train_seed"), rec.get("val_seed")}
        seeds |= {
            e.get("seed")
            for key in ("extra_train_sets", "extra_val_sets")
            for e in rec.get(key) or []
        }
    return {int(s) for s in seeds if s is not None}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--model-dir",
        type=Path,
        default=Path("models/phantom-unet"),
        help="model folder with a head (default models/phantom-unet, "
        "docs/reports/bench_pattern.md; the default inference folder models/phantom-unet-gpu "
        "is docs/reports/bench_pattern_gpu.md)",
    )
    p.add_argument("--data-dir", type=Path, default=Path("data/phantom_pairs"))
    p.add_argument("--cache-dir", type=Path, default=Path("data/head_cache"))
    p.add_argument("--sets", nargs="+", default=["main"], choices=sorted(SETS))
    p.add_argument("--n-pairs", type=int, default=100, help="pairs in the main set")
    p.add_argument("--robust-pairs", type=int, default=40, help="pairs in each robustness set")
    p.add_argument("--seed", type=int, default=3900, help="held-out generator seed")
    p.add_argument("--masks", choices=["predicted", "ground_truth", "both"], default="predicted")
    p.add_argument("--out", type=Path, default=None, help="Markdown output")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes computing the pairs missing from the cache (one thread each)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="lesion probability cut of the predicted masks (default: the model folder's own; "
        "the head was trained on masks at that one)",
    )
    args = p.parse_args(argv)
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        p.error(f"--threshold must be between 0 and 1, got {args.threshold}")
    return args


def set_rows(
    data_dir: Path, name: str, n_pairs: int, seed: int, workers: int = 1
) -> list[dict[str, Any]]:
    """The first ``n_pairs`` pairs of one evaluation set, generated once.

    Pair ``i`` depends only on the seed and ``i`` (patterns cycle), so a larger set of the same
    seed already holds them.
    """
    from petflare.io import load_manifest
    from petflare.synth import PhantomConfig, generate_dataset
    from petflare.synth.config import phantom_tag

    # the settings are part of the cache key: changing a set never reuses stale phantoms
    same_as_main = name == "main" or (name in PET_ONLY_SETS and not SETS[name])
    suffix = f"_seed{seed}" + ("" if same_as_main else f"_{name}_{phantom_tag(SETS[name])}")
    existing = []
    for m in data_dir.glob(f"test_n*{suffix}/manifest.csv"):
        size = m.parent.name[len("test_n") : len(m.parent.name) - len(suffix)]
        if size.isdigit() and int(size) >= n_pairs:
            existing.append((int(size), m))
    if existing:
        manifest = min(existing)[1]
    else:
        folder = data_dir / f"test_n{n_pairs}{suffix}"
        print(f"generating {n_pairs} pairs for '{name}' into {folder}", file=sys.stderr)
        manifest = generate_dataset(
            folder,
            n_pairs,
            seed,
            config=PhantomConfig(**SETS[name]),
            overwrite=True,
            workers=workers,
        )
    rows = load_manifest(manifest)[:n_pairs]
    if name in PET_ONLY_SETS:
        rows = [{**row, Keys.BASELINE_CT: None, Keys.FOLLOWUP_CT: None} for row in rows]
    return rows


def evaluate_set(
    classifier: Any, dm: Any, rows: list[dict[str, Any]], mask_source: Any
) -> tuple[dict[str, Any], dict[str, Any], dict[str, float]]:
    """Head and rule metrics on manifest rows (samples cached in the DataModule's cache)."""
    y_true, head_pred, head_probs, rule_pred = [], [], [], []
    t0 = time.perf_counter()
    dm.warm_cache([(row, 0, mask_source, 0) for row in rows])
    for i, row in enumerate(rows):
        sample = dm.samples_for_row(row, 0, mask_source, 0)[0]
        pred = classifier.predict_samples([sample])[0]
        y_true.append(PATTERN_TO_INDEX[row["pattern"]])
        head_pred.append(PATTERN_TO_INDEX[pred.label])
        head_probs.append([pred.probabilities[p] for p in PATTERNS])
        rule_pred.append(PATTERN_TO_INDEX[sample.rule_label])
        print(
            f"  {i + 1}/{len(rows)} {row['patient_id']}: truth {row['pattern']}, head "
            f"{pred.label}, rules {sample.rule_label}",
            file=sys.stderr,
        )
    seconds = time.perf_counter() - t0
    head = pattern_metrics(y_true, head_pred, np.array(head_probs))
    rules = pattern_metrics(y_true, rule_pred)
    return head, rules, {"seconds": seconds, "per_pair_s": seconds / max(len(rows), 1)}


def set_section(
    name: str,
    train: Any,
    source: str,
    n: int,
    head: dict[str, Any],
    rules: dict[str, Any],
    timing: dict[str, float],
) -> list[str]:
    """Markdown lines of one evaluation set and mask source."""
    return [
        f"## {name}: {set_title(name, train)} ({n} pairs, {source})",
        "",
        format_metrics_table({"learned head": head, "rules (quant)": rules}),
        "",
        "Per-class recall (head / rules): "
        + ", ".join(
            f"{p} {head['recall'][p] or 0:.2f} / {rules['recall'][p] or 0:.2f}" for p in PATTERNS
        ),
        "",
        "Learned head confusion matrix (rows: truth):",
        "",
        format_confusion_matrix(head),
        "",
        "Rules confusion matrix (rows: truth):",
        "",
        format_confusion_matrix(rules),
        "",
        "Time: every pair read back from the cache of an earlier run."
        if timing["per_pair_s"] < 0.05
        else f"Time: {timing['per_pair_s']:.1f} s per pair (segmentation of both scans when "
        "masks are predicted, quantification with registration, encoder; 2 CPU cores shared "
        "with other jobs; cached results are read back on a rerun).",
        "",
    ]


def write_outputs(out: Path, sections: list[str], raw: dict[str, Any]) -> None:
    """Write the Markdown report, the raw metrics as a JSON block at its end."""
    text = "\n".join(sections) + "\n## Raw metrics (JSON)\n\n```json\n"
    atomic_write_text(out, text + json.dumps(raw, indent=1) + "\n```\n", overwrite=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.out is not None:
            check_can_write(args.out, args.overwrite)
        from petflare.data.longitudinal import (
            LongitudinalDataModule,
            PairFeatures,
            PredictedMasks,
        )
        from petflare.inference.pattern import PatternClassifier

        classifier = PatternClassifier.from_folder(args.model_dir, device="cpu")
        meta = classifier.metadata
        dm = LongitudinalDataModule(
            classifier.encoder.net,
            classifier.preprocessing,
            args.cache_dir,
            manifest=None,
            features=PairFeatures(
                encoder_scales=meta.get("encoder_scales"),
                margin_mm=float(meta.get("margin_mm", 32.0)),
                workers=args.workers,
            ),
        )
        sources: dict[str, Any] = {}
        if args.masks in ("predicted", "both"):
            from petflare.inference.predictor import Predictor

            predictor = Predictor.from_folder(
                args.model_dir, device="cpu", threshold=args.threshold
            )
            tag = str(predictor.metadata.get("weights", {}).get("sha256", args.model_dir))
            sources["predicted masks"] = PredictedMasks(predictor, tag)
        if args.masks in ("ground_truth", "both"):
            sources["ground-truth masks"] = "ground_truth"
        training = meta.get("training", {})
        phantom = training.get("phantom_pairs") or {}
        recal = meta.get("recalibration") or {}
        used = seeds_seen(meta)
        if args.seed in used:
            raise PetflareInputError(None, f"seed {args.seed} was used in training ({used})")
        refit = (
            f", refitted on {recal.get('n_calibration')} calibration pairs "
            f"(was {float(recal['previous_temperature']):.3f})"
            if recal.get("previous_temperature") is not None
            else ""
        )
        sections = [
            "# Change-pattern head benchmark",
            "",
            f"Model folder `{args.model_dir}`; head trained on {phantom or training} "
            f"(mode {training.get('mode')}, {training.get('n_heads', 1)} head(s) averaged, "
            f"CT dropout {training.get('ct_dropout', 0.0)}, "
            f"temperature {classifier.temperature:.3f}{refit}). "
            f"Masks: {args.masks.replace('_', ' ')}"
            + (f" (probability cut {args.threshold})" if args.threshold is not None else "")
            + f". Held-out generator seed {args.seed} "
            "(never used in training); classes balanced (patterns cycled).",
            "",
            "Command: `.venv/bin/python scripts/benchmark_pattern.py "
            + " ".join(argv if argv is not None else sys.argv[1:])
            + "`",
            "",
        ]
        raw: dict[str, Any] = {}
        for name in args.sets:
            n = args.n_pairs if name == "main" else args.robust_pairs
            rows = set_rows(args.data_dir, name, n, args.seed, args.workers)
            for source_name, source in sources.items():
                head, rules, timing = evaluate_set(classifier, dm, rows, source)
                raw[f"{name}/{source_name}"] = {
                    "head": head,
                    "rules": rules,
                    "timing": timing,
                    "n_pairs": n,
                }
                sections += set_section(
                    name, training_phantom(meta), source_name, n, head, rules, timing
                )
                if args.out is not None:  # keep what is measured even if a later set fails
                    write_outputs(args.out, sections, raw)
        print("\n".join(sections))
    except PetflareInputError as exc:
        print(f"petflare: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
