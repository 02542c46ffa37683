"""Single-scan lesion segmentation with a model folder: load once, predict many studies.

Each study goes through the training preprocessing (RAS orientation, model spacing, SUV/CT
scaling, body crop); the network runs as a Gaussian-blended sliding window; the lesion
probability is then resampled with the study's own affine back onto the study's grid, so the
output lines up voxel for voxel with the input whatever its orientation and spacing.
"""

from __future__ import annotations

import itertools
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer
from monai.transforms import Compose, SpatialResample
from torch import nn

from petflare.constants import ORGAN_TO_INDEX, Keys
from petflare.data.transforms import PreprocessingConfig, preprocessing_transforms
from petflare.errors import PetflareInputError
from petflare.inference.model_folder import InferenceSettings, load_model_folder
from petflare.inference.postprocess import (
    plausible_organs,
    remove_physiological_components,
    remove_small_components,
)
from petflare.io.study import Study
from petflare.networks.segmentation import LESION_CHANNELS, channels_last_input
from petflare.networks.segmentation import channels_last as to_channels_last

#: Subfolder of a lesion-only model folder holding its site network (a model folder itself).
SITES_SUBFOLDER = "sites"

#: The site network places organs by where they lie in the body, so it needs the trunk in view:
#: a study whose field of view spans less than this from head to foot (a tumour crop, a
#: head-and-neck-only scan) gets no organ map from it. The five IBSI sarcoma crops span
#: 157-278 mm; a neck-to-pelvis scan 440 mm.
SITES_MIN_EXTENT_MM = 350.0

#: Organs of the site network's map that are not used: at 8 mm it takes a lesion against a
#: kidney for kidney (own phantom: one retroperitoneal lesion in 20 scans, and a demo pair),
#: while the lesion network's false positives in the real scans' kidneys are under 1 ml.
SITES_UNUSED_ORGANS: tuple[str, ...] = ("kidney",)


def craniocaudal_extent_mm(study: Study) -> float:
    """Head-to-foot length of the study's field of view in mm (world z of its affine, whatever
    the array's axis order)."""
    return float(np.abs(np.asarray(study.affine)[2, :3]) @ np.asarray(study.shape, dtype=float))


