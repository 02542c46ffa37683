"""Longitudinal pairs: lesion units, geometry, mask perturbation, caching and batching.

Tiny pairs are drawn here (a body block with spherical masses on a non-RAS anisotropic grid, the
follow-up shifted and on a different grid) so the tests do not depend on the phantom generator.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from petflare.constants import MANIFEST_COLUMNS, PATTERN_TO_INDEX, PATTERNS, Keys
from petflare.data.longitudinal import (
    CT_FEATURE_COLUMNS,
    HEAD_LESION_FEATURE_NAMES,
    PAIR_FEATURE_NAMES,
    HeadKeys,
    LongitudinalDataModule,
    MaskVariants,
    MissedNoduleMasks,
    PairFeatures,
    PairSample,
    PairSampleDataset,
    PhantomPairs,
    Sampling,
    class_weights,
    collate_samples,
    crop_grid,
    load_row_studies,
    pair_samples,
    perturb_labels,
    without_ct,
)
from petflare.data.transforms import PreprocessingConfig
from petflare.errors import PetflareInputError
from petflare.io.nifti import save_nifti
from petflare.io.study import Study, StudyMeta
from petflare.networks import build_unet
from petflare.networks.encoder import EncoderFeatures
from petflare_testing import make_non_ras_affine

SHAPE = (26, 22, 16)
#: Mass centres (mm, relative to the body centre) and their radius (mm).
CENTRES_MM = ((-22.0, -14.0, -12.0), (24.0, -8.0, 8.0), (-6.0, 18.0, 10.0))
RADIUS_MM = 9.0
BODY_RADII_MM = (50.0, 40.0, 34.0)


def _inside(shape: tuple[int, ...], affine: np.ndarray, centre_mm: np.ndarray, radii: Any) -> Any:
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    return (((world - centre_mm) / np.asarray(radii, float)) ** 2).sum(-1) <= 1.0


def make_pair(pattern: str, seed: int = 0, shift_mm: Any = (6.0, -5.0, 4.0)) -> tuple[Study, Study]:
    """A tiny baseline/follow-up pair showing ``pattern`` (instance masks included).

    Both grids are non-RAS, anisotropic and rotated differently; the patient moved by
    ``shift_mm`` between the scans.
    """
    rng = np.random.default_rng(seed)
    aff_b = make_non_ras_affine((4.0, 4.5, 5.0), rotation_deg=5.0)
    aff_f = make_non_ras_affine((4.2, 4.0, 5.0), rotation_deg=-4.0)
    body_b = aff_b[:3, :3] @ ((np.array(SHAPE) - 1) / 2.0) + aff_b[:3, 3]
    offsets = [np.array(c) + rng.normal(0, 1.5, 3) for c in CENTRES_MM]

    def scan(affine: np.ndarray, body: np.ndarray, suvs: list[float], extra: list[tuple]) -> Study:
        pet = np.zeros(SHAPE) + 0.02 * rng.standard_normal(SHAPE)
        ct = np.full(SHAPE, -1000.0)
        inside = _inside(SHAPE, affine, body, BODY_RADII_MM)
        pet[inside] += 1.0
        ct[inside] = 40.0
        bone = _inside(SHAPE, affine, body + np.array([0.0, 25.0, -5.0]), (8.0, 8.0, 30.0))
        ct[bone] = 500.0
        mask = np.zeros(SHAPE, np.uint8)
        for i, (off, suv) in enumerate(zip(offsets, suvs, strict=True), start=1):
            ball = _inside(SHAPE, affine, body + off, RADIUS_MM)
            pet[ball], ct[ball], mask[ball] = suv, 20.0, i
        for j, (off, r, suv, in_mask) in enumerate(extra):
            ball = _inside(SHAPE, affine, body + off, r)
            pet[ball] = suv
            if in_mask:
                mask[ball & (mask == 0)] = len(suvs) + 1 + j
        meta = StudyMeta(patient_id=f"{pattern}-{seed}")
        return Study(pet.clip(0).astype(np.float32), affine, ct.astype(np.float32), mask, meta)

    base_suv = list(rng.uniform(6, 9, 3))
    base = scan(aff_b, body_b, base_suv, [])
    body_f = body_b + np.asarray(shift_mm, float)
    lower = [s * 0.5 for s in base_suv]
    if pattern == "controlled":
        fol = scan(aff_f, body_f, lower, [])
    elif pattern == "diffuse_flare":
        fol = scan(aff_f, body_f, [s * 1.8 for s in base_suv], [])
    elif pattern == "nodule_within_mass":
        fol = scan(aff_f, body_f, lower, [(offsets[0] + np.array([3.0, 0, 0]), 5.0, 14.0, False)])
    else:
        fol = scan(aff_f, body_f, lower, [(np.array([20.0, 16.0, -14.0]), 7.0, 9.0, True)])
    return base, fol


@pytest.fixture(scope="module")
def encoder() -> EncoderFeatures:
    torch.manual_seed(0)
    return EncoderFeatures(build_unet(channels=(4, 8, 16), strides=(2, 2))).eval()


PRE = PreprocessingConfig(spacing_mm=(4.0, 4.0, 4.0))


def test_pair_samples_units_and_shapes(encoder: EncoderFeatures) -> None:
    base, fol = make_pair("new_lesions")
    samples = pair_samples(base, fol, encoder, PRE, label=3)
    s = samples[0]
    kinds = sorted(u["kind"] for u in s.units)
    assert kinds == ["new", "persisting", "persisting", "persisting"]
    p = 4 * sum(encoder.channels())
    assert s.lesion_pooled.shape == (4, p)
    assert s.lesion_features.shape == (4, len(HEAD_LESION_FEATURE_NAMES))
    assert s.global_pooled.shape == (2, p)
    assert s.pair_features.shape == (len(PAIR_FEATURE_NAMES),)
    assert np.isfinite(s.lesion_pooled).all() and np.isfinite(s.pair_features).all()
    new = next(i for i, u in enumerate(s.units) if u["kind"] == "new")
    feats = dict(zip(HEAD_LESION_FEATURE_NAMES, s.lesion_features[new], strict=True))
    assert feats["present_baseline"] == 0 and feats["present_followup"] == 1
    # the new mass sits where the baseline PET shows background: new uptake, a real new lesion
    assert 0.0 < feats["new_site_uptake_ratio"] < 0.6 and feats["real_new_lesion"] == 1
    persisting = [i for i, u in enumerate(s.units) if u["kind"] == "persisting"]
    j = HEAD_LESION_FEATURE_NAMES.index("new_site_uptake_ratio")
    assert (s.lesion_features[persisting, j] == 0).all()
    assert s.rule_label == "new_lesions" and s.label == 3
    # CT correlates: the new focus and its shell are soft tissue (HU 40) on the follow-up CT
    assert feats["has_ct"] == 1 and feats["hu_followup"] == pytest.approx(0.4, abs=0.05)
    assert feats["followup_shell_hu"] == pytest.approx(0.4, abs=0.15)


def test_pet_only_pair_has_zero_ct_features_and_ct_dropout_matches_it(
    encoder: EncoderFeatures,
) -> None:
    base, fol = make_pair("new_lesions")
    with_ct = pair_samples(base, fol, encoder, PRE)[0]
    base.ct, fol.ct = None, None
    pet_only = pair_samples(base, fol, encoder, PRE)[0]
    cols = list(CT_FEATURE_COLUMNS)
    assert (pet_only.lesion_features[:, cols] == 0).all()
    assert (with_ct.lesion_features[:, cols] != 0).any()
    dropped = without_ct(with_ct)
    np.testing.assert_array_equal(dropped.lesion_features[:, cols], 0.0)
    others = [i for i in range(len(HEAD_LESION_FEATURE_NAMES)) if i not in cols]
    np.testing.assert_array_equal(
        dropped.lesion_features[:, others], with_ct.lesion_features[:, others]
    )
    # ct_dropout 1 always hides the CT, 0 never; about half with 0.5
    always = PairSampleDataset([[with_ct]], random_variant=True, ct_dropout=1.0)
    assert (always[0].lesion_features[:, cols] == 0).all()
    never = PairSampleDataset([[with_ct]], random_variant=True, ct_dropout=0.0)
    np.testing.assert_array_equal(never[0].lesion_features, with_ct.lesion_features)
    half = PairSampleDataset([[with_ct]], random_variant=True, seed=1, ct_dropout=0.5)
    hidden = sum(bool((half[0].lesion_features[:, cols] == 0).all()) for _ in range(200))
    assert 70 < hidden < 130
    with pytest.raises(ValueError, match="ct_dropout"):
        PairSampleDataset([[with_ct]], random_variant=True, ct_dropout=1.5)


def test_flare_raises_uptake_features(encoder: EncoderFeatures) -> None:
    flare = pair_samples(*make_pair("diffuse_flare"), encoder, PRE)[0]
    ctrl = pair_samples(*make_pair("controlled"), encoder, PRE)[0]
    i = HEAD_LESION_FEATURE_NAMES.index("log_suv_max_ratio")
    assert (flare.lesion_features[:, i] > 0.3).all()
    assert (ctrl.lesion_features[:, i] < -0.3).all()


def test_zero_lesions_at_both_timepoints(encoder: EncoderFeatures) -> None:
    base, fol = make_pair("controlled")
    base.mask = np.zeros_like(base.mask)
    fol.mask = np.zeros_like(fol.mask)
    s = pair_samples(base, fol, encoder, PRE)[0]
    assert s.lesion_pooled.shape[0] == 0 and s.units == []
    batch = collate_samples([s, s])
    assert batch[HeadKeys.LESION_VALID].shape == (2, 0)


def test_zero_lesions_at_baseline_only(encoder: EncoderFeatures) -> None:
    base, fol = make_pair("new_lesions")
    base.mask = np.zeros_like(base.mask)
    s = pair_samples(base, fol, encoder, PRE)[0]
    assert {u["kind"] for u in s.units} == {"new"}


def test_crop_grid_is_ras_at_model_spacing_and_covers_points() -> None:
    pts = np.array([[10.0, -50.0, 3.0], [40.0, -20.0, 60.0]])
    shape, affine = crop_grid(pts, (4.0, 3.0, 5.0), margin_mm=8.0, multiple=8)
    assert all(s % 8 == 0 for s in shape)
    np.testing.assert_allclose(affine[:3, :3], np.diag([4.0, 3.0, 5.0]))
    far = affine[:3, :3] @ (np.array(shape) - 1) + affine[:3, 3]
    assert (affine[:3, 3] <= pts.min(0) - 8.0 + 1e-6).all() and (far >= pts.max(0) + 8.0).all()


def test_perturb_labels_keeps_lesions_and_changes_borders() -> None:
    labels = np.zeros((20, 20, 20), np.int64)
    labels[3:9, 3:9, 3:9] = 1
    labels[12:17, 12:17, 12:17] = 2
    labels[1, 18, 18] = 3  # a one-voxel lesion
    changed = 0
    for seed in range(10):
        out = perturb_labels(labels, np.random.default_rng(seed), p_drop_small=0.5)
        assert {1, 2} <= set(np.unique(out).tolist())
        assert np.all((out == 0) | (out == 1) | (out == 2) | (out == 3))
        changed += int((out != labels).any())
    assert changed >= 8
    single = np.zeros_like(labels)
    single[1, 1, 1] = 1  # the only lesion is never dropped
    for seed in range(5):
        out = perturb_labels(single, np.random.default_rng(seed), p_drop_small=1.0)
        assert out.any()


def test_class_weights_balance() -> None:
    w = class_weights(np.array([0, 0, 0, 1, 2, 3]))
    assert w[0] < w[1] == w[2] == w[3]
    assert np.isclose(w.mean(), 1.0)


def write_manifest(root: Path, patterns: list[str], splits: list[str]) -> Path:
    """Write tiny pairs (pattern i, split i) as NIfTI files and a longitudinal manifest."""
    rows = []
    for i, (pattern, split) in enumerate(zip(patterns, splits, strict=True)):
        base, fol = make_pair(pattern, seed=i)
        pid = f"p{split}{i}"
        entry = {Keys.PATIENT_ID: pid, Keys.PATTERN: pattern, Keys.SPLIT: split}
        for name, study in (("baseline", base), ("followup", fol)):
            folder = root / pid / name
            save_nifti(study.pet, study.affine, folder / "SUV.nii.gz")
            save_nifti(study.ct, study.affine, folder / "CTres.nii.gz")
            save_nifti(study.mask, study.affine, folder / "SEG.nii.gz")
            entry[f"{name}_pet"] = f"{pid}/{name}/SUV.nii.gz"
            entry[f"{name}_ct"] = f"{pid}/{name}/CTres.nii.gz"
            entry[f"{name}_mask"] = f"{pid}/{name}/SEG.nii.gz"
        rows.append(entry)
    path = root / "manifest.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(MANIFEST_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return path


def grouped_dm(
    net: torch.nn.Module,
    preprocessing: PreprocessingConfig,
    cache: Path,
    manifest: Path | None = None,
    **options: Any,
) -> LongitudinalDataModule:
    """A DataModule from flat option names, each put into its group (test shorthand)."""
    groups: dict[str, Any] = {
        "phantom_pairs": PhantomPairs,
        "masks": MaskVariants,
        "features": PairFeatures,
        "sampling": Sampling,
    }
    kwargs: dict[str, dict[str, Any]] = {name: {} for name in groups}
    for key, value in options.items():
        group = next(g for g, cls in groups.items() if key in cls.__dataclass_fields__)
        kwargs[group][key] = value
    return LongitudinalDataModule(
        net,
        preprocessing,
        cache,
        manifest=manifest,
        **{name: groups[name](**values) for name, values in kwargs.items()},
    )


def manifest_dm(cache: Path, manifest: Path, **kwargs: Any) -> LongitudinalDataModule:
    """A DataModule reading ``manifest`` on a tiny U-Net with fresh random weights."""
    return grouped_dm(
        build_unet(channels=(4, 8, 16), strides=(2, 2)), PRE, cache, manifest=manifest, **kwargs
    )


@pytest.mark.slow
def test_datamodule_reads_a_manifest_caches_and_batches(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "data", list(PATTERNS), ["train"] * 4)
    torch.manual_seed(0)
    net = build_unet(channels=(4, 8, 16), strides=(2, 2))
    dm = grouped_dm(
        net,
        PRE,
        tmp_path / "cache",
        manifest=manifest,
        n_mask_variants=1,
        batch_size=3,
        balance="sampler",
    )
    dm.setup("fit")
    train = dm.datasets["train"]
    assert len(train) == 4 and all(len(v) == 2 for v in train.variants)
    assert sorted(train.labels.tolist()) == sorted(PATTERN_TO_INDEX[p] for p in PATTERNS)
    batch = next(iter(dm.train_dataloader()))
    assert batch[HeadKeys.LESION_POOLED].shape[0] == 3
    assert batch[HeadKeys.LESION_VALID].dtype == torch.bool
    cached = sorted((tmp_path / "cache").rglob("variant*.npz"))
    assert len(cached) == 8
    reports = sorted((tmp_path / "cache" / "reports").rglob("report*.json"))
    assert len(reports) == 8  # the quantification, kept apart from the encoder features
    again = PairSample.load(cached[0])
    assert again.lesion_pooled.dtype == np.float32
    # a second module reads the cache instead of recomputing
    stamp = [p.stat().st_mtime_ns for p in cached]
    dm2 = grouped_dm(
        net, PRE, tmp_path / "cache", manifest=manifest, n_mask_variants=1, batch_size=3
    )
    dm2.setup("fit")
    assert [p.stat().st_mtime_ns for p in cached] == stamp
    # another encoder recomputes the features but reuses the quantification
    report_stamp = [p.stat().st_mtime_ns for p in reports]
    dm3 = manifest_dm(tmp_path / "cache", manifest, n_mask_variants=1, batch_size=3)
    dm3.setup("fit")
    assert len(list((tmp_path / "cache").rglob("variant*.npz"))) == 16
    assert [p.stat().st_mtime_ns for p in reports] == report_stamp
    new = dm3.datasets["train"].variants[0][0]
    old = dm.datasets["train"].variants[0][0]
    np.testing.assert_array_equal(new.lesion_features, old.lesion_features)
    assert not np.allclose(new.lesion_pooled, old.lesion_pooled)


def test_a_new_quantification_version_invalidates_reports_and_features(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import petflare.data.longitudinal.datamodule as longitudinal

    manifest = write_manifest(tmp_path / "data", ["controlled"], ["train"])
    dm = manifest_dm(tmp_path / "cache", manifest)
    row = dm.rows()["train"][0]

    def folders() -> list[Path]:
        return [
            dm.row_folder(row, 1, "ground_truth", 0),
            dm.row_folder(row, 1, "ground_truth", 0, with_encoder=False),
            dm.registration_file(row),
        ]

    before = folders()
    monkeypatch.setattr(longitudinal, "REPORT_VERSION", "another")
    assert all(a != b for a, b in zip(before, folders(), strict=True))


class _OneVoxelShort:
    """A mask source that mimics a model: the ground truth minus its first voxel."""

    cache_tag = "test-source"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, study: Any) -> np.ndarray:
        self.calls += 1
        mask = (np.asarray(study.mask) > 0).astype(np.uint8)
        hits = np.argwhere(mask)
        if len(hits):
            mask[tuple(hits[0])] = 0
        return mask


@pytest.mark.slow
def test_training_pairs_gain_a_variant_from_the_extra_mask_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import petflare.quant.analysis as analysis

    registered = []
    register = analysis.register_followup_to_baseline

    def counting(*args: Any, **kwargs: Any) -> Any:
        registered.append(1)
        return register(*args, **kwargs)

    monkeypatch.setattr(analysis, "register_followup_to_baseline", counting)
    manifest = write_manifest(tmp_path / "data", ["diffuse_flare", "controlled"], ["train"] * 2)
    source = _OneVoxelShort()
    dm = manifest_dm(
        tmp_path / "cache",
        manifest,
        n_mask_variants=1,
        train_extra_mask_source=source,
        batch_size=2,
    )
    dm.setup("fit")
    train = dm.datasets["train"]
    assert all(len(v) == 3 for v in train.variants)  # exact GT, 1 perturbed, 1 from the source
    assert source.calls == 4  # both scans of both pairs, once
    for variants in train.variants:
        assert variants[-1].label == variants[0].label
    # each pair is registered once for both mask sources, and its registration is kept
    assert len(registered) == 2
    assert len(list((tmp_path / "cache" / "registrations").glob("*.json"))) == 2
    # the stored registration gives the samples that registering again gives
    fresh = manifest_dm(tmp_path / "fresh", manifest, n_mask_variants=1)
    fresh.net.load_state_dict(dm.net.state_dict())
    for row, variants in zip(dm.rows()["train"], train.variants, strict=True):
        again = fresh.samples_for_row(row, 0, source, 0)[0]
        np.testing.assert_array_equal(again.lesion_features, variants[-1].lesion_features)
        np.testing.assert_array_equal(again.pair_features, variants[-1].pair_features)
    assert len(registered) == 4


def test_variants_reuse_the_pairs_registration(encoder: EncoderFeatures) -> None:
    """Unperturbed variants reproduce the pair's own features (same alignment every time)."""
    base, fol = make_pair("nodule_within_mass", shift_mm=(9.0, -7.0, 5.0))
    same = [(np.asarray(base.mask), np.asarray(fol.mask))] * 2
    samples = pair_samples(base, fol, encoder, PRE, label=2, label_variants=same)
    for s in samples[1:]:
        np.testing.assert_array_equal(s.lesion_features, samples[0].lesion_features)
        np.testing.assert_array_equal(s.lesion_pooled, samples[0].lesion_pooled)
        np.testing.assert_array_equal(s.pair_features, samples[0].pair_features)


