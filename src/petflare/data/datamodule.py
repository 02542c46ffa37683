"""Lightning DataModule for lesion segmentation: cached preprocessing, random balanced patches."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from monai.data import CacheDataset, DataLoader

from petflare.constants import Keys
from petflare.data.sources import Datalist, DataSource
from petflare.data.transforms import (
    AugmentationConfig,
    PreprocessingConfig,
    training_transforms,
    validation_transforms,
)
from petflare.errors import PetflareInputError

log = logging.getLogger(__name__)


def to_monai_items(
    entries: Datalist, channels: tuple[str, ...], split: str, with_organs: bool = False
) -> Datalist:
    """Keep the keys the transforms read; refuse entries missing a channel or a label.

    Raises:
        PetflareInputError: an entry lacks the CT while the model uses CT, or lacks a label
            (a negative scan needs an empty mask file, not a missing one). With
            ``with_organs`` an entry's organ label map is kept when it has one; one without
            gets an all-unknown map in the pipeline (:class:`UnknownOrgansd`).
    """
    items: Datalist = []
    keys = (*channels, Keys.LABEL)
    for entry in entries:
        for key in keys:
            if entry.get(key) is None:
                what = "lesion mask" if key == Keys.LABEL else f"{key.upper()} image"
                raise PetflareInputError(
                    entry.get(Keys.PET),
                    f"{split} study {entry.get(Keys.PATIENT_ID)}/{entry.get(Keys.STUDY_ID)} "
                    f"has no {what}",
                )
        item = {key: str(entry[key]) for key in keys}
        if with_organs and entry.get(Keys.ORGANS) is not None:
            item[Keys.ORGANS] = str(entry[Keys.ORGANS])  # absent: unknown, ignored by the loss
        item[Keys.PATIENT_ID] = str(entry.get(Keys.PATIENT_ID))
        item[Keys.STUDY_ID] = str(entry.get(Keys.STUDY_ID))
        items.append(item)
    return items


class SegmentationDataModule(pl.LightningDataModule):
    """Train on random balanced patches, validate on whole preprocessed volumes.

    The deterministic part of the pipeline (load, orient, resample, scale, crop) is cached in
    memory by ``CacheDataset``; only the random part runs every step.

    Args:
        source: where the studies come from (see :mod:`petflare.data.sources`).
        preprocessing: deterministic preprocessing (also stored with an exported model).
        augmentation: patch sampling and augmentation.
        batch_size: volumes per training batch (each gives ``augmentation.num_samples`` patches).
        num_workers: DataLoader worker processes (0 = main process).
        cache_rate: fraction of volumes cached after preprocessing.
        cache_num_workers: threads used to fill the cache.
        with_organs: also load each training study's organ label map (``organs``) for an
            anatomy-aware network (``model.organ_classes``); validation scores lesions only.
    """

    def __init__(
        self,
        source: DataSource,
        preprocessing: PreprocessingConfig,
        augmentation: AugmentationConfig,
        batch_size: int = 2,
        num_workers: int = 0,
        cache_rate: float = 1.0,
        cache_num_workers: int = 1,
        with_organs: bool = False,
    ) -> None:
        super().__init__()
        self.source = source
        self.preprocessing = preprocessing
        self.augmentation = augmentation
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.cache_rate = float(cache_rate)
        self.cache_num_workers = int(cache_num_workers)
        self.with_organs = bool(with_organs)
        self.train_items: Datalist = []
        self.val_items: Datalist = []
        self._train_ds: CacheDataset | None = None
        self._val_ds: CacheDataset | None = None

    def prepare_data(self) -> None:
        """Generate/list the data once (synthetic phantoms are written here on first use)."""
        self.source.datalists()

    def setup(self, stage: str | None = None) -> None:
        """Build the cached datasets (once; Lightning may call this for several stages)."""
        if self._train_ds is not None:
            return
        lists = self.source.datalists()
        channels = self.preprocessing.channels
        self.train_items = to_monai_items(lists["train"], channels, "train", self.with_organs)
        self.val_items = to_monai_items(lists.get("val", []), channels, "val", self.with_organs)
        log.info(
            "%d training and %d validation studies", len(self.train_items), len(self.val_items)
        )
        self._train_ds = CacheDataset(
            self.train_items,
            transform=training_transforms(
                self.preprocessing, self.augmentation, with_organs=self.with_organs
            ),
            cache_rate=self.cache_rate,
            num_workers=self.cache_num_workers,
            progress=False,
        )
        self._val_ds = CacheDataset(
            self.val_items,
            transform=validation_transforms(self.preprocessing, self.with_organs),
            cache_rate=self.cache_rate,
            num_workers=self.cache_num_workers,
            progress=False,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled volumes; MONAI's collate stacks the patches of all volumes in a batch."""
        assert self._train_ds is not None, "call setup() first"
        return DataLoader(
            self._train_ds,
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=len(self._train_ds) > self.batch_size,
        )

    def val_dataloader(self) -> DataLoader | list[Any]:
        """One whole volume per batch (sliding-window inference in the module)."""
        assert self._val_ds is not None, "call setup() first"
        if len(self._val_ds) == 0:
            return []
        return DataLoader(self._val_ds, batch_size=1, shuffle=False, num_workers=0)

    @property
    def describe(self) -> dict[str, Any]:
        """Short description of the training data (recorded in a model folder's metadata)."""
        return {
            "source": type(self.source).__name__,
            "source_args": {
                k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.source).items()
            },
            "n_train_studies": len(self.train_items),
            "n_val_studies": len(self.val_items),
        }
