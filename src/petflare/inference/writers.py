"""Assemble the output folder of an inference run: masks, report.json, lesions.csv, mip.png, HTML.

The folder is written atomically (:func:`petflare.io.atomic.atomic_directory`): everything goes
to a temporary sibling that replaces ``out_dir`` only when complete, so a failed run leaves no
half-written results, and an existing non-empty ``out_dir`` is refused unless ``overwrite``.
Masks are instance-labelled, on each input's own grid and affine, with the report's lesion ids.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from petflare.inference.results import BatchItem, InferenceResult, mask_filename
from petflare.io.atomic import atomic_directory, atomic_write_text
from petflare.io.nifti import save_nifti

REPORT_JSON = "report.json"
LESIONS_CSV = "lesions.csv"
MIP_PNG = "mip.png"
REPORT_HTML = "report.html"
BATCH_SUMMARY_CSV = "batch_summary.csv"


def write_outputs(
    result: InferenceResult,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    html: bool = True,
    dicom_seg: bool = True,
) -> dict[str, Path]:
    """Write all outputs of one run into ``out_dir`` atomically.

    Args:
        result: what :func:`petflare.inference.pipeline.run_single` / ``run_pair`` returned.
        out_dir: output folder; an existing non-empty one is refused unless ``overwrite``.
        overwrite: replace an existing non-empty ``out_dir`` (only once the new one is complete).
        html: also write report.html.
        dicom_seg: also write a DICOM SEG per timepoint read from a DICOM series (one segment
            per lesion, referencing the source slices; none for a timepoint without lesions).

    Returns:
        Output name (``report.json``, ``mip.png``, ``baseline_lesions.nii.gz``, ...) -> final path.

    Raises:
        OutputExistsError: ``out_dir`` exists, is not empty, and ``overwrite`` is False.
    """
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, overwrite) as tmp:
        written = write_outputs_into(result, tmp, html=html, dicom_seg=dicom_seg)
    return {name: out_dir / name for name in written}


def write_outputs_into(
    result: InferenceResult, folder: str | Path, *, html: bool = True, dicom_seg: bool = True
) -> dict[str, Path]:
    """Write the outputs into ``folder`` (a fresh folder, e.g. inside an atomic directory).

    The stages ``write_masks`` and ``figure`` are timed into the result before report.json is
    written, so the report's timings cover everything but writing the report itself.
    """
    from petflare.inference.status_figures import status_mip_figure
    from petflare.quant.report import lesion_csv_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    timer = result.timer
    with timer.stage("write_masks"):
        for name, tp in result.timepoints.items():
            path = folder / mask_filename(name, result.is_pair)
            save_nifti(_label_array(tp.instances), tp.study.affine, path)
            written[path.name] = path
    dicom_timepoints = [
        (name, tp)
        for name, tp in result.timepoints.items()
        if (tp.study.meta.source or {}).get("format") == "DICOM"
    ]
    if dicom_seg and dicom_timepoints:
        import petflare
        from petflare.io.dicom_seg import write_dicom_seg

        with timer.stage("write_dicom_seg"):
            for name, tp in dicom_timepoints:
                seg_path = write_dicom_seg(
                    tp.study,
                    tp.instances,
                    folder / dicom_seg_filename(name, result.is_pair),
                    version=petflare.__version__,
                    model_name=str(result.model.get("name", "")),
                )
                if seg_path is not None:
                    written[seg_path.name] = seg_path
    with timer.stage("figure"):
        mip_path = folder / MIP_PNG
        status_mip_figure(result, mip_path)
        written[MIP_PNG] = mip_path
    report = result.report()
    for name in report.get("masks", {}):
        seg_name = dicom_seg_filename(name, result.is_pair)
        report["masks"][name]["dicom_seg_file"] = seg_name if seg_name in written else None
    written[REPORT_JSON] = atomic_write_text(
        folder / REPORT_JSON, json.dumps(report, indent=2, allow_nan=False) + "\n"
    )
    quant_report = (
        result.pair_report if result.is_pair else next(iter(result.timepoints.values())).scan_report
    )
    written[LESIONS_CSV] = atomic_write_text(folder / LESIONS_CSV, lesion_csv_text(quant_report))
    if html:
        from petflare.inference.html import write_report_html

        written[REPORT_HTML] = write_report_html(
            report, folder / REPORT_HTML, mip_png=mip_path.read_bytes()
        )
    return written


def dicom_seg_filename(timepoint: str, is_pair: bool) -> str:
    """Output file name of a timepoint's DICOM SEG."""
    return f"{timepoint}_lesions_seg.dcm" if is_pair else "lesions_seg.dcm"


def write_batch_summary(items: Sequence[BatchItem], path: str | Path) -> Path:
    """Write one row per manifest row: folder, true and predicted pattern, source, seconds, and
    ``status`` (``done``, ``done_earlier``, ``failed``) with the ``reason`` of a failure.

    An earlier run's summary in the same place is replaced (a rerun lists every row again)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        [
            "patient_id",
            "folder",
            "true_pattern",
            "pattern",
            "pattern_source",
            "probability",
            "n_lesions_baseline",
            "n_lesions_followup",
            "seconds",
            "status",
            "reason",
        ]
    )
    for item in items:
        probability = None if item.pattern is None else item.pattern.probability
        writer.writerow(
            [
                item.patient_id,
                item.folder,
                item.true_pattern or "",
                item.pattern.label if item.pattern else "",
                item.pattern.source if item.pattern else "",
                "" if probability is None else f"{probability:.4f}",
                item.n_lesions.get("baseline", ""),
                item.n_lesions.get("followup", ""),
                f"{item.seconds:.3f}",
                item.status,
                item.reason,
            ]
        )
    return atomic_write_text(path, buf.getvalue(), overwrite=True)


def _label_array(instances: np.ndarray) -> np.ndarray:
    """Instance labels in the smallest unsigned integer type that holds them."""
    max_label = int(instances.max()) if instances.size else 0
    dtype = np.uint8 if max_label < 2**8 else np.uint16 if max_label < 2**16 else np.uint32
    return np.asarray(instances).astype(dtype)
