"""Where training scans come from: each source returns ``{"train": [...], "val": [...]}``.

A source turns one of the supported layouts (synthetic phantom, autoPET tree, nnU-Net raw
folder, longitudinal manifest) into single-study datalist entries (``patient_id``,
``study_id``, ``pet``, ``ct``, ``label``) split by patient, so the DataModule does not care
where the data lives.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from petflare.constants import MANIFEST_ORGAN_COLUMNS, PATTERNS, Keys
from petflare.errors import PetflareInputError
from petflare.io.layouts import load_autopet, load_manifest, load_nnunet_raw, manifest_to_studies
from petflare.io.splits import split_by_patient

if TYPE_CHECKING:
    from petflare.synth.config import PhantomConfig

log = logging.getLogger(__name__)

Datalist = list[dict[str, Any]]


def extra_phantom_set(
    entry: Mapping[str, Any], split: str, taken: Mapping[int, str]
) -> dict[str, Any]:
    """A validated extra phantom set for ``split``: ``{n_pairs, seed, phantom, patterns}``.

    ``patterns`` (optional) restricts the set to some change patterns, cycled as
    ``generate_dataset`` does (e.g. ``[nodule_within_mass]`` to show a network more of the
    rarest appearance); ``None`` keeps all four, balanced. ``taken`` maps the seeds of the
    other split to its name: a pair must never be in both.
    """
    unknown = set(entry) - {"n_pairs", "seed", "phantom", "patterns"}
    if unknown or "n_pairs" not in entry or "seed" not in entry:
        raise ValueError(
            f"an extra {split} set needs n_pairs and seed (and optional phantom, patterns), "
            f"got {dict(entry)}"
        )
    if int(entry["seed"]) in taken:
        raise ValueError(
            f"extra {split} set seed {entry['seed']} is a {taken[int(entry['seed'])]} seed"
        )
    patterns = entry.get("patterns")
    if patterns is not None:
        patterns = [str(p) for p in patterns]
        bad = [p for p in patterns if p not in PATTERNS]
        if not patterns or bad:
            raise ValueError(
                f"extra {split} set patterns must be some of {list(PATTERNS)}, got {patterns}"
            )
    return {
        "n_pairs": int(entry["n_pairs"]),
        "seed": int(entry["seed"]),
        "phantom": dict(entry.get("phantom") or {}),
        "patterns": patterns,
    }


def phantom_set_suffix(
    seed: int, phantom: Mapping[str, Any], patterns: Sequence[str] | None = None
) -> str:
    """Folder-name suffix of a phantom set: ``_seed<seed>[_<phantom tag>][_patterns-...]``.

    Pair ``i`` of a set depends only on the seed, the phantom settings, the pattern cycle and
    ``i``, so every folder with this suffix holds the same pairs (a larger one holds more).
    """
    from petflare.synth.config import phantom_tag

    tag = phantom_tag(dict(phantom))
    suffix = f"_seed{seed}" + (f"_{tag}" if tag else "")
    if patterns:
        suffix += "_patterns-" + "-".join(patterns)
    return suffix


def _has_organ_maps(manifest: Path) -> bool:
    """Whether a cached phantom set's manifest lists organ label maps (sets since issue 32)."""
    with manifest.open(encoding="utf-8") as fh:
        header = fh.readline().strip().split(",")
    return all(column in header for column in MANIFEST_ORGAN_COLUMNS)


class DataSource(Protocol):
    """Anything that yields the train and validation datalists."""

    def datalists(self) -> dict[str, Datalist]:
        """Return ``{"train": [...], "val": [...]}`` single-study entries."""
        ...


def _split(
    entries: Datalist, fractions: Mapping[str, float] | None, seed: int, what: str
) -> dict[str, Datalist]:
    splits = split_by_patient(entries, fractions=fractions, seed=seed)
    if not splits.get("train"):
        raise PetflareInputError(what, "no training studies after the patient split")
    return {"train": splits["train"], "val": splits.get("val", [])}


