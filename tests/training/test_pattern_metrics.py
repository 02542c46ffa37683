"""Pattern metrics and temperature scaling against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from petflare.constants import PATTERNS
from petflare.training.calibration import apply_temperature, fit_temperature
from petflare.training.pattern_metrics import (
    binary_auroc,
    expected_calibration_error,
    format_confusion_matrix,
    format_metrics_table,
    pattern_metrics,
)


def test_pattern_metrics_hand_example() -> None:
    y_true = [0, 0, 1, 1, 2, 2, 3, 3]
    y_pred = [0, 0, 1, 2, 2, 2, 3, 0]
    m = pattern_metrics(y_true, y_pred)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["balanced_accuracy"] == pytest.approx((1 + 0.5 + 1 + 0.5) / 4)
    assert m["recall"]["diffuse_flare"] == pytest.approx(0.5)
    assert m["precision"]["nodule_within_mass"] == pytest.approx(2 / 3)
    assert m["precision"]["controlled"] == pytest.approx(2 / 3)
    assert m["confusion_matrix"][1][2] == 1
    assert m["flare_called_nodule"] == pytest.approx(0.5)
    assert m["nodule_called_flare"] == pytest.approx(0.0)
    assert m["auroc_macro_ovr"] is None and m["ece"] is None
    assert "| rules | 8 |" in format_metrics_table({"rules": m})


def test_class_never_predicted_has_undefined_precision() -> None:
    m = pattern_metrics([0, 1, 1], [0, 0, 0])
    assert m["precision"]["diffuse_flare"] is None
    assert m["recall"]["nodule_within_mass"] is None
    assert m["balanced_accuracy"] == pytest.approx(0.5)  # mean over the classes present


def test_auroc() -> None:
    assert binary_auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert binary_auroc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    assert np.isnan(binary_auroc(np.array([0.5, 0.2]), np.array([1, 1])))
    probs = np.eye(4)[[0, 1, 2, 3]] * 0.7 + 0.075
    m = pattern_metrics([0, 1, 2, 3], [0, 1, 2, 3], probs)
    assert m["auroc_macro_ovr"] == pytest.approx(1.0)


def test_ece() -> None:
    # all predictions confident 0.9 and 50% right: ECE = 0.4
    probs = np.tile([0.9, 0.1 / 3, 0.1 / 3, 0.1 / 3], (4, 1))
    assert expected_calibration_error(probs, np.array([0, 0, 1, 2])) == pytest.approx(0.4)
    # 75% confident and 75% right: calibrated
    probs = np.tile([0.75, 0.25 / 3, 0.25 / 3, 0.25 / 3], (4, 1))
    assert expected_calibration_error(probs, np.array([0, 0, 0, 1])) == pytest.approx(0.0)


def test_temperature_scaling_fixes_overconfidence() -> None:
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 4, n)
    true_logits = rng.normal(0, 1, (n, 4))
    true_logits[np.arange(n), y] += 1.5
    # the Bayes posterior is softmax(1.5 z), so softmax(4 z / T) is calibrated at T = 4 / 1.5
    overconfident = torch.tensor(true_logits * 4.0)
    t = fit_temperature(overconfident, y)
    assert 2.2 < t < 3.2
    before = expected_calibration_error(torch.softmax(overconfident, -1).numpy(), y)
    after = expected_calibration_error(apply_temperature(overconfident, t).numpy(), y)
    assert after < before / 2
    # argmax unchanged
    assert torch.equal(apply_temperature(overconfident, t).argmax(-1), overconfident.argmax(-1))
    assert len(PATTERNS) == 4


def test_temperature_of_a_separated_validation_set_is_left_at_one() -> None:
    logits = torch.tensor([[4.0, 0.0, 0.0, 0.0], [0.0, 5.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]])
    assert fit_temperature(logits, np.array([0, 1, 2])) == 1.0


def test_confusion_matrix_markdown_rows_are_truth_with_recall() -> None:
    m = pattern_metrics(np.array([0, 0, 1, 2, 3]), np.array([0, 1, 1, 2, 3]))
    lines = format_confusion_matrix(m, with_recall=True).splitlines()
    assert lines[0].endswith("| recall |")
    assert lines[2] == "| controlled | 1 | 1 | 0 | 0 | 0.50 (1/2) |"
    assert lines[3] == "| diffuse_flare | 0 | 1 | 0 | 0 | 1.00 (1/1) |"
    assert "recall" not in format_confusion_matrix(m).splitlines()[0]
