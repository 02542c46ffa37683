"""Temperature scaling (Guo et al., ICML 2017) fitted on the validation split, and the ECE.

One scalar T > 0 divides the logits; it changes confidence, never the predicted class. It is
fitted by minimising the negative log-likelihood of the validation logits.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from petflare.training.pattern_metrics import expected_calibration_error

__all__ = ["apply_temperature", "expected_calibration_error", "fit_temperature"]

log = logging.getLogger(__name__)


def fit_temperature(
    logits: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    min_temperature: float = 0.05,
    max_temperature: float = 20.0,
) -> float:
    """Return the temperature minimising validation NLL (bounded search on log T).

    A 1D problem: golden-section search over log T in [log min, log max] is exact enough and
    cannot diverge, unlike LBFGS on a near-separable validation set. When every validation
    pair is classified correctly, the NLL keeps falling as T shrinks (to the lower bound): the
    temperature is then not identifiable from these data, and 1 (no scaling) is returned
    rather than an arbitrarily overconfident model.
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if z.shape[0] == 0:
        return 1.0
    if bool((z.argmax(1) == y).all()):
        log.warning("temperature not identifiable (validation set all correct); keeping T = 1")
        return 1.0

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(z / np.exp(log_t), y))

    lo, hi = np.log(min_temperature), np.log(max_temperature)
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return float(np.exp((lo + hi) / 2.0))


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Calibrated probabilities ``softmax(logits / T)``."""
    return torch.softmax(logits / float(temperature), dim=-1)
