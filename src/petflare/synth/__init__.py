"""Synthetic whole-body FDG-PET/CT phantom with longitudinal GIST-like change patterns.

Public API: :func:`generate_pair` (one patient's baseline + follow-up with ground truth),
:func:`generate_dataset` (an autoPET folder + longitudinal manifest), :class:`PhantomConfig`.
See docs/phantom.md for the anatomy, the image formation and the scenario rules.
"""

from __future__ import annotations

from petflare.synth.config import ALL_ORIENTATIONS, PhantomConfig
from petflare.synth.dataset import generate_dataset, generate_pair, write_manifest

__all__ = [
    "ALL_ORIENTATIONS",
    "PhantomConfig",
    "generate_dataset",
    "generate_pair",
    "write_manifest",
]
