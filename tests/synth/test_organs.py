"""The phantom's organ label map: where the organs are painted, on the scan grid, in each layout."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from petflare.constants import ORGAN_TO_INDEX, ORGANS, Keys
from petflare.io.layouts import load_autopet, load_manifest, manifest_to_studies
from petflare.synth import PhantomConfig, generate_dataset, generate_pair
from petflare.synth.anatomy import render_anatomy, sample_anatomy, sample_physiology
from petflare.synth.canvas import Canvas
from petflare.synth.geometry import ScanGeometry, grid_affine


def _rendered(seed: int) -> tuple[Canvas, object, object]:
    """Noise-free anatomy of one patient on a 4 mm RAS grid."""
    rng = np.random.default_rng(seed)
    anatomy = sample_anatomy(rng)
    phys = sample_physiology(rng, myocardium_suv=(6.0, 8.0))
    lo, hi = anatomy.body_bounds()
    affine, shape = grid_affine(lo - 10, hi + 10, np.array([4.0, 4.0, 4.0]), "RAS")
    canvas = Canvas(ScanGeometry(shape, affine, np.eye(3), np.zeros(3)), rng)
    render_anatomy(canvas, anatomy, phys)
    return canvas, anatomy, phys


@pytest.mark.parametrize("seed", [0, 1])
def test_organ_labels_cover_the_painted_organs(seed: int) -> None:
    canvas, anatomy, phys = _rendered(seed)
    organs, suv = canvas.organs, canvas.suv
    assert organs.dtype == np.uint8 and organs.shape == suv.shape
    assert set(np.unique(organs)) <= set(range(len(ORGANS)))
    brain = organs == ORGAN_TO_INDEX["brain"]
    # the brain's hot voxels (grey matter: >= 0.8 x the brain level, head only) are brain
    head = np.zeros_like(brain)
    head[..., int(np.argmax(brain.any(axis=(0, 1)))) :] = True
    hot_head = (suv >= 0.8 * phys.brain) & head
    assert hot_head.sum() > 50
    assert brain[hot_head].mean() >= 0.95
    # each organ's label shows that organ's uptake (noise-free, before blur)
    levels = {
        "brain": (0.4 * phys.brain, 1.05 * phys.brain),
        "liver": (0.9 * phys.liver, 1.1 * phys.liver),
        "bladder": (0.9 * phys.bladder, 1.05 * phys.bladder),
        "myocardium": (0.6 * phys.myocardium, 1.2 * phys.myocardium),
    }
    for name, (low, high) in levels.items():
        label = organs == ORGAN_TO_INDEX[name]
        assert label.sum() > 5, name
        assert low <= float(np.median(suv[label])) <= high, name
    # kidneys (with their urine-filled pelvis) are hotter than the liver; the air has no organ
    kidney = organs == ORGAN_TO_INDEX["kidney"]
    assert np.median(suv[kidney]) > phys.liver
    assert organs[0, 0, 0] == 0 and not organs[suv == 0].any()


def test_pair_organ_maps_on_the_scan_grid_and_free_of_lesions(
    coarse_config: PhantomConfig,
) -> None:
    baseline, followup, _ = generate_pair(21, "new_lesions", coarse_config)
    for study in (baseline, followup):
        assert study.organs is not None and study.organs.shape == study.pet.shape
        assert study.mask is not None
        assert not np.any((study.mask > 0) & (study.organs > 0))  # lesions are not organs
        present = {ORGANS[i] for i in np.unique(study.organs)}
        assert {"brain", "liver", "kidney", "bladder", "bowel"} <= present
        # on the non-RAS grid the brain label sits where the PET is hottest in the head
        brain = study.organs == ORGAN_TO_INDEX["brain"]
        assert study.pet[brain].mean() > 2.0 * study.pet[study.organs == 0].mean()


def test_organ_maps_written_beside_the_studies_and_listed(
    tmp_path: Path, coarse_config: PhantomConfig
) -> None:
    manifest = generate_dataset(tmp_path / "ds", 2, seed=5, config=coarse_config)
    rows = load_manifest(manifest)
    entries = manifest_to_studies(rows)
    assert len(entries) == 4
    for entry in entries:
        organs_path = Path(entry[Keys.ORGANS])
        assert (
            organs_path.name == "ORGANS.nii.gz" and organs_path.parent == Path(entry["pet"]).parent
        )
        organs, pet = nib.load(organs_path), nib.load(entry["pet"])
        assert organs.get_data_dtype() == np.uint8 and organs.shape == pet.shape
        np.testing.assert_array_equal(organs.affine, pet.affine)
        assert np.asarray(organs.dataobj).max() > 0
    autopet = load_autopet(tmp_path / "ds" / "autopet")
    assert sorted(e[Keys.ORGANS] for e in autopet) == sorted(e[Keys.ORGANS] for e in entries)
