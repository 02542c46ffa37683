"""Hybrid scans: synthetic lesions inserted into (tiny synthetic, and one real) backgrounds."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from petflare.constants import KNOWN_DISEASE_LABEL, ORGAN_IGNORE, ORGAN_TO_INDEX
from petflare.errors import PetflareInputError
from petflare.io.layouts import load_autopet
from petflare.io.nifti import load_nifti, save_nifti
from petflare.paths import real_data_dir
from petflare.synth.backgrounds import (
    REAL_BACKGROUNDS,
    Background,
    BackgroundSpec,
    analyse_background,
    load_backgrounds,
    read_background,
)
from petflare.synth.hybrid import (
    BLUR_TRUNCATE,
    HybridConfig,
    generate_hybrid_dataset,
    generate_hybrid_scan,
    insert_lesions,
)

#: A non-RAS, permuted, anisotropic grid: array axis 0 runs superior (3 mm), axis 1 to the
#: patient's right (-x, 4 mm), axis 2 posterior (-y, 5 mm).
AFFINE = np.array(
    [
        [0.0, -4.0, 0.0, 60.0],
        [0.0, 0.0, -5.0, 80.0],
        [3.0, 0.0, 0.0, -40.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
SHAPE = (60, 44, 36)
NO_AUGMENTATION = {
    "suv_scale": (1.0, 1.0),
    "resample_probability": 0.0,
    "blur_probability": 0.0,
    "extra_noise_probability": 0.0,
}


def _world_mm() -> np.ndarray:
    ijk = np.indices(SHAPE, dtype=np.float64).reshape(3, -1)
    return (AFFINE[:3, :3] @ ijk + AFFINE[:3, 3:]).reshape(3, *SHAPE)


def tiny_background(seed: int = 0) -> Background:
    """A torso-like box: soft tissue 0.7, a 'liver' 2.0 (~290 ml), a hot 'bladder' 25."""
    x, y, z = _world_mm()
    body = ((x - 20) / 80) ** 2 + ((y - 5) / 60) ** 2 <= 1.0
    body &= (z > -30) & (z < 125)
    suv = np.where(body, 0.7, 0.0).astype(np.float32)
    liver = body & (np.abs(x - 0) < 35) & (np.abs(y - 5) < 30) & (np.abs(z - 90) < 25)
    suv[liver] = 2.0
    bladder = (x - 45) ** 2 + (y + 5) ** 2 + (z - 10) ** 2 < 15**2
    suv[bladder] = 25.0
    rng = np.random.default_rng(seed)
    suv = ndimage.gaussian_filter(suv, 1.0)
    suv = np.clip(suv + 0.1 * np.sqrt(suv) * rng.standard_normal(SHAPE), 0, None)
    return Background(
        name="tiny", suv=suv.astype(np.float32), affine=AFFINE.copy(), psf_fwhm_mm=7.0
    )


@pytest.fixture(scope="module")
def tiny() -> tuple[Background, object]:
    bg = tiny_background()
    return bg, analyse_background(bg)


def _support_margin_mm(config: HybridConfig, psf_mm: float) -> float:
    """How far from a lesion's label activity may reach: its partial-volume rim plus the blur."""
    spacing = np.linalg.norm(AFFINE[:3, :3], axis=0)
    sigma_vox = psf_mm / 2.3548 / spacing
    blur_mm = float(((np.ceil(BLUR_TRUNCATE * sigma_vox) + 1) * spacing).max())
    return blur_mm + 2 * float(spacing.max())


