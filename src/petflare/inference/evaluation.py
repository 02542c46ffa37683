"""Segmentation evaluation: autoPET metrics of models, predicted masks and baselines.

Typed library code (no Hydra): :func:`dataset_entries` lists the studies of a dataset in any
supported layout, :func:`evaluate_entries` scores methods on them and :func:`write_evaluation`
writes ``metrics.json`` / ``metrics.md``. ``petflare-evaluate`` (``petflare.cli.evaluate``) and
``scripts/benchmark_seg.py`` call these.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from petflare import __version__ as petflare_version
from petflare.constants import PATTERN_TO_INDEX, PATTERNS, Keys
from petflare.errors import PetflareInputError
from petflare.inference.baselines import BASELINE_DESCRIPTIONS, CLASSICAL_BASELINES
from petflare.io import (
    atomic_write_text,
    check_can_write,
    load_autopet,
    load_manifest,
    load_nifti,
    load_nnunet_raw,
    manifest_to_studies,
    same_grid,
    validate_mask,
)
from petflare.io.dicom_labels import load_labelled_study
from petflare.io.study import Study
from petflare.quant import RuleThresholds, classify_pattern_rules, compare_studies
from petflare.training.metrics import (
    LARGE_LESION_DIAMETER_MM,
    ScanMetrics,
    scan_metrics,
    summarize,
)
from petflare.training.pattern_metrics import format_metrics_table, pattern_metrics

if TYPE_CHECKING:
    from petflare.inference.pattern import PatternClassifier

#: Version of the metrics.json layout written by :func:`write_evaluation`.
SCHEMA_VERSION = "1.0"
#: Dataset layouts understood by :func:`dataset_entries` ("auto" detects one of the others).
LAYOUTS = ("auto", "autopet", "nnunet_raw", "manifest")
#: Method names of the two non-baseline sources.
MODEL_METHOD = "model"
PREDICTIONS_METHOD = "predictions"
#: Output file names inside the output folder.
JSON_NAME = "metrics.json"
MARKDOWN_NAME = "metrics.md"
#: Names of the two change-pattern classifiers scored by :func:`evaluate_patterns`.
PATTERN_RULES_METHOD = "rules"
PATTERN_HEAD_METHOD = "head"
_NIFTI_ENDINGS = (".nii.gz", ".nii")

Segmenter = Callable[[Study], np.ndarray]


# --------------------------------------------------------------------------- dataset


def detect_layout(dataset: Path) -> str:
    """Guess the layout: a ``.csv`` file is a manifest, a folder with ``dataset.json`` nnU-Net raw,
    any other folder autoPET."""
    if dataset.is_file() and dataset.suffix.lower() == ".csv":
        return "manifest"
    if dataset.is_dir() and (dataset / "dataset.json").is_file():
        return "nnunet_raw"
    if dataset.is_dir():
        return "autopet"
    raise PetflareInputError(
        dataset, "not found, or neither a folder nor a manifest .csv (dataset=...)"
    )


def case_name(entry: Mapping[str, Any], layout: str) -> str:
    """Name of a case, also the stem of its prediction file: the nnU-Net case name, else
    ``<patient_id>_<study_id>`` (autoPET study folder, manifest baseline / followup)."""
    if layout == "nnunet_raw":
        return str(entry[Keys.STUDY_ID])
    return f"{entry[Keys.PATIENT_ID]}_{entry[Keys.STUDY_ID]}"


def dataset_entries(
    dataset: str | Path,
    layout: str = "auto",
    split: str | None = None,
    channel_roles: Mapping[str | int, str] | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """List the studies of a dataset in any supported layout, each with a ``case`` name.

    Args:
        dataset: autoPET root folder, nnU-Net raw dataset folder, or longitudinal manifest CSV.
        layout: one of :data:`LAYOUTS`.
        split: keep only entries of this split (manifest / nnU-Net ``imagesTs``); None keeps all.
        channel_roles: nnU-Net channel roles, passed to ``load_nnunet_raw``.

    Returns:
        (datalist entries with an added ``case`` key, the resolved layout name).
    """
    path = Path(dataset)
    if layout not in LAYOUTS:
        raise PetflareInputError(path, f"layout {layout!r} is not one of {LAYOUTS}")
    resolved = detect_layout(path) if layout == "auto" else layout
    if resolved == "autopet":
        entries = load_autopet(path)
    elif resolved == "nnunet_raw":
        entries = load_nnunet_raw(path, channel_roles=channel_roles)
    else:
        entries = manifest_to_studies(load_manifest(path))
    if split is not None:
        entries = [e for e in entries if e.get(Keys.SPLIT) == split]
        if not entries:
            raise PetflareInputError(path, f"no study in split {split!r}")
    out = [{**e, "case": case_name(e, resolved)} for e in entries]
    names = [e["case"] for e in out]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PetflareInputError(path, f"case names are not unique: {duplicates[:5]}")
    return out, resolved


def find_prediction(predictions_dir: Path, case: str) -> Path | None:
    """``<predictions_dir>/<case>.nii.gz`` (or ``.nii``) if it exists."""
    for ending in _NIFTI_ENDINGS:
        candidate = predictions_dir / f"{case}{ending}"
        if candidate.is_file():
            return candidate
    return None


def load_prediction(path: Path, study: Study) -> np.ndarray:
    """Read a predicted mask and check that it lies on the study's PET grid (shape and affine)."""
    arr, affine = load_nifti(path)
    if not same_grid(arr.shape, affine, study.shape, study.affine):
        raise PetflareInputError(
            path,
            f"prediction grid (shape {tuple(arr.shape)}, affine {np.round(affine, 3).tolist()}) "
            f"differs from the PET grid (shape {study.shape}, affine "
            f"{np.round(study.affine, 3).tolist()}); predictions must be on the input grid",
        )
    return validate_mask(arr, path)


