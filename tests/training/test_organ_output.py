"""Anatomy-aware training: the organ output's loss, channel checks and organ-aware pipelines."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss

from petflare.constants import ORGAN_IGNORE, ORGANS, Keys
from petflare.data.transforms import (
    AugmentationConfig,
    PreprocessingConfig,
    training_transforms,
)
from petflare.networks import build_unet
from petflare.training.module import SegmentationModule

N_ORGANS = len(ORGANS)


def module(out_channels: int, organ_classes: int) -> SegmentationModule:
    net = build_unet(out_channels=out_channels, channels=(4, 8), strides=(2,))
    return SegmentationModule(
        net,
        DiceCELoss(to_onehot_y=True, softmax=True, include_background=False),
        partial(torch.optim.AdamW, lr=1e-3),
        roi_size=(16, 16, 16),
        organ_classes=organ_classes,
    )


def batch(organs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    label = torch.zeros(2, 1, 16, 16, 16)
    label[:, :, 4:8, 4:8, 4:8] = 1
    out = {Keys.IMAGE: torch.rand(2, 1, 16, 16, 16), Keys.LABEL: label}
    if organs is not None:
        out[Keys.ORGANS] = organs
    return out


def test_organ_loss_is_added_and_ignores_unknown_voxels() -> None:
    organs = torch.randint(0, N_ORGANS, (2, 1, 16, 16, 16)).float()
    lesion_only = module(2, 0)
    aware = module(2 + N_ORGANS, N_ORGANS)
    loss_aware = aware.training_step(batch(organs), 0)
    # the same network with its organ loss switched off gives the lesion loss alone
    aware.organ_loss_weight = 0.0
    loss_lesion = aware.training_step(batch(organs), 0)
    assert float(loss_aware) > float(loss_lesion) > 0
    # every voxel unknown: no organ term (and no NaN)
    aware.organ_loss_weight = 0.5
    unknown = torch.full_like(organs, float(ORGAN_IGNORE))
    assert torch.isclose(aware.training_step(batch(unknown), 0), loss_lesion)
    assert float(lesion_only.training_step(batch(), 0)) > 0


def test_channel_count_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="net.out_channels"):
        module(2, N_ORGANS).training_step(batch(torch.zeros(2, 1, 16, 16, 16)), 0)
    with pytest.raises(ValueError, match="organ_classes"):
        module(3, 1)


def test_training_pipeline_carries_the_organ_map_with_the_image(tmp_path: Path) -> None:
    """Patches of the organ map are cut and flipped/rotated together with the image."""
    affine = np.diag([-4.0, -4.0, 4.0, 1.0])  # LPS storage: the pipeline reorients to RAS
    pet = np.ones((24, 24, 24), dtype=np.float32)
    organs = np.zeros((24, 24, 24), dtype=np.uint8)
    pet[2:12] = 6.0
    organs[2:12] = 3
    label = np.zeros_like(organs)
    label[16:20, 10:14, 10:14] = 1
    paths = {}
    for key, arr in ((Keys.PET, pet), (Keys.ORGANS, organs), (Keys.LABEL, label)):
        paths[key] = str(tmp_path / f"{key}.nii.gz")
        nib.save(nib.Nifti1Image(arr, affine), paths[key])
    prep = PreprocessingConfig(channels=("pet",), spacing_mm=(4.0, 4.0, 4.0))
    aug = AugmentationConfig(patch_size_vox=(16, 16, 16), num_samples=3, affine_prob=1.0)
    pipeline = training_transforms(prep, aug, with_organs=True)
    pipeline.set_random_state(0)
    for patch in pipeline(paths):
        image, organ = patch[Keys.IMAGE][0], patch[Keys.ORGANS][0]
        assert organ.shape == image.shape
        hot = image > prep.scaled_suv(4.0)
        # organ 3 exactly where the organ's uptake is (up to interpolation at its edge)
        agree = ((organ == 3) == hot).float().mean()
        assert agree > 0.95
        assert set(torch.unique(organ).tolist()) <= {0.0, 3.0}


def test_a_study_without_organ_map_trains_with_unknown_organs(tmp_path: Path) -> None:
    """A study that has no organ label map (an unannotated real background) gets one that is
    ORGAN_IGNORE everywhere: its lesions train, the organ loss skips it."""
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    pet = np.ones((20, 20, 20), dtype=np.float32)
    label = np.zeros((20, 20, 20), dtype=np.uint8)
    label[8:12, 8:12, 8:12] = 1
    pet[label > 0] = 8.0
    paths = {}
    for key, arr in ((Keys.PET, pet), (Keys.LABEL, label)):
        paths[key] = str(tmp_path / f"{key}.nii.gz")
        nib.save(nib.Nifti1Image(arr, affine), paths[key])
    prep = PreprocessingConfig(channels=("pet",), spacing_mm=(4.0, 4.0, 4.0))
    aug = AugmentationConfig(patch_size_vox=(16, 16, 16), num_samples=2, affine_prob=0.0)
    for patch in training_transforms(prep, aug, with_organs=True)(paths):
        organs = patch[Keys.ORGANS][0]
        inside = patch[Keys.IMAGE][0] > 0  # padding outside the scan is background (0)
        assert organs.shape == patch[Keys.LABEL][0].shape
        assert bool((organs[inside] == ORGAN_IGNORE).all())


def test_export_records_the_hybrid_backgrounds(tmp_path: Path) -> None:
    """The model folder says which real scans its hybrid training set used and left out."""
    import json

    from petflare.inference.model_export import real_backgrounds

    hybrid = tmp_path / "work" / "data" / "hybrid"
    (hybrid / "autopet").mkdir(parents=True)
    (hybrid / "hybrid.json").write_text(
        json.dumps(
            {
                "backgrounds_used": [{"name": "acrin042"}, {"name": "chus052"}],
                "backgrounds_not_used": {"sts001": "excluded"},
            }
        )
    )
    source = {
        "sources": {"phantoms": {"cache_dir": "x"}, "hybrid": {"root": "data/hybrid/autopet"}}
    }
    run_dir = tmp_path / "work" / "runs" / "anatomy"
    run_dir.mkdir(parents=True)
    assert real_backgrounds(source, run_dir) == {
        "used": ["acrin042", "chus052"],
        "not_used": ["sts001"],
    }
    assert real_backgrounds({"cache_dir": "x"}, run_dir) is None


def test_physiological_site_dice_scores_the_physiological_organs_only() -> None:
    """val/organ_dice: mean Dice over brain, myocardium, kidney and bladder where the truth has
    them; unknown voxels are left out; a wrong map scores lower; no such organ gives NaN."""
    from petflare.constants import ORGAN_TO_INDEX
    from petflare.training.module import physiological_site_dice

    truth = np.zeros((10, 10, 10), dtype=np.int64)
    truth[:4] = ORGAN_TO_INDEX["brain"]
    truth[6:] = ORGAN_TO_INDEX["bladder"]
    truth[5] = ORGAN_TO_INDEX["liver"]  # not a physiological site: not scored
    assert physiological_site_dice(truth, truth) == pytest.approx(1.0)
    shifted = np.roll(truth, 2, axis=0)
    assert physiological_site_dice(shifted, truth) < 0.8
    half = truth.copy()
    half[6:] = 0  # the bladder missed: (1 + 0) / 2
    assert physiological_site_dice(half, truth) == pytest.approx(0.5)
    unknown = truth.copy()
    unknown[6:] = ORGAN_IGNORE  # the bladder's voxels unknown: only the brain is scored
    assert physiological_site_dice(half, unknown) == pytest.approx(1.0)
    assert np.isnan(physiological_site_dice(truth, np.zeros_like(truth)))


def test_organ_dice_loss_rewards_the_small_organ_and_ignores_unknown_voxels() -> None:
    from petflare.training.module import organ_dice_loss

    organs = torch.zeros((1, 8, 8, 8), dtype=torch.long)
    organs[0, 2:4, 2:4, 2:4] = 4  # a small "kidney"
    right = torch.full((1, 5, 8, 8, 8), -10.0)
    right[:, 0] = 10.0
    right[0, 0, 2:4, 2:4, 2:4] = -10.0
    right[0, 4, 2:4, 2:4, 2:4] = 10.0
    wrong = torch.full((1, 5, 8, 8, 8), -10.0)
    wrong[:, 0] = 10.0  # all background: the kidney missed
    assert float(organ_dice_loss(right, organs)) < 0.01
    assert float(organ_dice_loss(wrong, organs)) > 0.99
    unknown = organs.clone()
    unknown[0, 2:4, 2:4, 2:4] = ORGAN_IGNORE  # nothing known of the kidney: no organ term
    assert float(organ_dice_loss(wrong, unknown)) == 0.0
    m = module(out_channels=11, organ_classes=9)
    m.organ_dice_weight = 1.0
    organs9 = torch.zeros((2, 16, 16, 16), dtype=torch.long)
    organs9[:, 4:8, 4:8, 4:8] = 4
    loss = m.training_step(batch(organs9[:, None].float()), 0)
    assert torch.isfinite(loss)
