"""Benchmark of change-pattern calls on pairs built on real FDG-PET backgrounds (issue 34).

The pairs come from ``petflare-real-pairs`` (:mod:`petflare.synth.real_pairs`): the baseline is
a real whole-body scan with its own and inserted lesions, the follow-up applies one pattern plus
physiological nuisance (myocardium, bladder, bowel or brown fat appearing, global SUV level,
repositioning, new noise). Every pair runs the product's path, :func:`petflare.inference.
pipeline.run_pair`: the model folder's own network segments both scans (predicted masks, never
the truth), the pair is registered, quantified and matched; a folder with a pattern head calls
the pattern with it, and the rule-based classifier labels the same pair from the same masks.
With an anatomy-aware network the physiology-aware change logic applies
(:mod:`petflare.inference.physiology`).

Results are reported per real background, each marked "seen" when the model folder's
segmentation network trained on it (hybrid scans), so leave-one-background-out rows are told
apart. A second set of pairs with a physiological-only follow-up (``--physiology``: no disease
change, every nuisance) measures how often such a pair reads ``controlled``.

Example (pairs first, then the benchmark)::

    python scripts/synthesize_real_pairs.py out=data/real_pairs_bench n_pairs=8 seed=500
    python scripts/synthesize_real_pairs.py out=data/real_pairs_physio n_pairs=4 seed=600 \\
        'real_pairs.patterns=[controlled]' 'real_pairs.response_factor=[0.9,1.0]'
    python scripts/benchmark_real_pairs.py --model models/anatomy-unet \\
        --pairs data/real_pairs_bench --physiology data/real_pairs_physio \\
        --out docs/reports/bench_real_pairs.md --overwrite
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from petflare.benchmarks.common import run_report
from petflare.benchmarks.real import used_by_any
from petflare.constants import PATTERN_TO_INDEX, PATTERNS, Keys
from petflare.errors import PetflareInputError
from petflare.training.pattern_metrics import (
    format_confusion_matrix,
    format_metrics_table,
    pattern_metrics,
)

#: Which methods a record may carry.
METHODS = ("head", "rules")
#: A truth focus counts as flagged when a reported rising focus (``PairReport.new_focal_uptake``)
#: lies within this distance of it (mm; about two voxels of the real scans).
FLAG_DISTANCE_MM = 12.0


def background_of(pair_id: str) -> str:
    """The real background of a pair id ``<background>_p<NNNN>``."""
    return pair_id.rsplit("_p", 1)[0]


def read_pairs(folder: str | Path) -> list[dict[str, str]]:
    """The rows of a real-pairs folder's manifest, paths made absolute."""
    from petflare.io.layouts import load_manifest

    manifest = Path(folder) / "manifest.csv"
    if not manifest.is_file():
        raise PetflareInputError(
            manifest, "no manifest.csv: make the pairs with scripts/synthesize_real_pairs.py"
        )
    return [dict(row) for row in load_manifest(manifest)]


def truth_foci(truth: Mapping[str, Any]) -> list[tuple[str, np.ndarray]]:
    """The focal findings of a pair's truth that the follow-up's lesions should hold.

    The nodule of a ``nodule_within_mass`` pair and every new lesion of a ``new_lesions`` pair,
    each as ``(kind, point)`` with ``kind`` ``nodule`` or ``new_lesion`` and the point in the
    follow-up's world (mm): the generator records them in the baseline's world and moves the
    follow-up by ``nuisance.reposition.followup_from_baseline_world``.
    """
    reposition = truth.get("nuisance", {}).get("reposition") or {}
    move = np.asarray(reposition.get("followup_from_baseline_world", np.eye(4)), dtype=float)
    points: list[tuple[str, Sequence[float]]] = []
    for lesion in truth.get("lesions", []):
        if lesion.get("nodule"):
            points.append(("nodule", lesion["nodule"]["centre_world_mm"]))
    for new in truth.get("new_lesions", []):
        points.append(("new_lesion", new["center_world_mm"]))
    return [(kind, (move @ np.r_[np.asarray(p, dtype=float), 1.0])[:3]) for kind, p in points]