# --------------------------------------------------------------------------- evaluation


@dataclass
class CaseResult:
    """Metrics of every method on one scan, with the seconds each took to segment it."""

    case: str
    patient_id: str
    study_id: str
    pet: str
    label: str
    shape: tuple[int, int, int]
    voxel_volume_ml: float
    metrics: dict[str, ScanMetrics] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (NaN -> None)."""
        return {
            "case": self.case,
            "patient_id": self.patient_id,
            "study_id": self.study_id,
            "pet": self.pet,
            "label": self.label,
            "shape": list(self.shape),
            "voxel_volume_ml": self.voxel_volume_ml,
            "metrics": {k: m.to_dict() for k, m in self.metrics.items()},
            "seconds": dict(self.seconds),
        }


@dataclass
class Evaluation:
    """Result of :func:`evaluate_entries`: per-scan results, per-method summaries, settings."""

    cases: list[CaseResult]
    summary: dict[str, dict[str, Any]]
    methods: dict[str, str]
    skipped: list[str]
    connectivity: int
    large_lesion_diameter_mm: float
    #: Change-pattern results of :func:`evaluate_patterns` (None when not asked for).
    patterns: dict[str, Any] | None = None


def evaluate_entries(
    entries: Sequence[Mapping[str, Any]],
    *,
    segmenters: Mapping[str, Segmenter] | None = None,
    predictions_dir: str | Path | None = None,
    baselines: Sequence[str] = tuple(CLASSICAL_BASELINES),
    load_ct: bool = False,
    connectivity: int = 18,
    large_lesion_diameter_mm: float = LARGE_LESION_DIAMETER_MM,
    progress: bool = True,
    method_descriptions: Mapping[str, str] | None = None,
) -> Evaluation:
    """Score segmentation methods on labelled studies with the autoPET metrics.

    Args:
        entries: datalist entries (``pet``, ``ct``, ``label``, ``patient_id``, ``study_id`` and a
            ``case`` name used to find prediction files; see :func:`dataset_entries`).
        segmenters: named callables Study -> binary mask on the study grid (e.g. ``{"model":
            predictor.predict}``); timed per scan.
        predictions_dir: folder of predicted masks ``<case>.nii.gz``, scored as ``predictions``.
        baselines: names in :data:`CLASSICAL_BASELINES` to score on the same scans.
        load_ct: read the CT too (needed by PET+CT models; slower).
        connectivity: connected-component connectivity of the metrics (autoPET: 18).
        large_lesion_diameter_mm: size threshold of the large-lesion sensitivity.
        progress: show a tqdm progress bar on stderr.
        method_descriptions: descriptions of the ``segmenters`` for the report.

    Returns:
        An :class:`Evaluation`. Entries without a label are skipped (listed in ``skipped``).

    Raises:
        PetflareInputError: unknown baseline, no labelled study, or prediction files missing
            (all listed) or not on the PET grid.
    """
    segmenters = dict(segmenters or {})
    unknown = [b for b in baselines if b not in CLASSICAL_BASELINES]
    if unknown:
        raise PetflareInputError(
            None, f"unknown baseline(s) {unknown}; choose from {list(CLASSICAL_BASELINES)}"
        )
    labelled = [e for e in entries if e.get(Keys.LABEL)]
    skipped = [str(e["case"]) for e in entries if not e.get(Keys.LABEL)]
    if not labelled:
        raise PetflareInputError(None, "no study with a ground-truth label to evaluate")
    pred_dir = None if predictions_dir is None else Path(predictions_dir)
    pred_files: dict[str, Path] = {}
    if pred_dir is not None:
        if not pred_dir.is_dir():
            raise PetflareInputError(pred_dir, "predictions folder not found")
        missing = []
        for e in labelled:
            found = find_prediction(pred_dir, str(e["case"]))
            if found is None:
                missing.append(f"{e['case']}.nii.gz")
            else:
                pred_files[str(e["case"])] = found
        if missing:
            shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise PetflareInputError(
                pred_dir, f"{len(missing)} prediction file(s) missing: {shown}"
            )

    methods: dict[str, str] = {}
    for name in segmenters:
        methods[name] = (method_descriptions or {}).get(name, name)
    if pred_dir is not None:
        methods[PREDICTIONS_METHOD] = f"predicted masks from {pred_dir}"
    for name in baselines:
        methods[name] = BASELINE_DESCRIPTIONS[name]

    cases: list[CaseResult] = []
    bar = tqdm(labelled, desc="evaluate", unit="scan", disable=not progress, file=sys.stderr)
    for entry in bar:
        case = str(entry["case"])
        bar.set_postfix_str(case, refresh=False)
        study = load_labelled_study(
            entry[Keys.PET],
            entry.get(Keys.CT) if load_ct else None,
            entry[Keys.LABEL],
        )
        assert study.mask is not None  # a label was given
        result = CaseResult(
            case=case,
            patient_id=str(entry[Keys.PATIENT_ID]),
            study_id=str(entry[Keys.STUDY_ID]),
            pet=str(entry[Keys.PET]),
            label=str(entry[Keys.LABEL]),
            shape=study.shape,
            voxel_volume_ml=study.voxel_volume_ml,
        )
        masks: dict[str, tuple[np.ndarray, float]] = {}
        for name, segment in segmenters.items():
            start = time.perf_counter()
            masks[name] = (np.asarray(segment(study)), time.perf_counter() - start)
        if pred_dir is not None:
            masks[PREDICTIONS_METHOD] = (load_prediction(pred_files[case], study), 0.0)
        for name in baselines:
            start = time.perf_counter()
            masks[name] = (CLASSICAL_BASELINES[name](study), time.perf_counter() - start)
        for name, (mask, seconds) in masks.items():
            if mask.shape != study.shape:
                raise ValueError(f"{name} returned shape {mask.shape} for {case} {study.shape}")
            result.metrics[name] = scan_metrics(
                mask, study.mask, study.voxel_volume_ml, connectivity=connectivity
            )
            result.seconds[name] = seconds
        cases.append(result)

    summary = {
        name: summarize(
            [c.metrics[name] for c in cases], large_lesion_diameter_mm=large_lesion_diameter_mm
        )
        for name in methods
    }
    return Evaluation(
        cases=cases,
        summary=summary,
        methods=methods,
        skipped=skipped,
        connectivity=connectivity,
        large_lesion_diameter_mm=large_lesion_diameter_mm,
    )


def evaluate_patterns(
    rows: Sequence[Mapping[str, Any]],
    *,
    classifier: PatternClassifier | None = None,
    rule_thresholds: RuleThresholds | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score the change-pattern label of manifest pairs: rules, and the learned head if given.

    Each pair is compared on its ground-truth masks (``compare_studies``), then labelled by
    ``classify_pattern_rules`` and, with a ``classifier``, by the learned head on the same report,
    so that both are scored side by side with ``pattern_metrics``.

    Args:
        rows: longitudinal manifest rows (``load_manifest``); rows without a ``pattern`` are
            skipped, rows with one need both masks.
        classifier: the learned head (``PatternClassifier.from_folder``), or None (rules only).
        rule_thresholds: thresholds of the rules (defaults when None).
        progress: show a tqdm progress bar on stderr.

    Returns:
        JSON-friendly dict: ``metrics`` (per method), ``pairs`` (truth and predictions per pair)
        and ``skipped`` (patient ids without a pattern).

    Raises:
        PetflareInputError: no row with a pattern, or a labelled row without both masks.
    """
    labelled = [r for r in rows if r.get(Keys.PATTERN)]
    skipped = [str(r[Keys.PATIENT_ID]) for r in rows if not r.get(Keys.PATTERN)]
    if not labelled:
        raise PetflareInputError(None, "patterns=true: no manifest row has a pattern")
    for row in labelled:
        if not row.get(Keys.BASELINE_MASK) or not row.get(Keys.FOLLOWUP_MASK):
            raise PetflareInputError(
                row[Keys.BASELINE_PET],
                f"patient {row[Keys.PATIENT_ID]}: pattern evaluation needs baseline_mask and "
                "followup_mask",
            )
    y_true: list[int] = []
    predicted: dict[str, list[int]] = {PATTERN_RULES_METHOD: []}
    head_probs: list[list[float]] = []
    pairs: list[dict[str, Any]] = []
    bar = tqdm(labelled, desc="patterns", unit="pair", disable=not progress, file=sys.stderr)
    for row in bar:
        baseline = load_labelled_study(
            row[Keys.BASELINE_PET], row.get(Keys.BASELINE_CT), row[Keys.BASELINE_MASK]
        )
        followup = load_labelled_study(
            row[Keys.FOLLOWUP_PET], row.get(Keys.FOLLOWUP_CT), row[Keys.FOLLOWUP_MASK]
        )
        report = compare_studies(baseline, followup, rule_thresholds=rule_thresholds)
        rule_label = classify_pattern_rules(report, rule_thresholds).label
        pair: dict[str, Any] = {
            "patient_id": str(row[Keys.PATIENT_ID]),
            "truth": str(row[Keys.PATTERN]),
            PATTERN_RULES_METHOD: rule_label,
        }
        y_true.append(PATTERN_TO_INDEX[str(row[Keys.PATTERN])])
        predicted[PATTERN_RULES_METHOD].append(PATTERN_TO_INDEX[rule_label])
        if classifier is not None:
            prediction = classifier.predict(baseline, followup, report)
            predicted.setdefault(PATTERN_HEAD_METHOD, []).append(PATTERN_TO_INDEX[prediction.label])
            head_probs.append([float(prediction.probabilities[p]) for p in PATTERNS])
            pair[PATTERN_HEAD_METHOD] = prediction.label
        pairs.append(pair)
    metrics = {
        name: pattern_metrics(
            y_true,
            labels,
            np.asarray(head_probs) if name == PATTERN_HEAD_METHOD else None,
        )
        for name, labels in predicted.items()
    }
    # The head first, as in the "head and rules side by side" table.
    ordered = dict(sorted(metrics.items(), key=lambda kv: kv[0] != PATTERN_HEAD_METHOD))
    return {"metrics": ordered, "pairs": pairs, "skipped": skipped}