class AutopetSource:
    """autoPET / TCIA ``Patient/Study/{SUV,CTres,SEG}.nii.gz`` tree, split by patient."""

    def __init__(
        self,
        root: str | Path,
        fractions: Mapping[str, float] | None = None,
        split_seed: int = 0,
    ) -> None:
        self.root = Path(root)
        self.fractions = None if fractions is None else dict(fractions)
        self.split_seed = int(split_seed)

    def datalists(self) -> dict[str, Datalist]:
        """Train/val datalists (the test split is left out of training)."""
        return _split(load_autopet(self.root), self.fractions, self.split_seed, str(self.root))


class NnunetRawSource:
    """nnU-Net v2 raw dataset folder; channel roles from ``dataset.json`` (or given)."""

    def __init__(
        self,
        root: str | Path,
        channel_roles: Mapping[str | int, str] | None = None,
        fractions: Mapping[str, float] | None = None,
        split_seed: int = 0,
    ) -> None:
        self.root = Path(root)
        self.channel_roles = None if channel_roles is None else dict(channel_roles)
        self.fractions = None if fractions is None else dict(fractions)
        self.split_seed = int(split_seed)

    def datalists(self) -> dict[str, Datalist]:
        """Train/val datalists from ``imagesTr``/``labelsTr``."""
        entries = load_nnunet_raw(self.root, channel_roles=self.channel_roles, include_test=False)
        return _split(entries, self.fractions, self.split_seed, str(self.root))


class ManifestSource:
    """Longitudinal manifest CSV; both timepoints become training scans, ``split`` is kept.

    A manifest may list DICOM studies directly (a PET series folder, an RTSTRUCT ``file#ROI``
    or DICOM SEG mask): they are converted once into ``cache_dir`` (SUV and label NIfTI, as
    ``petflare-convert`` writes them) and the NIfTI copies are trained on.
    """

    def __init__(
        self,
        csv_path: str | Path,
        fractions: Mapping[str, float] | None = None,
        split_seed: int = 0,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.csv_path = Path(csv_path)
        self.fractions = None if fractions is None else dict(fractions)
        self.split_seed = int(split_seed)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)

    def datalists(self) -> dict[str, Datalist]:
        """Train/val datalists; rows without a split are assigned by patient."""
        entries = manifest_to_studies(load_manifest(self.csv_path))
        if any(_is_dicom_entry(e) for e in entries):
            if self.cache_dir is None:
                raise PetflareInputError(
                    self.csv_path,
                    "lists DICOM studies; give the source a cache_dir for their NIfTI copies, "
                    f"or convert the set with petflare-convert manifest={self.csv_path} out=DIR",
                )
            entries = [
                _nifti_entry(e, self.cache_dir) if _is_dicom_entry(e) else e for e in entries
            ]
        return _split(entries, self.fractions, self.split_seed, str(self.csv_path))


def _is_dicom_entry(entry: Mapping[str, Any]) -> bool:
    """True when a datalist entry's PET is a DICOM folder or its label an RTSTRUCT / SEG."""
    from petflare.io.dicom_labels import is_dicom_input

    label = entry.get(Keys.LABEL)
    return Path(str(entry[Keys.PET])).is_dir() or (label is not None and is_dicom_input(label))


def _nifti_entry(entry: Mapping[str, Any], cache_dir: Path) -> dict[str, Any]:
    """The entry with its DICOM PET / labels replaced by NIfTI copies in ``cache_dir``.

    The copy is keyed by the PET and label paths and reused while it exists.
    """
    import hashlib

    from petflare.io import save_nifti
    from petflare.io.dicom_labels import load_labelled_study

    label = entry.get(Keys.LABEL)
    key = hashlib.sha1(f"{entry[Keys.PET]}|{label}".encode()).hexdigest()[:16]
    folder = cache_dir / "dicom" / key
    pet_out, label_out = folder / "suv.nii.gz", folder / "labels.nii.gz"
    if not pet_out.is_file() or (label is not None and not label_out.is_file()):
        study = load_labelled_study(entry[Keys.PET], None, label)
        if study.mask is not None:
            save_nifti(study.mask.astype(np.uint16), study.affine, label_out, overwrite=True)
        save_nifti(study.pet, study.affine, pet_out, overwrite=True, dtype=np.float32)
        log.info("converted DICOM study %s into %s", entry[Keys.PET], folder)
    return {**entry, Keys.PET: str(pet_out), Keys.LABEL: None if label is None else str(label_out)}


