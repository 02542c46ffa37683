"""generate_dataset: autoPET layout + manifest written, read back with nibabel, splits, refusal."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from petflare.constants import MANIFEST_COLUMNS, PATTERNS, SPLITS
from petflare.errors import OutputExistsError
from petflare.synth import PhantomConfig, generate_dataset, generate_pair
from petflare.synth.dataset import _pair_seed


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == MANIFEST_COLUMNS
        return list(reader)


@pytest.mark.slow
def test_dataset_layout_manifest_and_truth(tmp_path: Path, coarse_config: PhantomConfig) -> None:
    out = tmp_path / "ds"
    manifest = generate_dataset(out, 5, seed=3, config=coarse_config)
    assert manifest == out / "manifest.csv"
    rows = _rows(manifest)
    assert [r["patient_id"] for r in rows] == [f"PF{i:04d}" for i in range(5)]
    assert [r["pattern"] for r in rows] == [PATTERNS[i % 4] for i in range(5)]
    assert {r["split"] for r in rows} <= set(SPLITS) and "train" in {r["split"] for r in rows}
    orientations = set()
    for row in rows:
        pid = row["patient_id"]
        for tp in ("baseline", "followup"):
            folder = out / "autopet" / pid / tp
            assert sorted(p.name for p in folder.iterdir()) == [
                "CTres.nii.gz",
                "ORGANS.nii.gz",
                "SEG.nii.gz",
                "SUV.nii.gz",
            ]
            # manifest paths are relative and point at the autoPET files (nothing written twice)
            assert row[f"{tp}_pet"] == f"autopet/{pid}/{tp}/SUV.nii.gz"
            assert not Path(row[f"{tp}_pet"]).is_absolute()
            pet = nib.load(out / row[f"{tp}_pet"])
            ct = nib.load(out / row[f"{tp}_ct"])
            seg = nib.load(out / row[f"{tp}_mask"])
            assert pet.get_data_dtype() == np.float32 and ct.get_data_dtype() == np.int16
            assert seg.get_data_dtype() in (np.uint8, np.uint16)
            np.testing.assert_array_equal(pet.affine, ct.affine)
            np.testing.assert_array_equal(pet.affine, seg.affine)
            assert pet.shape == ct.shape == seg.shape
            orientations.add("".join(nib.aff2axcodes(pet.affine)))
        truth = json.loads((out / "truth" / f"{pid}.json").read_text())
        assert truth["pattern"] == row["pattern"] and truth["patient_id"] == pid
        seg_f = np.asarray(nib.load(out / row["followup_mask"]).dataobj)
        assert set(np.unique(seg_f)) - {0} == set(truth["mask_ids"]["followup"])
    assert orientations - {"RAS"}  # non-RAS affines are written


def test_dataset_matches_generate_pair(tmp_path: Path, coarse_config: PhantomConfig) -> None:
    out = tmp_path / "ds"
    manifest = generate_dataset(
        out, 2, seed=9, config=coarse_config, patterns=["new_lesions"], id_prefix="V2_"
    )
    base, follow, _ = generate_pair(_pair_seed(9, 1), "new_lesions", coarse_config)
    with manifest.open(newline="", encoding="utf-8") as fh:
        assert [r["patient_id"] for r in csv.DictReader(fh)] == ["V2_0000", "V2_0001"]
    img = nib.load(out / "autopet" / "V2_0001" / "followup" / "SUV.nii.gz")
    np.testing.assert_array_equal(np.asarray(img.dataobj), follow.pet)
    np.testing.assert_allclose(img.affine, follow.affine)


@pytest.mark.slow
def test_dataset_is_deterministic_and_independent_of_workers(
    tmp_path: Path, coarse_config: PhantomConfig
) -> None:
    a = generate_dataset(tmp_path / "a", 2, seed=1, config=coarse_config)
    b = generate_dataset(tmp_path / "b", 2, seed=1, config=coarse_config, workers=2)
    assert a.read_text() == b.read_text()
    for rel in ("autopet/PF0001/baseline/SUV.nii.gz", "autopet/PF0000/followup/SEG.nii.gz"):
        da = np.asarray(nib.load(tmp_path / "a" / rel).dataobj)
        db = np.asarray(nib.load(tmp_path / "b" / rel).dataobj)
        np.testing.assert_array_equal(da, db)


def test_splits_are_by_patient_and_cover_val_and_test(
    tmp_path: Path, coarse_config: PhantomConfig
) -> None:
    from petflare.synth.dataset import DEFAULT_SPLIT_FRACTIONS, _assign_splits

    pats = [PATTERNS[i % 4] for i in range(20)]
    splits = _assign_splits(pats, 0, DEFAULT_SPLIT_FRACTIONS)
    assert splits == _assign_splits(pats, 0, DEFAULT_SPLIT_FRACTIONS)
    assert splits.count("val") == 3 and splits.count("test") == 3 and splits.count("train") == 14
    assert len({p for p, s in zip(pats, splits, strict=True) if s != "train"}) >= 3


def test_refuses_non_empty_output_unless_overwrite(
    tmp_path: Path, coarse_config: PhantomConfig
) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(OutputExistsError, match="ds"):
        generate_dataset(out, 1, seed=0, config=coarse_config)
    assert (out / "keep.txt").exists() and not (out / "manifest.csv").exists()
    generate_dataset(out, 1, seed=0, config=coarse_config, overwrite=True)
    assert (out / "manifest.csv").exists() and not (out / "keep.txt").exists()


def test_bad_arguments_are_rejected(tmp_path: Path, coarse_config: PhantomConfig) -> None:
    from petflare.errors import PetflareInputError

    with pytest.raises(PetflareInputError, match="pattern"):
        generate_dataset(tmp_path / "x", 1, seed=0, config=coarse_config, patterns=["flare"])
    with pytest.raises(PetflareInputError, match="n_pairs"):
        generate_dataset(tmp_path / "y", 0, seed=0, config=coarse_config)
    with pytest.raises(PetflareInputError, match="id_prefix"):
        generate_dataset(tmp_path / "z", 1, seed=0, config=coarse_config, id_prefix="../PF")
    assert not (tmp_path / "z").exists()
    with pytest.raises(ValueError, match="orientations"):
        PhantomConfig(orientations=("XYZ",))