@dataclass
class Segmentation:
    """What the Predictor finds in one study, on the study's grid.

    Attributes:
        mask: binary uint8 lesion mask.
        organs: organ label map (uint8, ``petflare.constants.ORGANS`` indices) of an
            anatomy-aware network, else None.
        dropped_physiological: lesions the physiology filter removed, per site.
    """

    mask: np.ndarray
    organs: np.ndarray | None = None
    dropped_physiological: dict[str, int] = field(default_factory=dict)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Predictor:
    """Segment FDG-avid lesions in single studies with one loaded network.

    Args:
        net: network returning (background, lesion) logits.
        preprocessing: the preprocessing the network was trained with.
        inference: sliding-window and post-processing settings.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        tta: average the probabilities over the 8 axis-flip combinations (8x slower).
        sw_batch_size: windows per forward pass.
        min_component_ml: overrides ``inference.min_component_ml`` when given.
        metadata: the model folder's metadata (exposed as ``predictor.metadata``).
        threshold: overrides ``inference.threshold`` (the lesion probability cut) when given.
        channels_last: run the network in the channels-last 3D memory layout; None (default)
            does so on the CPU, where oneDNN's 3D convolutions are faster in it (same
            arithmetic up to the order of floating-point sums; identical masks measured).
        physiology_filter: remove predicted lesions that the organ map puts in brain,
            myocardium, kidney or bladder (``postprocess.PHYSIOLOGICAL_SITES``); None follows
            ``inference.physiology_filter`` (the model folder's setting). No effect without an
            organ map (the network's own organ output, or ``sites``).
        sites: the site network of a lesion-only folder (its ``sites/`` subfolder, an
            anatomy-aware network that sees the whole body at a coarse grid): its organ map is
            the one the physiology filter and the pair logic read (cut to the pieces anatomy
            allows, ``postprocess.plausible_organs``, without :data:`SITES_UNUSED_ORGANS`), for
            studies whose field of view spans at
            least :data:`SITES_MIN_EXTENT_MM` head to foot (none otherwise).
            Ignored for an anatomy-aware network, whose own organ output serves.
    """

    def __init__(
        self,
        net: nn.Module,
        preprocessing: PreprocessingConfig,
        inference: InferenceSettings,
        device: str | torch.device = "auto",
        tta: bool = False,
        sw_batch_size: int = 2,
        min_component_ml: float | None = None,
        metadata: dict[str, Any] | None = None,
        threshold: float | None = None,
        channels_last: bool | None = None,
        physiology_filter: bool | None = None,
        sites: Predictor | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.net = net.to(self.device).eval()
        self.channels_last = self.device.type == "cpu" if channels_last is None else channels_last
        if self.channels_last:
            self.net = to_channels_last(self.net)
        self.preprocessing = preprocessing
        self.inference = (
            inference if threshold is None else replace(inference, threshold=float(threshold))
        )
        self.tta = bool(tta)
        self.min_component_ml = (
            inference.min_component_ml if min_component_ml is None else float(min_component_ml)
        )
        #: everything besides the weights and preprocessing that decides the masks
        self.mask_settings: dict[str, Any] = {
            "threshold": float(self.inference.threshold),
            "min_component_ml": float(self.min_component_ml),
            "tta": self.tta,
        }
        self.metadata = dict(metadata or {})
        if physiology_filter is None:
            physiology_filter = self.inference.physiology_filter
        self.sites = None if self.organ_classes else sites
        if self.sites is not None and not self.sites.organ_classes:
            raise ValueError("the site network has no organ output")
        self.physiology_filter = bool(physiology_filter) and self.has_organs
        if self.has_organs:  # lesion-only networks keep their feature-cache keys
            self.mask_settings["physiology_filter"] = self.physiology_filter
        if self.sites is not None:  # the site network's weights decide the masks too
            weights = self.sites.metadata.get("weights")
            sha = weights.get("sha256") if isinstance(weights, dict) else None
            self.mask_settings["sites"] = str(sha or "sites")
            self.mask_settings["sites_unused"] = ",".join(SITES_UNUSED_ORGANS)
        self._transform = Compose(preprocessing_transforms(preprocessing, with_label=False))
        self._inferer = SlidingWindowInferer(
            roi_size=inference.roi_size_vox,
            sw_batch_size=int(sw_batch_size),
            overlap=inference.overlap,
            mode="gaussian",
            padding_mode="constant",
            cval=0.0,
        )

    @classmethod
    def from_folder(
        cls,
        model_dir: str | Path,
        device: str | torch.device = "auto",
        tta: bool = False,
        sw_batch_size: int = 2,
        min_component_ml: float | None = None,
        threshold: float | None = None,
        channels_last: bool | None = None,
        physiology_filter: bool | None = None,
        sites: bool = True,
    ) -> Predictor:
        """Load a model folder once (weights read with ``weights_only=True``), with its site
        network (``sites/``, :data:`SITES_SUBFOLDER`) when it has one and ``sites`` is on."""
        loaded = load_model_folder(model_dir)
        site_dir = Path(model_dir) / SITES_SUBFOLDER
        site_net = None
        if sites and site_dir.is_dir() and not int(loaded.metadata.get("organ_classes", 0) or 0):
            site_net = cls.from_folder(
                site_dir,
                device=device,
                sw_batch_size=sw_batch_size,
                channels_last=channels_last,
                physiology_filter=False,
                sites=False,
            )
            if not site_net.organ_classes:
                raise PetflareInputError(site_dir, "the site network has no organ output")
        return cls(
            loaded.net,
            loaded.preprocessing,
            loaded.inference,
            device=device,
            tta=tta,
            sw_batch_size=sw_batch_size,
            min_component_ml=min_component_ml,
            metadata=loaded.metadata,
            threshold=threshold,
            channels_last=channels_last,
            physiology_filter=physiology_filter,
            sites=site_net,
        )

    def _inputs(self, study: Study) -> dict[str, MetaTensor]:
        """The study's channels as MetaTensors on the predictor's device (preprocessing, i.e.
        reorientation and resampling of a whole-body volume, then runs there too)."""
        affine = torch.as_tensor(study.affine, dtype=torch.float64)
        items = {
            Keys.PET: MetaTensor(
                torch.as_tensor(study.pet[None], dtype=torch.float32, device=self.device),
                affine=affine,
            )
        }
        if Keys.CT in self.preprocessing.channels:
            if study.ct is None:
                source = study.meta.source.get(Keys.PET) if study.meta.source else None
                raise PetflareInputError(source, "this model needs the CT, but the study has none")
            items[Keys.CT] = MetaTensor(
                torch.as_tensor(
                    np.asarray(study.ct)[None], dtype=torch.float32, device=self.device
                ),
                affine=affine,
            )
        return items

    @property
    def organ_classes(self) -> int:
        """Organ classes of the network's auxiliary organ output (0: a lesion-only network)."""
        return int(self.metadata.get("organ_classes", 0) or 0)

    @property
    def networks_metadata(self) -> list[dict[str, Any]]:
        """The metadata of every network the masks depend on: this one and its site network."""
        return [self.metadata] + ([self.sites.metadata] if self.sites is not None else [])

    @property
    def has_organs(self) -> bool:
        """Whether :meth:`segment` gives an organ map (own organ output or a site network)."""
        return self.organ_classes > 0 or self.sites is not None

    @torch.no_grad()
    def _lesion_probability(self, image: torch.Tensor) -> torch.Tensor:
        """Lesion probability (1, X, Y, Z) on the preprocessed grid, with optional flip TTA
        (on the predictor's device)."""
        return self._probabilities(image)[:1]

    @torch.no_grad()
    def _probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """Lesion probability, then the organ probabilities of an anatomy-aware network
        (``1 + organ_classes`` channels) on the preprocessed grid, with optional flip TTA."""
        batch = image[None].to(self.device)
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else nullcontext()
        )
        flips = (
            [axes for r in range(4) for axes in itertools.combinations((2, 3, 4), r)]
            if self.tta
            else [()]
        )
        total: torch.Tensor | None = None
        with autocast:
            for axes in flips:
                x = torch.flip(batch, axes) if axes else batch
                logits = self._inferer(x, self._network)
                assert isinstance(logits, torch.Tensor)
                logits = logits.float()
                prob = torch.softmax(logits[:, :LESION_CHANNELS], dim=1)[:, 1:2]
                if self.organ_classes:
                    organs = logits[:, LESION_CHANNELS : LESION_CHANNELS + self.organ_classes]
                    prob = torch.cat([prob, torch.softmax(organs, dim=1)], dim=1)
                prob = torch.flip(prob, axes) if axes else prob
                total = prob if total is None else total + prob
        assert total is not None
        return (total / len(flips))[0]

    def _network(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of windows, in the network's memory layout."""
        return self.net(channels_last_input(x) if self.channels_last else x)

    def preprocess(self, study: Study) -> MetaTensor:
        """The network input of a study: channels stacked, RAS, model spacing, body crop."""
        image: MetaTensor = self._transform(self._inputs(study))[Keys.IMAGE]
        return image

    def _model_grid_probability(self, study: Study) -> tuple[torch.Tensor, Any] | None:
        """Lesion probability on the preprocessed grid and that grid's affine, or None when
        nothing is above the body threshold (no lesion possible)."""
        image = self.preprocess(study)
        if min(image.shape[1:]) == 0:
            return None
        return self._lesion_probability(image.as_tensor()), image.affine

    def predict_proba(self, study: Study) -> np.ndarray:
        """Float32 lesion probability on the study's own grid (same shape and affine)."""
        found = self._model_grid_probability(study)
        if found is None:
            return np.zeros(study.shape, dtype=np.float32)
        prob, affine = found
        back = _resample(prob, affine, study.affine, study.shape)
        return np.clip(back.cpu().numpy(), 0.0, 1.0)

    def segment(self, study: Study) -> Segmentation:
        """Lesion mask and, for an anatomy-aware network, the organ map, from one pass.

        With ``physiology_filter`` on (and an organ output), predicted lesions lying in a
        physiological-uptake organ (``postprocess.PHYSIOLOGICAL_SITES``) are removed from the mask
        and counted in ``dropped_physiological``.
        """
        mask = np.zeros(study.shape, dtype=np.uint8)
        organs = np.zeros(study.shape, dtype=np.uint8) if self.has_organs else None
        image = self.preprocess(study)
        if min(image.shape[1:]) == 0:
            return Segmentation(mask, organs)
        probs = self._probabilities(image.as_tensor())
        mask = self._mask(probs[:1], image.affine, study)
        if self.sites is not None:
            if craniocaudal_extent_mm(study) < SITES_MIN_EXTENT_MM:
                return Segmentation(mask, None)  # no body context: no organ map, no filter
            found = self.sites.organ_map(study)
            assert found is not None
            found[np.isin(found, [ORGAN_TO_INDEX[name] for name in SITES_UNUSED_ORGANS])] = 0
            organs = plausible_organs(found, study.affine)
        elif self.organ_classes:
            organs = self._organ_labels(probs, image, study)
        else:
            return Segmentation(mask, None)
        assert organs is not None
        dropped: dict[str, int] = {}
        if self.physiology_filter and mask.any():
            mask, dropped = remove_physiological_components(mask, organs)
        return Segmentation(mask, organs, dropped)

    def _organ_labels(self, probs: torch.Tensor, image: MetaTensor, study: Study) -> np.ndarray:
        """The most probable organ of ``probs`` (lesion channel first) on the study's grid."""
        labels = torch.argmax(probs[1:], dim=0, keepdim=True).float()
        back = _resample(labels, image.affine, study.affine, study.shape, mode="nearest")
        return np.asarray(back.cpu().numpy().round().astype(np.uint8))

    def organ_map(self, study: Study) -> np.ndarray | None:
        """The network's own organ map on the study's grid, without a lesion mask (how a site
        network is read); None for a lesion-only network."""
        if not self.organ_classes:
            return None
        image = self.preprocess(study)
        if min(image.shape[1:]) == 0:
            return np.zeros(study.shape, dtype=np.uint8)
        return self._organ_labels(self._probabilities(image.as_tensor()), image, study)

    def disease_mask(self, study: Study) -> np.ndarray:
        """The lesion mask a pair compares: without the components at physiological sites
        (26-connected, as :mod:`petflare.inference.physiology` splits them in a pair). The
        pattern head's training reads its predicted masks through this, so that it learns on
        what it meets at inference. Equal to :meth:`predict` for a lesion-only network."""
        found = self.segment(study)
        if found.organs is None or not found.mask.any():
            return found.mask
        mask, _ = remove_physiological_components(found.mask, found.organs, connectivity=26)
        return mask

    def predict_organs(self, study: Study) -> np.ndarray | None:
        """The organ label map (uint8, :data:`petflare.constants.ORGANS` indices) on the
        study's grid from the network's organ output (or the site network's), or None for a
        lesion-only network without one.

        The most probable organ on the model grid, carried back by nearest neighbour (the
        organ probabilities of a whole-body scan at its own resolution would not fit memory).
        """
        return self.segment(study).organs

    def predict(self, study: Study) -> np.ndarray:
        """Binary uint8 lesion mask on the study's grid, small components removed (and
        physiological-site lesions, with ``physiology_filter``)."""
        return self.segment(study).mask

    def _mask(self, prob: torch.Tensor, affine: Any, study: Study) -> np.ndarray:
        """The thresholded lesion probability on the study's grid, small components removed.

        Equal to thresholding :meth:`predict_proba`, but only the box of the study's grid that
        can hold a voxel above the threshold is resampled: bilinear interpolation only mixes
        neighbouring voxels, so outside the box (the above-threshold voxels of the model grid
        with a margin of two voxels, mapped onto the study's grid) every value stays below it.
        """
        mask = np.zeros(study.shape, dtype=np.uint8)
        above = torch.nonzero(prob[0] > self.inference.threshold)
        if above.numel() == 0:
            return mask
        lo = torch.clamp(above.min(dim=0).values - 2, min=0).cpu().numpy()
        hi = (above.max(dim=0).values + 3).cpu().numpy()
        hi = np.minimum(hi, np.asarray(prob.shape[1:]))
        src_affine = np.asarray(affine, dtype=np.float64)
        box = _study_box(src_affine, lo, hi, study.affine, study.shape)
        if box is None:
            return mask
        src = prob[:, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        src_affine = _shifted(src_affine, lo)
        out_lo = np.array([b.start for b in box])
        sub_shape = tuple(int(b.stop - b.start) for b in box)
        sub = _resample(src, src_affine, _shifted(study.affine, out_lo), sub_shape)
        mask[box] = (sub.cpu().numpy() > self.inference.threshold).astype(np.uint8)
        mask[box] = remove_small_components(
            mask[box], study.voxel_volume_ml, self.min_component_ml, connectivity=18
        )
        return mask


def _shifted(affine: Any, offset: np.ndarray) -> np.ndarray:
    """Affine of a sub-array starting at voxel ``offset``."""
    out = np.array(affine, dtype=np.float64)
    out[:3, 3] = out[:3, :3] @ np.asarray(offset, dtype=np.float64) + out[:3, 3]
    return out


def _study_box(
    src_affine: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    dst_affine: np.ndarray,
    dst_shape: tuple[int, ...],
) -> tuple[slice, ...] | None:
    """Voxel box of the destination grid covering the source box [lo, hi) (one voxel margin)."""
    corners = np.array(list(itertools.product(*zip(lo - 1, hi, strict=True))), dtype=np.float64)
    world = corners @ src_affine[:3, :3].T + src_affine[:3, 3]
    ijk = (world - dst_affine[:3, 3]) @ np.linalg.inv(dst_affine[:3, :3]).T
    start = np.maximum(np.floor(ijk.min(axis=0)).astype(int) - 1, 0)
    stop = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 2, np.asarray(dst_shape))
    if np.any(stop <= start):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))


def _resample(
    prob: torch.Tensor,
    src_affine: Any,
    dst_affine: Any,
    dst_shape: tuple[int, ...],
    mode: str = "bilinear",
) -> torch.Tensor:
    """(1, X, Y, Z) values on the source grid -> (X', Y', Z') on the destination grid
    (bilinear, or nearest for labels, in float64, so that any storage order of the same grid
    gives the same values; zeros outside), on the tensor's device."""
    src = MetaTensor(prob, affine=torch.as_tensor(np.asarray(src_affine), dtype=torch.float64))
    back = SpatialResample(mode=mode, padding_mode="zeros", dtype=np.float64)(
        src,
        dst_affine=torch.as_tensor(np.asarray(dst_affine), dtype=torch.float64),
        spatial_size=tuple(int(n) for n in dst_shape),
    )
    return torch.as_tensor(back[0]).float()
