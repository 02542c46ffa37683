"""Change-pattern classification metrics (pure numpy): accuracy to calibration, for any classifier.

Used for the learned head and for the rule baseline side by side, so both are scored by exactly
the same code. Class indices follow ``petflare.constants.PATTERNS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

from petflare.constants import PATTERNS


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts ``[true, predicted]`` (rows: truth)."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return cm


def binary_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC via the Mann-Whitney U statistic (ties count half); NaN without both classes."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> float:
    """Top-label expected calibration error with equal-width confidence bins (Guo et al. 2017)."""
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=int)
    if probs.shape[0] == 0:
        return float("nan")
    conf = probs.max(1)
    correct = (probs.argmax(1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def pattern_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    probs: np.ndarray | None = None,
    class_names: Sequence[str] = PATTERNS,
    n_bins: int = 15,
) -> dict[str, Any]:
    """Score a pattern classifier.

    Args:
        y_true: true class indices.
        y_pred: predicted class indices.
        probs: [N, n_classes] predicted probabilities, or None for a classifier without them (the
            rule baseline): AUROC and ECE are then None.
        class_names: names in class-index order.
        n_bins: confidence bins of the ECE.

    Returns:
        JSON-friendly dict: n, accuracy, balanced_accuracy (mean recall over classes present),
        recall / precision per class name (None where undefined), confusion_matrix (rows truth),
        auroc_macro_ovr (mean over classes present with both outcomes), auroc_per_class, ece,
        and the cross-confusion rates flare->nodule and nodule->flare.
    """
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    k = len(class_names)
    cm = confusion_matrix(y_true, y_pred, k)
    support = cm.sum(1)
    predicted = cm.sum(0)
    recall = {
        name: (float(cm[i, i] / support[i]) if support[i] else None)
        for i, name in enumerate(class_names)
    }
    precision = {
        name: (float(cm[i, i] / predicted[i]) if predicted[i] else None)
        for i, name in enumerate(class_names)
    }
    present = [r for r in recall.values() if r is not None]
    out: dict[str, Any] = {
        "n": int(y_true.size),
        "accuracy": float((y_true == y_pred).mean()) if y_true.size else float("nan"),
        "balanced_accuracy": float(np.mean(present)) if present else float("nan"),
        "recall": recall,
        "precision": precision,
        "support": {name: int(support[i]) for i, name in enumerate(class_names)},
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
        "auroc_macro_ovr": None,
        "auroc_per_class": None,
        "ece": None,
    }
    if "diffuse_flare" in class_names and "nodule_within_mass" in class_names:
        fl, no = class_names.index("diffuse_flare"), class_names.index("nodule_within_mass")
        out["flare_called_nodule"] = float(cm[fl, no] / support[fl]) if support[fl] else None
        out["nodule_called_flare"] = float(cm[no, fl] / support[no]) if support[no] else None
    if probs is not None:
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape != (y_true.size, k):
            raise ValueError(f"probs shape {probs.shape} != ({y_true.size}, {k})")
        per_class = {
            name: binary_auroc(probs[:, i], y_true == i) for i, name in enumerate(class_names)
        }
        finite = [v for v in per_class.values() if np.isfinite(v)]
        out["auroc_per_class"] = {n: (v if np.isfinite(v) else None) for n, v in per_class.items()}
        out["auroc_macro_ovr"] = float(np.mean(finite)) if finite else None
        out["ece"] = expected_calibration_error(probs, y_true, n_bins)
    return out


def format_metrics_table(rows: dict[str, dict[str, Any]]) -> str:
    """Markdown table with one row per named result (e.g. ``{"head": m1, "rules": m2}``)."""
    header = (
        "| method | n | accuracy | balanced acc. | recall flare | recall nodule | "
        "flare->nodule | nodule->flare | AUROC (macro OvR) | ECE |"
    )
    lines = [header, "|" + "---|" * 10]

    def fmt(v: Any) -> str:
        return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"

    for name, m in rows.items():
        lines.append(
            f"| {name} | {m['n']} | {fmt(m['accuracy'])} | {fmt(m['balanced_accuracy'])} | "
            f"{fmt(m['recall'].get('diffuse_flare'))} | "
            f"{fmt(m['recall'].get('nodule_within_mass'))} | "
            f"{fmt(m.get('flare_called_nodule'))} | {fmt(m.get('nodule_called_flare'))} | "
            f"{fmt(m['auroc_macro_ovr'])} | {fmt(m['ece'])} |"
        )
    return "\n".join(lines)


def format_confusion_matrix(metrics: dict[str, Any], with_recall: bool = False) -> str:
    """Markdown confusion matrix (rows: truth) from :func:`pattern_metrics`' output.

    With ``with_recall`` a last column gives each class's recall as ``0.88 (7/8)``.
    """
    names = metrics["class_names"]
    cm = np.asarray(metrics["confusion_matrix"], dtype=int)
    extra = " recall |" if with_recall else ""
    n_cols = len(names) + 1 + int(with_recall)
    lines = ["| truth \\ predicted | " + " | ".join(names) + " |" + extra, "|---" * n_cols + "|"]
    for i, name in enumerate(names):
        cells = " | ".join(str(v) for v in cm[i])
        tail = ""
        if with_recall:
            n = int(cm[i].sum())
            tail = f" {cm[i, i] / n:.2f} ({cm[i, i]}/{n}) |" if n else " n/a |"
        lines.append(f"| {name} | {cells} |{tail}")
    return "\n".join(lines)
