"""Real-background longitudinal pairs: each pattern's truth holds in the written images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from petflare.constants import ORGAN_TO_INDEX, PATTERNS
from petflare.data.longitudinal.samples import load_row_studies
from petflare.errors import PetflareInputError
from petflare.io.layouts import load_manifest
from petflare.io.nifti import load_nifti
from petflare.paths import real_data_dir
from petflare.synth.backgrounds import REAL_BACKGROUNDS, Background, analyse_background
from petflare.synth.backgrounds import load_backgrounds as load_real
from petflare.synth.hybrid import HybridConfig
from petflare.synth.real_pairs import (
    RealPairConfig,
    generate_real_pair,
    generate_real_pair_dataset,
    reposition,
)

#: Non-RAS, permuted, anisotropic grid (axis 0 superior 3 mm, axis 1 -x 4 mm, axis 2 -y 4 mm).
AFFINE = np.array(
    [
        [0.0, -4.0, 0.0, 70.0],
        [0.0, 0.0, -4.0, 90.0],
        [3.0, 0.0, 0.0, -60.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
SHAPE = (72, 48, 44)
LIVER, MYO, BLADDER = (
    ORGAN_TO_INDEX["liver"],
    ORGAN_TO_INDEX["myocardium"],
    ORGAN_TO_INDEX["bladder"],
)
PHYSIOLOGICAL = [i for name, i in ORGAN_TO_INDEX.items() if name not in ("background", "liver")]


def tiny_background() -> Background:
    """Torso: soft tissue 0.7, liver 2.0, myocardium shell 6, bladder 20, a 'sarcoma' 8."""
    ijk = np.indices(SHAPE, dtype=np.float64).reshape(3, -1)
    x, y, z = (AFFINE[:3, :3] @ ijk + AFFINE[:3, 3:]).reshape(3, *SHAPE)
    body = (((x - 20) / 85) ** 2 + ((y - 5) / 80) ** 2 <= 1.0) & (z > -50) & (z < 150)
    organs = np.zeros(SHAPE, dtype=np.uint8)
    organs[body & (np.abs(x) < 35) & (np.abs(y - 5) < 30) & (np.abs(z - 90) < 22)] = LIVER
    heart = np.sqrt((x - 50) ** 2 + (y - 20) ** 2 + (z - 130) ** 2)
    organs[(heart > 9) & (heart < 17)] = MYO
    organs[(x - 45) ** 2 + (y + 5) ** 2 + (z + 25) ** 2 < 14**2] = BLADDER
    disease = (x + 40) ** 2 + (y + 30) ** 2 + (z - 30) ** 2 < 22**2
    suv = np.where(body, 0.7, 0.0).astype(np.float32)
    suv[organs == LIVER] = 2.0
    suv[organs == MYO] = 6.0
    suv[organs == BLADDER] = 20.0
    suv[disease] = 8.0
    rng = np.random.default_rng(3)
    suv = ndimage.gaussian_filter(suv, 1.0)
    suv = np.clip(suv + 0.08 * np.sqrt(suv) * rng.standard_normal(SHAPE), 0, None)
    return Background(
        name="tiny",
        suv=suv.astype(np.float32),
        affine=AFFINE.copy(),
        psf_fwhm_mm=7.0,
        disease=disease,
        organs=organs,
    )


LESIONS = HybridConfig(diameter_mm=(12.0, 20.0), avid_suvmax=(6.0, 12.0), faint_probability=0.0)
CONFIG = RealPairConfig(lesions=LESIONS, n_inserted=(1, 2), host_min_diameter_mm=(35.0, 40.0))


@pytest.fixture(scope="module")
def tiny() -> tuple[Background, object]:
    bg = tiny_background()
    return bg, analyse_background(bg)


def _liver_ratio(pair, label: int) -> float:
    """Follow-up / baseline SUVmean of a lesion, each normalised to its visit's liver mean."""
    base = pair.baseline_suv[pair.baseline_seg == label].mean()
    follow = pair.followup_suv[pair.followup_seg == label].mean()
    liver_b = pair.baseline_suv[ndimage.binary_erosion(pair.baseline_organs == LIVER, iterations=2)]
    liver_f = pair.followup_suv[ndimage.binary_erosion(pair.followup_organs == LIVER, iterations=2)]
    return float((follow / liver_f.mean()) / (base / liver_b.mean()))


def _baseline_labels(pair) -> list[int]:
    return [int(v) for v in np.unique(pair.baseline_seg) if v > 0]


@pytest.mark.parametrize("seed", [1, 2])
def test_controlled_no_lesion_rises(tiny, seed: int) -> None:
    pair = generate_real_pair(*tiny[:1], "controlled", CONFIG, seed, tiny[1])
    labels = _baseline_labels(pair)
    assert len(labels) >= 2
    assert np.array_equal(np.unique(pair.followup_seg), np.unique(pair.baseline_seg))
    assert all(_liver_ratio(pair, v) < 1.1 for v in labels)