COARSE = {"spacing_inplane_mm": [8.0, 10.0], "spacing_slice_mm": [8.0, 10.0]}
WIDER = {**COARSE, "noise_cv_liver": [0.3, 0.4]}


def _coarse_phantom_dm(
    tmp_path: Path, **kwargs: Any
) -> tuple[torch.nn.Module, LongitudinalDataModule]:
    """A 1 + 1 pair coarse phantom DataModule (seeds 11 / 12); ``kwargs`` are passed on."""
    net = build_unet(channels=(4, 8, 16), strides=(2, 2))
    dm = grouped_dm(
        net,
        PRE,
        tmp_path / "cache",
        data_dir=tmp_path / "pairs",
        n_train_pairs=1,
        n_val_pairs=1,
        train_seed=11,
        val_seed=12,
        phantom=COARSE,
        **kwargs,
    )
    return net, dm


def _coarse_phantom_rows(
    tmp_path: Path, **extra: list[dict[str, Any]]
) -> tuple[torch.nn.Module, dict[str, list[dict[str, Any]]]]:
    """Rows of :func:`_coarse_phantom_dm` with extra sets whose PhantomConfig is ``WIDER``."""
    net, dm = _coarse_phantom_dm(tmp_path, **extra)
    return net, dm.rows()


def test_extra_phantom_training_sets_are_appended(tmp_path: Path) -> None:
    """Extra phantom sets (own seed and PhantomConfig overrides) join the training pairs only."""
    net, rows = _coarse_phantom_rows(
        tmp_path, extra_train_sets=[{"n_pairs": 1, "seed": 13, "phantom": WIDER}]
    )
    assert len(rows["train"]) == 2 and len(rows["val"]) == 1
    folders = sorted(p.name for p in (tmp_path / "pairs").iterdir())
    assert any("_seed13_" in f and "noise_cv_liver-0.3-0.4" in f for f in folders), folders
    assert not any(f.startswith("val") and "_seed13" in f for f in folders)
    main_pet, extra_pet = (Path(r[Keys.BASELINE_PET]) for r in rows["train"])
    assert main_pet.parent.parent.parent != extra_pet.parent.parent.parent
    with pytest.raises(ValueError, match="validation seed"):
        grouped_dm(
            net, PRE, tmp_path / "c", val_seed=12, extra_train_sets=[{"n_pairs": 1, "seed": 12}]
        )
    with pytest.raises(ValueError, match="n_pairs and seed"):
        grouped_dm(net, PRE, tmp_path / "c", extra_train_sets=[{"seed": 5}])