@pytest.mark.parametrize("noise_scale", [0.0, 1.0])
def test_inserted_lesions_are_where_their_labels_say(tiny, noise_scale: float) -> None:
    bg, analysis = tiny
    config = HybridConfig(noise_scale=noise_scale, n_lesions=(4, 4), **NO_AUGMENTATION)
    scan = insert_lesions(bg, analysis, config, np.random.default_rng(3))
    assert len(scan.lesions) >= 3
    labels = scan.seg > 0
    # every label voxel carries added activity
    assert (scan.added_suv[labels] > 0).all()
    if noise_scale == 0:
        assert (scan.suv[labels] > bg.suv[labels]).all()
    for lesion in scan.lesions:
        voxels = scan.seg == lesion.label
        assert voxels.any()
        # the label holds the lesion's hottest added voxel
        assert (
            scan.added_suv[voxels].max()
            >= 0.95 * scan.added_suv[ndimage.binary_dilation(voxels, iterations=3)].max()
        )
    # nothing changes outside label + blur margin
    spacing = np.linalg.norm(AFFINE[:3, :3], axis=0)
    distance = ndimage.distance_transform_edt(~labels, sampling=spacing)
    far = distance > _support_margin_mm(config, bg.psf_fwhm_mm)
    assert np.array_equal(scan.suv[far], bg.suv[far])
    assert not scan.added_suv[far].any()
    # and the change is real: the lesions add activity
    assert scan.suv.sum() > bg.suv.sum()


def test_lesions_keep_away_from_hot_uptake_and_outside(tiny) -> None:
    bg, analysis = tiny
    config = HybridConfig(n_lesions=(6, 6), diameter_mm=(25.0, 40.0), **NO_AUGMENTATION)
    for seed in range(3):
        scan = insert_lesions(bg, analysis, config, np.random.default_rng(seed))
        assert scan.lesions
        labels = scan.seg > 0
        assert not (labels & analysis.forbidden).any()
        assert (bg.suv[labels] < 10).all()  # never on the hot 'bladder'
        assert analysis.body[labels].all()


def test_faint_lesions_are_labelled(tiny) -> None:
    bg, analysis = tiny
    config = HybridConfig(faint_probability=1.0, n_lesions=(5, 5), **NO_AUGMENTATION)
    scan = insert_lesions(bg, analysis, config, np.random.default_rng(7))
    assert len(scan.lesions) >= 4
    smooth = ndimage.gaussian_filter(bg.suv, 1.0)
    for lesion in scan.lesions:
        assert lesion.faint
        floor = max((1 + config.min_contrast) * lesion.local_background_suv, 2.0)
        assert floor - 1e-6 <= lesion.suvmax <= max(4.0, floor + 0.31)
        voxels = scan.seg == lesion.label
        assert voxels.any(), f"faint lesion {lesion} has no label"
        observed = float((smooth + scan.added_suv)[voxels].max())
        assert observed > lesion.local_background_suv * (1 + 0.5 * config.min_contrast)


def test_necrotic_core_is_labelled_only_under_the_gtv_convention(tiny) -> None:
    bg, analysis = tiny
    base = dict(
        n_lesions=(2, 2),
        diameter_mm=(26.0, 32.0),
        necrosis_probability=1.0,
        necrosis_min_diameter_mm=20.0,
        noise_scale=0.0,
        **NO_AUGMENTATION,
    )
    avid = insert_lesions(bg, analysis, HybridConfig(**base), np.random.default_rng(5))
    gtv = insert_lesions(
        bg, analysis, HybridConfig(label_necrotic_core=True, **base), np.random.default_rng(5)
    )
    assert [les.necrotic for les in gtv.lesions] == [True] * len(gtv.lesions) != []
    np.testing.assert_array_equal(avid.suv, gtv.suv)  # same draws, same image
    assert ((avid.seg > 0) <= (gtv.seg > 0)).all()
    core = (gtv.seg > 0) & (avid.seg == 0)
    assert core.sum() >= 5
    # the newly labelled voxels are the necrotic centre, enclosed by the avid label
    filled = ndimage.binary_fill_holes(ndimage.binary_closing(avid.seg > 0, iterations=2))
    assert filled[core].mean() > 0.9


