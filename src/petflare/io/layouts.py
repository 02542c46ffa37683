"""Dataset layouts (autoPET/TCIA NIfTI, nnU-Net raw, longitudinal manifest) -> one datalist.

Every loader returns the single-study datalist of ``docs/dev_contracts.md``: a list of dicts
``{patient_id, study_id, pet, ct, label, split}`` with absolute path strings (``ct``,
``label`` and ``split`` may be None). Loaders only find and check files; the images are read
and validated later by :func:`petflare.io.loading.load_study`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from petflare.constants import (
    MANIFEST_COLUMNS,
    MANIFEST_ORGAN_COLUMNS,
    MANIFEST_PATH_COLUMNS,
    PATTERNS,
    SPLITS,
    TIMEPOINTS,
    Keys,
)
from petflare.errors import PetflareInputError
from petflare.io.atomic import atomic_write_text

#: NIfTI endings accepted in the autoPET layout, most common first.
_NIFTI_ENDINGS = (".nii.gz", ".nii")

#: autoPET study-folder file stems: PET in SUV, CT (resampled to PET grid first), lesion mask.
AUTOPET_PET_STEM = "SUV"
AUTOPET_CT_STEMS = ("CTres", "CT")
AUTOPET_LABEL_STEM = "SEG"

#: Optional organ label map beside SEG (values ``petflare.constants.ORGAN_TO_INDEX``); the
#: phantom writes it, real autoPET studies have none.
AUTOPET_ORGANS_STEM = "ORGANS"

#: Manifest columns that must be present in every row (path columns: MANIFEST_PATH_COLUMNS).
MANIFEST_REQUIRED_COLUMNS = (Keys.PATIENT_ID, Keys.BASELINE_PET, Keys.FOLLOWUP_PET)

#: Channel roles understood by :func:`load_nnunet_raw`.
CHANNEL_ROLES = ("pet", "ct", "ignore")


def study_entry(
    patient_id: str,
    study_id: str,
    pet: str | Path,
    ct: str | Path | None = None,
    label: str | Path | None = None,
    split: str | None = None,
    organs: str | Path | None = None,
) -> dict[str, Any]:
    """Build one datalist entry with the contract keys (paths as strings, missing as None).

    ``organs`` (an organ label map, e.g. the phantom's ``ORGANS.nii.gz``) is optional: the
    ``Keys.ORGANS`` key is present only when there is one.
    """
    entry: dict[str, Any] = {
        Keys.PATIENT_ID: str(patient_id),
        Keys.STUDY_ID: str(study_id),
        Keys.PET: str(pet),
        Keys.CT: None if ct is None else str(ct),
        Keys.LABEL: None if label is None else str(label),
        Keys.SPLIT: split,
    }
    if organs is not None:
        entry[Keys.ORGANS] = str(organs)
    return entry


# --------------------------------------------------------------------------- autoPET / TCIA


def load_autopet(root: str | Path) -> list[dict[str, Any]]:
    """List the studies of an autoPET / TCIA FDG-PET-CT-Lesions NIfTI tree.

    Layout: ``<root>/<patient>/<study>/SUV.nii.gz`` (PET in SUV), ``CTres.nii.gz`` (CT on the
    PET grid; ``CT.nii.gz`` is used when CTres is absent and is then resampled on loading) and
    ``SEG.nii.gz`` (lesion mask; empty for negative studies, absent allowed); an optional
    ``ORGANS.nii.gz`` (organ label map, the phantom's) becomes the entry's ``organs``. A
    patient may have several study folders. Hidden folders are skipped.

    Returns:
        Datalist sorted by patient then study; ``study_id`` is the study folder name.

    Raises:
        PetflareInputError: root missing, no studies, or study folders holding NIfTI files
            but no ``SUV.nii.gz`` (all such folders listed in one message).
    """
    root = _existing_dir(root, "autoPET root")
    entries: list[dict[str, Any]] = []
    problems: list[str] = []
    for patient_dir in _subdirs(root):
        for study_dir in _subdirs(patient_dir):
            pet = _find_nifti(study_dir, AUTOPET_PET_STEM)
            if pet is None:
                if _has_nifti(study_dir):
                    problems.append(
                        f"{study_dir.relative_to(root)}: no {AUTOPET_PET_STEM}.nii.gz "
                        "(PET.nii.gz in Bq/mL is not read; convert it to SUV)"
                    )
                continue
            ct = next(
                (p for s in AUTOPET_CT_STEMS if (p := _find_nifti(study_dir, s)) is not None),
                None,
            )
            label = _find_nifti(study_dir, AUTOPET_LABEL_STEM)
            organs = _find_nifti(study_dir, AUTOPET_ORGANS_STEM)
            entries.append(
                study_entry(patient_dir.name, study_dir.name, pet, ct, label, organs=organs)
            )
    if problems:
        raise PetflareInputError(root, "incomplete autoPET studies:\n  " + "\n  ".join(problems))
    if not entries:
        raise PetflareInputError(
            root,
            f"no studies found; expected <root>/<patient>/<study>/{AUTOPET_PET_STEM}.nii.gz",
        )
    return entries


# --------------------------------------------------------------------------- nnU-Net raw


def load_nnunet_raw(
    root: str | Path,
    *,
    channel_roles: Mapping[str | int, str] | None = None,
    patient_id_from_case: Callable[[str], str] | str | re.Pattern[str] | None = None,
    include_test: bool = True,
) -> list[dict[str, Any]]:
    """List the cases of an nnU-Net v2 raw dataset folder (``DatasetXXX_Name``).

    Layout: ``dataset.json``, ``imagesTr/<case>_<cccc><ending>``, ``labelsTr/<case><ending>``
    and optionally ``imagesTs`` (with ``labelsTs`` if present). Channel roles are read from
    ``dataset.json`` ``channel_names`` by name ("PET"/"SUV" -> PET, "CT"/"CTres" -> CT,
    case-insensitive), never from the file suffix alone. A published autoPET dataset.json calls
    both channels "CT"; such ambiguous names are refused unless ``channel_roles`` says which is
    which.

    Args:
        root: the dataset folder containing ``dataset.json``.
        channel_roles: explicit roles overriding ``channel_names``, e.g.
            ``{"0000": "ct", "0001": "pet"}`` (keys "0000", "0" or 0; roles "pet", "ct",
            "ignore"). Exactly one channel must be "pet"; at most one "ct".
        patient_id_from_case: how to get the patient id from a case name: a callable, or a
            regex whose named group ``patient`` (else group 1, else the whole match) is the id,
            e.g. ``r"^fdg_([0-9a-f]+)_"`` for autoPET III names. Default: the whole case name.
        include_test: also list ``imagesTs`` cases (their ``split`` is ``"test"``).

    Returns:
        Datalist sorted by case; ``study_id`` is the case name; ``split`` is None for
        ``imagesTr`` and ``"test"`` for ``imagesTs``.

    Raises:
        PetflareInputError: missing/invalid dataset.json, ambiguous channel names, missing
            channel or label files (listed together), case names the regex does not match.
    """
    root = _existing_dir(root, "nnU-Net raw dataset folder")
    dataset_json = root / "dataset.json"
    if not dataset_json.is_file():
        raise PetflareInputError(dataset_json, "file not found (nnU-Net raw datasets need it)")
    try:
        spec = json.loads(dataset_json.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PetflareInputError(dataset_json, f"cannot be read as JSON ({exc})") from exc
    if not isinstance(spec, dict):
        raise PetflareInputError(dataset_json, "top level must be a JSON object")
    ending = str(spec.get("file_ending", ".nii.gz"))
    if ending not in _NIFTI_ENDINGS:
        raise PetflareInputError(
            dataset_json, f"file_ending {ending!r} is not supported; petflare reads NIfTI only"
        )
    channels = _channel_names(spec, dataset_json)
    roles = _resolve_channel_roles(channels, channel_roles, dataset_json)
    pet_channel = next(c for c, r in roles.items() if r == "pet")
    ct_channel = next((c for c, r in roles.items() if r == "ct"), None)
    to_patient = _patient_id_parser(patient_id_from_case, dataset_json)

    entries: list[dict[str, Any]] = []
    problems: list[str] = []
    folders: list[tuple[str, str, str | None, bool]] = [("imagesTr", "labelsTr", None, True)]
    if include_test and (root / "imagesTs").is_dir():
        folders.append(("imagesTs", "labelsTs", "test", False))
    for images_name, labels_name, split, label_required in folders:
        images_dir = root / images_name
        if not images_dir.is_dir():
            raise PetflareInputError(images_dir, "folder not found")
        channel_re = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})" + re.escape(ending) + r"$")
        cases: dict[str, set[int]] = {}
        for path in images_dir.iterdir():
            match = channel_re.match(path.name)
            if match and path.is_file():
                cases.setdefault(match["case"], set()).add(int(match["channel"]))
        needed = {pet_channel} | (set() if ct_channel is None else {ct_channel})
        for case in sorted(cases):
            missing = sorted(needed - cases[case])
            if missing:
                names = ", ".join(f"{case}_{c:04d}{ending}" for c in missing)
                problems.append(f"{images_name}/{case}: missing channel file(s) {names}")
                continue
            label: Path | None = root / labels_name / f"{case}{ending}"
            if label is not None and not label.is_file():
                if label_required:
                    problems.append(f"{labels_name}/{case}{ending}: label file not found")
                    continue
                label = None
            pet = images_dir / f"{case}_{pet_channel:04d}{ending}"
            ct = None if ct_channel is None else images_dir / f"{case}_{ct_channel:04d}{ending}"
            patient = to_patient(case)
            entries.append(study_entry(patient, case, pet, ct, label, split))
    if problems:
        raise PetflareInputError(root, "incomplete nnU-Net cases:\n  " + "\n  ".join(problems))
    if not entries:
        raise PetflareInputError(root, f"no cases found in imagesTr (<case>_0000{ending})")
    return entries


def _channel_names(spec: dict[str, Any], dataset_json: Path) -> dict[int, str]:
    """Return ``{channel_index: name}`` from ``channel_names`` (or legacy ``modality``)."""
    raw = spec.get("channel_names", spec.get("modality"))
    if not isinstance(raw, dict) or not raw:
        raise PetflareInputError(
            dataset_json, 'needs a non-empty \'channel_names\' object, e.g. {"0": "CT", ...}'
        )
    try:
        return {int(k): str(v) for k, v in raw.items()}
    except ValueError as exc:
        raise PetflareInputError(
            dataset_json, f"channel_names keys must be channel numbers ({exc})"
        ) from exc


def _role_from_name(name: str) -> str | None:
    """Map an nnU-Net channel name to 'pet' / 'ct', or None when it says neither."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    if "pet" in key or "suv" in key or key == "pt":
        return "pet"
    if key in {"ct", "ctres", "ctresampled"}:
        return "ct"
    return None


def _resolve_channel_roles(
    channels: dict[int, str],
    override: Mapping[str | int, str] | None,
    dataset_json: Path,
) -> dict[int, str]:
    """Decide the role of each channel, from the override or the channel names."""
    fix = (
        "pass channel_roles explicitly, e.g. load_nnunet_raw(root, channel_roles="
        '{"0000": "ct", "0001": "pet"}), or fix channel_names in dataset.json'
    )
    if override is not None:
        roles: dict[int, str] = {}
        for key, role in override.items():
            try:
                index = int(key)
            except ValueError as exc:
                raise PetflareInputError(
                    dataset_json, f"channel_roles key {key!r} is not a channel number"
                ) from exc
            if index not in channels:
                raise PetflareInputError(
                    dataset_json,
                    f"channel_roles names channel {index:04d}, which is not in channel_names "
                    f"{sorted(channels)}",
                )
            role = str(role).lower()
            if role not in CHANNEL_ROLES:
                raise PetflareInputError(
                    dataset_json, f"channel role {role!r} must be one of {CHANNEL_ROLES}"
                )
            roles[index] = role
        unassigned = sorted(set(channels) - set(roles))
        if unassigned:
            raise PetflareInputError(
                dataset_json,
                f"channel_roles gives no role for channel(s) {unassigned}; use 'ignore' for "
                "channels petflare should not read",
            )
    else:
        roles = {}
        for index, name in sorted(channels.items()):
            guessed = _role_from_name(name)
            if guessed is None:
                raise PetflareInputError(
                    dataset_json,
                    f"channel {index:04d} is named {name!r}, which is neither PET nor CT; {fix}",
                )
            roles[index] = guessed
    n_pet = sum(r == "pet" for r in roles.values())
    n_ct = sum(r == "ct" for r in roles.values())
    if n_pet != 1 or n_ct > 1:
        described = ", ".join(f"{i:04d}={channels[i]!r}->{roles[i]}" for i in sorted(roles))
        raise PetflareInputError(
            dataset_json,
            f"ambiguous channel roles ({described}): need exactly one PET and at most one CT "
            f"channel (a published autoPET dataset.json calls the PET channel 'CT'); {fix}",
        )
    return roles


def _patient_id_parser(
    rule: Callable[[str], str] | str | re.Pattern[str] | None, dataset_json: Path
) -> Callable[[str], str]:
    """Turn ``patient_id_from_case`` into a function case -> patient id."""
    if rule is None:
        return str
    if callable(rule) and not isinstance(rule, re.Pattern):
        return lambda case: str(rule(case))
    pattern = re.compile(rule) if isinstance(rule, str) else rule

    def parse(case: str) -> str:
        match = pattern.search(case)
        if match is None:
            raise PetflareInputError(
                dataset_json.parent,
                f"case {case!r} does not match patient_id_from_case {pattern.pattern!r}",
            )
        if "patient" in pattern.groupindex:
            return str(match["patient"])
        return str(match[1] if pattern.groups else match[0])

    return parse


# --------------------------------------------------------------------------- manifest


def load_manifest(csv_path: str | Path) -> list[dict[str, Any]]:
    """Read a longitudinal manifest CSV into rows with all ``MANIFEST_COLUMNS`` keys.

    Paths are relative to the manifest's folder (the dataset root); they are returned as
    absolute strings. Empty optional cells become None. All problems (paths that escape the
    root or do not exist, missing required values, unknown pattern or split names, a patient
    in two splits) are collected and raised together, one line per row and column.

    Raises:
        PetflareInputError: naming the manifest and listing every offending row.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise PetflareInputError(csv_path, "manifest not found")
    root = Path(os.path.abspath(csv_path.parent))
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise PetflareInputError(csv_path, f"cannot be read as UTF-8 text ({exc})") from exc
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    unknown = [h for h in header if h not in MANIFEST_COLUMNS]
    missing = [c for c in MANIFEST_REQUIRED_COLUMNS if c not in header]
    if unknown or missing:
        parts = []
        if missing:
            parts.append(f"missing required column(s) {missing}")
        if unknown:
            parts.append(f"unknown column(s) {unknown}")
        raise PetflareInputError(
            csv_path, "; ".join(parts) + f"; allowed columns: {', '.join(MANIFEST_COLUMNS)}"
        )
    reader.fieldnames = header

    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    split_of: dict[str, tuple[str, int]] = {}
    for row_number, raw in enumerate(reader, start=1):
        where = f"row {row_number} (line {reader.line_num})"
        if None in raw:  # more cells than header columns
            problems.append(f"{where}: more cells than columns in the header")
        cells = {c: _clean(raw.get(c)) for c in MANIFEST_COLUMNS}
        if all(v is None for v in cells.values()):
            continue  # blank line
        row: dict[str, Any] = dict(cells)
        for column in MANIFEST_REQUIRED_COLUMNS:
            if cells[column] is None:
                problems.append(f"{where}, {column}: required value is empty")
        for column in (*MANIFEST_PATH_COLUMNS, *MANIFEST_ORGAN_COLUMNS):
            value = cells[column]
            if value is None:
                continue
            # a PET cell may name a DICOM series folder; masks may be RTSTRUCT / SEG files
            pet_column = column in (Keys.BASELINE_PET, Keys.FOLLOWUP_PET)
            resolved, problem = _resolve_under(root, value, allow_dir=pet_column)
            if problem:
                problems.append(f"{where}, {column}: {value}: {problem}")
            row[column] = resolved
        pattern = cells[Keys.PATTERN]
        if pattern is not None and pattern not in PATTERNS:
            problems.append(
                f"{where}, {Keys.PATTERN}: {pattern!r} is not one of {', '.join(PATTERNS)}"
            )
        split = cells[Keys.SPLIT]
        if split is not None:
            if split not in SPLITS:
                problems.append(f"{where}, {Keys.SPLIT}: {split!r} is not one of {SPLITS}")
            elif (patient := cells[Keys.PATIENT_ID]) is not None:
                first = split_of.setdefault(patient, (split, row_number))
                if first[0] != split:
                    problems.append(
                        f"{where}, {Keys.SPLIT}: patient {patient!r} is in {split!r} here but "
                        f"in {first[0]!r} in row {first[1]}; a patient belongs to one split"
                    )
        rows.append(row)
    if problems:
        raise PetflareInputError(
            csv_path,
            f"{len(problems)} problem(s) in the manifest (paths are relative to {root}):\n  "
            + "\n  ".join(problems),
        )
    if not rows:
        raise PetflareInputError(csv_path, "manifest has no rows")
    return rows


def manifest_to_studies(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Flatten manifest pairs into the single-study datalist (study_id baseline / followup).

    Each row gives a baseline and a follow-up entry; a study listed in several rows (the
    same PET file, e.g. one baseline with two follow-ups) appears once. ``split`` is kept, and
    the optional ``<timepoint>_organs`` column becomes the entry's ``organs``.
    """
    entries: list[dict[str, Any]] = []
    seen: set[str] = set()
    for row in rows:
        for timepoint in TIMEPOINTS:
            pet = row.get(f"{timepoint}_pet")
            if pet is None or str(pet) in seen:
                continue
            seen.add(str(pet))
            entries.append(
                study_entry(
                    row[Keys.PATIENT_ID],
                    timepoint,
                    pet,
                    row.get(f"{timepoint}_ct"),
                    row.get(f"{timepoint}_mask"),
                    row.get(Keys.SPLIT),
                    organs=row.get(f"{timepoint}_organs"),
                )
            )
    return entries


def write_manifest(
    rows: Iterable[Mapping[str, Any]], csv_path: str | Path, overwrite: bool = False
) -> Path:
    """Write a longitudinal manifest CSV atomically, with paths relative to its folder.

    Absolute paths are made relative to the manifest folder; relative paths are taken as
    already relative to it. Paths outside that folder are refused (the dataset must be
    relocatable). Files need not exist yet. Columns follow ``MANIFEST_COLUMNS``.

    Raises:
        PetflareInputError: unknown keys, missing required values, bad pattern/split, or paths
            outside the manifest folder (all listed); OutputExistsError when the file exists
            and ``overwrite`` is False.
    """
    csv_path = Path(csv_path)
    root = Path(os.path.abspath(csv_path.parent))
    problems: list[str] = []
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    n_rows = 0
    for row_number, row in enumerate(rows, start=1):
        n_rows += 1
        unknown = sorted(set(row) - set(MANIFEST_COLUMNS))
        if unknown:
            problems.append(f"row {row_number}: unknown key(s) {unknown}")
        cells: list[str] = []
        for column in MANIFEST_COLUMNS:
            value = _clean(row.get(column))
            if value is None:
                if column in MANIFEST_REQUIRED_COLUMNS:
                    problems.append(f"row {row_number}, {column}: required value is empty")
                cells.append("")
                continue
            if column in MANIFEST_PATH_COLUMNS or column in MANIFEST_ORGAN_COLUMNS:
                absolute = Path(os.path.normpath(root / value))  # absolute value wins in `/`
                if not absolute.is_relative_to(root):
                    problems.append(
                        f"row {row_number}, {column}: {value} is outside the manifest folder"
                    )
                    cells.append("")
                    continue
                value = absolute.relative_to(root).as_posix()
            elif column == Keys.PATTERN and value not in PATTERNS:
                problems.append(f"row {row_number}, {column}: {value!r} not in {PATTERNS}")
            elif column == Keys.SPLIT and value not in SPLITS:
                problems.append(f"row {row_number}, {column}: {value!r} not in {SPLITS}")
            cells.append(value)
        writer.writerow(cells)
    if n_rows == 0:
        problems.append("no rows to write")
    if problems:
        raise PetflareInputError(csv_path, "cannot write manifest:\n  " + "\n  ".join(problems))
    return atomic_write_text(csv_path, buffer.getvalue(), overwrite=overwrite)


# --------------------------------------------------------------------------- helpers


def _clean(value: Any) -> str | None:
    """Strip a cell; empty, None and NaN become None."""
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN from pandas
        return None
    text = str(value).strip()
    return text or None


def _resolve_under(root: Path, value: str, *, allow_dir: bool = False) -> tuple[str, str | None]:
    """Resolve ``value`` against ``root``; return (absolute path, problem or None).

    The containment check is lexical (``..`` may not climb out of the root); symlinks inside
    the root are followed when checking existence, so data may live on another disk.
    ``allow_dir`` accepts a folder (a DICOM PET series); a ``#ROI,...`` suffix (RTSTRUCT ROI
    selection) is kept on the returned path when the file before it exists.
    """
    suffix = ""
    if "#" in value and not (root / value).exists():
        value, _, rois = value.partition("#")
        suffix = "#" + rois
    absolute = Path(os.path.normpath(root / value))
    if not absolute.is_relative_to(root):
        return str(absolute), "escapes the dataset root"
    if not (absolute.is_file() or (allow_dir and absolute.is_dir())):
        return str(absolute), "file or DICOM folder not found" if allow_dir else "file not found"
    return str(absolute) + suffix, None


def _existing_dir(path: str | Path, what: str) -> Path:
    """Return ``path`` as an absolute Path, raising if it is not a folder."""
    path = Path(os.path.abspath(path))
    if not path.is_dir():
        raise PetflareInputError(path, f"{what} not found or not a folder")
    return path


def _subdirs(folder: Path) -> list[Path]:
    """Non-hidden sub-folders, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _find_nifti(folder: Path, stem: str) -> Path | None:
    """``folder/stem.nii.gz`` or ``folder/stem.nii`` if it exists."""
    for ending in _NIFTI_ENDINGS:
        candidate = folder / f"{stem}{ending}"
        if candidate.is_file():
            return candidate
    return None


def _has_nifti(folder: Path) -> bool:
    """True when ``folder`` holds any NIfTI file."""
    return any(p.name.endswith(_NIFTI_ENDINGS) for p in folder.iterdir() if p.is_file())