def test_extra_phantom_set_can_hold_one_pattern(tmp_path: Path) -> None:
    """``patterns`` restricts an extra set to some change patterns (and keys its folder)."""
    only = [{"n_pairs": 2, "seed": 13, "phantom": WIDER, "patterns": ["nodule_within_mass"]}]
    _, rows = _coarse_phantom_rows(tmp_path, extra_train_sets=only)
    assert [r[Keys.PATTERN] for r in rows["train"][1:]] == ["nodule_within_mass"] * 2
    folders = [p.name for p in (tmp_path / "pairs").iterdir()]
    assert sum(f.endswith("_patterns-nodule_within_mass") for f in folders) == 1, folders


def test_extra_phantom_validation_sets_are_appended(tmp_path: Path) -> None:
    """Extra validation sets join the validation pairs only; no seed serves both splits."""
    net, rows = _coarse_phantom_rows(
        tmp_path, extra_val_sets=[{"n_pairs": 1, "seed": 14, "phantom": WIDER}]
    )
    assert len(rows["train"]) == 1 and len(rows["val"]) == 2
    folders = sorted(p.name for p in (tmp_path / "pairs").iterdir())
    assert any(f.startswith("val_n1_seed14_") and "noise_cv_liver-0.3-0.4" in f for f in folders)
    assert not any(f.startswith("train") and "_seed14" in f for f in folders), folders
    with pytest.raises(ValueError, match="training seed"):
        grouped_dm(
            net, PRE, tmp_path / "c", train_seed=11, extra_val_sets=[{"n_pairs": 1, "seed": 11}]
        )
    with pytest.raises(ValueError, match="validation seed"):
        grouped_dm(
            net,
            PRE,
            tmp_path / "c",
            extra_val_sets=[{"n_pairs": 1, "seed": 15}],
            extra_train_sets=[{"n_pairs": 1, "seed": 15}],
        )


