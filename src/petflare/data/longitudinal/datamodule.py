"""The Lightning DataModule of labelled pairs for the change-pattern head."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler

from petflare.constants import MANIFEST_PATH_COLUMNS, Keys
from petflare.data.longitudinal.cache import (
    RowTask,
    WorkerState,
    cache_key,
    compute_job,
    file_stamp,
    init_worker,
    present,
    weights_digest,
)
from petflare.data.longitudinal.datasets import PairSampleDataset, class_weights, collate_samples
from petflare.data.longitudinal.features import FEATURE_VERSION, REPORT_VERSION
from petflare.data.longitudinal.mask_sources import MaskSource, MissedNoduleMasks
from petflare.data.longitudinal.samples import PairSample, compute_row_samples, load_row_studies
from petflare.data.sources import extra_phantom_set, phantom_set_suffix
from petflare.data.transforms import PreprocessingConfig
from petflare.errors import PetflareInputError
from petflare.io.atomic import atomic_write_text
from petflare.io.study import Study
from petflare.networks.encoder import EncoderFeatures

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- data module


def _set_args(extra: Mapping[str, Any]) -> tuple[int, int, dict[str, Any], list[str] | None]:
    """``(n_pairs, seed, phantom, patterns)`` of a validated extra phantom set."""
    return extra["n_pairs"], extra["seed"], extra["phantom"], extra.get("patterns")


@dataclass(frozen=True)
class PhantomPairs:
    """Phantom pairs generated when there is no manifest (train and val from different seeds).

    Attributes:
        data_dir: where the phantom pairs are generated.
        n_train_pairs, n_val_pairs: pairs per split.
        train_seed, val_seed: generator seeds (must differ).
        phantom: keyword arguments of ``petflare.synth.PhantomConfig``.
        extra_train_sets: more phantom training sets, each ``{n_pairs, seed, phantom}`` with
            its own PhantomConfig overrides (e.g. wider voxel sizes and noise than the main set),
            appended to the training pairs.
        extra_val_sets: more phantom validation sets, the same way, appended to the validation
            pairs (the temperature is fitted on all of them: a calibration set as varied as the
            training data). No seed may serve both splits.
    """

    data_dir: str | Path = "data/phantom_pairs"
    n_train_pairs: int = 40
    n_val_pairs: int = 20
    train_seed: int = 3100
    val_seed: int = 3200
    phantom: Mapping[str, Any] = field(default_factory=dict)
    extra_train_sets: Sequence[Mapping[str, Any]] = ()
    extra_val_sets: Sequence[Mapping[str, Any]] = ()


@dataclass(frozen=True)
class MaskVariants:
    """Which lesion masks each pair is seen with.

    Attributes:
        n_mask_variants: perturbed ground-truth mask variants per training pair.
        val_mask_source: ``"ground_truth"``, or a callable ``study -> mask`` (e.g. a
            ``Predictor.predict``) used for validation pairs.
        train_extra_mask_source: optional callable ``study -> mask`` (the segmentation
            model's own predictions); each training pair gains one more variant computed from
            its masks, so the head also learns from the errors it meets at inference.
        missed_nodule_variant: give each ``nodule_within_mass`` training pair one more variant
            whose follow-up mask lost the nodule (:class:`MissedNoduleMasks`; phantom pairs).
    """

    n_mask_variants: int = 3
    val_mask_source: str | MaskSource = "ground_truth"
    train_extra_mask_source: MaskSource | None = None
    missed_nodule_variant: bool = False


@dataclass(frozen=True)
class PairFeatures:
    """How the pair features are computed (part of the feature cache key, but ``workers``).

    Attributes:
        encoder_scales: encoder levels pooled (None: all).
        margin_mm: margin of the encoder crop around the lesions.
        device: device of the encoder during precomputation.
        workers: processes that generate phantom pairs and compute the pairs missing from the
            cache (each with one thread; they write the cache files one process would). 1
            does everything in this process.
    """

    encoder_scales: Sequence[int] | None = None
    margin_mm: float = 32.0
    device: str = "cpu"
    workers: int = 1


@dataclass(frozen=True)
class Sampling:
    """How training samples are drawn and batched.

    Attributes:
        batch_size: pairs per batch.
        balance: ``"sampler"`` (class-balanced sampling), ``"weights"`` (expose
            ``class_weights`` for the loss) or ``"none"``.
        ct_dropout: probability that a training sample is shown without its CT features (a
            PET-only study); 0 keeps them always.
        seed: seed of the mask perturbations and variant draws.
    """

    batch_size: int = 16
    balance: str = "weights"
    ct_dropout: float = 0.0
    seed: int = 0


class LongitudinalDataModule(pl.LightningDataModule):
    """Labelled baseline/follow-up pairs for the change-pattern head (precomputed features).

    Reads a longitudinal manifest (``patient_id, baseline_pet, baseline_ct, baseline_mask,
    followup_pet, followup_ct, followup_mask, pattern, split``). Without a manifest, phantom
    pairs are generated with :func:`petflare.synth.generate_dataset` (:class:`PhantomPairs`).
    Each pair is quantified, aligned and encoded once; the results are cached under
    ``cache_dir`` keyed by the files, the encoder weights and the settings, so a second run
    reads them back.

    Args:
        segmentation_net: the (frozen) segmentation network whose encoder is used.
        preprocessing: the segmentation model's preprocessing (spacing, SUV scaling, channels).
        cache_dir: folder for the per-pair feature cache.
        manifest: manifest CSV, or several (their rows are read together, e.g. phantom pairs
            and real-background pairs); None generates phantom pairs.
        phantom_pairs: the phantom pairs (when ``manifest`` is None).
        masks: the masks each pair is seen with.
        features: how the pair features are computed.
        sampling: how training samples are drawn and batched.
    """

    def __init__(
        self,
        segmentation_net: nn.Module,
        preprocessing: PreprocessingConfig,
        cache_dir: str | Path,
        manifest: str | Path | Sequence[str | Path] | None = None,
        phantom_pairs: PhantomPairs | None = None,
        masks: MaskVariants | None = None,
        features: PairFeatures | None = None,
        sampling: Sampling | None = None,
    ) -> None:
        super().__init__()
        pairs = phantom_pairs or PhantomPairs()
        masks = masks or MaskVariants()
        features = features or PairFeatures()
        sampling = sampling or Sampling()
        if int(features.workers) < 1:
            raise ValueError(f"workers must be >= 1, got {features.workers}")
        if not 0.0 <= sampling.ct_dropout <= 1.0:
            raise ValueError(f"ct_dropout must be in [0, 1], got {sampling.ct_dropout}")
        if sampling.balance not in ("sampler", "weights", "none"):
            raise ValueError(f"balance must be sampler, weights or none, got {sampling.balance!r}")
        if manifest is None and pairs.train_seed == pairs.val_seed:
            raise ValueError("train_seed and val_seed must differ")
        self.net = segmentation_net.eval()
        self.encoder = EncoderFeatures(segmentation_net, features.encoder_scales).eval()
        self.preprocessing = preprocessing
        self.cache_dir = Path(cache_dir)
        if manifest is None:
            self.manifests: list[Path] = []
        elif isinstance(manifest, (str, Path)):
            self.manifests = [Path(manifest)]
        else:
            self.manifests = [Path(m) for m in manifest]
            if not self.manifests:
                raise ValueError("manifest: an empty list (give null for phantom pairs)")
        self.data_dir = Path(pairs.data_dir)
        self.n_train_pairs = int(pairs.n_train_pairs)
        self.n_val_pairs = int(pairs.n_val_pairs)
        self.train_seed = int(pairs.train_seed)
        self.val_seed = int(pairs.val_seed)
        self.phantom = dict(pairs.phantom or {})
        self.extra_val_sets = [
            extra_phantom_set(e, "validation", {self.train_seed: "training"})
            for e in pairs.extra_val_sets
        ]
        val_seeds = {self.val_seed: "validation"} | {
            e["seed"]: "validation" for e in self.extra_val_sets
        }
        self.extra_train_sets = [
            extra_phantom_set(e, "training", val_seeds) for e in pairs.extra_train_sets
        ]
        if (self.extra_train_sets or self.extra_val_sets) and manifest is not None:
            raise ValueError("extra phantom sets are phantom pairs: not used with a manifest")
        self.n_mask_variants = int(masks.n_mask_variants)
        self.val_mask_source = masks.val_mask_source
        self.train_extra_mask_source = masks.train_extra_mask_source
        self.batch_size = int(sampling.batch_size)
        self.balance = sampling.balance
        scales = features.encoder_scales
        self.encoder_scales = None if scales is None else list(scales)
        self.margin_mm = float(features.margin_mm)
        self.seed = int(sampling.seed)
        self.device = features.device
        self.ct_dropout = float(sampling.ct_dropout)
        if masks.missed_nodule_variant and manifest is not None:
            raise ValueError("missed_nodule_variant needs phantom pairs (their truth records)")
        self.missed_nodule_variant = bool(masks.missed_nodule_variant)
        self.workers = int(features.workers)
        self.datasets: dict[str, PairSampleDataset] = {}
        self._train_pairs: list[int] | None = None
        self._loaded: tuple[str, tuple[Study, Study]] | None = None  # the last pair read

    # -- rows
    def _phantom_set(
        self,
        split: str,
        n: int,
        seed: int,
        phantom: Mapping[str, Any],
        patterns: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """The first ``n`` pairs of one phantom set, generated once into ``data_dir``."""
        from petflare.io import load_manifest
        from petflare.synth import PhantomConfig, generate_dataset

        if n <= 0:
            return []
        suffix = phantom_set_suffix(seed, phantom, patterns)
        folder = self.data_dir / f"{split}_n{n}{suffix}"
        manifest = folder / "manifest.csv"
        # pair i depends only on (seed, i): a larger set of the same seed holds this one
        larger = sorted(
            (int(m.parent.name[len(split) + 2 : -len(suffix)]), m)
            for m in self.data_dir.glob(f"{split}_n*{suffix}/manifest.csv")
            if m.parent.name[len(split) + 2 : -len(suffix)].isdigit()
        )
        larger = [(size, m) for size, m in larger if size >= n]
        if not manifest.is_file() and larger:
            manifest = larger[0][1]
        if not manifest.is_file():
            log.info("generating %d phantom pairs (seed %d) into %s", n, seed, folder)
            manifest = generate_dataset(
                folder,
                n,
                seed,
                config=PhantomConfig(**phantom),
                patterns=patterns,
                overwrite=True,
                workers=self.workers,
            )
        return load_manifest(manifest)[:n]

    def _phantom_rows(self) -> dict[str, list[dict[str, Any]]]:
        train = self._phantom_set("train", self.n_train_pairs, self.train_seed, self.phantom)
        for extra in self.extra_train_sets:
            train += self._phantom_set("train", *_set_args(extra))
        val = self._phantom_set("val", self.n_val_pairs, self.val_seed, self.phantom)
        for extra in self.extra_val_sets:
            val += self._phantom_set("val", *_set_args(extra))
        return {"train": train, "val": val}

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        """Manifest rows per split (``train``, ``val``; ``test`` rows are not used here)."""
        if not self.manifests:
            return self._phantom_rows()
        from petflare.io import load_manifest, split_by_patient

        rows = []
        seen: dict[str, Path] = {}
        for manifest in self.manifests:
            for row in load_manifest(manifest):
                pid = str(row[Keys.PATIENT_ID])
                if row.get(Keys.PATTERN) is None:
                    raise PetflareInputError(manifest, f"patient {pid}: no pattern label")
                if pid in seen and seen[pid] != manifest:
                    raise PetflareInputError(
                        manifest, f"patient {pid} is also in {seen[pid]}: ids must be unique"
                    )
                seen[pid] = manifest
                rows.append(row)
        return split_by_patient(rows, {"train": 0.8, "val": 0.2, "test": 0.0}, seed=self.seed)

    # -- features
    def _settings(self) -> dict[str, Any]:
        return {
            "version": FEATURE_VERSION,
            "reports": REPORT_VERSION,  # features are computed from the quantification
            "weights": weights_digest(self.net),
            "preprocessing": self.preprocessing.to_dict(),
            "scales": self.encoder_scales,
            "margin_mm": self.margin_mm,
        }

    def row_folder(
        self,
        row: Mapping[str, Any],
        n_variants: int,
        mask_source: str | MaskSource,
        seed: int,
        with_encoder: bool = True,
    ) -> Path:
        """Cache folder of one row's samples, keyed by files, encoder, settings and masks.

        With ``with_encoder=False``, the folder of what does not depend on the encoder
        (predicted masks, quantification reports) under ``cache_dir/reports``.
        """
        files = [row.get(k) for k in MANIFEST_PATH_COLUMNS]
        source = (
            mask_source
            if isinstance(mask_source, str)
            else getattr(mask_source, "cache_tag", repr(mask_source))
        )
        key = cache_key(
            {
                "files": [file_stamp(f) for f in files],
                "settings": self._settings() if with_encoder else REPORT_VERSION,
                "n_variants": n_variants,
                "mask_source": source,
                "seed": seed,
                "pattern": row.get(Keys.PATTERN),
            }
        )
        return self.cache_dir / key if with_encoder else self.cache_dir / "reports" / key

    def _cached_paths(
        self, row: Mapping[str, Any], n_variants: int, mask_source: str | MaskSource, seed: int
    ) -> list[Path]:
        folder = self.row_folder(row, n_variants, mask_source, seed)
        return [folder / f"variant{i}.npz" for i in range(n_variants + 1)]

    def is_cached(
        self, row: Mapping[str, Any], n_variants: int, mask_source: str | MaskSource, seed: int
    ) -> bool:
        """Whether :meth:`samples_for_row` would read these samples from the cache."""
        return present(self._cached_paths(row, n_variants, mask_source, seed))

    def warm_cache(self, tasks: Sequence[RowTask], desc: str = "pair features") -> int:
        """Compute the samples of the ``tasks`` missing from the cache, pair by pair.

        Each task is ``(row, n_variants, mask_source, seed)`` as :meth:`samples_for_row` takes
        them. The tasks of one pair run together (its scans' liver search is then done once
        for all its mask sources), in ``workers`` processes when ``workers > 1``; they write
        the same cache files, which :meth:`samples_for_row` then reads. Returns the number of
        tasks computed.
        """
        from tqdm.auto import tqdm

        jobs: dict[str, list[RowTask]] = {}
        for task in tasks:
            if not self.is_cached(*task):
                row = task[0]
                key = json.dumps([row.get(k) for k in MANIFEST_PATH_COLUMNS], default=str)
                jobs.setdefault(key, []).append(task)
        n_tasks = sum(len(job) for job in jobs.values())
        if self.workers <= 1 or len(jobs) < 2:
            for job in tqdm(list(jobs.values()), desc=desc, unit="pair", disable=not jobs):
                for task in job:
                    self.samples_for_row(*task)
            return n_tasks
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # mask sources travel once per worker (a predictor holds a network), tasks by index
        sources: list[str | MaskSource] = []
        indexed_jobs = []
        for job in jobs.values():
            indexed = []
            for row, n_variants, source, seed in job:
                match = next((i for i, s in enumerate(sources) if s is source), None)
                if match is None:
                    sources.append(source)
                    match = len(sources) - 1
                indexed.append((dict(row), int(n_variants), match, int(seed)))
            indexed_jobs.append(indexed)
        state = WorkerState(self._worker_copy(), sources)
        n_proc = min(self.workers, len(indexed_jobs))
        with ProcessPoolExecutor(
            max_workers=n_proc,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_worker,
            initargs=(state,),
        ) as pool:
            futures = [pool.submit(compute_job, job) for job in indexed_jobs]
            try:
                for future in tqdm(
                    as_completed(futures),
                    total=len(futures),
                    desc=f"{desc} ({n_proc} processes)",
                    unit="pair",
                ):
                    future.result()  # a worker's error is raised here, naming its file
            except BaseException:
                # stop at the first error (or Ctrl-C): the pairs not started are dropped
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return n_tasks

    def _worker_copy(self) -> LongitudinalDataModule:
        """This DataModule without its trainer or datasets (what a worker process needs)."""
        import copy

        clone = copy.copy(self)
        clone.trainer = None
        clone.datasets = {}
        clone._loaded = None
        return clone

    def samples_for_row(
        self, row: Mapping[str, Any], n_variants: int, mask_source: str | MaskSource, seed: int
    ) -> list[PairSample]:
        """Cached samples of one manifest row (variant 0, then ``n_variants`` perturbed)."""
        paths = self._cached_paths(row, n_variants, mask_source, seed)
        if present(paths):
            return [PairSample.load(p) for p in paths]
        from petflare.quant.report import registration_from_json, registration_to_json

        registration_path = self.registration_file(row)
        alignment = (
            registration_from_json(registration_path.read_text())
            if registration_path.is_file()
            else None
        )
        registrations: list[Any] = []
        samples = compute_row_samples(
            row,
            self.encoder,
            self.preprocessing,
            n_variants,
            mask_source,
            seed,
            self.device,
            self.margin_mm,
            report_cache=self.row_folder(row, n_variants, mask_source, seed, with_encoder=False),
            studies=self._row_studies(row),
            alignment=alignment,
            registration_out=registrations if alignment is None else None,
        )
        if registrations:
            text = registration_to_json(registrations[0])
            atomic_write_text(registration_path, text, overwrite=True)
        for sample, path in zip(samples, paths, strict=True):
            sample.save(path)
        return samples

    def registration_file(self, row: Mapping[str, Any]) -> Path:
        """Where the registration of a row's scans is kept, keyed by the images and settings.

        It depends on neither the masks nor the encoder, so every mask source of a pair (and
        every later network) reuses the pair's first registration: the same reports as
        registering again (the registration is deterministic), at no cost.
        """
        from petflare.quant import RegistrationConfig

        scans = (Keys.BASELINE_PET, Keys.BASELINE_CT, Keys.FOLLOWUP_PET, Keys.FOLLOWUP_CT)
        key = cache_key(
            {
                "files": [file_stamp(row.get(k)) for k in scans],
                "registration": dataclasses.asdict(RegistrationConfig()),
                "version": REPORT_VERSION,
            }
        )
        return self.cache_dir / "registrations" / f"{key}.json"

    def _row_studies(self, row: Mapping[str, Any]) -> tuple[Study, Study]:
        """The row's studies, loaded once for consecutive calls on the same pair."""
        key = json.dumps([file_stamp(row.get(k)) for k in MANIFEST_PATH_COLUMNS])
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = (key, load_row_studies(row))
        return self._loaded[1]

    def setup(self, stage: str | None = None) -> None:
        """Compute (or read from the cache) the samples of every pair."""
        if self.datasets:
            return
        from tqdm.auto import tqdm

        rows = self.rows()
        train_rows, val_rows = rows.get("train", []), rows.get("val", [])
        # Quantification, registration and encoding take seconds per pair (cached afterwards).
        self.warm_cache(self._setup_tasks(train_rows, val_rows))
        train = [
            self.samples_for_row(r, self.n_mask_variants, "ground_truth", self.seed + i)
            for i, r in enumerate(tqdm(train_rows, desc="pair features (train)", unit="pair"))
        ]

        def add_variant(desc: str, source_for: Callable[[Mapping[str, Any]], Any]) -> None:
            # one more sample per training pair whose source_for(row) is not None
            for r, variants in zip(tqdm(train_rows, desc=desc, unit="pair"), train, strict=True):
                source = source_for(r)
                if source is not None:
                    variants.extend(self.samples_for_row(r, 0, source, 0))

        if self.train_extra_mask_source is not None:
            add_variant(
                "pair features (train, model masks)", lambda r: self.train_extra_mask_source
            )
        if self.missed_nodule_variant:
            add_variant(
                "pair features (train, nodule missed)",
                lambda r: (
                    MissedNoduleMasks.for_row(r)
                    if r.get(Keys.PATTERN) == "nodule_within_mass"
                    else None
                ),
            )
        val = self._val_samples(val_rows)
        self.datasets = {
            "train": PairSampleDataset(
                train, random_variant=True, seed=self.seed, ct_dropout=self.ct_dropout
            ),
            "val": PairSampleDataset(val, random_variant=False),
        }

    def _val_samples(self, val_rows: Sequence[Mapping[str, Any]]) -> list[list[PairSample]]:
        from tqdm.auto import tqdm

        return [
            self.samples_for_row(r, 0, self.val_mask_source, 0)
            for r in tqdm(val_rows, desc="pair features (val)", unit="pair")
        ]

    def setup_validation(self) -> None:
        """Compute (or read from the cache) the validation pairs' samples only, e.g. to refit
        a trained head's temperature; the training split is left unbuilt."""
        if self.datasets:
            return
        val_rows = self.rows().get("val", [])
        self.warm_cache(self._setup_tasks([], val_rows))
        self.datasets = {
            "val": PairSampleDataset(self._val_samples(val_rows), random_variant=False)
        }

    def _setup_tasks(
        self, train_rows: Sequence[Mapping[str, Any]], val_rows: Sequence[Mapping[str, Any]]
    ) -> list[RowTask]:
        """Every (row, n_variants, mask source, seed) that :meth:`setup` reads."""
        tasks: list[RowTask] = [
            (r, self.n_mask_variants, "ground_truth", self.seed + i)
            for i, r in enumerate(train_rows)
        ]
        if self.train_extra_mask_source is not None:
            tasks += [(r, 0, self.train_extra_mask_source, 0) for r in train_rows]
        if self.missed_nodule_variant:
            tasks += [
                (r, 0, MissedNoduleMasks.for_row(r), 0)
                for r in train_rows
                if r.get(Keys.PATTERN) == "nodule_within_mass"
            ]
        return tasks + [(r, 0, self.val_mask_source, 0) for r in val_rows]

    def use_train_pairs(self, indices: Sequence[int] | None) -> None:
        """Train on these training pairs only (None: all), e.g. one fold of a cross-fit.

        Restricts :meth:`train_dataloader` and :meth:`all_train_samples` (pooled-feature path);
        ``datasets["train"]`` keeps every pair. Class weights stay those of all pairs.
        """
        if indices is None:
            self._train_pairs = None
            return
        n = len(self.datasets["train"])
        chosen = sorted({int(i) for i in indices})
        if not chosen or chosen[0] < 0 or chosen[-1] >= n:
            raise ValueError(f"training pair indices must be in [0, {n}), got {list(indices)}")
        self._train_pairs = chosen

    def _train_dataset(self) -> PairSampleDataset:
        ds = self.datasets["train"]
        if self._train_pairs is None:
            return ds
        return PairSampleDataset(
            [ds.variants[i] for i in self._train_pairs],
            random_variant=True,
            seed=self.seed,
            ct_dropout=self.ct_dropout,
        )

    @property
    def class_weights(self) -> np.ndarray | None:
        """Loss weights for ``balance="weights"`` (None otherwise); needs :meth:`setup`."""
        if self.balance != "weights":
            return None
        return class_weights(self.datasets["train"].labels)

    def train_dataloader(self) -> DataLoader:
        ds = self._train_dataset()
        if self.balance == "sampler":
            w = class_weights(ds.labels)[ds.labels]
            sampler = WeightedRandomSampler(
                [float(x) for x in w],
                num_samples=len(ds),
                replacement=True,
                generator=torch.Generator().manual_seed(self.seed),
            )
            return DataLoader(
                ds, batch_size=self.batch_size, sampler=sampler, collate_fn=collate_samples
            )
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=True,
            collate_fn=collate_samples,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def val_dataloader(self) -> DataLoader | list[Any]:
        ds = self.datasets.get("val")
        if ds is None or len(ds) == 0:
            return []
        return DataLoader(ds, batch_size=self.batch_size, shuffle=False, collate_fn=collate_samples)

    def all_train_samples(self) -> list[PairSample]:
        """Every training sample (all variants) of the pairs trained on (see
        :meth:`use_train_pairs`), e.g. to fit the head's input normalisation."""
        return [s for v in self._train_dataset().variants for s in v]