class SyntheticSource:
    """Phantom studies generated on first use into ``cache_dir`` (reused afterwards).

    Training and validation sets come from separate generator seeds, so no phantom is in both
    (keep these seeds different from any test seed too). ``extra_train_sets`` adds phantom sets
    generated with other settings (each ``{n_pairs, seed, phantom, patterns}``, e.g. wider
    scanner ranges, or only nodule pairs) to the training split only: a mixture of the default
    phantom and randomised or enriched ones. ``phantom`` is a mapping of PhantomConfig
    overrides or a PhantomConfig (``data=synthetic_v2`` passes phantom v2's).
    """

    def __init__(
        self,
        cache_dir: str | Path,
        n_train_pairs: int = 8,
        n_val_pairs: int = 2,
        train_seed: int = 1000,
        val_seed: int = 2000,
        phantom: Mapping[str, Any] | PhantomConfig | None = None,
        workers: int = 1,
        extra_train_sets: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        from petflare.synth.config import PhantomConfig, phantom_overrides

        if train_seed == val_seed:
            raise ValueError("train_seed and val_seed must differ (no phantom in both splits)")
        taken = {int(val_seed): "validation", int(train_seed): "training"}
        self.extra_train_sets = [extra_phantom_set(e, "training", taken) for e in extra_train_sets]
        seeds = [e["seed"] for e in self.extra_train_sets]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"extra training sets need distinct seeds, got {seeds}")
        self.cache_dir = Path(cache_dir)
        self.n_train_pairs = int(n_train_pairs)
        self.n_val_pairs = int(n_val_pairs)
        self.train_seed = int(train_seed)
        self.val_seed = int(val_seed)
        # a PhantomConfig (e.g. the synth/v2 preset, data=synthetic_v2) counts by its overrides
        self.phantom = (
            phantom_overrides(phantom)
            if isinstance(phantom, PhantomConfig)
            else dict(phantom or {})
        )
        self.workers = int(workers)

    def _generate(
        self,
        split: str,
        n_pairs: int,
        seed: int,
        phantom: Mapping[str, Any],
        patterns: Sequence[str] | None = None,
    ) -> Datalist:
        from petflare.synth import PhantomConfig, generate_dataset

        suffix = phantom_set_suffix(seed, phantom, patterns)
        folder = self.cache_dir / f"{split}_n{n_pairs}{suffix}"
        manifest = folder / "manifest.csv"
        if not manifest.is_file() or not _has_organ_maps(manifest):
            # a set cached before the phantom wrote organ maps is made again, with them
            log.info("generating %d phantom pairs (seed %d) into %s", n_pairs, seed, folder)
            config = PhantomConfig(**phantom)
            manifest = generate_dataset(
                folder,
                n_pairs,
                seed,
                config=config,
                patterns=patterns,
                overwrite=True,
                workers=self.workers,
            )
        entries = manifest_to_studies(load_manifest(manifest))
        for entry in entries:
            entry[Keys.SPLIT] = split
        return entries

    def datalists(self) -> dict[str, Datalist]:
        """Generate (once) and list the train and val phantom studies."""
        out = {"train": self._generate("train", self.n_train_pairs, self.train_seed, self.phantom)}
        for extra in self.extra_train_sets:
            out["train"] += self._generate(
                "train", extra["n_pairs"], extra["seed"], extra["phantom"], extra["patterns"]
            )
        out["val"] = (
            self._generate("val", self.n_val_pairs, self.val_seed, self.phantom)
            if self.n_val_pairs > 0
            else []
        )
        return out


