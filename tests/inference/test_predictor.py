"""Predictor geometry (non-RAS, anisotropic, flipped inputs), model folders and safe loading."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from petflare.data.transforms import PreprocessingConfig
from petflare.errors import PetflareInputError
from petflare.inference.model_folder import (
    METADATA_FILE,
    WEIGHTS_FILE,
    InferenceSettings,
    load_model_folder,
)
from petflare.inference.postprocess import remove_small_components
from petflare.inference.predictor import Predictor
from petflare.io.study import Study
from petflare_testing import make_non_ras_affine, make_tiny_model_folder

SHAPE = (26, 20, 14)
LESION_SUV = 8.0
THRESHOLD_SUV = 4.0


class ThresholdNet(nn.Module):
    """Lesion logit = k * (scaled SUV - scaled threshold): a known, smooth 'network'."""

    def __init__(self, threshold_scaled: float, gain: float = 20.0) -> None:
        super().__init__()
        self.threshold_scaled = threshold_scaled
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lesion = self.gain * (x[:, :1] - self.threshold_scaled)
        return torch.cat([torch.zeros_like(lesion), lesion], dim=1)


def off_centre_study(affine: np.ndarray) -> Study:
    """Body of SUV 1 with one off-centre sphere lesion (SUV 8, radius 10 mm in world space)."""
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), axis=-1)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    centre = affine[:3, :3] @ np.array([7.0, 6.0, 4.0]) + affine[:3, 3]
    inside = np.linalg.norm(world - centre, axis=-1) <= 10.0
    pet = np.full(SHAPE, 1.0, dtype=np.float32)
    pet[inside] = LESION_SUV
    pet[:2] = 0.0  # some air, so the body crop does something
    return Study(pet=pet, affine=affine, mask=inside.astype(np.uint8))


def flipped(study: Study, axis: int) -> Study:
    """Same world content: the array is flipped along ``axis`` and the affine compensates."""
    n = study.shape[axis]
    flip = np.eye(4)
    flip[axis, axis] = -1.0
    flip[axis, 3] = n - 1
    return Study(
        pet=np.flip(study.pet, axis).copy(),
        affine=study.affine @ flip,
        mask=np.flip(study.mask, axis).copy() if study.mask is not None else None,
    )


def threshold_predictor(**kwargs: object) -> Predictor:
    prep = PreprocessingConfig(channels=("pet",), spacing_mm=(3.0, 3.0, 3.0))
    net = ThresholdNet(prep.scaled_suv(THRESHOLD_SUV))
    settings = InferenceSettings(roi_size_vox=(16, 16, 16), overlap=0.25, min_component_ml=0.0)
    return Predictor(net, prep, settings, device="cpu", **kwargs)  # type: ignore[arg-type]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())


@pytest.mark.parametrize(
    "affine",
    [
        make_non_ras_affine(),
        make_non_ras_affine(spacing_mm=(4.0, 2.5, 3.5), rotation_deg=-12.0),
        np.diag([2.5, 2.5, 4.0, 1.0]),
    ],
    ids=["lps_rotated", "lps_other_spacing", "ras_anisotropic"],
)
def test_prediction_is_on_the_input_grid(affine: np.ndarray) -> None:
    study = off_centre_study(affine)
    predictor = threshold_predictor()
    prob = predictor.predict_proba(study)
    mask = predictor.predict(study)
    assert prob.shape == study.shape and prob.dtype == np.float32
    assert mask.shape == study.shape and mask.dtype == np.uint8
    # the off-centre lesion lands where it is in the input: a misplaced/mirrored mask would miss
    assert study.mask is not None
    truth = study.mask > 0
    assert dice(mask > 0, truth) > 0.75
    assert prob[~truth].mean() < 0.05


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_flipped_input_gives_flipped_prediction(axis: int) -> None:
    study = off_centre_study(make_non_ras_affine())
    predictor = threshold_predictor()
    prob = predictor.predict_proba(study)
    prob_flipped = predictor.predict_proba(flipped(study, axis))
    np.testing.assert_allclose(prob_flipped, np.flip(prob, axis), atol=1e-4)
    np.testing.assert_array_equal(
        predictor.predict(flipped(study, axis)), np.flip(predictor.predict(study), axis)
    )


def test_a_flipped_view_is_predicted_like_its_copy() -> None:
    # np.flip and nibabel's reorientation give views with negative strides
    study = off_centre_study(make_non_ras_affine())
    copy = flipped(study, 1)
    view = Study(pet=np.flip(study.pet, 1), affine=copy.affine, ct=np.flip(study.pet, 1))
    assert view.pet.flags.c_contiguous and view.ct is not None and view.ct.flags.c_contiguous
    predictor = threshold_predictor()
    np.testing.assert_array_equal(predictor.predict(view), predictor.predict(copy))


def test_tta_matches_plain_for_a_flip_symmetric_net() -> None:
    study = off_centre_study(make_non_ras_affine())
    plain = threshold_predictor().predict_proba(study)
    tta = threshold_predictor(tta=True).predict_proba(study)
    np.testing.assert_allclose(tta, plain, atol=1e-4)


def test_empty_scan_gives_empty_mask() -> None:
    study = Study(pet=np.zeros(SHAPE, dtype=np.float32), affine=make_non_ras_affine())
    assert threshold_predictor().predict(study).sum() == 0


def tiny_folder(tmp_path: Path) -> Path:
    return make_tiny_model_folder(
        tmp_path / "model", spacing_mm=(4.0, 4.0, 4.0), metadata={"intended_use": "tests"}
    )


def test_model_folder_round_trip(tmp_path: Path) -> None:
    folder = tiny_folder(tmp_path)
    loaded = load_model_folder(folder)
    assert loaded.metadata["intended_use"] == "tests"
    assert loaded.metadata["spacing_mm"] == [4.0, 4.0, 4.0]
    saved = torch.load(folder / WEIGHTS_FILE, weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float16 for v in saved.values() if v.is_floating_point())
    predictor = Predictor.from_folder(folder, device="cpu")
    study = off_centre_study(make_non_ras_affine())
    assert predictor.predict(study).shape == study.shape
    assert predictor.metadata["channels"] == ["pet"]


def test_channels_last_on_cpu_predicts_what_the_default_layout_does(tmp_path: Path) -> None:
    """On the CPU the network runs channels-last by default: the same probabilities and mask."""
    folder = tiny_folder(tmp_path)
    study = off_centre_study(make_non_ras_affine())
    fast = Predictor.from_folder(folder, device="cpu")
    plain = Predictor.from_folder(folder, device="cpu", channels_last=False)
    assert fast.channels_last and not plain.channels_last
    np.testing.assert_allclose(fast.predict_proba(study), plain.predict_proba(study), atol=1e-5)
    np.testing.assert_array_equal(fast.predict(study), plain.predict(study))


def test_existing_folder_is_not_overwritten(tmp_path: Path) -> None:
    tiny_folder(tmp_path)
    with pytest.raises(PetflareInputError, match="overwrite"):
        tiny_folder(tmp_path)


class Payload:
    """An arbitrary Python object: unpickling it could run code, so loading must refuse."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pickled code ran",))


