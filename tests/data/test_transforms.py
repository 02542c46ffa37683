"""Preprocessing geometry and intensities, patch sampling, data sources and the DataModule."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from petflare.constants import Keys
from petflare.data import (
    AugmentationConfig,
    BlobSource,
    PreprocessingConfig,
    ScaleSuv,
    SegmentationDataModule,
    SyntheticSource,
    to_monai_items,
    training_transforms,
    validation_transforms,
)
from petflare.errors import PetflareInputError
from petflare.io.layouts import load_manifest, manifest_to_studies


@pytest.mark.parametrize(
    ("suv", "log", "expected"),
    [
        (0.0, True, 0.0),
        (-1.0, True, 0.0),  # negative SUV (reconstruction noise) clipped to 0
        (4.0, True, np.log1p(4.0)),
        (100.0, True, np.log1p(30.0)),  # clipped at suv_max
        (15.0, False, 0.5),
    ],
)
def test_scale_suv(suv: float, log: bool, expected: float) -> None:
    out = ScaleSuv(suv_max=30.0, log=log)(torch.tensor([suv]))
    assert float(out[0]) == pytest.approx(expected, rel=1e-6)
    cfg = PreprocessingConfig(suv_max=30.0, suv_log=log)
    assert cfg.scaled_suv(suv) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("channels", [("ct",), ("pet", "pet"), ("ct", "pet"), ()])
def test_bad_channels_are_refused(channels: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        PreprocessingConfig(channels=channels)


def world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask > 0).mean(axis=0)
    return affine[:3, :3] @ idx + affine[:3, 3]


@pytest.mark.parametrize("channels", [("pet",), ("pet", "ct")])
def test_preprocessing_geometry_and_intensity(tiny_study, channels: tuple[str, ...]) -> None:  # noqa: ANN001
    config = PreprocessingConfig(channels=channels, spacing_mm=(3.0, 3.0, 3.0), crop_margin_vox=1)
    item = {Keys.PET: str(tiny_study.pet), Keys.LABEL: str(tiny_study.mask)}
    if Keys.CT in channels:
        item[Keys.CT] = str(tiny_study.ct)
    out = validation_transforms(config)(item)
    image, label = out[Keys.IMAGE], out[Keys.LABEL]
    assert image.shape[0] == len(channels) and label.shape[1:] == image.shape[1:]
    affine = np.asarray(image.affine, dtype=np.float64)
    # canonical RAS at the configured spacing (the input was LPS, rotated, anisotropic)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), 3.0, atol=1e-4)
    assert np.all(np.diag(affine[:3, :3]) > 0)
    # the lesion stays where it is in the world (within a voxel)
    before = world_centroid(tiny_study.mask_array, tiny_study.affine)
    after = world_centroid(label[0].numpy(), affine)
    assert np.linalg.norm(after - before) < 3.0
    # PET scaled with log1p of SUV, CT windowed into [-1, 1]
    assert float(image[0].max()) == pytest.approx(np.log1p(8.0), rel=0.05)
    if Keys.CT in channels:
        assert -1.0 <= float(image[1].min()) and float(image[1].max()) <= 1.0
    assert set(np.unique(label.numpy())) <= {0.0, 1.0}


def test_positive_patches_contain_lesion(tiny_study) -> None:  # noqa: ANN001
    config = PreprocessingConfig(spacing_mm=(2.0, 2.0, 2.0))
    aug = AugmentationConfig(patch_size_vox=(8, 8, 8), num_samples=3, pos_fraction=1.0)
    item = {Keys.PET: str(tiny_study.pet), Keys.LABEL: str(tiny_study.mask)}
    patches = training_transforms(config, aug)(item)
    assert len(patches) == 3
    for patch in patches:
        assert tuple(patch[Keys.IMAGE].shape) == (1, 8, 8, 8)
        assert float(patch[Keys.LABEL].sum()) > 0


def _lesion_patch(tiny_study, **augmentation: object) -> dict:  # noqa: ANN001
    """One 8^3 lesion-centred patch, seed 0, no flip / affine / intensity augmentation."""
    config = PreprocessingConfig(spacing_mm=(2.0, 2.0, 2.0))
    item = {Keys.PET: str(tiny_study.pet), Keys.LABEL: str(tiny_study.mask)}
    aug = AugmentationConfig(
        patch_size_vox=(8, 8, 8),
        num_samples=1,
        pos_fraction=1.0,
        flip_prob=0.0,
        affine_prob=0.0,
        intensity_prob=0.0,
        **augmentation,  # type: ignore[arg-type]
    )
    return training_transforms(config, aug).set_random_state(seed=0)(item)[0]


def test_blur_augmentation_smooths_without_moving_lesions(tiny_study) -> None:  # noqa: ANN001
    a = _lesion_patch(tiny_study)
    b = _lesion_patch(tiny_study, smooth_prob=1.0, smooth_sigma_vox=(1.0, 1.0))
    assert torch.equal(a[Keys.LABEL], b[Keys.LABEL])  # the label is never blurred
    assert float(b[Keys.IMAGE].max()) < float(a[Keys.IMAGE].max())  # the peak is spread out
    with pytest.raises(ValueError, match="smooth_sigma_vox"):
        AugmentationConfig(smooth_sigma_vox=(1.0, 0.5))


def test_field_of_view_crop_cuts_image_and_label_around_the_centre(tiny_study) -> None:  # noqa: ANN001
    a = _lesion_patch(tiny_study)
    b = _lesion_patch(tiny_study, fov_crop_prob=1.0, fov_crop_half_vox=(1, 1))
    box = (slice(None), slice(3, 6), slice(3, 6), slice(3, 6))  # centre 4 +- 1
    assert torch.equal(b[Keys.IMAGE][box], a[Keys.IMAGE][box])
    assert torch.equal(b[Keys.LABEL][box], a[Keys.LABEL][box])
    outside = torch.ones_like(b[Keys.LABEL], dtype=torch.bool)
    outside[box] = False
    assert float(a[Keys.IMAGE][outside].abs().sum()) > 0  # there was something to cut away
    assert float(b[Keys.IMAGE][outside].abs().sum()) == 0.0  # SUV 0: no data
    assert float(b[Keys.LABEL][outside].sum()) == 0.0
    assert float(b[Keys.LABEL][box].sum()) > 0  # the lesion at the centre stays labelled
    with pytest.raises(ValueError, match="fov_crop_half_vox"):
        AugmentationConfig(fov_crop_half_vox=(5, 2))
    with pytest.raises(ValueError, match="fov_crop_prob"):
        AugmentationConfig(fov_crop_prob=1.5)


def test_missing_ct_is_refused() -> None:
    entry = {"patient_id": "p", "study_id": "s", "pet": "/x/SUV.nii.gz", "ct": None, "label": "l"}
    with pytest.raises(PetflareInputError, match="CT"):
        to_monai_items([entry], ("pet", "ct"), "train")
    no_label = {**entry, "label": None}
    with pytest.raises(PetflareInputError, match="lesion mask"):
        to_monai_items([no_label], ("pet",), "train")


def test_datamodule_on_blobs(tmp_path: Path) -> None:
    source = BlobSource(tmp_path, n_train=2, n_val=1, shape=(20, 18, 14), seed=3)
    dm = SegmentationDataModule(
        source,
        PreprocessingConfig(spacing_mm=(3.0, 3.0, 3.0)),
        AugmentationConfig(patch_size_vox=(16, 16, 16), num_samples=2),
        batch_size=2,
    )
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert tuple(batch[Keys.IMAGE].shape) == (4, 1, 16, 16, 16)  # 2 volumes x 2 patches
    val = next(iter(dm.val_dataloader()))
    assert val[Keys.IMAGE].shape[0] == 1 and val[Keys.LABEL].sum() > 0
    assert dm.describe["n_train_studies"] == 2


def test_synthetic_source_refuses_shared_seeds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="differ"):
        SyntheticSource(tmp_path, train_seed=5, val_seed=5)


@pytest.mark.slow
def test_synthetic_source_generates_once(tmp_path: Path) -> None:
    source = SyntheticSource(tmp_path, n_train_pairs=1, n_val_pairs=0, train_seed=11, val_seed=12)
    lists = source.datalists()
    assert len(lists["train"]) == 2 and lists["val"] == []  # baseline + follow-up
    assert all(Path(e["label"]).is_file() for e in lists["train"])
    manifest = next(tmp_path.rglob("manifest.csv"))
    stamp = manifest.stat().st_mtime_ns
    assert source.datalists()["train"] == lists["train"]
    assert manifest.stat().st_mtime_ns == stamp  # cached, not regenerated


def test_synthetic_source_lists_organ_maps_and_remakes_sets_without(tmp_path: Path) -> None:
    """Phantom entries carry their organ maps; a set cached before organ maps is made again."""
    phantom = {"spacing_inplane_mm": [9.0, 10.0], "spacing_slice_mm": [9.0, 10.0]}
    source = SyntheticSource(
        tmp_path, n_train_pairs=1, n_val_pairs=0, train_seed=11, val_seed=12, phantom=phantom
    )
    entries = source.datalists()["train"]
    assert all(Path(e[Keys.ORGANS]).name == "ORGANS.nii.gz" for e in entries)
    manifest = next(tmp_path.rglob("manifest.csv"))
    lines = manifest.read_text().splitlines()  # drop the organ columns: an old cached set
    n_keep = len(lines[0].split(",")) - 2
    manifest.write_text("\n".join(",".join(x.split(",")[:n_keep]) for x in lines) + "\n")
    assert Keys.ORGANS not in manifest_to_studies(load_manifest(manifest))[0]
    assert all(Path(e[Keys.ORGANS]).is_file() for e in source.datalists()["train"])


def test_synthetic_source_extra_sets_are_checked(tmp_path: Path) -> None:
    """Extra training sets need their own seed: never a validation or the main training seed."""
    with pytest.raises(ValueError, match="validation seed"):
        SyntheticSource(tmp_path, val_seed=2, extra_train_sets=[{"n_pairs": 1, "seed": 2}])
    with pytest.raises(ValueError, match="training seed"):
        SyntheticSource(tmp_path, train_seed=1, extra_train_sets=[{"n_pairs": 1, "seed": 1}])
    with pytest.raises(ValueError, match="distinct"):
        SyntheticSource(tmp_path, extra_train_sets=[{"n_pairs": 1, "seed": 7}] * 2)
    with pytest.raises(ValueError, match="needs n_pairs"):
        SyntheticSource(tmp_path, extra_train_sets=[{"seed": 7}])
    for bad in (["nodule"], []):
        with pytest.raises(ValueError, match="patterns must be some of"):
            SyntheticSource(tmp_path, extra_train_sets=[{"n_pairs": 1, "seed": 7, "patterns": bad}])


@pytest.mark.slow
def test_synthetic_source_extra_set_joins_training_only(tmp_path: Path) -> None:
    """An extra set is generated with its own phantom settings and joins the training split."""
    wide = {"spacing_inplane_mm": [4.8, 5.0], "spacing_slice_mm": [4.8, 5.0]}
    source = SyntheticSource(
        tmp_path,
        n_train_pairs=1,
        n_val_pairs=1,
        train_seed=11,
        val_seed=12,
        extra_train_sets=[{"n_pairs": 1, "seed": 13, "phantom": wide}],
    )
    lists = source.datalists()
    assert len(lists["train"]) == 4 and len(lists["val"]) == 2
    spacings = [nib.load(e["pet"]).header.get_zooms()[:3] for e in lists["train"]]
    assert [min(s) >= 4.8 for s in spacings] == [False, False, True, True]
    assert all(min(nib.load(e["pet"]).header.get_zooms()[:3]) < 4.8 for e in lists["val"])