@pytest.mark.slow
def test_missed_nodule_variant_cuts_only_the_followup_nodule(tmp_path: Path) -> None:
    """Nodule pairs gain a variant whose follow-up mask lost the nodule (truth record); the
    baseline mask and the other pairs are untouched."""
    only = [{"n_pairs": 1, "seed": 13, "phantom": COARSE, "patterns": ["nodule_within_mass"]}]
    net, dm = _coarse_phantom_dm(
        tmp_path, extra_train_sets=only, n_mask_variants=0, missed_nodule_variant=True
    )
    row = dm.rows()["train"][1]
    source = MissedNoduleMasks.for_row(row)
    ids = source.nodule_ids(row[Keys.PATIENT_ID])
    assert len(ids) == 1
    base, fol = load_row_studies(row)
    assert np.isin(fol.mask, ids).any()  # the nodule is labelled at follow-up
    cut = source(fol)
    assert not np.isin(cut, ids).any()
    kept = ~np.isin(fol.mask, ids)
    np.testing.assert_array_equal(cut[kept], np.asarray(fol.mask)[kept])
    np.testing.assert_array_equal(source(base), base.mask)

    dm.setup("fit")
    variants = dm.datasets["train"].variants
    expected = [1 + (r[Keys.PATTERN] == "nodule_within_mass") for r in dm.rows()["train"]]
    assert [len(v) for v in variants] == expected
    assert variants[1][-1].label == PATTERN_TO_INDEX["nodule_within_mass"]

    with pytest.raises(PetflareInputError, match="truth record"):
        MissedNoduleMasks(tmp_path / "nowhere").nodule_ids("PF0000")
    manifest = write_manifest(tmp_path / "m", ["controlled"], ["train"])
    with pytest.raises(ValueError, match="phantom pairs"):
        grouped_dm(net, PRE, tmp_path / "c", manifest=manifest, missed_nodule_variant=True)


