"""Batch mode: every pair of a longitudinal manifest, the model loaded once, each row on its own.

A row with bad input is reported in ``batch_summary.csv`` (status ``failed`` and its reason) and the
batch goes on; each row's folder is written atomically, and a rerun keeps the rows that finished.
The next row is read in a background thread while the current one is computed.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from petflare.constants import Keys
from petflare.errors import PetflareInputError
from petflare.inference import pipeline
from petflare.inference.results import (
    BatchItem,
    LoadedScan,
    PatternCall,
    PatternHead,
    ProgressFn,
    ScanInput,
    StageTimer,
)
from petflare.io.study import Study


def run_manifest(
    rows: Sequence[Mapping[str, Any]],
    predictor: pipeline.SegmentationPredictor,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    pattern_head: PatternHead | None = None,
    progress: ProgressFn | None = None,
    html: bool = True,
    registration: Any = None,
    dicom_seg: bool = True,
    ct_contrast: str = "unknown",
    allow_implausible_suv: bool = False,
    allow_patient_mismatch: bool = False,
    swap_reversed_pair: bool = False,
    memory_limit_gb: float | None = None,
) -> list[BatchItem]:
    """Run every pair of a longitudinal manifest into ``out_dir/<patient>/``.

    The model is used as given (loaded once by the caller). While pair *i* is computed, pair
    *i + 1* is read in a background thread (file decompression and DICOM parsing release the
    GIL), so reading overlaps computation.

    Each row is its own unit: its folder is written atomically, so a finished folder is always
    complete. A row with bad input (any :class:`PetflareInputError`: a bad file, a failed pair
    check, too little memory) is reported in ``batch_summary.csv`` as ``failed`` with its reason
    and writes no folder; the batch goes on. On a rerun into the same ``out_dir``, rows whose
    folder already holds ``report.json`` are kept (``done_earlier``), not recomputed, unless
    ``overwrite``.

    Args:
        rows: manifest rows (``petflare.io.load_manifest``): ``patient_id``, ``baseline_pet``,
            ``baseline_ct``, ``followup_pet``, ``followup_ct``, optional ``pattern`` (truth).
        predictor: loaded segmentation model.
        out_dir: batch output folder (created; a previous batch's folder is continued).
        overwrite: recompute and replace rows that finished in an earlier run.
        pattern_head: learned pattern classifier, or None for the rules.
        progress: called with one line per stage event.
        html: also write report.html per row.
        registration: ``petflare.quant.RegistrationConfig`` (None: quant's default).
        dicom_seg: also write a DICOM SEG per DICOM-series input.
        ct_contrast: what the CTs are, for Choi's density (as in :func:`run_pair`).
        allow_implausible_suv: skip the SUV plausibility checks.
        allow_patient_mismatch, swap_reversed_pair: pair-check overrides (as in :func:`run_pair`).
        memory_limit_gb: memory guard limit per row (None: the memory available).

    Returns:
        One :class:`BatchItem` per row, in manifest order (also written as batch_summary.csv);
        check ``status`` for failed rows.
    """
    from petflare.inference.writers import (
        BATCH_SUMMARY_CSV,
        write_batch_summary,
        write_outputs_into,
    )
    from petflare.io.atomic import atomic_directory, check_can_write

    if not rows:
        raise PetflareInputError(None, "the manifest has no rows")
    folders = _row_folders(rows)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        check_can_write(out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    items: dict[int, BatchItem] = {}
    todo: list[int] = []
    for index, row in enumerate(rows):
        earlier = None if overwrite else _finished_item(row, out_dir / folders[index])
        if earlier is not None:
            items[index] = earlier
        else:
            todo.append(index)
    if progress is not None and len(todo) < len(rows):
        kept = len(rows) - len(todo)
        progress(f"{kept} row(s) finished earlier are kept (overwrite=true redoes them)")
    settings = _RowReadSettings(
        allow_implausible_suv=allow_implausible_suv,
        memory_limit_gb=memory_limit_gb,
        model_spacing_mm=_model_spacing(predictor),
    )
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="petflare-read") as pool:
        pending: Future[_ReadPair] | None = (
            pool.submit(_read_row, rows[todo[0]], settings) if todo else None
        )
        try:
            for position, index in enumerate(todo):
                row, folder = rows[index], folders[index]
                started = time.perf_counter()
                timer = StageTimer(progress, prefix=f"[{index + 1}/{len(rows)} {folder}] ")
                try:
                    with timer.stage("wait_for_read"):
                        assert pending is not None
                        read = pending.result()
                except PetflareInputError as exc:
                    items[index] = _failed_item(row, folder, exc, started, progress)
                    continue
                finally:
                    if position + 1 < len(todo):
                        pending = pool.submit(_read_row, rows[todo[position + 1]], settings)
                for name, seconds in read.timings_s.items():
                    timer.add(name, seconds)
                try:
                    result = pipeline.run_pair(
                        LoadedScan(read.baseline, read.baseline_src),
                        LoadedScan(read.followup, read.followup_src),
                        predictor,
                        pattern_head=pattern_head,
                        timer=timer,
                        patient_id=str(row.get(Keys.PATIENT_ID) or ""),
                        registration=registration,
                        ct_contrast=ct_contrast,
                        allow_patient_mismatch=allow_patient_mismatch,
                        swap_reversed_pair=swap_reversed_pair,
                    )
                    with atomic_directory(out_dir / folder, overwrite) as tmp:
                        write_outputs_into(result, tmp, html=html, dicom_seg=dicom_seg)
                except PetflareInputError as exc:
                    items[index] = _failed_item(row, folder, exc, started, progress)
                    continue
                items[index] = BatchItem(
                    patient_id=result.patient_id,
                    folder=folder,
                    true_pattern=row.get(Keys.PATTERN) or None,
                    pattern=result.pattern,
                    n_lesions={k: len(v.lesion_ids) for k, v in result.timepoints.items()},
                    seconds=time.perf_counter() - started,
                    timings_s=result.timings_s,
                )
        finally:
            if pending is not None:
                pending.cancel()
    ordered = [items[index] for index in range(len(rows))]
    write_batch_summary(ordered, out_dir / BATCH_SUMMARY_CSV)
    return ordered


def _finished_item(row: Mapping[str, Any], folder: Path) -> BatchItem | None:
    """The summary of a row finished by an earlier run (its report.json), or None."""
    report_path = folder / "report.json"
    if not report_path.is_file():
        return None
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
        call = report.get("pattern")
        pattern = (
            None
            if not call
            else PatternCall(
                label=call["label"],
                source=call["source"],
                probabilities=call.get("probabilities"),
                rule=call.get("rule"),
            )
        )
        masks = report.get("masks") or {}
        n_lesions = {k: len(v.get("lesion_ids", [])) for k, v in masks.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not a report petflare wrote: recompute (its folder is refused if full)
    return BatchItem(
        patient_id=str(report.get("patient_id") or row.get(Keys.PATIENT_ID) or ""),
        folder=folder.name,
        true_pattern=row.get(Keys.PATTERN) or None,
        pattern=pattern,
        n_lesions=n_lesions,
        seconds=0.0,
        status="done_earlier",
    )


def _failed_item(
    row: Mapping[str, Any],
    folder: str,
    error: PetflareInputError,
    started: float,
    progress: ProgressFn | None,
) -> BatchItem:
    """A row refused for bad input: reported, not written."""
    if progress is not None:
        progress(f"[{folder}] failed: {error}")
    return BatchItem(
        patient_id=str(row.get(Keys.PATIENT_ID) or ""),
        folder=folder,
        true_pattern=row.get(Keys.PATTERN) or None,
        pattern=None,
        n_lesions={},
        seconds=time.perf_counter() - started,
        status="failed",
        reason=str(error),
    )


def _model_spacing(predictor: Any) -> tuple[float, float, float] | None:
    """The model grid's voxel size (for the memory guard), when the predictor has one."""
    spacing = getattr(getattr(predictor, "preprocessing", None), "spacing_mm", None)
    return None if spacing is None else tuple(float(s) for s in spacing)  # type: ignore[return-value]


@dataclass(frozen=True)
class _RowReadSettings:
    allow_implausible_suv: bool = False
    memory_limit_gb: float | None = None
    model_spacing_mm: tuple[float, float, float] | None = None


@dataclass
class _ReadPair:
    baseline: Study
    baseline_src: ScanInput
    followup: Study
    followup_src: ScanInput
    timings_s: dict[str, float]


def _read_row(row: Mapping[str, Any], settings: _RowReadSettings | None = None) -> _ReadPair:
    """Read both scans of one manifest row (runs in the read-ahead thread, so no printing),
    after the memory guard has estimated the pair from its headers."""
    from petflare.inference.memory import check_memory

    settings = settings or _RowReadSettings()
    timer = StageTimer(progress=None)
    patient_id = str(row.get(Keys.PATIENT_ID) or "")
    sources = {}
    for name, pet_key, ct_key in (
        ("baseline", Keys.BASELINE_PET, Keys.BASELINE_CT),
        ("followup", Keys.FOLLOWUP_PET, Keys.FOLLOWUP_CT),
    ):
        pet = row.get(pet_key)
        if not pet:
            raise PetflareInputError(None, f"manifest row {patient_id!r} has no {pet_key}")
        ct = row.get(ct_key)
        sources[name] = ScanInput(
            pet=Path(pet),
            ct=Path(ct) if ct else None,
            allow_implausible_suv=settings.allow_implausible_suv,
        )
    check_memory(
        [src.pet for src in sources.values()],
        model_spacing_mm=settings.model_spacing_mm,
        limit_gb=settings.memory_limit_gb,
    )
    studies = {}
    for name, src in sources.items():
        with timer.stage(f"read_{name}"):
            studies[name] = pipeline.read_scan(src, patient_id=patient_id, study_id=name)
    return _ReadPair(
        studies["baseline"],
        sources["baseline"],
        studies["followup"],
        sources["followup"],
        timer.timings_s,
    )


def _row_folders(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """One safe, unique sub-folder name per manifest row (the patient id where possible)."""
    names: list[str] = []
    seen: set[str] = set()
    for index, row in enumerate(rows):
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", str(row.get(Keys.PATIENT_ID) or "")).strip("._")
        name = base or f"row{index + 1:03d}"
        if name in seen:
            name = f"{name}_row{index + 1:03d}"
        seen.add(name)
        names.append(name)
    return names