# --------------------------------------------------------------------------- reports


def _clean_json(value: Any) -> Any:
    """Replace NaN/Inf by None recursively (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean_json(v) for v in value]
    return value


def evaluation_to_dict(
    evaluation: Evaluation, provenance: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The metrics.json content: schema version, settings, summaries and per-scan metrics."""
    return _clean_json(
        {
            "schema_version": SCHEMA_VERSION,
            "tool": "petflare-evaluate",
            "petflare_version": petflare_version,
            "provenance": dict(provenance or {}),
            "connectivity": evaluation.connectivity,
            "large_lesion_diameter_mm": evaluation.large_lesion_diameter_mm,
            "methods": evaluation.methods,
            "summary": evaluation.summary,
            "skipped_unlabelled": evaluation.skipped,
            "scans": [c.to_dict() for c in evaluation.cases],
            **({} if evaluation.patterns is None else {"patterns": evaluation.patterns}),
        }
    )


def format_metric(value: Any, digits: int = 3) -> str:
    """A metric for a Markdown table: ``digits`` decimals for floats, ``n/a`` for None/NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def summary_markdown_table(evaluation: Evaluation) -> str:
    """Markdown table with one row per method: Dice, FPV, FNV, detection."""
    d = evaluation.large_lesion_diameter_mm
    lines = [
        f"| method | mean Dice | mean FPV (ml) | mean FNV (ml) | sensitivity | "
        f"sensitivity >= {d:g} mm | precision | lesions (>= {d:g} mm) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in evaluation.summary.items():
        lines.append(
            f"| {name} | {format_metric(s['mean_dice'])} | {format_metric(s['mean_fpv_ml'], 2)} | "
            f"{format_metric(s['mean_fnv_ml'], 2)} | {format_metric(s['sensitivity'])} | "
            f"{format_metric(s['sensitivity_large'])} | {format_metric(s['precision'])} | "
            f"{s['n_gt_lesions']} ({s['n_large_gt_lesions']}) |"
        )
    return "\n".join(lines)


def evaluation_markdown(evaluation: Evaluation, title: str = "Segmentation evaluation") -> str:
    """Markdown report: method list, summary table and per-scan Dice / FPV / FNV."""
    names = list(evaluation.methods)
    n_pos = next(iter(evaluation.summary.values()))["n_positive_scans"] if names else 0
    lines = [
        f"# {title}",
        "",
        f"{len(evaluation.cases)} scans ({n_pos} with lesions); autoPET metrics with "
        f"{evaluation.connectivity}-connectivity; mean Dice and FNV over scans with lesions, "
        "FPV over all scans; detection pooled over lesions (sizes as equivalent-sphere "
        "diameter).",
        "",
        "Methods:",
        *[f"- `{n}`: {desc}" for n, desc in evaluation.methods.items()],
        "",
        summary_markdown_table(evaluation),
        "",
        "## Per scan (Dice / FPV ml / FNV ml)",
        "",
        "| case | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for c in evaluation.cases:
        cells = [
            f"{format_metric(c.metrics[n].dice)} / {format_metric(c.metrics[n].fpv_ml, 2)} / "
            f"{format_metric(c.metrics[n].fnv_ml, 2)}"
            for n in names
        ]
        lines.append(f"| {c.case} | " + " | ".join(cells) + " |")
    if evaluation.skipped:
        lines += ["", f"Skipped (no label): {', '.join(evaluation.skipped)}"]
    if evaluation.patterns is not None:
        n_pairs = len(evaluation.patterns["pairs"])
        lines += [
            "",
            "## Change pattern",
            "",
            f"{n_pairs} pairs labelled on their ground-truth masks.",
            "",
            format_metrics_table(evaluation.patterns["metrics"]),
        ]
    return "\n".join(lines) + "\n"


def write_evaluation(
    evaluation: Evaluation,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    provenance: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``metrics.md`` into ``out_dir`` atomically.

    Returns:
        (json path, markdown path).
    """
    out = Path(out_dir)
    json_path, md_path = out / JSON_NAME, out / MARKDOWN_NAME
    check_output_free(out, overwrite)
    text = json.dumps(evaluation_to_dict(evaluation, provenance), indent=2, allow_nan=False)
    atomic_write_text(json_path, text + "\n", overwrite=overwrite)
    atomic_write_text(md_path, evaluation_markdown(evaluation), overwrite=overwrite)
    return json_path, md_path


def check_output_free(out_dir: str | Path, overwrite: bool) -> None:
    """Raise before any work when an output file exists and ``overwrite`` is False."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PetflareInputError(out, "output path exists and is not a folder")
    for name in (JSON_NAME, MARKDOWN_NAME):
        check_can_write(out / name, overwrite)