def test_pickled_object_checkpoint_is_rejected(tmp_path: Path) -> None:
    folder = tiny_folder(tmp_path)
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": Payload()}, folder / WEIGHTS_FILE)
    with pytest.raises(PetflareInputError, match="refused"):
        load_model_folder(folder)


def test_mismatched_weights_are_rejected(tmp_path: Path) -> None:
    folder = tiny_folder(tmp_path)
    torch.save({"state_dict": {"x": torch.zeros(1)}}, folder / WEIGHTS_FILE)
    with pytest.raises(PetflareInputError, match="do not match"):
        load_model_folder(folder)


def test_missing_metadata_names_the_file(tmp_path: Path) -> None:
    folder = tiny_folder(tmp_path)
    (folder / METADATA_FILE).unlink()
    with pytest.raises(PetflareInputError, match="metadata.json"):
        Predictor.from_folder(folder)


@pytest.mark.parametrize(
    ("min_ml", "expected_kept"),
    [(0.0, 2), (0.002, 1), (0.1, 0)],
)
def test_remove_small_components(min_ml: float, expected_kept: int) -> None:
    mask = np.zeros((12, 12, 12), dtype=np.uint8)
    mask[1, 1, 1] = 1  # 1 voxel = 0.001 ml at 1 mm^3
    mask[5:8, 5:8, 5:8] = 1  # 27 voxels = 0.027 ml
    out = remove_small_components(mask, voxel_volume_ml=0.001, min_volume_ml=min_ml)
    import cc3d

    assert cc3d.connected_components(out, connectivity=18).max() == expected_kept
    assert out.dtype == np.uint8


MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.parametrize("name", ["phantom-unet", "phantom-unet-gpu", "phantom-unet-stage2"])
def test_shipped_model_folder(name: str) -> None:
    """The default model folder and the GPU-trained alternative: small, safe to load, usable."""
    folder = MODELS / name
    if not folder.is_dir():
        pytest.skip(f"shipped model folder models/{name} absent")
    size_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
    assert size_mb < 20.0
    predictor = Predictor.from_folder(folder, device="cpu")
    if predictor.sites is not None:  # its site network: an organ output, STS_001 never seen
        assert predictor.sites.organ_classes == 9 and predictor.physiology_filter
        backgrounds = predictor.sites.metadata["training"]["real_backgrounds"]
        assert backgrounds["not_used"] == ["sts001"]
    meta = predictor.metadata
    assert "synthetic phantoms" in meta["intended_use"] and "Research" in meta["intended_use"]
    assert meta["channels"] == ["pet"] and len(meta["spacing_mm"]) == 3
    assert 0.0 <= meta["metrics"]["validation"]["mean_dice"] <= 1.0
    assert isinstance(meta["training"]["seed"], int) and meta["versions"]["torch"]
    lesion_backgrounds = meta["training"].get("real_backgrounds")
    if lesion_backgrounds is not None:  # hybrid scans trained it: STS_001 stays unseen
        assert "sts001" in lesion_backgrounds["not_used"]
        assert "sts001" not in lesion_backgrounds["used"]
    study = off_centre_study(make_non_ras_affine())
    assert predictor.predict(study).shape == study.shape
    from petflare.inference.pattern import load_head

    _, head_record = load_head(folder)  # refuses a head trained on other U-Net weights
    assert head_record["temperature"] > 0
    assert head_record["segmentation_weights_sha256"] == meta["weights"]["sha256"]


@pytest.mark.parametrize(
    "affine",
    [make_non_ras_affine(spacing_mm=(4.0, 2.5, 3.5), rotation_deg=-12.0), np.diag([2, 3, 4, 1.0])],
    ids=["lps_rotated", "ras_anisotropic"],
)
def test_mask_equals_the_thresholded_probability(affine: np.ndarray) -> None:
    """predict() resamples only the box around above-threshold voxels: same mask as thresholding
    the whole probability map, with a lesion near a corner and a tiny one removed by size."""
    shape = (48, 40, 30)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    pet = np.full(shape, 1.0, dtype=np.float32)
    for voxel, radius in (((8.0, 30.0, 6.0), 9.0), ((38.0, 8.0, 22.0), 3.5)):
        centre = affine[:3, :3] @ np.array(voxel) + affine[:3, 3]
        pet[np.linalg.norm(world - centre, axis=-1) <= radius] = LESION_SUV
    prep = PreprocessingConfig(channels=("pet",), spacing_mm=(3.0, 3.0, 3.0))
    settings = InferenceSettings(roi_size_vox=(16, 16, 16), overlap=0.25, min_component_ml=0.5)
    predictor = Predictor(ThresholdNet(prep.scaled_suv(THRESHOLD_SUV)), prep, settings, "cpu")
    study = Study(pet=pet, affine=affine)
    expected = (predictor.predict_proba(study) > settings.threshold).astype(np.uint8)
    kept = remove_small_components(expected, study.voxel_volume_ml, 0.5, connectivity=18)
    assert 0 < kept.sum() < expected.sum()  # the big lesion stays, the small one goes
    np.testing.assert_array_equal(predictor.predict(study), kept)


def test_threshold_override_grows_the_mask_monotonically() -> None:
    """A lower probability cut keeps every voxel of the default mask and adds the fainter rim."""
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    shape = (32, 32, 24)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    r = np.linalg.norm(idx - np.array([16.0, 16.0, 12.0]), axis=-1)
    pet = np.where(r <= 8, LESION_SUV * np.clip(1.2 - r / 10.0, 0.2, 1.0), 1.0).astype(np.float32)
    prep = PreprocessingConfig(channels=("pet",), spacing_mm=(3.0, 3.0, 3.0))
    settings = InferenceSettings(roi_size_vox=(16, 16, 16), overlap=0.25, min_component_ml=0.0)
    net = ThresholdNet(prep.scaled_suv(THRESHOLD_SUV))
    study = Study(pet=pet, affine=affine)
    default = Predictor(net, prep, settings, "cpu").predict(study)
    low = Predictor(net, prep, settings, "cpu", threshold=0.1)
    assert low.inference.threshold == 0.1 and settings.threshold == 0.5
    grown = low.predict(study)
    assert default.sum() > 0
    assert not np.any((default > 0) & (grown == 0))
    assert grown.sum() > default.sum()
    with pytest.raises(ValueError, match="threshold"):
        InferenceSettings(threshold=1.0)


