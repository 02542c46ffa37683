"""Baseline/follow-up pairs for the change-pattern head: features, caching and a DataModule.

Per pair, the expensive work is done once and cached to disk (``.npz``):

1. quantification and matching with :func:`petflare.quant.compare_studies` (which registers the
   follow-up to the baseline; the registration is kept and reused for every mask variant and
   mask source of a pair),
2. lesion units: every follow-up lesion with the baseline lesions it matches (persisting or
   new) and every resolved baseline lesion; a unit's region is the union of its lesions' masks
   at both time points, on the baseline grid,
3. the baseline and the aligned follow-up resampled onto the segmentation model's grid (RAS,
   the model's spacing, SUV scaled as in training), cropped around the lesions with a margin,
4. encoder features of both scans pooled inside every unit region and the global regions.

Training pairs get extra *mask variants*: the ground-truth masks randomly dilated, eroded or
with small lesions dropped, so the head learns from masks that look like predictions. Because
the pooling is cheap and the encoder runs once per scan, each variant costs one quantification.

The package is split by concern: :mod:`.features` (lesion units and their named features),
:mod:`.regions` (a pair's images and regions on one crop grid), :mod:`.samples` (one pair as
head samples), :mod:`.mask_sources` (where masks come from), :mod:`.datasets` (Dataset and
batching), :mod:`.cache` (the on-disk feature cache and its workers) and :mod:`.datamodule`.
The names below are the public interface; import them from here.
"""

from __future__ import annotations

from petflare.data.longitudinal.cache import (
    RowTask,
    weights_digest,
)
from petflare.data.longitudinal.datamodule import (
    LongitudinalDataModule,
    MaskVariants,
    PairFeatures,
    PhantomPairs,
    Sampling,
)
from petflare.data.longitudinal.datasets import (
    PairSampleDataset,
    class_weights,
    collate_samples,
    without_ct,
)
from petflare.data.longitudinal.features import (
    CT_FEATURE_COLUMNS,
    CT_FEATURE_NAMES,
    FEATURE_VERSION,
    HEAD_LESION_FEATURE_NAMES,
    HOT_EXTENT,
    LESION_FEATURE_INDEX,
    LESION_FEATURE_NAMES,
    PAIR_FEATURE_NAMES,
    REGION_PET_FEATURE_NAMES,
    REPORT_VERSION,
    RISE_LOG,
    SHELL_MM,
    HeadKeys,
    LesionUnit,
    lesion_units,
    pair_feature_vector,
)
from petflare.data.longitudinal.mask_sources import (
    MaskSource,
    MissedNoduleMasks,
    PredictedMasks,
    perturb_labels,
)
from petflare.data.longitudinal.regions import (
    PairImages,
    RegionChange,
    crop_grid,
    followup_on_baseline,
    pair_images,
    peak_filtered,
    region_change_stats,
    registration_matrix,
    scale_channels,
    shell_voxels,
    unit_masks_on,
)
from petflare.data.longitudinal.samples import (
    PairSample,
    compare_pair,
    compute_row_samples,
    encode_pair,
    load_row_studies,
    pair_samples,
    sample_from_features,
    with_mask,
)

__all__ = [
    "CT_FEATURE_COLUMNS",
    "CT_FEATURE_NAMES",
    "FEATURE_VERSION",
    "HEAD_LESION_FEATURE_NAMES",
    "HOT_EXTENT",
    "HeadKeys",
    "LESION_FEATURE_INDEX",
    "LESION_FEATURE_NAMES",
    "LesionUnit",
    "LongitudinalDataModule",
    "MaskSource",
    "MaskVariants",
    "PairFeatures",
    "PhantomPairs",
    "Sampling",
    "MissedNoduleMasks",
    "PAIR_FEATURE_NAMES",
    "PairImages",
    "PairSample",
    "PairSampleDataset",
    "PredictedMasks",
    "REGION_PET_FEATURE_NAMES",
    "REPORT_VERSION",
    "RISE_LOG",
    "RegionChange",
    "RowTask",
    "SHELL_MM",
    "class_weights",
    "collate_samples",
    "compare_pair",
    "compute_row_samples",
    "crop_grid",
    "encode_pair",
    "followup_on_baseline",
    "lesion_units",
    "load_row_studies",
    "pair_feature_vector",
    "pair_images",
    "pair_samples",
    "peak_filtered",
    "perturb_labels",
    "region_change_stats",
    "registration_matrix",
    "sample_from_features",
    "scale_channels",
    "shell_voxels",
    "unit_masks_on",
    "weights_digest",
    "with_mask",
    "without_ct",
]