@pytest.mark.slow
def test_worker_processes_write_the_cache_one_process_would(tmp_path: Path) -> None:
    """``workers=2`` computes the missing pairs in two processes (ground truth, its perturbed
    variant, an extra mask source and validation pairs) and the samples equal one process's."""
    manifest = write_manifest(
        tmp_path / "data", ["diffuse_flare", "controlled", "new_lesions"], ["train", "train", "val"]
    )
    torch.manual_seed(0)
    net = build_unet(channels=(4, 8, 16), strides=(2, 2))

    def datamodule(cache: str, workers: int) -> LongitudinalDataModule:
        return grouped_dm(
            net,
            PRE,
            tmp_path / cache,
            manifest=manifest,
            n_mask_variants=1,
            train_extra_mask_source=_OneVoxelShort(),
            batch_size=2,
            workers=workers,
        )

    one = datamodule("one", 1)
    one.setup("fit")
    two = datamodule("two", 2)
    rows = two.rows()
    tasks = two._setup_tasks(rows["train"], rows["val"])
    assert len(tasks) == 2 * len(rows["train"]) + len(rows["val"])
    assert two.warm_cache(tasks) == len(tasks)
    assert all(two.is_cached(*task) for task in tasks)
    assert two.warm_cache(tasks) == 0  # nothing left to compute
    source = two.train_extra_mask_source
    two.setup("fit")
    assert isinstance(source, _OneVoxelShort) and source.calls == 0  # all read from the cache
    for split in ("train", "val"):
        for va, vb in zip(one.datasets[split].variants, two.datasets[split].variants, strict=True):
            assert len(va) == len(vb)
            for a, b in zip(va, vb, strict=True):
                assert (a.label, a.rule_label) == (b.label, b.rule_label)
                assert a.patient_id == b.patient_id
                assert [u["kind"] for u in a.units] == [u["kind"] for u in b.units]
                np.testing.assert_allclose(a.lesion_features, b.lesion_features, atol=1e-4)
                np.testing.assert_allclose(a.pair_features, b.pair_features, atol=1e-4)
                np.testing.assert_allclose(a.lesion_pooled, b.lesion_pooled, atol=2e-2)
    with pytest.raises(ValueError, match="workers"):
        datamodule("bad", 0)


