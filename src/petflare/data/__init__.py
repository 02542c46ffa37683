"""MONAI transform pipelines, data sources and the Lightning DataModule for segmentation.

The Lightning-dependent names (:class:`SegmentationDataModule`, :func:`to_monai_items`) are
imported on first use (module ``__getattr__``), so that inference code importing the MONAI
transforms from here does not pay for importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from petflare.data.sources import (
    AutopetSource,
    BlobSource,
    ConcatSource,
    DataSource,
    ManifestSource,
    NnunetRawSource,
    SyntheticSource,
)
from petflare.data.transforms import (
    AugmentationConfig,
    PreprocessingConfig,
    ScaleSuv,
    ScaleSuvd,
    augmentation_transforms,
    load_transforms,
    preprocessing_transforms,
    training_transforms,
    validation_transforms,
)

if TYPE_CHECKING:
    from petflare.data.datamodule import SegmentationDataModule, to_monai_items

#: Names imported lazily, with the submodule that defines them.
_LAZY = {
    "SegmentationDataModule": "petflare.data.datamodule",
    "to_monai_items": "petflare.data.datamodule",
}


def __getattr__(name: str) -> Any:
    """Import the Lightning-dependent names on first access (PEP 562)."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AugmentationConfig",
    "AutopetSource",
    "BlobSource",
    "ConcatSource",
    "DataSource",
    "ManifestSource",
    "NnunetRawSource",
    "PreprocessingConfig",
    "ScaleSuv",
    "ScaleSuvd",
    "SegmentationDataModule",
    "SyntheticSource",
    "augmentation_transforms",
    "load_transforms",
    "preprocessing_transforms",
    "to_monai_items",
    "training_transforms",
    "validation_transforms",
]