def test_mask_settings_key_the_pattern_heads_cached_features() -> None:
    """Features cached for masks made at one threshold, minimum component or TTA setting must not
    be served for masks made at another (the cache key of PredictedMasks says which)."""
    from petflare.data.longitudinal import PredictedMasks

    prep = PreprocessingConfig(channels=("pet",), spacing_mm=(3.0, 3.0, 3.0))
    settings = InferenceSettings(roi_size_vox=(16, 16, 16), min_component_ml=0.1)
    net = ThresholdNet(prep.scaled_suv(THRESHOLD_SUV))
    own = Predictor(net, prep, settings, "cpu")
    same = Predictor(net, prep, settings, "cpu", threshold=0.5, min_component_ml=0.1)
    assert own.mask_settings == {"threshold": 0.5, "min_component_ml": 0.1, "tta": False}
    assert PredictedMasks(own, "sha").cache_tag == PredictedMasks(same, "sha").cache_tag
    tags = {PredictedMasks(own, "sha").cache_tag}
    for kwargs in ({"threshold": 0.3}, {"min_component_ml": 1.0}, {"tta": True}):
        tags.add(PredictedMasks(Predictor(net, prep, settings, "cpu", **kwargs), "sha").cache_tag)
    exported_otherwise = Predictor(net, prep, replace(settings, threshold=0.3), "cpu")
    assert PredictedMasks(exported_otherwise, "sha").cache_tag in tags  # same masks, same key
    assert len(tags) == 4


class OrganThresholdNet(ThresholdNet):
    """ThresholdNet plus 3 organ logits: organ 1 where SUV > 0.5 and not lesion, else organ 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lesion = super().forward(x)
        body = self.gain * (x[:, :1] - 0.2)
        organs = torch.cat([-body, body - lesion[:, 1:], torch.full_like(body, -50.0)], dim=1)
        return torch.cat([lesion, organs], dim=1)


def test_organ_output_is_read_back_on_the_input_grid() -> None:
    """An anatomy-aware network: the lesion channels alone make the mask, the organ map comes
    back on the study's grid (non-RAS affine) with the organ indices the network gave."""
    affine = make_non_ras_affine()
    study = off_centre_study(affine)
    prep = PreprocessingConfig(channels=("pet",), spacing_mm=(3.0, 3.0, 3.0))
    settings = InferenceSettings(roi_size_vox=(16, 16, 16), overlap=0.25, min_component_ml=0.0)
    lesion_only = threshold_predictor()
    with_organs = Predictor(
        OrganThresholdNet(prep.scaled_suv(THRESHOLD_SUV)),
        prep,
        settings,
        device="cpu",
        metadata={"organ_classes": 3},
    )
    assert lesion_only.predict_organs(study) is None
    np.testing.assert_array_equal(with_organs.predict(study), lesion_only.predict(study))
    organs = with_organs.predict_organs(study)
    assert organs is not None and organs.shape == study.shape and organs.dtype == np.uint8
    assert study.mask is not None
    body = (study.pet > 0.5) & (study.mask == 0)
    # organ 1 on the body away from the lesion, never organ 2 (its logit is always lowest)
    assert (organs[body] == 1).mean() > 0.9
    assert not (organs == 2).any()


