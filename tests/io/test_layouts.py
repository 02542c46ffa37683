"""Dataset layouts: each loads from tiny files written in the exact layout, errors are listed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from petflare.constants import MANIFEST_COLUMNS, Keys
from petflare.errors import OutputExistsError, PetflareInputError
from petflare.io.layouts import (
    load_autopet,
    load_manifest,
    load_nnunet_raw,
    manifest_to_studies,
    write_manifest,
)
from petflare.io.loading import load_study

STUDY_KEYS = {Keys.PATIENT_ID, Keys.STUDY_ID, Keys.PET, Keys.CT, Keys.LABEL, Keys.SPLIT}

# ------------------------------------------------------------------ autoPET / TCIA


@pytest.fixture
def autopet_root(tmp_path, write_study):
    """PETCT_a1 has two studies (one negative, empty SEG); PETCT_b2 one study, no SEG file."""
    root = tmp_path / "FDG-PET-CT-Lesions"
    write_study(root / "PETCT_a1" / "03-12-2002-NA-PET-CT-81234")
    write_study(root / "PETCT_a1" / "11-05-2003-NA-PET-CT-44321", lesion=False, seed=1)
    write_study(root / "PETCT_b2" / "01-01-2004-NA-PET-CT-1", with_mask=False, seed=2)
    (root / ".DS_Store_folder").mkdir()
    return root


def test_autopet_layout_loads(autopet_root):
    entries = load_autopet(autopet_root)
    assert [(e["patient_id"], e["study_id"]) for e in entries] == [
        ("PETCT_a1", "03-12-2002-NA-PET-CT-81234"),
        ("PETCT_a1", "11-05-2003-NA-PET-CT-44321"),
        ("PETCT_b2", "01-01-2004-NA-PET-CT-1"),
    ]
    for entry in entries:
        assert set(entry) == STUDY_KEYS
        assert Path(entry["pet"]).is_absolute() and entry["pet"].endswith("SUV.nii.gz")
        assert entry["ct"].endswith("CTres.nii.gz")
        assert entry["split"] is None
    assert entries[2]["label"] is None
    negative = load_study(entries[1]["pet"], entries[1]["ct"], entries[1]["label"])
    assert negative.mask.sum() == 0
    positive = load_study(entries[0]["pet"], entries[0]["ct"], entries[0]["label"])
    assert positive.mask.sum() > 0


def test_autopet_falls_back_to_ct_and_uncompressed(tmp_path, write_study):
    write_study(tmp_path / "P" / "S", names=("SUV.nii", "CT.nii.gz", "SEG.nii"))
    (entry,) = load_autopet(tmp_path)
    assert entry["pet"].endswith("SUV.nii") and entry["ct"].endswith("CT.nii.gz")
    assert entry["label"].endswith("SEG.nii")


def test_autopet_study_without_suv_is_listed(autopet_root, write_study):
    write_study(
        autopet_root / "PETCT_c3" / "S1", names=("PET.nii.gz", "CTres.nii.gz", "SEG.nii.gz")
    )
    with pytest.raises(PetflareInputError, match=r"PETCT_c3/S1: no SUV.nii.gz") as info:
        load_autopet(autopet_root)
    assert info.value.path == autopet_root


def test_autopet_empty_or_missing_root(tmp_path):
    with pytest.raises(PetflareInputError, match="no studies found"):
        load_autopet(tmp_path)
    with pytest.raises(PetflareInputError, match="not found or not a folder"):
        load_autopet(tmp_path / "nope")


# ------------------------------------------------------------------ nnU-Net raw


def _nnunet_dataset(
    root,
    write_study,
    channel_names,
    cases=("fdg_aa11_1", "fdg_aa11_2"),
    test_cases=("fdg_cc33_1",),
    pet_channel=1,
):
    """Write a Dataset folder: channel ``pet_channel`` holds SUV, the other CT."""
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": channel_names,
                "labels": {"background": 0, "lesion": 1},
                "numTraining": len(cases),
                "file_ending": ".nii.gz",
            }
        )
    )
    ct_channel = 1 - pet_channel
    for folder, labels, names in (("imagesTr", "labelsTr", cases), ("imagesTs", None, test_cases)):
        for i, case in enumerate(names):
            study_names = (
                f"{folder}/{case}_{pet_channel:04d}.nii.gz",
                f"{folder}/{case}_{ct_channel:04d}.nii.gz",
                f"{labels}/{case}.nii.gz" if labels else "unused/seg.nii.gz",
            )
            write_study(root, names=study_names, seed=i, with_mask=labels is not None)
    return root


def test_nnunet_layout_loads_roles_from_channel_names(tmp_path, write_study):
    root = _nnunet_dataset(tmp_path / "Dataset221_autoPET", write_study, {"0": "CTres", "1": "SUV"})
    entries = load_nnunet_raw(root)
    assert [(e["study_id"], e["split"]) for e in entries] == [
        ("fdg_aa11_1", None),
        ("fdg_aa11_2", None),
        ("fdg_cc33_1", "test"),
    ]
    first = entries[0]
    assert set(first) == STUDY_KEYS
    assert first["patient_id"] == "fdg_aa11_1"  # default: the whole case name
    assert first["pet"].endswith("imagesTr/fdg_aa11_1_0001.nii.gz")
    assert first["ct"].endswith("imagesTr/fdg_aa11_1_0000.nii.gz")
    assert first["label"].endswith("labelsTr/fdg_aa11_1.nii.gz")
    assert entries[2]["label"] is None
    study = load_study(first["pet"], first["ct"], first["label"])
    assert study.mask.sum() > 0 and float(study.pet.max()) == pytest.approx(8.0)
    assert len(load_nnunet_raw(root, include_test=False)) == 2


def test_nnunet_roles_follow_names_not_suffix(tmp_path, write_study):
    """PET stored as _0000 and named so: the loader must not assume _0000 is CT."""
    root = _nnunet_dataset(
        tmp_path / "D", write_study, {"0": "pet", "1": "ct"}, test_cases=(), pet_channel=0
    )
    entry = load_nnunet_raw(root)[0]
    assert entry["pet"].endswith("_0000.nii.gz") and entry["ct"].endswith("_0001.nii.gz")
    assert float(load_study(entry["pet"]).pet.max()) == pytest.approx(8.0)


@pytest.mark.parametrize(
    "channel_names",
    [
        {"0": "CT", "1": "CT"},  # the published autoPET dataset.json
        {"0": "SUV", "1": "PET"},
        {"0": "CT", "1": "noNorm"},
    ],
)
def test_nnunet_ambiguous_channel_names_are_refused(tmp_path, write_study, channel_names):
    root = _nnunet_dataset(tmp_path / "D", write_study, channel_names, test_cases=())
    with pytest.raises(PetflareInputError, match="channel_roles") as info:
        load_nnunet_raw(root)
    assert info.value.path == root / "dataset.json"


def test_nnunet_channel_roles_override(tmp_path, write_study):
    root = _nnunet_dataset(tmp_path / "D", write_study, {"0": "CT", "1": "CT"}, test_cases=())
    entry = load_nnunet_raw(root, channel_roles={"0000": "ct", "0001": "pet"})[0]
    assert entry["pet"].endswith("_0001.nii.gz") and entry["ct"].endswith("_0000.nii.gz")
    assert load_nnunet_raw(root, channel_roles={0: "ignore", "1": "PET"})[0]["ct"] is None
    with pytest.raises(PetflareInputError, match="no role for channel"):
        load_nnunet_raw(root, channel_roles={"0001": "pet"})
    with pytest.raises(PetflareInputError, match="not in channel_names"):
        load_nnunet_raw(root, channel_roles={"0000": "ct", "0001": "pet", "0002": "ct"})
    with pytest.raises(PetflareInputError, match="must be one of"):
        load_nnunet_raw(root, channel_roles={"0000": "mri", "0001": "pet"})


def test_nnunet_patient_id_from_case(tmp_path, write_study):
    root = _nnunet_dataset(tmp_path / "D", write_study, {"0": "CT", "1": "PET"})
    by_regex = load_nnunet_raw(root, patient_id_from_case=r"^fdg_([0-9a-f]+)_")
    assert [e["patient_id"] for e in by_regex] == ["aa11", "aa11", "cc33"]
    named = load_nnunet_raw(root, patient_id_from_case=r"_(?P<patient>[a-z]+\d+)_")
    assert named[0]["patient_id"] == "aa11"
    by_callable = load_nnunet_raw(root, patient_id_from_case=lambda case: case.upper())
    assert by_callable[0]["patient_id"] == "FDG_AA11_1"
    with pytest.raises(PetflareInputError, match="does not match patient_id_from_case"):
        load_nnunet_raw(root, patient_id_from_case=r"^psma_")


def test_nnunet_missing_files_are_listed_together(tmp_path, write_study):
    root = _nnunet_dataset(tmp_path / "D", write_study, {"0": "CT", "1": "PET"}, test_cases=())
    (root / "imagesTr" / "fdg_aa11_1_0001.nii.gz").unlink()
    (root / "labelsTr" / "fdg_aa11_2.nii.gz").unlink()
    with pytest.raises(PetflareInputError) as info:
        load_nnunet_raw(root)
    message = str(info.value)
    assert "imagesTr/fdg_aa11_1: missing channel file(s) fdg_aa11_1_0001.nii.gz" in message
    assert "labelsTr/fdg_aa11_2.nii.gz: label file not found" in message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "dataset.json: file not found"),
        ("{not json", "cannot be read as JSON"),
        ('{"labels": {}}', "channel_names"),
        ('{"channel_names": {"0": "CT", "1": "PET"}, "file_ending": ".mha"}', "NIfTI only"),
    ],
)
def test_nnunet_bad_dataset_json(tmp_path, content, message):
    (tmp_path / "imagesTr").mkdir()
    if content is not None:
        (tmp_path / "dataset.json").write_text(content)
    with pytest.raises(PetflareInputError, match=message):
        load_nnunet_raw(tmp_path)


# ------------------------------------------------------------------ manifest


def _pair(root, write_study, patient, seed=0):
    """Write baseline and follow-up studies of one patient under ``root/autopet``."""
    base = write_study(root / "autopet" / patient / "baseline", seed=seed)
    follow = write_study(root / "autopet" / patient / "followup", seed=seed + 100)
    return base, follow


def _write_csv(path, header, rows):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_manifest_loads_with_relative_paths_and_optional_columns(tmp_path, write_study):
    _pair(tmp_path, write_study, "P1")
    _pair(tmp_path, write_study, "P2", seed=1)
    csv_path = _write_csv(
        tmp_path / "manifest.csv",
        ["patient_id", "baseline_pet", "followup_pet", "baseline_mask", "pattern", "split"],
        [
            [
                "P1",
                "autopet/P1/baseline/SUV.nii.gz",
                "autopet/P1/followup/SUV.nii.gz",
                "autopet/P1/baseline/SEG.nii.gz",
                "diffuse_flare",
                "train",
            ],
            [
                "P2",
                "./autopet/P2/baseline/SUV.nii.gz",
                "autopet/P2/followup/SUV.nii.gz",
                "",
                "",
                "",
            ],
        ],
    )
    rows = load_manifest(csv_path)
    assert len(rows) == 2
    assert all(set(r) == set(MANIFEST_COLUMNS) for r in rows)
    first, second = rows
    assert first["baseline_pet"] == str(tmp_path / "autopet/P1/baseline/SUV.nii.gz")
    assert first["baseline_ct"] is None and first["pattern"] == "diffuse_flare"
    assert second["baseline_pet"] == str(tmp_path / "autopet/P2/baseline/SUV.nii.gz")
    assert second["baseline_mask"] is None and second["pattern"] is None
    assert second["split"] is None


def test_manifest_lists_every_offending_row_in_one_error(tmp_path, write_study):
    _pair(tmp_path, write_study, "P1")
    (tmp_path / "outside.nii.gz").write_bytes(b"x")
    data = tmp_path / "data"
    data.mkdir()
    csv_path = _write_csv(
        data / "manifest.csv",
        ["patient_id", "baseline_pet", "followup_pet", "followup_ct", "pattern", "split"],
        [
            ["P1", "../autopet/P1/baseline/SUV.nii.gz", "missing/SUV.nii.gz", "", "", ""],
            ["P2", "/etc/passwd", "../outside.nii.gz", "nope.nii.gz", "flare", "training"],
            ["", "", "", "", "", ""],  # blank line: skipped
        ],
    )
    with pytest.raises(PetflareInputError) as info:
        load_manifest(csv_path)
    message = str(info.value)
    assert message.startswith(str(csv_path))
    expected = [
        "row 1 (line 2), baseline_pet: ../autopet/P1/baseline/SUV.nii.gz: escapes the dataset root",
        "row 1 (line 2), followup_pet: missing/SUV.nii.gz: file or DICOM folder not found",
        "row 2 (line 3), baseline_pet: /etc/passwd: escapes the dataset root",
        "row 2 (line 3), followup_pet: ../outside.nii.gz: escapes the dataset root",
        "row 2 (line 3), followup_ct: nope.nii.gz: file not found",
        "row 2 (line 3), pattern: 'flare' is not one of",
        "row 2 (line 3), split: 'training' is not one of",
    ]
    for line in expected:
        assert line in message
    assert "7 problem(s)" in message


@pytest.mark.parametrize(
    ("header", "row", "message"),
    [
        (["patient_id", "baseline_pet"], ["P1", "a.nii.gz"], r"missing required column\(s\)"),
        (
            ["patient_id", "baseline_pet", "followup_pet", "folowup_ct"],
            ["P1", "a.nii.gz", "a.nii.gz", ""],
            r"unknown column\(s\) \['folowup_ct'\]",
        ),
        (
            ["patient_id", "baseline_pet", "followup_pet"],
            ["", "a.nii.gz", "a.nii.gz"],
            "patient_id: required value is empty",
        ),
    ],
)
def test_manifest_structure_errors(tmp_path, header, row, message):
    (tmp_path / "a.nii.gz").write_bytes(b"x")
    csv_path = _write_csv(tmp_path / "m.csv", header, [row])
    with pytest.raises(PetflareInputError, match=message) as info:
        load_manifest(csv_path)
    assert info.value.path == csv_path


def test_manifest_patient_in_two_splits(tmp_path):
    (tmp_path / "a.nii.gz").write_bytes(b"x")
    csv_path = _write_csv(
        tmp_path / "m.csv",
        ["patient_id", "baseline_pet", "followup_pet", "split"],
        [["P1", "a.nii.gz", "a.nii.gz", "train"], ["P1", "a.nii.gz", "a.nii.gz", "test"]],
    )
    with pytest.raises(PetflareInputError, match="patient 'P1' is in 'test' here but in 'train'"):
        load_manifest(csv_path)


def test_write_manifest_round_trip_with_relative_paths(tmp_path, write_study):
    base, follow = _pair(tmp_path, write_study, "P1")
    rows = [
        {
            "patient_id": "P1",
            "baseline_pet": base.pet,  # absolute
            "baseline_ct": base.ct,
            "baseline_mask": "autopet/P1/baseline/SEG.nii.gz",  # already relative to manifest
            "followup_pet": str(follow.pet),
            "followup_ct": None,
            "followup_mask": follow.mask,
            "pattern": "nodule_within_mass",
            "split": "val",
        }
    ]
    csv_path = write_manifest(rows, tmp_path / "manifest.csv")

    with csv_path.open(newline="") as handle:
        raw = list(csv.DictReader(handle))
    assert list(raw[0]) == list(MANIFEST_COLUMNS)
    assert raw[0]["baseline_pet"] == "autopet/P1/baseline/SUV.nii.gz"
    assert raw[0]["followup_ct"] == ""
    loaded = load_manifest(csv_path)[0]
    assert loaded["baseline_pet"] == str(base.pet)
    assert loaded["baseline_mask"] == str(base.mask)
    assert loaded["followup_ct"] is None and loaded["split"] == "val"

    with pytest.raises(OutputExistsError):
        write_manifest(rows, csv_path)
    write_manifest(rows[:1], csv_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["autopet", "manifest.csv"]


def test_write_manifest_refuses_bad_rows_and_writes_nothing(tmp_path):
    rows = [
        {"patient_id": "P1", "baseline_pet": "/elsewhere/SUV.nii.gz", "followup_pet": "f.nii.gz"},
        {
            "patient_id": "P2",
            "baseline_pet": "b.nii.gz",
            "followup_pet": "f.nii.gz",
            "pattern": "flare",
            "extra": 1,
        },
        {"patient_id": "", "baseline_pet": "b.nii.gz", "followup_pet": "../f.nii.gz"},
    ]
    with pytest.raises(PetflareInputError) as info:
        write_manifest(rows, tmp_path / "m.csv")
    message = str(info.value)
    for line in [
        "row 1, baseline_pet: /elsewhere/SUV.nii.gz is outside the manifest folder",
        "row 2: unknown key(s) ['extra']",
        "row 2, pattern: 'flare' not in",
        "row 3, patient_id: required value is empty",
        "row 3, followup_pet: ../f.nii.gz is outside the manifest folder",
    ]:
        assert line in message
    assert list(tmp_path.iterdir()) == []


def test_manifest_to_studies(tmp_path, write_study):
    base, follow = _pair(tmp_path, write_study, "P1")
    second = write_study(tmp_path / "autopet" / "P1" / "followup2", seed=7)
    write_manifest(
        [
            {
                "patient_id": "P1",
                "baseline_pet": base.pet,
                "followup_pet": follow.pet,
                "followup_mask": follow.mask,
                "split": "test",
            },
            {
                "patient_id": "P1",
                "baseline_pet": base.pet,
                "followup_pet": second.pet,
                "split": "test",
            },
        ],
        tmp_path / "manifest.csv",
    )
    studies = manifest_to_studies(load_manifest(tmp_path / "manifest.csv"))
    assert [(s["study_id"], Path(s["pet"]).parent.name) for s in studies] == [
        ("baseline", "baseline"),
        ("followup", "followup"),
        ("followup", "followup2"),
    ]
    assert all(set(s) == STUDY_KEYS and s["split"] == "test" for s in studies)
    assert studies[1]["label"] == str(follow.mask) and studies[0]["label"] is None
    assert np.all([s["patient_id"] == "P1" for s in studies])
