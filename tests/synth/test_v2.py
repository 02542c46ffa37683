"""Phantom v2: uptake ranges as configured, extra physiology, deformation, faint lesions, time."""

from __future__ import annotations

import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from petflare.constants import ORGAN_TO_INDEX
from petflare.synth import PhantomConfig, generate_pair
from petflare.synth.anatomy import render_anatomy, sample_anatomy, sample_physiology
from petflare.synth.canvas import Canvas
from petflare.synth.config import phantom_overrides, phantom_tag
from petflare.synth.geometry import ScanGeometry, grid_affine
from petflare.synth.variability import ScanExtras, paint_extras, sample_extras, sample_warp

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "synth"


def v2_config(**changes: object) -> PhantomConfig:
    """configs/synth/v2.yaml (over default.yaml) as the CLI composes it, with ``changes``."""
    merged = OmegaConf.merge(
        OmegaConf.load(CONFIGS / "default.yaml"),
        {k: v for k, v in OmegaConf.load(CONFIGS / "v2.yaml").items() if k != "defaults"},
    )
    config = instantiate(merged, _convert_="all")
    assert isinstance(config, PhantomConfig)
    return replace(config, **changes)  # type: ignore[arg-type]


V2 = v2_config()
#: v2 on an 8-10 mm grid: its physiology and lesions in well under a second a scan.
V2_COARSE = v2_config(
    spacing_inplane_mm=(8.0, 10.0),
    spacing_slice_mm=(8.0, 10.0),
    psf_fwhm_mm=(9.0, 12.0),
    min_voxel_volume_mm3=0.0,
)


def test_v2_widens_the_default_ranges() -> None:
    """Every range v2 changes contains the default one (v2 is wider, never elsewhere)."""
    default = PhantomConfig()
    changed = phantom_overrides(V2)
    assert len(changed) >= 20
    for name, value in changed.items():
        base = getattr(default, name)
        if isinstance(base, tuple) and len(base) == 2 and name != "n_faint_lesions":
            assert value[0] <= base[0] and value[1] >= base[1], name
    assert V2.brain_suv[1] >= 14 and V2.myocardium_suv[1] > 20 and V2.bladder_suv[1] > 100
    assert V2.psf_fwhm_mm == (4.0, 9.0) and V2.spacing_inplane_mm == (2.0, 5.5)
    # a cache folder name stays short whatever the number of overrides
    assert phantom_tag(changed).startswith("h") and len(phantom_tag(changed)) == 17


def test_v2_uptakes_are_drawn_within_the_configured_ranges() -> None:
    draws = [sample_physiology(np.random.default_rng(s), config=V2) for s in range(300)]
    pairs = {
        "brain": V2.brain_suv,
        "kidney": V2.kidney_suv,
        "urine": V2.urine_suv,
        "bladder": V2.bladder_suv,
        "bowel": V2.bowel_suv,
        "salivary": V2.salivary_suv,
        "tonsil": V2.tonsil_suv,
    }
    for name, (low, high) in pairs.items():
        values = np.array([getattr(p, name) for p in draws])
        assert values.min() >= low and values.max() <= high, name
        # the draws span the range: both ends are reached (within 15% of its width)
        assert values.min() <= low + 0.15 * (high - low), name
        assert values.max() >= high - 0.15 * (high - low) or name in ("urine", "bladder"), name
    hearts = np.array([p.myocardium for p in draws])
    visible = hearts[hearts > 2.0]
    assert visible.max() <= V2.myocardium_suv[1] and visible.max() > 20.0
    assert 0.25 <= np.mean(hearts <= 2.0) <= 0.45  # fasted (invisible) hearts: about 35%
    # log-uniform urine and bladder: low and high decades both drawn
    bladder = np.array([p.bladder for p in draws])
    assert bladder.min() < 8.0 and bladder.max() > 80.0