@pytest.mark.parametrize("seed", [1, 2])
def test_diffuse_flare_most_lesions_rise(tiny, seed: int) -> None:
    pair = generate_real_pair(tiny[0], "diffuse_flare", CONFIG, seed, tiny[1])
    ratios = [_liver_ratio(pair, v) for v in _baseline_labels(pair)]
    assert sum(r > 1.25 for r in ratios) >= 0.7 * len(ratios)


@pytest.mark.parametrize("seed", [1, 2])
def test_nodule_is_a_focal_maximum_in_a_mass_that_does_not_rise(tiny, seed: int) -> None:
    pair = generate_real_pair(tiny[0], "nodule_within_mass", CONFIG, seed, tiny[1])
    host = next(les for les in pair.truth["lesions"] if les["role"] == "nodule_host")
    label = host["label"]
    assert _liver_ratio(pair, label) < 1.05  # the mass's mean holds or falls
    mask_f = pair.followup_seg == label
    # the follow-up's hottest voxel of the mass is at the nodule, and hotter than the baseline's
    move = np.array(pair.truth["nuisance"]["reposition"]["followup_from_baseline_world"])
    centre = move @ np.array([*host_nodule_world(pair), 1.0])
    peak = np.argwhere(mask_f)[int(np.argmax(np.where(mask_f, pair.followup_suv, 0)[mask_f]))]
    peak_world = AFFINE[:3, :3] @ peak + AFFINE[:3, 3]
    assert np.linalg.norm(peak_world - centre[:3]) <= pair.truth["psf_fwhm_mm"] + 8.0
    scale = pair.truth["nuisance"]["global_scale"]
    base_max = pair.baseline_suv[pair.baseline_seg == label].max()
    assert pair.followup_suv[mask_f].max() / scale > 1.2 * base_max


def host_nodule_world(pair) -> np.ndarray:
    host = next(les for les in pair.truth["lesions"] if les["role"] == "nodule_host")
    return np.array(host["nodule"]["centre_world_mm"])


@pytest.mark.parametrize("seed", [1, 2])
def test_new_lesions_are_new_focal_and_not_physiological(tiny, seed: int) -> None:
    pair = generate_real_pair(tiny[0], "new_lesions", CONFIG, seed, tiny[1])
    old = set(_baseline_labels(pair))
    new = [int(v) for v in np.unique(pair.followup_seg) if v > 0 and v not in old]
    assert new and len(new) == len(pair.truth["new_lesions"])
    moved_old = reposition(
        pair.baseline_seg,
        AFFINE,
        np.array(pair.truth["nuisance"]["reposition"]["followup_from_baseline_world"]),
        order=0,
    )
    for label in new:
        mask = pair.followup_seg == label
        assert not (mask & (moved_old > 0)).any()  # outside old lesions
        ring = ndimage.binary_dilation(mask, iterations=2)
        assert not np.isin(pair.followup_organs[ring], PHYSIOLOGICAL).any()
        # new uptake: hotter than the same place at baseline (moved) and than its surroundings
        moved_base = reposition(
            pair.baseline_suv,
            AFFINE,
            np.array(pair.truth["nuisance"]["reposition"]["followup_from_baseline_world"]),
            order=1,
        )
        assert (
            pair.followup_suv[mask].max()
            > 2.0
            * ndimage.gaussian_filter(moved_base, 1)[mask].max()
            * pair.truth["nuisance"]["global_scale"]
        )


def test_nuisance_changes_organs_not_lesions(tiny) -> None:
    config = RealPairConfig(
        lesions=LESIONS,
        n_inserted=(1, 2),
        myocardium_factor=(2.8, 3.0),
        bladder_factor=(0.5, 0.55),
        appearing_probability=1.0,
        response_factor=(1.0, 1.0),
    )
    pair = generate_real_pair(tiny[0], "controlled", config, 5, tiny[1])
    scale = pair.truth["nuisance"]["global_scale"]

    def organ_mean(organs, suv, index):
        return float(suv[organs == index].mean())

    myo = organ_mean(pair.followup_organs, pair.followup_suv, MYO) / organ_mean(
        pair.baseline_organs, pair.baseline_suv, MYO
    )
    bladder = organ_mean(pair.followup_organs, pair.followup_suv, BLADDER) / organ_mean(
        pair.baseline_organs, pair.baseline_suv, BLADDER
    )
    assert myo / scale > 2.0 and bladder / scale < 0.75
    appearing = pair.truth["nuisance"]["appearing"]["kind"]
    value = ORGAN_TO_INDEX["bowel" if appearing == "bowel" else "other_physiological"]
    assert (pair.followup_organs == value).any()
    assert not ((pair.followup_organs == value) & (pair.followup_seg > 0)).any()
    assert all(0.85 < _liver_ratio(pair, v) < 1.12 for v in _baseline_labels(pair))


