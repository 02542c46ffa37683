"""Synthetic whole-body FDG-PET/CT phantom with longitudinal GIST-like change patterns.

Public API: :func:`generate_pair` (one patient's baseline + follow-up with ground truth),
:func:`generate_dataset` (an autoPET folder + longitudinal manifest), :class:`PhantomConfig`;
:func:`generate_hybrid_dataset` (synthetic lesions in real backgrounds), :class:`HybridConfig`;
:func:`generate_real_pair_dataset` (pairs on real backgrounds), :class:`RealPairConfig`.
See docs/phantom.md for the anatomy, the image formation and the scenario rules.
"""

from __future__ import annotations

from petflare.synth.config import ALL_ORIENTATIONS, PhantomConfig
from petflare.synth.dataset import generate_dataset, generate_pair, write_manifest
from petflare.synth.hybrid import HybridConfig, generate_hybrid_dataset, generate_hybrid_scan
from petflare.synth.real_pairs import RealPairConfig, generate_real_pair, generate_real_pair_dataset

__all__ = [
    "ALL_ORIENTATIONS",
    "HybridConfig",
    "PhantomConfig",
    "RealPairConfig",
    "generate_dataset",
    "generate_hybrid_dataset",
    "generate_hybrid_scan",
    "generate_pair",
    "generate_real_pair",
    "generate_real_pair_dataset",
    "write_manifest",
]