def test_v2_extras_follow_their_probabilities_and_ranges() -> None:
    phys = sample_physiology(np.random.default_rng(0), config=replace(V2, myocardium_suv=(9, 9)))
    extras = [sample_extras(np.random.default_rng(s), V2, phys) for s in range(400)]
    muscle = [e.muscle_suv for e in extras if e.muscles]
    joints = [e.joint_suv for e in extras if e.joints]
    sites = [e.injection_site for e in extras if e.injection_site is not None]
    fills = [e.bladder_fill for e in extras]
    assert abs(len(muscle) / 400 - V2.exercised_muscle_probability) < 0.07
    assert abs(len(joints) / 400 - V2.joint_probability) < 0.07
    assert abs(len(sites) / 400 - V2.injection_site_probability) < 0.07
    assert min(muscle) >= V2.exercised_muscle_suv[0] and max(muscle) <= V2.exercised_muscle_suv[1]
    assert min(joints) >= V2.joint_suv[0] and max(joints) <= V2.joint_suv[1]
    site_suv = [s[3] for s in sites]
    assert min(site_suv) >= V2.injection_site_suv[0] and max(site_suv) <= V2.injection_site_suv[1]
    assert min(fills) >= V2.bladder_fill[0] and max(fills) <= V2.bladder_fill[1]
    assert 0.3 < np.mean([e.myocardium_patchiness > 0 for e in extras]) < 0.7
    # the default config draws the same way but switches everything off
    off = sample_extras(np.random.default_rng(1), PhantomConfig(), phys)
    assert off == ScanExtras(bladder_fill=1.0)


def _canvas(seed: int) -> tuple[Canvas, object, object]:
    rng = np.random.default_rng(seed)
    anatomy = sample_anatomy(rng)
    phys = sample_physiology(rng, config=replace(V2, myocardium_suv=(9.0, 9.0)))
    lo, hi = anatomy.body_bounds()
    affine, shape = grid_affine(lo - 10, hi + 10, np.array([5.0, 5.0, 5.0]), "RAS")
    return Canvas(ScanGeometry(shape, affine, np.eye(3), np.zeros(3)), rng), anatomy, phys


def test_extra_sites_are_painted_with_their_uptake_and_organ_labels() -> None:
    canvas, anatomy, phys = _canvas(3)
    render_anatomy(canvas, anatomy, phys)
    before_suv, before_organs = canvas.suv.copy(), canvas.organs.copy()
    extras = ScanExtras(
        ureters=((True, True, True), (True, True, True)),
        ureter_suv=20.0,
        vocal_cords_suv=5.0,
        muscles=("psoas", "thighs", "neck"),
        muscle_suv=4.0,
        joints=("hips",),
        joint_suv=3.0,
        injection_site=(0, 0.2, 18.0, 40.0),
    )
    paint_extras(canvas, anatomy, phys, extras, np.random.default_rng(0))
    other = canvas.organs == ORGAN_TO_INDEX["other_physiological"]
    assert not (before_organs == ORGAN_TO_INDEX["other_physiological"]).any() or phys.brown_fat
    assert other.sum() > 100  # muscles, joints, injection site
    assert np.median(canvas.suv[other]) > 2.0 * phys.muscle
    assert canvas.suv.max() >= 35.0  # the injection-site spot
    kidney_gain = (canvas.organs == ORGAN_TO_INDEX["kidney"]).sum() - (
        before_organs == ORGAN_TO_INDEX["kidney"]
    ).sum()
    head_neck_gain = (canvas.organs == ORGAN_TO_INDEX["head_neck"]).sum() - (
        before_organs == ORGAN_TO_INDEX["head_neck"]
    ).sum()
    assert kidney_gain > 5 and head_neck_gain > 5  # ureters; vocal cords and glands
    assert (canvas.suv > before_suv + 1.0).sum() > 100


def test_patchy_myocardium_is_uneven() -> None:
    canvas, anatomy, phys = _canvas(4)
    render_anatomy(canvas, anatomy, phys)
    wall = canvas.organs == ORGAN_TO_INDEX["myocardium"]
    even_cv = canvas.suv[wall].std() / canvas.suv[wall].mean()
    paint_extras(
        canvas, anatomy, phys, ScanExtras(myocardium_patchiness=1.0), np.random.default_rng(1)
    )
    patchy = canvas.suv[canvas.organs == ORGAN_TO_INDEX["myocardium"]]
    assert patchy.std() / patchy.mean() > even_cv + 0.15


