"""MONAI transform pipelines for PET(/CT) lesion segmentation, shared by training and inference.

The deterministic part (orientation, spacing, intensity scaling, body crop) is identical for
training, validation and the Predictor, so a model sees the same inputs everywhere. SUV is not
z-scored like CT: it is a calibrated physical quantity, so it is clipped and compressed (log1p)
with fixed constants that do not depend on the scan. (Liver-referenced SUV, each scan's SUV
rescaled to its PERCIST liver reference first, was measured worse than SUV as measured and
removed: docs/experiments.md, "Liver-referenced SUV".)
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    ConcatItemsd,
    CropForegroundd,
    DeleteItemsd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandomizableTransform,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ResampleToMatchd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
    Transform,
)

from petflare.constants import ORGAN_IGNORE, Keys

#: Channel names a model may be trained on, in the order they are stacked.
CHANNEL_NAMES = (Keys.PET, Keys.CT)

#: Canonical orientation every volume is brought to before resampling (NIfTI RAS+).
CANONICAL_AXCODES = "RAS"

#: Keys of model folders written while liver-referenced SUV existed (2026-11-29 to 2026-12-07):
#: read back and dropped when they say SUV as measured (``suv_reference: none``).
_LEGACY_LIVER_KEYS = ("suv_reference", "liver_level", "liver_scale_range")


@dataclass(frozen=True)
class PreprocessingConfig:
    """Deterministic preprocessing shared by training and inference.

    Attributes:
        channels: input channels in stacking order, ``("pet",)`` or ``("pet", "ct")``.
        spacing_mm: target voxel size (RAS axes) in mm.
        suv_max: SUV values above this are clipped (keeps very hot bladder/brain from dominating).
        suv_log: compress SUV with ``log1p`` (True) or scale linearly by ``suv_max`` (False).
        ct_window_hu: CT window mapped to [-1, 1] (clipped).
        body_suv_threshold: voxels with SUV above this define the body for cropping.
        crop_margin_vox: margin kept around the body bounding box, in voxels.
    """

    channels: tuple[str, ...] = (Keys.PET,)
    spacing_mm: tuple[float, float, float] = (4.0, 4.0, 4.0)
    suv_max: float = 30.0
    suv_log: bool = True
    ct_window_hu: tuple[float, float] = (-1000.0, 1000.0)
    body_suv_threshold: float = 0.05
    crop_margin_vox: int = 4

    def __post_init__(self) -> None:
        channels = tuple(str(c) for c in self.channels)
        if not channels or channels[0] != Keys.PET or any(c not in CHANNEL_NAMES for c in channels):
            raise ValueError(f"channels must be ('pet',) or ('pet', 'ct'), got {channels}")
        if len(set(channels)) != len(channels):
            raise ValueError(f"duplicate channel in {channels}")
        spacing = tuple(float(s) for s in self.spacing_mm)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(f"spacing_mm must be three positive values, got {self.spacing_mm}")
        if self.suv_max <= 0:
            raise ValueError(f"suv_max must be positive, got {self.suv_max}")
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "ct_window_hu", tuple(float(v) for v in self.ct_window_hu))

    @property
    def in_channels(self) -> int:
        """Number of network input channels."""
        return len(self.channels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly representation (stored in a model folder's metadata)."""
        return {
            "channels": list(self.channels),
            "spacing_mm": list(self.spacing_mm),
            "suv_max": self.suv_max,
            "suv_log": self.suv_log,
            "ct_window_hu": list(self.ct_window_hu),
            "body_suv_threshold": self.body_suv_threshold,
            "crop_margin_vox": self.crop_margin_vox,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PreprocessingConfig:
        """Inverse of :meth:`to_dict`; unknown keys are rejected so a typo is not ignored.

        A folder written with liver-referenced SUV (``suv_reference: liver``) is refused: its
        network expects inputs petflare no longer makes.
        """
        values = dict(values)
        if values.get("suv_reference", "none") != "none":
            raise ValueError(
                f"suv_reference={values['suv_reference']!r}: liver-referenced SUV was removed "
                "(measured worse; docs/experiments.md), so this model's inputs cannot be made"
            )
        for key in _LEGACY_LIVER_KEYS:
            values.pop(key, None)
        known = {
            "channels",
            "spacing_mm",
            "suv_max",
            "suv_log",
            "ct_window_hu",
            "body_suv_threshold",
            "crop_margin_vox",
        }
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown preprocessing keys: {sorted(unknown)}")
        return cls(**values)

    def scaled_suv(self, suv: float) -> float:
        """The network-input value of a given SUV (used for thresholds on scaled images)."""
        clipped = min(max(suv, 0.0), self.suv_max)
        return float(np.log1p(clipped)) if self.suv_log else clipped / self.suv_max


class ScaleSuv(Transform):
    """Clip SUV to ``[0, suv_max]`` then apply ``log1p`` (or divide by ``suv_max``).

    Fixed constants rather than per-scan statistics keep SUV's physical meaning: the same SUV
    maps to the same input value in every scan.
    """

    def __init__(self, suv_max: float = 30.0, log: bool = True) -> None:
        self.suv_max = float(suv_max)
        self.log = bool(log)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        out = torch.clamp(img, 0.0, self.suv_max)
        return torch.log1p(out) if self.log else out / self.suv_max


class ScaleSuvd(MapTransform):
    """Dictionary wrapper of :class:`ScaleSuv`."""

    def __init__(
        self,
        keys: KeysCollection,
        suv_max: float = 30.0,
        log: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scaler = ScaleSuv(suv_max, log)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d


class Binarized(MapTransform):
    """Turn an instance-labelled lesion mask into a binary (0/1) float mask."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = (
                (d[key] > 0).to(torch.float32)
                if isinstance(d[key], torch.Tensor)
                else (np.asarray(d[key]) > 0).astype(np.float32)
            )
        return d


class UnknownOrgansd(MapTransform):
    """Give a study without an organ label map one that says "unknown" everywhere.

    The map is ``ORGAN_IGNORE`` on the grid of ``reference_key`` (the lesion label), so the
    organ loss ignores that study while its lesions still train the network (e.g. a hybrid
    scan on a real background nobody has annotated yet).
    """

    def __init__(self, keys: KeysCollection, reference_key: str = Keys.LABEL) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.reference_key = reference_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            if d.get(key) is None:
                reference = d[self.reference_key]
                filled = torch.full_like(torch.as_tensor(reference), float(ORGAN_IGNORE))
                d[key] = (
                    MetaTensor(filled, meta=dict(reference.meta))
                    if isinstance(reference, MetaTensor)
                    else filled
                )
        return d


class AboveThreshold:
    """Picklable foreground selector for ``CropForegroundd`` (a lambda is not picklable)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = float(threshold)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return img > self.threshold


#: The world axes the axis codes refer to: NIfTI RAS+ (x from left to right, y from posterior
#: to anterior, z from inferior to superior).
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def _label_keys(with_label: bool, with_organs: bool) -> list[str]:
    """The label-like keys (nearest-neighbour resampling) a pipeline carries."""
    return ([Keys.LABEL] if with_label else []) + ([Keys.ORGANS] if with_organs else [])


def preprocessing_transforms(
    config: PreprocessingConfig, with_label: bool, with_organs: bool = False
) -> list[Transform]:
    """Deterministic transforms on a dict of channel-first MetaTensors (no file loading).

    Input keys: ``pet`` (SUV), optionally ``ct`` (HU), ``label`` and ``organs`` (an organ
    label map, for an anatomy-aware network). Output keys: ``image`` (stacked, scaled
    channels, RAS, ``spacing_mm``, cropped to the body), ``label`` and ``organs``.
    """
    image_keys = list(config.channels)
    label_keys = _label_keys(with_label, with_organs)
    keys = image_keys + label_keys
    modes = ["bilinear"] * len(image_keys) + ["nearest"] * len(label_keys)
    steps: list[Transform] = [EnsureTyped(keys=keys, dtype=torch.float32, track_meta=True)]
    if Keys.CT in image_keys:
        # CT may come on its own grid; bring it onto the PET grid before anything else.
        steps.append(ResampleToMatchd(keys=Keys.CT, key_dst=Keys.PET, mode="bilinear"))
    steps += [
        # Axis labels given explicitly: NIfTI/RAS+ world axes (MONAI's default is changing).
        Orientationd(keys=keys, axcodes=CANONICAL_AXCODES, labels=RAS_LABELS),
    ]
    steps += [
        Spacingd(
            keys=keys,
            pixdim=config.spacing_mm,
            mode=modes,
            padding_mode="zeros",
            dtype=np.float32,
        ),
        ScaleSuvd(keys=Keys.PET, suv_max=config.suv_max, log=config.suv_log),
    ]
    if Keys.CT in image_keys:
        low, high = config.ct_window_hu
        steps.append(
            ScaleIntensityRanged(
                keys=Keys.CT, a_min=low, a_max=high, b_min=-1.0, b_max=1.0, clip=True
            )
        )
    if with_label:
        steps.append(Binarized(keys=Keys.LABEL))
    steps += [
        ConcatItemsd(keys=image_keys, name=Keys.IMAGE, dim=0),
        DeleteItemsd(keys=image_keys),
        CropForegroundd(
            keys=[Keys.IMAGE, *label_keys],
            source_key=Keys.IMAGE,
            channel_indices=0,  # the PET channel defines the body
            select_fn=AboveThreshold(config.scaled_suv(config.body_suv_threshold)),
            margin=config.crop_margin_vox,
            allow_smaller=True,
        ),
    ]
    return steps


def load_transforms(
    config: PreprocessingConfig, with_label: bool, with_organs: bool = False
) -> list[Transform]:
    """File loading (nibabel, affine kept, channel first) followed by the deterministic steps."""
    keys = list(config.channels) + _label_keys(with_label, with_organs)
    loader = LoadImaged(
        keys=keys,
        reader="NibabelReader",
        ensure_channel_first=True,
        image_only=True,
        squeeze_non_spatial_dims=True,
        allow_missing_keys=with_organs,  # a study may lack its organ map (filled as unknown)
    )
    steps: list[Transform] = [loader]
    if with_organs:
        steps.append(UnknownOrgansd(keys=Keys.ORGANS, reference_key=Keys.LABEL))
    return [*steps, *preprocessing_transforms(config, with_label, with_organs)]


@dataclass(frozen=True)
class AugmentationConfig:
    """Random patch sampling and augmentation for training.

    Attributes:
        patch_size_vox: training patch size in voxels at the model spacing.
        num_samples: patches drawn per volume per visit.
        pos_fraction: fraction of patches centred on lesion voxels (the rest on non-lesion
            voxels with SUV above ``neg_min_suv``).
        neg_min_suv: negative patches are centred where SUV exceeds this; a value above the
            liver's (e.g. 2) centres them on physiological uptake (brain, heart, bladder,
            kidneys), the usual false positives, instead of on plain soft tissue.
        flip_prob: probability of a flip along each axis.
        affine_prob: probability of a small random rotation/scaling.
        rotate_deg: maximum rotation per axis in degrees.
        scale_fraction: maximum relative zoom.
        intensity_prob: probability of each intensity augmentation.
        smooth_prob: probability of an extra Gaussian blur (a scanner with a wider
            point-spread function or stronger post-filter than the training data).
        smooth_sigma_vox: range of that blur's standard deviation, in voxels.
        fov_crop_prob: probability that a patch is cut to a smaller field of view around its
            centre (everything outside set to "no data": SUV 0, CT air, no label), as in
            a tumour-centred crop (IBSI, HECKTOR) or a limited scan range; without it the
            network sees a scan's edge only at the body's surface.
        fov_crop_half_vox: range of that field of view's half-extent from the patch centre,
            drawn for each of the six sides, in voxels.
    """

    patch_size_vox: tuple[int, int, int] = (64, 64, 64)
    num_samples: int = 2
    pos_fraction: float = 0.5
    neg_min_suv: float = 0.05
    flip_prob: float = 0.5
    affine_prob: float = 0.2
    rotate_deg: float = 10.0
    scale_fraction: float = 0.1
    intensity_prob: float = 0.3
    smooth_prob: float = 0.0
    smooth_sigma_vox: tuple[float, float] = (0.25, 0.75)
    fov_crop_prob: float = 0.0
    fov_crop_half_vox: tuple[int, int] = (10, 30)

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size_vox", tuple(int(s) for s in self.patch_size_vox))
        half = tuple(int(h) for h in self.fov_crop_half_vox)
        if len(half) != 2 or not 1 <= half[0] <= half[1]:
            raise ValueError(f"fov_crop_half_vox must be (low, high) >= 1, got {half}")
        object.__setattr__(self, "fov_crop_half_vox", half)
        if not 0.0 <= self.fov_crop_prob <= 1.0:
            raise ValueError(f"fov_crop_prob must be in [0, 1], got {self.fov_crop_prob}")
        sigma = tuple(float(s) for s in self.smooth_sigma_vox)
        if len(sigma) != 2 or not 0.0 <= sigma[0] <= sigma[1]:
            raise ValueError(f"smooth_sigma_vox must be (low, high), got {self.smooth_sigma_vox}")
        object.__setattr__(self, "smooth_sigma_vox", sigma)
        if not 0.0 <= self.pos_fraction <= 1.0:
            raise ValueError(f"pos_fraction must be in [0, 1], got {self.pos_fraction}")


class RandFieldOfViewd(RandomizableTransform, MapTransform):
    """Cut a patch to a random box around its centre, as a tumour-centred crop looks.

    Each of the six sides lies ``half_vox`` (drawn per side) from the patch centre; outside the
    box the image channels take ``image_fill`` (one value per channel: the network input of
    "no data") and the label-like keys ``label_fill`` (one per key), so what is cut away is
    neither seen nor supervised as lesion.
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str,
        image_fill: tuple[float, ...],
        label_fill: tuple[float, ...],
        prob: float,
        half_vox: tuple[int, int],
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.image_key = image_key
        self.image_fill = tuple(float(v) for v in image_fill)
        self.label_fill = tuple(float(v) for v in label_fill)
        self.half_vox = (int(half_vox[0]), int(half_vox[1]))
        self._half = np.zeros((3, 2), dtype=int)

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._half = self.R.randint(self.half_vox[0], self.half_vox[1] + 1, size=(3, 2))

    def _box(self, shape: tuple[int, ...]) -> tuple[slice, ...]:
        out = []
        for axis, size in enumerate(shape):
            centre = size // 2
            low = max(centre - int(self._half[axis, 0]), 0)
            high = min(centre + int(self._half[axis, 1]) + 1, size)
            out.append(slice(low, high))
        return tuple(out)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        box = self._box(tuple(d[self.image_key].shape[1:]))
        others = [k for k in self.key_iterator(d) if k != self.image_key]
        if len(others) != len(self.label_fill):
            raise ValueError(f"label_fill has {len(self.label_fill)} values for keys {others}")
        kept = (slice(None), *box)
        for key, fills in [(self.image_key, self.image_fill)] + [
            (k, (f,)) for k, f in zip(others, self.label_fill, strict=True)
        ]:
            img = d[key]
            out = torch.empty_like(img)
            out[:] = torch.as_tensor(fills, dtype=img.dtype, device=img.device).view(-1, 1, 1, 1)
            out[kept] = img[kept]
            d[key] = out
        return d


def augmentation_transforms(
    aug: AugmentationConfig, config: PreprocessingConfig | None = None, with_organs: bool = False
) -> list[Transform]:
    """Random transforms applied after caching: patch sampling, spatial, intensity."""
    config = config or PreprocessingConfig()
    keys = [Keys.IMAGE, *_label_keys(True, with_organs)]
    rot = float(np.deg2rad(aug.rotate_deg))
    neg_threshold = config.scaled_suv(aug.neg_min_suv)
    return [
        SpatialPadd(keys=keys, spatial_size=aug.patch_size_vox, mode="constant"),
        RandCropByPosNegLabeld(
            keys=keys,
            label_key=Keys.LABEL,
            spatial_size=aug.patch_size_vox,
            pos=aug.pos_fraction,
            neg=1.0 - aug.pos_fraction,
            num_samples=aug.num_samples,
            image_key=Keys.IMAGE,
            # negative patch centres: non-lesion voxels above neg_min_suv (body or hot organs)
            image_threshold=neg_threshold,
        ),
        RandFlipd(keys=keys, prob=aug.flip_prob, spatial_axis=0),
        RandFlipd(keys=keys, prob=aug.flip_prob, spatial_axis=1),
        RandFlipd(keys=keys, prob=aug.flip_prob, spatial_axis=2),
        RandAffined(
            keys=keys,
            prob=aug.affine_prob,
            rotate_range=(rot, rot, rot),
            scale_range=(aug.scale_fraction,) * 3,
            mode=("bilinear",) + ("nearest",) * (len(keys) - 1),
            padding_mode="zeros",
        ),
        RandScaleIntensityd(keys=Keys.IMAGE, factors=0.1, prob=aug.intensity_prob),
        RandShiftIntensityd(keys=Keys.IMAGE, offsets=0.05, prob=aug.intensity_prob),
        RandGaussianNoised(keys=Keys.IMAGE, std=0.02, prob=aug.intensity_prob),
        RandGaussianSmoothd(
            keys=Keys.IMAGE,
            sigma_x=aug.smooth_sigma_vox,
            sigma_y=aug.smooth_sigma_vox,
            sigma_z=aug.smooth_sigma_vox,
            prob=aug.smooth_prob,
        ),
        RandFieldOfViewd(
            keys=keys,
            image_key=Keys.IMAGE,
            # the network input of "no data": SUV 0 and, with a CT channel, air (-1)
            image_fill=tuple(
                config.scaled_suv(0.0) if c == Keys.PET else -1.0 for c in config.channels
            ),
            label_fill=(0.0,) + ((float(ORGAN_IGNORE),) if with_organs else ()),
            prob=aug.fov_crop_prob,
            half_vox=aug.fov_crop_half_vox,
        ),
    ]


def training_transforms(
    config: PreprocessingConfig, aug: AugmentationConfig, with_organs: bool = False
) -> Compose:
    """Full training pipeline (CacheDataset caches up to the first random transform);
    ``with_organs`` carries the organ label map for an anatomy-aware network."""
    return Compose(
        [
            *load_transforms(config, True, with_organs),
            *augmentation_transforms(aug, config, with_organs),
        ]
    )


def validation_transforms(config: PreprocessingConfig, with_organs: bool = False) -> Compose:
    """Whole-volume validation pipeline (deterministic); ``with_organs`` also loads the organ
    label map, for the organ Dice of an anatomy-aware network."""
    return Compose(load_transforms(config, True, with_organs))