class BrainLesionNet(OrganThresholdNet):
    """Everything hot is lesion, and the organ output calls it brain (organ index 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        lesion = out[:, 1:2]
        return torch.cat([out[:, :2], -lesion, lesion, torch.full_like(lesion, -50.0)], dim=1)


def test_physiology_filter_removes_lesions_the_organ_output_places_in_the_brain() -> None:
    study = off_centre_study(make_non_ras_affine())
    prep = PreprocessingConfig(channels=("pet",), spacing_mm=(3.0, 3.0, 3.0))
    settings = InferenceSettings(roi_size_vox=(16, 16, 16), overlap=0.25, min_component_ml=0.0)
    net = BrainLesionNet(prep.scaled_suv(THRESHOLD_SUV))

    def make(**kwargs: object) -> Predictor:
        return Predictor(net, prep, settings, device="cpu", metadata={"organ_classes": 3}, **kwargs)  # type: ignore[arg-type]

    plain = make().segment(study)
    assert plain.mask.any() and plain.dropped_physiological == {}
    filtered = make(physiology_filter=True).segment(study)
    assert not filtered.mask.any()
    assert filtered.dropped_physiological == {"brain": 1}
    # the model folder's setting is the default
    stored = Predictor(
        net,
        prep,
        replace(settings, physiology_filter=True),
        device="cpu",
        metadata={"organ_classes": 3},
    )
    assert stored.physiology_filter and not stored.predict(study).any()
    # a lesion-only network ignores the filter (it has no organ output)
    assert not threshold_predictor(physiology_filter=True).physiology_filter
    # the masks a pair compares (and the head trains on) leave the brain out, filter or not
    assert not make().disease_mask(study).any()
    lesion_only = threshold_predictor()
    np.testing.assert_array_equal(lesion_only.disease_mask(study), lesion_only.predict(study))
    from petflare.data.longitudinal import PredictedMasks

    source = PredictedMasks(make(), "sha")
    assert source.cache_tag.endswith(":disease") and not source(study).any()
    assert not PredictedMasks(lesion_only, "sha").cache_tag.endswith(":disease")
    assert PredictedMasks(lesion_only, "sha")(study).any()


def test_anatomy_candidate_folder_loads_with_its_organ_output() -> None:
    """models/anatomy-unet (issue 32's candidate) is a valid folder whose network has the organ
    output: the mask and the organ map come back on a non-RAS input grid."""
    predictor = Predictor.from_folder(MODELS / "anatomy-unet", device="cpu")
    assert predictor.organ_classes == 9 and not predictor.physiology_filter
    assert predictor.metadata["training"]["real_backgrounds"]["not_used"] == ["sts001"]
    study = off_centre_study(make_non_ras_affine(spacing_mm=(4.0, 4.0, 4.0)))
    found = predictor.segment(study)
    assert found.mask.shape == study.shape and found.organs is not None
    assert found.organs.shape == study.shape and int(found.organs.max()) < 9


def site_predictor(net_class: type[OrganThresholdNet], metadata: dict) -> Predictor:
    """A site network on a coarser (6 mm) grid than :func:`threshold_predictor`'s."""
    coarse = PreprocessingConfig(channels=("pet",), spacing_mm=(6.0, 6.0, 6.0))
    settings = InferenceSettings(roi_size_vox=(16, 16, 16), overlap=0.25, min_component_ml=0.0)
    net = net_class(coarse.scaled_suv(THRESHOLD_SUV))
    return Predictor(net, coarse, settings, device="cpu", metadata=metadata)


def test_a_site_network_gives_a_lesion_only_network_its_organ_map(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The site network's organ map (its own, coarser grid) comes back on the study's grid; the
    physiology filter and the masks a pair compares read it as they read an own organ output."""
    from petflare.inference import predictor as predictor_module

    monkeypatch.setattr(predictor_module, "SITES_MIN_EXTENT_MM", 0.0)  # a tiny test volume
    study = off_centre_study(make_non_ras_affine())
    sites = site_predictor(BrainLesionNet, {"organ_classes": 3, "weights": {"sha256": "abc"}})
    plain = threshold_predictor(sites=sites)
    assert plain.has_organs and plain.sites is sites and not plain.physiology_filter
    found = plain.segment(study)
    assert found.organs is not None and found.organs.shape == study.shape
    assert found.mask.any() and (found.organs[found.mask > 0] == 1).mean() > 0.5
    np.testing.assert_array_equal(found.mask, threshold_predictor().predict(study))
    assert not plain.disease_mask(study).any()  # the pair leaves the "brain" out
    filtered = threshold_predictor(sites=sites, physiology_filter=True).segment(study)
    assert not filtered.mask.any() and filtered.dropped_physiological == {"brain": 1}
    assert plain.mask_settings["sites"] == "abc"
    assert plain.mask_settings["sites_unused"] == "kidney"  # a feature cache knows the rule
    # a short field of view (a tumour crop) has no body context: no organ map, nothing dropped
    extent = predictor_module.craniocaudal_extent_mm(study)
    assert 0.0 < extent < 350.0
    monkeypatch.setattr(predictor_module, "SITES_MIN_EXTENT_MM", extent + 1.0)
    crop = threshold_predictor(sites=sites, physiology_filter=True).segment(study)
    assert crop.organs is None and crop.mask.any() and crop.dropped_physiological == {}
    with pytest.raises(ValueError, match="no organ output"):
        threshold_predictor(sites=threshold_predictor())


def test_model_folder_loads_its_site_subfolder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from petflare.errors import PetflareInputError
    from petflare.inference import predictor as predictor_module
    from petflare.inference.predictor import SITES_SUBFOLDER

    monkeypatch.setattr(predictor_module, "SITES_MIN_EXTENT_MM", 0.0)  # a tiny test volume
    folder = tiny_folder(tmp_path)
    make_tiny_model_folder(folder / SITES_SUBFOLDER, spacing_mm=(8.0, 8.0, 8.0), organ_classes=3)
    study = off_centre_study(make_non_ras_affine(spacing_mm=(4.0, 4.0, 4.0)))
    predictor = Predictor.from_folder(folder, device="cpu")
    assert predictor.sites is not None and predictor.sites.organ_classes == 3
    found = predictor.segment(study)
    assert found.organs is not None and found.organs.shape == study.shape
    assert int(found.organs.max()) < 3
    assert Predictor.from_folder(folder, device="cpu", sites=False).sites is None
    other = tiny_folder(tmp_path / "other")
    make_tiny_model_folder(other / SITES_SUBFOLDER)  # a lesion-only network as "sites"
    with pytest.raises(PetflareInputError, match="sites"):
        Predictor.from_folder(other, device="cpu")


@pytest.mark.parametrize("flip_z", [False, True], ids=["feet_first", "head_first_array"])
def test_plausible_organs_keeps_one_bladder_one_heart_two_kidneys(flip_z: bool) -> None:
    """A necrotic thigh mass that a site network also calls bladder and myocardium is a second
    piece: the bladder nearest the head and the largest heart stay, the rest is background;
    the array's axis order does not matter (the affine says where the head is)."""
    from petflare.constants import ORGAN_TO_INDEX
    from petflare.inference.postprocess import plausible_organs

    bladder, heart, kidney = (ORGAN_TO_INDEX[n] for n in ("bladder", "myocardium", "kidney"))
    organs = np.zeros((20, 20, 60), dtype=np.uint8)
    organs[5:10, 5:10, 20:25] = bladder  # the real bladder (z 20-24)
    organs[5:11, 5:11, 5:10] = bladder  # "bladder" in the thigh, lower and larger
    organs[5:12, 5:12, 45:52] = heart
    organs[12:15, 12:15, 5:8] = heart  # a smaller second "heart" in the thigh
    organs[2:5, 12:16, 30:36] = kidney
    organs[15:18, 12:16, 30:36] = kidney
    organs[10:11, 10:11, 28:29] = kidney  # a speck: a third piece
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    if flip_z:  # the same body stored head first: the array flipped, the affine compensates
        organs = organs[:, :, ::-1].copy()
        affine = affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 59], [0, 0, 0, 1.0]])
    out = plausible_organs(organs, affine)
    back = out[:, :, ::-1] if flip_z else out
    assert (back[5:10, 5:10, 20:25] == bladder).all()
    assert not (back[5:11, 5:11, 5:10] == bladder).any()
    assert (back[5:12, 5:12, 45:52] == heart).all() and not (back[12:15, 12:15, 5:8] == heart).any()
    assert (back == kidney).sum() == 2 * 3 * 4 * 6 and back[10, 10, 28] == 0
    untouched = plausible_organs(out, affine)
    np.testing.assert_array_equal(untouched, out)