def in_mask(mask: np.ndarray, affine: np.ndarray, point_mm: np.ndarray, reach: int = 1) -> bool:
    """Whether a predicted lesion voxel lies within ``reach`` voxels of a world point."""
    voxel = np.linalg.solve(np.asarray(affine, dtype=float), np.r_[point_mm, 1.0])[:3]
    centre = np.round(voxel).astype(int)
    lo = np.maximum(centre - reach, 0)
    hi = np.minimum(centre + reach + 1, mask.shape)
    if np.any(hi <= lo):
        return False
    return bool(np.any(mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] > 0))


def _flag(foci: Sequence[Any], point: np.ndarray) -> dict[str, Any]:
    """Whether a reported rising focus lies within :data:`FLAG_DISTANCE_MM` of a truth point,
    and that focus's baseline site / liver ratio."""
    near = [f for f in foci if np.linalg.norm(np.asarray(f.centre_mm) - point) <= FLAG_DISTANCE_MM]
    if not near:
        return {"flagged": False}
    return {"flagged": True, "baseline_liver_ratio": near[0].baseline_liver_ratio}


def read_truth(truth_dir: Path | None, pair_id: str) -> dict[str, Any] | None:
    """A pair's truth JSON (``<truth_dir>/<pair_id>.json``), or None without one."""
    if truth_dir is None:
        return None
    path = Path(truth_dir) / f"{pair_id}.json"
    if not path.is_file():
        return None
    try:
        payload: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PetflareInputError(path, f"not valid JSON ({exc})") from exc
    return payload