def test_organ_deformation_bends_organs_without_moving_them_away() -> None:
    warp = sample_warp(np.random.default_rng(0), 6.0)
    canvas, anatomy, phys = _canvas(5)
    render_anatomy(canvas, anatomy, phys)
    plain = canvas.organs.copy()
    deformed, _, _ = _canvas(5)
    deformed.set_warp(warp.on_grid(deformed.geometry))
    render_anatomy(deformed, anatomy, phys)
    length = np.sqrt((deformed.warp_mm**2).sum(axis=0))
    assert 3.0 < float(length.mean()) < 10.0
    for name in ("brain", "liver", "kidney", "bladder"):
        a, b = plain == ORGAN_TO_INDEX[name], deformed.organs == ORGAN_TO_INDEX[name]
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        assert 0.4 < dice < 0.99, name  # changed shape, same place
    # the grid evaluation is the field itself
    c = canvas.geometry.coords()
    np.testing.assert_allclose(warp.on_grid(canvas.geometry), warp(c[0], c[1], c[2]), atol=1e-3)


def test_faint_lesions_are_in_both_masks() -> None:
    config = replace(V2_COARSE, n_faint_lesions=(3, 3), organ_deformation_mm=0.0)
    baseline, followup, truth = generate_pair(8, "controlled", config)
    faint = truth["faint_lesion_ids"]
    assert len(faint) >= 2
    lesions = {les["id"]: les for les in truth["lesions"]}
    for lid in faint:
        for tp, study in (("baseline", baseline), ("followup", followup)):
            entry = lesions[lid][tp]
            assert entry["in_mask"] == "whole" and lid in truth["mask_ids"][tp]
            assert (
                config.faint_lesion_suv[0]
                <= entry["suv"]
                <= 1.1 * max(config.faint_lesion_suv[1], 1.3 * truth["physiology"][tp]["liver"])
            )
            assert study.mask is not None and (study.mask == lid).any()
            # faint: even the hottest voxel stays below a typical lesion's uptake
            assert study.pet[study.mask == lid].max() < 8.0
        assert lesions[lid]["change"] == "stable"


def test_v2_pair_is_deterministic_and_fast_on_a_coarse_grid() -> None:
    start = time.perf_counter()
    a = generate_pair(12, "new_lesions", V2_COARSE)
    elapsed = time.perf_counter() - start
    b = generate_pair(12, "new_lesions", V2_COARSE)
    for sa, sb in zip(a[:2], b[:2], strict=True):
        np.testing.assert_array_equal(sa.pet, sb.pet)
        np.testing.assert_array_equal(sa.organs, sb.organs)
    assert a[2] == b[2] and a[2]["extras"]["baseline"]["bladder_fill"] != 1.0
    assert elapsed < 30.0  # ~1.5 s on a free core


def test_v2_fields_default_to_todays_phantom() -> None:
    """Every v2 option's default is 'off': the defaults reproduce the original phantom."""
    default = PhantomConfig()
    assert phantom_overrides(default) == {}
    off = {f.name: getattr(default, f.name) for f in fields(default) if "probability" in f.name}
    assert off["ureter_probability"] == off["injection_site_probability"] == 0.0
    assert default.organ_deformation_mm == 0.0 and default.n_faint_lesions == (0, 0)


@pytest.mark.slow
def test_v2_scan_generates_in_reasonable_time() -> None:
    """Full v2 (2-5.5 mm voxels): a pair within a minute even on a busy 2-core machine."""
    for seed in (1, 2):
        start = time.perf_counter()
        baseline, _, truth = generate_pair(seed, "controlled", V2)
        assert time.perf_counter() - start < 60.0
        assert baseline.organs is not None and baseline.organs.shape == baseline.pet.shape
        spacing = truth["scans"]["baseline"]["spacing_xyz_mm"]
        assert 2.0 <= spacing[0] <= 5.5 and 2.0 <= spacing[2] <= 5.0


def test_training_data_selects_v2(tmp_path: Path) -> None:
    """``data=synthetic_v2`` hands phantom v2 to the SyntheticSource (cache key: its overrides)."""
    from hydra import compose, initialize_config_dir

    from petflare.data.sources import SyntheticSource

    with initialize_config_dir(config_dir=str(CONFIGS.parent), version_base="1.3"):
        cfg = compose(
            config_name="train", overrides=["data=synthetic_v2", f"paths.cache_dir={tmp_path}"]
        )
    source = instantiate(cfg.data.source)
    assert isinstance(source, SyntheticSource)
    assert source.phantom == phantom_overrides(V2)
    assert PhantomConfig(**source.phantom) == V2
