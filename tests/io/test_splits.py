"""Patient-level splits: no leakage, deterministic, pre-assigned splits respected."""

from __future__ import annotations

import random

import pytest

from petflare.constants import SPLITS
from petflare.errors import PetflareInputError
from petflare.io.splits import split_by_patient


def _datalist(n_patients, studies_per_patient=2):
    return [
        {"patient_id": f"P{p:03d}", "study_id": f"S{s}", "pet": f"/d/P{p}/S{s}/SUV.nii.gz"}
        for p in range(n_patients)
        for s in range(studies_per_patient)
    ]


def _patients(entries):
    return {e["patient_id"] for e in entries}


def test_no_patient_in_two_splits_and_every_study_kept():
    datalist = _datalist(40, studies_per_patient=3)
    splits = split_by_patient(datalist, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    assert set(splits) == set(SPLITS)
    patient_sets = [_patients(splits[name]) for name in SPLITS]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not patient_sets[i] & patient_sets[j]
    assert sum(len(v) for v in splits.values()) == len(datalist)
    assert [len(s) for s in patient_sets] == [24, 8, 8]
    for name, entries in splits.items():
        assert all(e["split"] == name for e in entries)
        # all three studies of each patient stay together
        assert len(entries) == 3 * len(_patients(entries))
    assert "split" not in datalist[0]  # input not mutated


def test_deterministic_and_independent_of_input_order():
    datalist = _datalist(30)
    first = split_by_patient(datalist, seed=7)
    shuffled = datalist[:]
    random.Random(0).shuffle(shuffled)
    again = split_by_patient(shuffled, seed=7)
    assert {k: _patients(v) for k, v in first.items()} == {
        k: _patients(v) for k, v in again.items()
    }
    other = split_by_patient(datalist, seed=8)
    assert _patients(other["train"]) != _patients(first["train"])


def test_preassigned_splits_are_kept_for_the_whole_patient():
    datalist = _datalist(10)
    datalist[0]["split"] = "test"  # P000, study S0 only: S1 must follow it
    datalist[4]["split"] = "train"  # P002
    splits = split_by_patient(datalist, {"train": 0.5, "val": 0.5}, seed=0)
    assert {"P000"} == _patients(splits["test"])
    assert "P002" in _patients(splits["train"])
    assert len(splits["test"]) == 2
    # the 8 free patients are split 4/4
    assert len(_patients(splits["train"])) == 5 and len(_patients(splits["val"])) == 4


def test_conflicting_preassigned_splits_are_an_error():
    datalist = _datalist(3)
    datalist[0]["split"] = "train"
    datalist[1]["split"] = "val"
    with pytest.raises(PetflareInputError, match="patient 'P000': 'train' and 'val'"):
        split_by_patient(datalist)


@pytest.mark.parametrize("n_patients", [3, 4, 5, 7])
def test_small_cohorts_fill_every_requested_split(n_patients):
    splits = split_by_patient(_datalist(n_patients, 1), {"train": 0.7, "val": 0.15, "test": 0.15})
    assert all(len(splits[name]) >= 1 for name in SPLITS)
    assert sum(len(v) for v in splits.values()) == n_patients


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ({"train": 0.5, "val": 0.2}, "sum to 1"),
        ({"train": 0.8, "valid": 0.2}, "unknown split"),
        ({"train": 1.2, "val": -0.2}, "non-negative"),
    ],
)
def test_bad_fractions(fractions, message):
    with pytest.raises(PetflareInputError, match=message):
        split_by_patient(_datalist(4), fractions)


def test_entry_without_patient_or_with_unknown_split():
    with pytest.raises(PetflareInputError, match="no patient_id"):
        split_by_patient([{"pet": "x"}])
    with pytest.raises(PetflareInputError, match="not one of"):
        split_by_patient([{"patient_id": "P", "split": "holdout"}])