def test_known_disease_is_labelled_and_avoided() -> None:
    bg = tiny_background()
    x, y, z = _world_mm()
    disease = (x - 40) ** 2 + (y - 20) ** 2 + (z - 60) ** 2 < 12**2
    bg = replace(bg, disease=disease)
    bg.suv[disease] += 3.0
    analysis = analyse_background(bg)
    scan = insert_lesions(
        bg, analysis, HybridConfig(n_lesions=(5, 5), **NO_AUGMENTATION), np.random.default_rng(1)
    )
    assert scan.disease_labels == [1]
    assert (scan.seg[disease] == 1).all()
    inserted = scan.seg > 1
    spacing = np.linalg.norm(AFFINE[:3, :3], axis=0)
    near = ndimage.distance_transform_edt(~disease, sampling=spacing) <= 10.0
    assert not (inserted & near).any()


def test_excluded_organs_of_the_annotation_get_no_lesion() -> None:
    bg = tiny_background()
    organs = np.zeros(SHAPE, dtype=np.uint8)
    x, _, _ = _world_mm()
    organs[(x < -10) & (bg.suv > 0.3)] = ORGAN_TO_INDEX["kidney"]  # half the body
    bg = replace(bg, organs=organs)
    analysis = analyse_background(bg)
    for seed in range(3):
        scan = insert_lesions(
            bg,
            analysis,
            HybridConfig(n_lesions=(5, 5), **NO_AUGMENTATION),
            np.random.default_rng(seed),
        )
        assert not ((scan.seg > 0) & (organs > 0)).any()
        kidney = organs == ORGAN_TO_INDEX["kidney"]
        assert (scan.organs[kidney] == ORGAN_TO_INDEX["kidney"]).all()
        unknown = analysis.body & ~kidney & (scan.seg == 0)
        assert (scan.organs[unknown] == ORGAN_IGNORE).all()
        assert (scan.organs[~analysis.body] == 0).all() and (scan.organs[scan.seg > 0] == 0).all()


def test_geometry_is_the_backgrounds_or_a_resampled_grid_of_it(tiny) -> None:
    bg, analysis = tiny
    scan = generate_hybrid_scan(bg, HybridConfig(**NO_AUGMENTATION), seed=5, analysis=analysis)
    assert scan.suv.shape == bg.suv.shape == scan.seg.shape
    assert np.array_equal(scan.affine, bg.affine)
    config = HybridConfig(**{**NO_AUGMENTATION, "resample_probability": 1.0})
    resampled = generate_hybrid_scan(bg, config, seed=5, analysis=analysis)
    assert resampled.suv.shape == resampled.seg.shape
    directions = resampled.affine[:3, :3] / np.linalg.norm(resampled.affine[:3, :3], axis=0)
    assert np.allclose(directions, bg.affine[:3, :3] / np.linalg.norm(bg.affine[:3, :3], axis=0))
    # same field of view (within one new voxel)
    extent = np.asarray(bg.suv.shape) * np.linalg.norm(bg.affine[:3, :3], axis=0)
    new_spacing = np.linalg.norm(resampled.affine[:3, :3], axis=0)
    assert np.all(np.abs(np.asarray(resampled.suv.shape) * new_spacing - extent) <= new_spacing)
    assert (resampled.seg > 0).any()


def test_same_seed_same_scan_and_augmentation_changes_it(tiny) -> None:
    bg, analysis = tiny
    first = generate_hybrid_scan(bg, HybridConfig(), seed=11, analysis=analysis)
    again = generate_hybrid_scan(bg, HybridConfig(), seed=11, analysis=analysis)
    assert np.array_equal(first.suv, again.suv) and np.array_equal(first.seg, again.seg)
    scaled = generate_hybrid_scan(
        bg,
        HybridConfig(**{**NO_AUGMENTATION, "suv_scale": (1.25, 1.25), "n_lesions": (0, 0)}),
        seed=11,
        analysis=analysis,
    )
    assert np.allclose(scaled.suv, 1.25 * bg.suv, rtol=1e-5)