def test_the_site_networks_kidneys_are_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lesion the site network calls kidney stays a lesion (SITES_UNUSED_ORGANS)."""
    from petflare.constants import ORGAN_TO_INDEX
    from petflare.inference import predictor as predictor_module

    monkeypatch.setattr(predictor_module, "SITES_MIN_EXTENT_MM", 0.0)  # a tiny test volume

    class KidneyLesionNet(OrganThresholdNet):
        """Everything hot is lesion, and the organ output calls it kidney."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = super().forward(x)
            lesion = out[:, 1:2]
            organs = [torch.full_like(lesion, -50.0) for _ in range(9)]
            organs[0] = -lesion
            organs[ORGAN_TO_INDEX["kidney"]] = lesion
            return torch.cat([out[:, :2], *organs], dim=1)

    study = off_centre_study(make_non_ras_affine())
    sites = site_predictor(KidneyLesionNet, {"organ_classes": 9})
    assert sites.segment(study).organs is not None
    assert (sites.segment(study).organs == ORGAN_TO_INDEX["kidney"]).any()
    found = threshold_predictor(sites=sites, physiology_filter=True).segment(study)
    assert found.mask.any() and found.dropped_physiological == {}
    assert found.organs is not None and not (found.organs == ORGAN_TO_INDEX["kidney"]).any()