@pytest.mark.slow
def test_a_bad_file_in_a_worker_process_is_named_in_the_main_one(tmp_path: Path) -> None:
    """An unreadable scan met by a worker process reaches the caller as the same input error
    naming the file (not a broken process pool)."""
    manifest = write_manifest(tmp_path / "data", ["diffuse_flare", "controlled"], ["train"] * 2)
    bad = tmp_path / "data" / "ptrain1" / "followup" / "SUV.nii.gz"
    bad.write_bytes(b"not a NIfTI file")
    dm = manifest_dm(tmp_path / "cache", manifest, n_mask_variants=0, workers=2)
    rows = dm.rows()
    with pytest.raises(PetflareInputError, match="ptrain1/followup/SUV.nii.gz") as info:
        dm.warm_cache(dm._setup_tasks(rows["train"], rows["val"]))
    assert info.value.path is not None and info.value.path.name == "SUV.nii.gz"


def test_several_manifests_are_read_together_and_ids_must_be_unique(tmp_path: Path) -> None:
    first = write_manifest(tmp_path / "a", ["controlled", "diffuse_flare"], ["train", "val"])
    second = write_manifest(tmp_path / "b", ["new_lesions", "nodule_within_mass"], ["val", "train"])
    rows = manifest_dm(tmp_path / "cache", [first, second]).rows()  # type: ignore[arg-type]
    got = {
        split: sorted((str(r[Keys.PATIENT_ID]), str(r[Keys.PATTERN])) for r in rows[split])
        for split in ("train", "val")
    }
    assert got == {
        "train": [("ptrain0", "controlled"), ("ptrain1", "nodule_within_mass")],
        "val": [("pval0", "new_lesions"), ("pval1", "diffuse_flare")],
    }
    # the same patient id in two manifests is refused, naming the second manifest
    clash = write_manifest(tmp_path / "c", ["new_lesions"], ["train"])
    with pytest.raises(PetflareInputError, match="ptrain0 is also in"):
        manifest_dm(tmp_path / "cache", [first, clash]).rows()  # type: ignore[arg-type]
