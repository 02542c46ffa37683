"""MONAI transform pipelines, data sources and the Lightning DataModule for segmentation."""

from __future__ import annotations

from petflare.data.datamodule import SegmentationDataModule, to_monai_items
from petflare.data.sources import (
    AutopetSource,
    BlobSource,
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

__all__ = [
    "AugmentationConfig",
    "AutopetSource",
    "BlobSource",
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