def evaluate_pairs(
    rows: Sequence[Mapping[str, Any]],
    predictor: Any,
    head: Any = None,
    progress: Callable[[str], None] | None = None,
    truth_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Run every pair through :func:`~petflare.inference.pipeline.run_pair`.

    Args:
        rows: manifest rows (``patient_id`` is the pair id, ``pattern`` its truth).
        predictor: the segmentation model (predicted masks).
        head: the folder's pattern head, or None (rules only).
        progress: called with one line per pair.
        truth_dir: the pairs' truth JSONs (``truth/`` of a real-pairs folder); with it each
            record says whether the follow-up's disease lesions hold the nodule and the new
            lesions (:func:`truth_foci`), telling segmentation misses from wrong calls.

    Returns:
        One record per pair: pair id, background, truth, each method's label (and the head's
        probabilities), the physiological sites left out at each visit, how many rising foci
        outside the masks the pair reported (``unsegmented_foci``), the focal truths found in
        the follow-up's lesions or flagged among those foci (``foci``, with ``truth_dir``),
        seconds.
    """
    from petflare.data.longitudinal import load_row_studies
    from petflare.inference.pipeline import run_pair
    from petflare.quant import classify_pattern_rules

    records = []
    for i, row in enumerate(rows, start=1):
        start = time.perf_counter()
        pair_id = str(row[Keys.PATIENT_ID])
        baseline, followup = load_row_studies(row)
        baseline.mask = followup.mask = None  # the truth never reaches the product's path
        result = run_pair(baseline, followup, predictor, pattern_head=head, patient_id=pair_id)
        report = result.pair_report
        assert report is not None
        rules = report.pattern_rules or classify_pattern_rules(report)
        record: dict[str, Any] = {
            "pair_id": pair_id,
            "background": background_of(pair_id),
            "truth": str(row[Keys.PATTERN]),
            "rules": str(rules.label),
            "physiological_sites": {
                "baseline": sorted(report.baseline.physiological_uptake),
                "followup": sorted(report.followup.physiological_uptake),
            },
            "n_lesions": [report.baseline.n_lesions, report.followup.n_lesions],
            "unsegmented_foci": len(report.new_focal_uptake),
            "seconds": round(time.perf_counter() - start, 1),
        }
        truth = read_truth(truth_dir, pair_id)
        if truth is not None:
            follow = result.timepoints["followup"]
            record["foci"] = [
                {
                    "kind": kind,
                    "in_mask": in_mask(follow.instances, follow.study.affine, point),
                    **_flag(report.new_focal_uptake, point),
                }
                for kind, point in truth_foci(truth)
            ]
        pattern = result.pattern
        if pattern is not None and pattern.source == "learned_head":
            record["head"] = pattern.label
            record["probabilities"] = pattern.probabilities
        records.append(record)
        if progress is not None:
            called = record.get("head", record["rules"])
            progress(
                f"[{i}/{len(rows)}] {pair_id}: truth {record['truth']}, called {called} "
                f"(rules {record['rules']}), {record['seconds']:.0f} s"
            )
    return records


def method_metrics(records: Sequence[Mapping[str, Any]], method: str) -> dict[str, Any] | None:
    """:func:`pattern_metrics` of one method over ``records`` (None if no record has it)."""
    have = [r for r in records if method in r]
    if not have:
        return None
    y_true = [PATTERN_TO_INDEX[r["truth"]] for r in have]
    y_pred = [PATTERN_TO_INDEX[r[method]] for r in have]
    probs = None
    if method == "head" and all(r.get("probabilities") for r in have):
        probs = np.array([[r["probabilities"][p] for p in PATTERNS] for r in have])
    return pattern_metrics(y_true, y_pred, probs)


def controlled_rate(records: Sequence[Mapping[str, Any]], method: str) -> tuple[int, int]:
    """How many of ``records`` the method called ``controlled``, of how many it labelled."""
    have = [r for r in records if method in r]
    return sum(r[method] == "controlled" for r in have), len(have)


def _foci_text(record: Mapping[str, Any]) -> str:
    foci = record.get("foci") or []
    if not foci:
        return "-"
    parts = []
    for kind in ("nodule", "new_lesion"):
        got = [f["in_mask"] for f in foci if f["kind"] == kind]
        flagged = [bool(f.get("flagged")) for f in foci if f["kind"] == kind]
        if got:
            parts.append(f"{kind.replace('_', ' ')} {sum(got)}/{len(got)} (flagged {sum(flagged)})")
    return ", ".join(parts)


def format_report(
    model: str,
    records: Sequence[Mapping[str, Any]],
    physiology: Sequence[Mapping[str, Any]],
    seen: Mapping[str, bool],
    command: str,
) -> str:
    """The Markdown report: metrics per method, overall and per background; the confusion
    matrices; the physiological-only set; one line per pair."""
    lines = [
        "# Pattern calls on real-background pairs",
        "",
        f"Model folder `{model}`; predicted masks (the product's path), rules on the same masks.",
        f"Command: `{command}`",
        "",
        "Backgrounds: "
        + ", ".join(
            f"{bg} ({'seen' if seen.get(bg) else 'not seen'} by the segmentation network)"
            for bg in sorted(seen)
        ),
        "",
    ]
    groups: dict[str, list[Mapping[str, Any]]] = {"all": list(records)}
    for bg in sorted({r["background"] for r in records}):
        groups[bg] = [r for r in records if r["background"] == bg]
    for method in METHODS:
        rows = {name: m for name, group in groups.items() if (m := method_metrics(group, method))}
        if not rows:
            continue
        lines += [f"## {method}", "", format_metrics_table(rows), ""]
        lines += [format_confusion_matrix(rows["all"], with_recall=True), ""]
    if physiology:
        lines += ["## Physiological-only follow-ups (target: >= 95 % read `controlled`)", ""]
        for method in METHODS:
            called, n = controlled_rate(physiology, method)
            if n:
                lines.append(f"- {method}: {called} of {n} `controlled` ({100 * called / n:.0f} %)")
        lines.append("")
    foci = [f for r in records for f in r.get("foci", [])]
    if foci:
        lines += ["## Focal truths in the follow-up's predicted lesions", ""]
        for kind, label in (("nodule", "nodules within a mass"), ("new_lesion", "new lesions")):
            got = [f["in_mask"] for f in foci if f["kind"] == kind]
            flagged = [bool(f.get("flagged")) for f in foci if f["kind"] == kind]
            ratios = sorted(
                f["baseline_liver_ratio"]
                for f in foci
                if f["kind"] == kind and f.get("baseline_liver_ratio") is not None
            )
            if got:
                lines.append(
                    f"- {label}: {sum(got)} of {len(got)} lie in a predicted follow-up lesion "
                    "(a call can only rest on what the masks hold); "
                    f"{sum(flagged)} of {len(got)} flagged as rising focal uptake outside the "
                    f"masks (within {FLAG_DISTANCE_MM:g} mm)"
                    + (
                        f", their baseline site {ratios[0]:.2f}-{ratios[-1]:.2f} x the liver"
                        if ratios
                        else ""
                    )
                )
        lines.append("")
    counted = [*records, *physiology]
    if any("unsegmented_foci" in r for r in counted):
        lines += ["## Rising foci reported outside the masks, per set and truth", ""]
        groups_f: dict[str, list[int]] = {}
        for name, group in (("pattern", records), ("physiology", physiology)):
            for r in group:
                key = f"{name}: {r['truth']}"
                groups_f.setdefault(key, []).append(int(r.get("unsegmented_foci", 0)))
        lines += ["| set: truth | pairs | pairs with any | foci |", "|---|---|---|---|"]
        for key, counts in groups_f.items():
            lines.append(
                f"| {key} | {len(counts)} | {sum(c > 0 for c in counts)} | {sum(counts)} |"
            )
        lines.append("")
    lines += [
        "## Pairs",
        "",
        "| pair | set | truth | head | rules | lesions b/f | physiological sites left out "
        "(b / f) | focal truths in mask | rising foci outside masks | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, group in (("pattern", records), ("physiology", physiology)):
        for r in group:
            sites = r["physiological_sites"]
            lines.append(
                f"| {r['pair_id']} | {name} | {r['truth']} | {r.get('head', '-')} | "
                f"{r['rules']} | {r['n_lesions'][0]}/{r['n_lesions'][1]} | "
                f"{', '.join(sites['baseline']) or '-'} / "
                f"{', '.join(sites['followup']) or '-'} | {_foci_text(r)} | "
                f"{r.get('unsegmented_foci', '-')} | {r['seconds']} |"
            )
    raw = {"records": list(records), "physiology": list(physiology)}
    lines += ["", "```json", json.dumps(raw, indent=1, default=str), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python scripts/benchmark_real_pairs.py --help``."""
    from petflare.inference.request import default_model_dir

    p = argparse.ArgumentParser(
        prog="benchmark_real_pairs.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Make the pair folders with scripts/synthesize_real_pairs.py (see the module).",
    )
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the default)")
    p.add_argument("--pairs", type=Path, required=True, help="real-pairs folder (manifest.csv)")
    p.add_argument(
        "--physiology",
        type=Path,
        default=None,
        help="folder of physiological-only pairs",
    )
    p.add_argument("--limit", type=int, default=None, help="use the first N pairs of each folder")
    p.add_argument("--out", type=Path, default=None, help="Markdown report")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    model = args.model or default_model_dir()
    command = "python scripts/benchmark_real_pairs.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )

    def make() -> str:
        from petflare.inference.predictor import Predictor

        rows = read_pairs(args.pairs)[: args.limit]
        physio_rows = read_pairs(args.physiology)[: args.limit] if args.physiology else []
        predictor = Predictor.from_folder(model, device="cpu")
        head = None
        if (Path(model) / "head.pt").is_file():
            from petflare.inference.pattern import PatternClassifier

            head = PatternClassifier.from_folder(model, device="cpu")
        # the folder's network and its site network both count as having seen a background
        metadata = predictor.networks_metadata

        def say(line: str) -> None:
            print(line, file=sys.stderr, flush=True)

        def truth_dir(folder: Path) -> Path | None:
            return folder / "truth" if (folder / "truth").is_dir() else None

        records = evaluate_pairs(rows, predictor, head, say, truth_dir(args.pairs))
        physiology = evaluate_pairs(physio_rows, predictor, head, say)
        backgrounds = {r["background"] for r in [*records, *physiology]}
        seen = {bg: used_by_any(metadata, bg) for bg in backgrounds}
        return format_report(str(model), records, physiology, seen, command)

    return run_report("benchmark_real_pairs", args.out, args.overwrite, make)