def test_dataset_manifest_truth_and_exclusion(tiny, tmp_path: Path) -> None:
    config = RealPairConfig(lesions=LESIONS, n_inserted=(1, 1))
    manifest = generate_real_pair_dataset(
        tmp_path / "pairs", [tiny[0]], 4, 0, config=config, skipped={"sts001": "excluded"}
    )
    rows = load_manifest(manifest)
    assert sorted(r["pattern"] for r in rows) == sorted(PATTERNS)
    for row in rows:
        pet, affine = load_nifti(row["followup_pet"])
        assert pet.shape == SHAPE and np.allclose(affine, AFFINE)
        assert Path(row["baseline_mask"]).is_file() and Path(row["followup_organs"]).is_file()
        truth = json.loads((tmp_path / "pairs" / "truth" / f"{row['patient_id']}.json").read_text())
        assert truth["pattern"] == row["pattern"] and truth["background"] == "tiny"
        # the head's data path reads the row (PET-only: no CT columns)
        base, fol = load_row_studies(row)
        assert base.ct is None and fol.mask is not None and fol.pet.shape == SHAPE
        assert {les["label"] for les in truth["lesions"]} == set(np.unique(base.mask)) - {0}
    meta = json.loads((tmp_path / "pairs" / "real_pairs.json").read_text())
    assert meta["backgrounds_not_used"] == {"sts001": "excluded"}
    assert [b["name"] for b in meta["backgrounds_used"]] == ["tiny"]


def test_first_index_numbers_the_ids_and_keeps_the_pattern_cycle(tiny, tmp_path: Path) -> None:
    config = RealPairConfig(lesions=LESIONS, n_inserted=(1, 1))
    manifest = generate_real_pair_dataset(
        tmp_path / "pairs", [tiny[0]], 2, 0, config=config, first_index=1000
    )
    rows = load_manifest(manifest)
    assert [r["patient_id"] for r in rows] == ["tiny_p1000", "tiny_p1001"]
    assert [r["pattern"] for r in rows] == list(PATTERNS[:2])
    with pytest.raises(PetflareInputError, match="0-9999"):
        generate_real_pair_dataset(
            tmp_path / "bad", [tiny[0]], 2, 0, config=config, first_index=9999
        )
    assert not (tmp_path / "bad").exists()


def test_same_seed_same_pair(tiny) -> None:
    a = generate_real_pair(tiny[0], "diffuse_flare", CONFIG, 9, tiny[1])
    b = generate_real_pair(tiny[0], "diffuse_flare", CONFIG, 9, tiny[1])
    assert np.array_equal(a.followup_suv, b.followup_suv) and a.truth == b.truth


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        RealPairConfig(flare_factor=(0.9, 2.0))
    with pytest.raises(ValueError):
        RealPairConfig(patterns=("flare",))


REAL = real_data_dir()
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(
    not (REAL / REAL_BACKGROUNDS["sts001"].series).is_dir(),
    reason=f"real STS_001 DICOM not found under {REAL} (set PETFLARE_REAL_DATA)",
)
def test_real_sts001_pairs_hold_their_truth() -> None:
    (bg,), _ = load_real(["sts001"], REAL, REPO / "annotations" / "real")
    analysis = analyse_background(bg)
    flare = generate_real_pair(bg, "diffuse_flare", RealPairConfig(), 3, analysis)
    ratios = [_liver_ratio(flare, v) for v in _baseline_labels(flare)]
    assert sum(r > 1.2 for r in ratios) >= 0.7 * len(ratios)
    controlled = generate_real_pair(bg, "controlled", RealPairConfig(), 4, analysis)
    assert all(_liver_ratio(controlled, v) < 1.1 for v in _baseline_labels(controlled))
    nodule = generate_real_pair(bg, "nodule_within_mass", RealPairConfig(), 2, analysis)
    host = next(les["label"] for les in nodule.truth["lesions"] if les["role"] == "nodule_host")
    scale = nodule.truth["nuisance"]["global_scale"]
    assert _liver_ratio(nodule, host) < 1.05
    base_max = nodule.baseline_suv[nodule.baseline_seg == host].max()
    assert nodule.followup_suv[nodule.followup_seg == host].max() / scale > base_max


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    script = REPO / "scripts" / "synthesize_real_pairs.py"
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, cwd=REPO, timeout=600
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "out=DIR is required"),
        (("out=/tmp/x", "real_pairs.flare_factor=[0.5,2]"), "flare_factor"),
    ],
)
def test_cli_bad_input_exits_2(args: tuple[str, ...], message: str) -> None:
    res = _cli(*args)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_default_config_instantiates() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("synthesize_real_pairs")
    config = instantiate(cfg.real_pairs, _convert_="all")
    assert isinstance(config, RealPairConfig) and config.patterns == PATTERNS
    assert config.myocardium_factor == (0.3, 3.0) and config.global_scale == (0.85, 1.15)
