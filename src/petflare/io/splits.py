"""Patient-level train/val/test splits: studies of one patient never straddle two splits.

Splitting by study would leak a patient's anatomy (and often the same lesions) from training
into evaluation, which inflates every metric; autoPET has several studies per patient.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from petflare.constants import SPLITS, Keys
from petflare.errors import PetflareInputError

#: Default patient fractions per split.
DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.7, "val": 0.15, "test": 0.15}


def split_by_patient(
    datalist: Iterable[Mapping[str, Any]],
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
) -> dict[str, list[dict[str, Any]]]:
    """Assign every entry to train/val/test by patient, deterministically for a given seed.

    Patients whose entries already carry a ``split`` keep it (all their entries follow it);
    the other patients are shuffled with ``seed`` (from the sorted list of ids, so the input
    order does not matter) and shared out by ``fractions`` using largest remainders. Every
    split with a positive fraction gets at least one patient when there are enough patients.

    Args:
        datalist: entries with ``patient_id`` and optionally ``split`` (e.g. a manifest or
            single-study datalist).
        fractions: patient fraction per split name in ``SPLITS``; must sum to 1. Default
            ``DEFAULT_FRACTIONS``.
        seed: random seed of the shuffle.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``: copies of the entries with ``split``
        filled in, in input order within each split.

    Raises:
        PetflareInputError: bad fractions, an entry without ``patient_id``, or a patient whose
            entries carry different splits.
    """
    fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    _check_fractions(fractions)
    entries = [dict(e) for e in datalist]

    carried: dict[str, str] = {}
    conflicts: list[str] = []
    for index, entry in enumerate(entries):
        patient = entry.get(Keys.PATIENT_ID)
        if patient is None or str(patient).strip() == "":
            raise PetflareInputError(None, f"datalist entry {index} has no patient_id")
        patient = str(patient)
        split = entry.get(Keys.SPLIT)
        if split is None or split == "":
            continue
        if split not in SPLITS:
            raise PetflareInputError(
                None, f"datalist entry {index} has split {split!r}, not one of {SPLITS}"
            )
        previous = carried.setdefault(patient, split)
        if previous != split:
            conflicts.append(f"patient {patient!r}: {previous!r} and {split!r}")
    if conflicts:
        raise PetflareInputError(
            None,
            "patients with entries in more than one split (a patient belongs to one split):\n  "
            + "\n  ".join(sorted(set(conflicts))),
        )

    free = sorted({str(e[Keys.PATIENT_ID]) for e in entries} - set(carried))
    order = np.random.default_rng(seed).permutation(len(free))
    shuffled = [free[i] for i in order]
    counts = _allocate(len(shuffled), fractions)
    assignment = dict(carried)
    start = 0
    for name in SPLITS:
        for patient in shuffled[start : start + counts[name]]:
            assignment[patient] = name
        start += counts[name]

    result: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS}
    for entry in entries:
        name = assignment[str(entry[Keys.PATIENT_ID])]
        entry[Keys.SPLIT] = name
        result[name].append(entry)
    return result


def _check_fractions(fractions: Mapping[str, float]) -> None:
    """Fractions must name known splits, be non-negative and sum to 1."""
    unknown = sorted(set(fractions) - set(SPLITS))
    if unknown:
        raise PetflareInputError(None, f"unknown split name(s) {unknown}; use {SPLITS}")
    values = [float(v) for v in fractions.values()]
    if any(v < 0 or v != v for v in values):
        raise PetflareInputError(None, f"split fractions must be non-negative, got {fractions}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise PetflareInputError(None, f"split fractions must sum to 1, got {dict(fractions)}")


def _allocate(n_patients: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Patient count per split by largest remainder; no positive-fraction split left empty."""
    wanted = {name: n_patients * float(fractions.get(name, 0.0)) for name in SPLITS}
    counts = {name: int(np.floor(w)) for name, w in wanted.items()}
    leftover = n_patients - sum(counts.values())
    by_remainder = sorted(SPLITS, key=lambda s: (-(wanted[s] - counts[s]), SPLITS.index(s)))
    for name in by_remainder[:leftover]:
        counts[name] += 1
    for name in SPLITS:
        if counts[name] == 0 and wanted[name] > 0:
            donor = max(SPLITS, key=lambda s: (counts[s], -SPLITS.index(s)))
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[name] += 1
    return counts
