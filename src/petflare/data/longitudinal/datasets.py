"""Pair samples as a torch Dataset, and their batching."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from petflare.constants import PATTERNS
from petflare.data.longitudinal.features import CT_FEATURE_COLUMNS, HeadKeys
from petflare.data.longitudinal.samples import PairSample

# ----------------------------------------------------------------------------- batching


def collate_samples(samples: Sequence[PairSample]) -> dict[str, torch.Tensor]:
    """Pad a list of samples to the largest lesion count; ``lesion_valid`` marks real lesions."""
    n = max((s.lesion_pooled.shape[0] for s in samples), default=0)
    b = len(samples)
    p = samples[0].global_pooled.shape[1]
    fl = samples[0].lesion_features.shape[1]
    lesion_pooled = torch.zeros(b, n, p)
    lesion_features = torch.zeros(b, n, fl)
    valid = torch.zeros(b, n, dtype=torch.bool)
    for i, s in enumerate(samples):
        k = s.lesion_pooled.shape[0]
        lesion_pooled[i, :k] = torch.from_numpy(s.lesion_pooled)
        lesion_features[i, :k] = torch.from_numpy(s.lesion_features)
        valid[i, :k] = True
    return {
        HeadKeys.LESION_POOLED: lesion_pooled,
        HeadKeys.LESION_FEATURES: lesion_features,
        HeadKeys.LESION_VALID: valid,
        HeadKeys.GLOBAL_POOLED: torch.from_numpy(np.stack([s.global_pooled for s in samples])),
        HeadKeys.PAIR_FEATURES: torch.from_numpy(np.stack([s.pair_features for s in samples])),
        HeadKeys.LABEL: torch.tensor([s.label for s in samples], dtype=torch.long),
    }


def without_ct(sample: PairSample) -> PairSample:
    """A copy of ``sample`` with its CT features zeroed (what a PET-only study gives)."""
    feats = sample.lesion_features.copy()
    feats[:, list(CT_FEATURE_COLUMNS)] = 0.0
    return dataclasses.replace(sample, lesion_features=feats)


class PairSampleDataset(Dataset):
    """Pairs, each with one or more precomputed mask variants; a random variant per access.

    Args:
        variants: per pair, its samples (variant 0 = the pair's own masks).
        random_variant: draw a variant at random (training) or always take variant 0.
        seed: seed of the variant draws.
        ct_dropout: probability that a drawn sample is shown without its CT features (the
            ``CT_FEATURE_NAMES`` columns zeroed, as for a PET-only study), so that a head trained
            on PET/CT still works on PET alone.
    """

    def __init__(
        self,
        variants: Sequence[Sequence[PairSample]],
        random_variant: bool,
        seed: int = 0,
        ct_dropout: float = 0.0,
    ) -> None:
        if not 0.0 <= ct_dropout <= 1.0:
            raise ValueError(f"ct_dropout must be in [0, 1], got {ct_dropout}")
        self.variants = [list(v) for v in variants]
        self.random_variant = random_variant
        self.ct_dropout = float(ct_dropout)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.variants)

    def __getitem__(self, index: int) -> PairSample:
        options = self.variants[index]
        sample = options[0]
        if self.random_variant and len(options) > 1:
            sample = options[int(self.rng.integers(len(options)))]
        if self.ct_dropout > 0 and self.rng.random() < self.ct_dropout:
            sample = without_ct(sample)
        return sample

    @property
    def labels(self) -> np.ndarray:
        """Class index of every pair."""
        return np.array([v[0].label for v in self.variants], dtype=np.int64)


def class_weights(labels: np.ndarray, n_classes: int = len(PATTERNS)) -> np.ndarray:
    """Inverse-frequency class weights normalised to mean 1 (absent classes get weight 1)."""
    counts = np.bincount(labels[labels >= 0], minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n_classes, 1.0)
    return (w / w.mean()).astype(np.float32)