def test_dataset_layout_metadata_and_autopet_reader(tmp_path: Path) -> None:
    backgrounds = [tiny_background(0), replace(tiny_background(1), name="tiny2")]
    organs = np.zeros(SHAPE, dtype=np.uint8)
    organs[backgrounds[1].suv > 10] = ORGAN_TO_INDEX["bladder"]
    backgrounds[1] = replace(backgrounds[1], organs=organs)
    meta_path = generate_hybrid_dataset(
        tmp_path / "hy",
        backgrounds,
        n_variants=2,
        seed=3,
        config=HybridConfig(**NO_AUGMENTATION),
        skipped={"sts001": "excluded (exclude=...)"},
    )
    meta = json.loads(meta_path.read_text())
    assert [b["name"] for b in meta["backgrounds_used"]] == ["tiny", "tiny2"]
    assert meta["backgrounds_not_used"] == {"sts001": "excluded (exclude=...)"}
    entries = load_autopet(tmp_path / "hy" / "autopet")
    assert [(e["patient_id"], e["study_id"]) for e in entries] == [
        ("tiny", "v0000"),
        ("tiny", "v0001"),
        ("tiny2", "v0000"),
        ("tiny2", "v0001"),
    ]
    for entry in entries:
        suv, affine = load_nifti(entry["pet"])
        seg, seg_affine = load_nifti(entry["label"])
        assert np.allclose(affine, AFFINE) and np.allclose(seg_affine, AFFINE)
        truth = json.loads(
            (
                tmp_path / "hy" / "truth" / f"{entry['patient_id']}_{entry['study_id']}.json"
            ).read_text()
        )
        assert sorted(int(v) for v in np.unique(seg) if v) == truth["labels_present"]
        assert len(truth["lesions"]) >= 1
    for entry in entries:  # every study has its organ map (the datalist's "organs")
        organ_map, organ_affine = load_nifti(entry["organs"])
        assert np.allclose(organ_affine, AFFINE)
        assert set(np.unique(organ_map)) <= {0, ORGAN_TO_INDEX["bladder"], ORGAN_IGNORE}
    bladder, _ = load_nifti(tmp_path / "hy" / "autopet" / "tiny2" / "v0000" / "ORGANS.nii.gz")
    assert (bladder == ORGAN_TO_INDEX["bladder"]).sum() == (organs > 0).sum()
    a, _ = load_nifti(tmp_path / "hy" / "autopet" / "tiny" / "v0000" / "SUV.nii.gz")
    b, _ = load_nifti(tmp_path / "hy" / "autopet" / "tiny" / "v0001" / "SUV.nii.gz")
    assert not np.array_equal(a, b)  # variants differ


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="site_weights"):
        HybridConfig(site_weights={"brain": 1.0})
    with pytest.raises(ValueError, match="label_fraction"):
        HybridConfig(label_fraction=1.5)
    with pytest.raises(ValueError, match="diameter_mm"):
        HybridConfig(diameter_mm=(10.0, 5.0))


def test_leave_one_background_out_and_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(PetflareInputError, match="unknown background"):
        load_backgrounds(["nope"], tmp_path)
    with pytest.raises(PetflareInputError, match="no usable background"):
        load_backgrounds(["sts001"], tmp_path, exclude=["sts001"])
    # unlabelled disease without an annotation: not used, said why (no DICOM is read)
    with pytest.raises(PetflareInputError, match="unlabelled disease"):
        load_backgrounds(["acrin042"], tmp_path, tmp_path / "annotations")