class BlobSource:
    """Tiny studies with hot spherical lesions, for debug runs and tests (seconds to make).

    Each study is a box of "body" (SUV ~1 with noise, surrounded by air) holding 1-3 spheres of
    SUV 5-12, on a randomly oriented (LPS/RAS/flipped) anisotropic grid, so the pipeline's
    geometry handling is exercised. Not a realistic phantom: use :class:`SyntheticSource`.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        n_train: int = 4,
        n_val: int = 2,
        shape: tuple[int, int, int] = (32, 32, 24),
        seed: int = 0,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.n_train = int(n_train)
        self.n_val = int(n_val)
        self.shape = tuple(int(s) for s in shape)
        self.seed = int(seed)

    def _study(self, folder: Path, rng: np.random.Generator) -> dict[str, Any]:
        from petflare.io.layouts import study_entry
        from petflare.io.nifti import save_nifti

        spacing = rng.uniform(2.0, 4.0, size=3)
        signs = rng.choice([-1.0, 1.0], size=3)
        affine = np.diag([*(spacing * signs), 1.0])
        affine[:3, 3] = rng.uniform(-100.0, 100.0, size=3)
        shape = self.shape
        idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
        world = idx @ affine[:3, :3].T + affine[:3, 3]
        pet = 1.0 + 0.1 * rng.standard_normal(shape)
        pet[:2], pet[-2:] = 0.0, 0.0  # air at two borders
        label = np.zeros(shape, dtype=np.uint8)
        extent_mm = np.asarray(shape) * spacing
        for lesion in range(int(rng.integers(1, 4))):
            centre_vox = rng.uniform(0.3, 0.7, size=3) * (np.asarray(shape) - 1)
            centre = affine[:3, :3] @ centre_vox + affine[:3, 3]
            radius = rng.uniform(0.12, 0.2) * float(extent_mm.min())
            inside = np.linalg.norm(world - centre, axis=-1) <= radius
            pet[inside] = rng.uniform(5.0, 12.0)
            label[inside] = lesion + 1
        pet = np.clip(pet, 0.0, None).astype(np.float32)
        folder.mkdir(parents=True, exist_ok=True)
        pet_path = save_nifti(pet, affine, folder / "SUV.nii.gz", overwrite=True)
        ct = np.where(pet > 0.5, 40.0, -1000.0).astype(np.float32)
        ct_path = save_nifti(ct, affine, folder / "CTres.nii.gz", overwrite=True)
        seg_path = save_nifti(label, affine, folder / "SEG.nii.gz", overwrite=True)
        return study_entry(folder.parent.name, folder.name, pet_path, ct_path, seg_path)

    def datalists(self) -> dict[str, Datalist]:
        """Write (once per call; files are tiny) and list the train and val studies."""
        rng = np.random.default_rng(self.seed)
        out: dict[str, Datalist] = {"train": [], "val": []}
        for split, n in (("train", self.n_train), ("val", self.n_val)):
            for i in range(n):
                entry = self._study(self.cache_dir / f"{split}{i:03d}" / "scan", rng)
                entry[Keys.SPLIT] = split
                out[split].append(entry)
        return out


class ConcatSource:
    """Several sources as one: their training lists joined, validation from the first only.

    E.g. phantoms (which also validate: the same generator every run) plus hybrid scans on
    real backgrounds, whose few backgrounds must stay out of validation to be scored
    leave-one-background-out by the real benchmark instead.
    """

    def __init__(self, sources: Sequence[DataSource] | Mapping[str, DataSource]) -> None:
        # a mapping (named sources, as Hydra configs give them) keeps its order
        self.sources = list(sources.values()) if isinstance(sources, Mapping) else list(sources)
        if not self.sources:
            raise ValueError("ConcatSource needs at least one source")

    def datalists(self) -> dict[str, Datalist]:
        """The first source's lists, plus every other source's training studies."""
        first = self.sources[0].datalists()
        out = {"train": list(first["train"]), "val": list(first.get("val", []))}
        for source in self.sources[1:]:
            out["train"] += source.datalists()["train"]
        return out