def test_annotation_known_disease_and_organs_are_read(tmp_path: Path, monkeypatch) -> None:
    """The region map's organs become ORGANS and its known-disease value a labelled lesion."""
    from petflare.io.study import Study
    from petflare.synth import backgrounds as module

    bg = tiny_background()
    regions = np.zeros(SHAPE, dtype=np.uint8)
    regions[bg.suv > 10] = ORGAN_TO_INDEX["bladder"]
    regions[10:14, 10:14, 10:14] = KNOWN_DISEASE_LABEL
    save_nifti(regions, AFFINE, tmp_path / "ann" / "fake" / "regions.nii.gz")
    monkeypatch.setattr(module, "read_dicom_pet", lambda folder: Study(bg.suv, AFFINE))
    spec = BackgroundSpec("fake", "fake/image", 7.0, unlabelled_disease=True)
    read = read_background(spec, tmp_path, tmp_path / "ann")
    assert read.disease is not None and read.disease.sum() == 64
    assert read.organs is not None
    assert set(np.unique(read.organs)) == {0, ORGAN_TO_INDEX["bladder"]}


# ------------------------------------------------------------------------------------------
# Real data (skipped without ../shared/data/real)
# ------------------------------------------------------------------------------------------


REAL = real_data_dir()
needs_sts001 = pytest.mark.skipif(
    not (REAL / REAL_BACKGROUNDS["sts001"].series).is_dir(),
    reason=f"real STS_001 DICOM not found under {REAL} (set PETFLARE_REAL_DATA)",
)


@pytest.mark.slow
@needs_sts001
def test_real_sts001_background(tmp_path: Path) -> None:
    bg = read_background(REAL_BACKGROUNDS["sts001"], REAL)
    assert bg.disease is not None and bg.disease.sum() > 1000  # the thigh sarcoma (GTV_Mass)
    analysis = analyse_background(bg)
    assert 1.0 < analysis.liver_suv_mean < 3.0
    assert 0.03 < analysis.noise_cv < 0.4
    scan = generate_hybrid_scan(bg, HybridConfig(**NO_AUGMENTATION), 2, analysis)
    assert np.array_equal(scan.affine, bg.affine) and scan.suv.shape == bg.suv.shape
    assert (scan.seg[bg.disease] == 1).all()  # the real sarcoma is lesion, not background
    inserted = scan.seg > 1
    assert inserted.any() and not (inserted & analysis.forbidden).any()
    assert (scan.added_suv[inserted] > 0).all()
    assert (bg.suv[inserted] < 6).all()  # never on the heart, bladder or brain


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    script = REPO / "scripts" / "synthesize_hybrid.py"
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, cwd=REPO, timeout=600
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "out=DIR is required"),
        (("out=/tmp/x", "hybrid.label_fraction=2"), "label_fraction"),
        (("out=/tmp/x", "backgrounds=[nope]"), "unknown background"),
        (("out=/tmp/x", "backgrounds=[sts001]", "data_root=/nonexistent"), "/nonexistent"),
    ],
)
def test_cli_bad_input_exits_2(args: tuple[str, ...], message: str) -> None:
    res = _cli(*args)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_help_and_config_defaults() -> None:
    res = _cli("--help")
    assert res.returncode == 0
    for word in ("out=DIR", "n_variants", "exclude", "SEG.nii.gz", "ORGANS.nii.gz", "hybrid.json"):
        assert word in res.stdout
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("synthesize_hybrid")
    assert instantiate(cfg.hybrid, _convert_="all") == HybridConfig()


@pytest.mark.slow
@needs_sts001
def test_cli_on_the_real_sts001_background(tmp_path: Path) -> None:
    out = tmp_path / "hy"
    res = _cli(f"out={out}", "n_variants=1", "backgrounds=[sts001]", f"data_root={REAL}", "seed=2")
    assert res.returncode == 0, res.stderr
    meta = json.loads((out / "hybrid.json").read_text())
    assert [b["name"] for b in meta["backgrounds_used"]] == ["sts001"]
    assert (out / "autopet" / "sts001" / "v0000" / "SEG.nii.gz").is_file()
    assert (out / "mip_example.png").stat().st_size > 10_000
