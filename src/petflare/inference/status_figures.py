"""mip.png: coronal and sagittal MIPs of each timepoint with lesions coloured by their status.

Panels, left to right: baseline coronal, baseline sagittal, follow-up coronal, follow-up sagittal
(one scan: its coronal and sagittal). The projections are petflare.inference.figures' ``mip``
(radiological orientation, millimetre aspect); inverted grey scale, SUV 0 white to ``vmax_suv``
black. Contours: persisting orange, new red, resolved blue; ``+`` marks the hottest
lesion of each scan, ``x`` a focal nodule within a mass and a circle a focus of rising uptake
that no segmented lesion holds (``PairReport.new_focal_uptake``: review it). The title gives the
pattern and its probability, or says "rules" when no calibrated model made the call.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from petflare.inference.results import InferenceResult, TimepointResult
from petflare.io.atomic import atomic_write_with

#: Contour colour per lesion status (colour-blind-safe Okabe-Ito hues).
STATUS_COLOURS = {
    "persisting": "#E69F00",
    "new": "#D55E00",
    "resolved": "#0072B2",
    "lesion": "#E69F00",  # single scan: no status
}
#: Upper end of the inverted grey scale (SUV), the same on every panel so they compare.
DEFAULT_VMAX_SUV = 10.0


def status_mip_figure(
    result: InferenceResult,
    path: str | Path,
    *,
    vmax_suv: float = DEFAULT_VMAX_SUV,
    overwrite: bool = False,
    dpi: int = 110,
) -> Path:
    """Draw the status MIP figure of an inference result and write it atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    statuses = lesion_statuses(result)
    nodules = focal_nodule_centres(result)
    unsegmented = unsegmented_focus_centres(result)
    panels = []
    for name, tp in result.timepoints.items():
        hottest = _hottest_centre(tp)
        markers = [("+", hottest, "hottest lesion")] if hottest is not None else []
        markers += [("x", c, "focal nodule") for c in nodules.get(name, [])]
        markers += [("o", c, "unsegmented focus") for c in unsegmented.get(name, [])]
        for view in ("coronal", "sagittal"):
            panels.append((name, view, tp, markers))

    fig = Figure(figsize=(3.0 * len(panels), 5.2), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, view, tp, markers) in zip(axes, panels, strict=True):
        _draw_panel(ax, tp, view, statuses.get(name, {}), markers, vmax_suv)
        ax.set_title(f"{name} {view}", fontsize=9)
    fig.suptitle(figure_title(result), fontsize=11)
    _legend(fig, result.is_pair)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.86, bottom=0.1, wspace=0.05)
    return atomic_write_with(
        path, lambda tmp: fig.savefig(tmp, format="png", facecolor="white"), overwrite=overwrite
    )


def figure_title(result: InferenceResult) -> str:
    """Pattern and probability (or "rules") for a pair; lesion count for a single scan."""
    prefix = f"{result.patient_id}: " if result.patient_id else ""
    if result.pattern is None:
        n = sum(len(tp.lesion_ids) for tp in result.timepoints.values())
        return f"{prefix}single scan, {n} lesion(s)"
    pattern = result.pattern
    if pattern.probability is not None:
        how = f"p = {pattern.probability:.2f}, learned head"
    else:
        how = f"rules: {pattern.rule}" if pattern.rule else "rules"
    return f"{prefix}pattern {pattern.label} ({how})"


def lesion_statuses(result: InferenceResult) -> dict[str, dict[int, str]]:
    """Timepoint -> lesion id -> ``persisting`` / ``new`` / ``resolved`` (``lesion`` if single)."""
    if not result.is_pair:
        return {
            name: dict.fromkeys(tp.lesion_ids, "lesion") for name, tp in result.timepoints.items()
        }
    out: dict[str, dict[int, str]] = {name: {} for name in result.timepoints}
    for match in result.pair_report.matches:
        out.setdefault(match.timepoint, {})[int(match.lesion_id)] = str(match.status)
    return out


def focal_nodule_centres(result: InferenceResult) -> dict[str, list[np.ndarray]]:
    """Follow-up world centres (RAS mm) of hotspots that qualify as a nodule within a mass."""
    if not result.is_pair:
        return {}
    from petflare.quant.change import NoduleCriteria, nodule_evidence

    criteria = NoduleCriteria()  # the criteria compare_studies' rules use by default
    centres = [
        np.asarray(change.hotspot_centre_mm, dtype=float)
        for change in result.pair_report.changes
        if change.hotspot_centre_mm is not None and nodule_evidence(change, criteria) is not None
    ]
    return {"followup": centres}


def unsegmented_focus_centres(result: InferenceResult) -> dict[str, list[np.ndarray]]:
    """Follow-up world centres (RAS mm) of the hottest rising foci outside the segmented lesions
    (those the evidence names, :data:`petflare.quant.focal_uptake.SHOWN_FOCI`)."""
    if not result.is_pair:
        return {}
    from petflare.quant.focal_uptake import SHOWN_FOCI

    foci = result.pair_report.new_focal_uptake[:SHOWN_FOCI]
    return {"followup": [np.asarray(f.centre_mm, dtype=float) for f in foci]}


# --------------------------------------------------------------------------- drawing


def _display_position(
    point_mm: np.ndarray, shape: Sequence[int], affine: np.ndarray, view: str
) -> tuple[float, float]:
    """Where a world point (RAS mm) lands on :func:`petflare.inference.figures.mip`'s image, in mm.

    ``mip`` shows the closest-canonical (RAS) array with columns right-to-left (coronal) or
    anterior-to-posterior (sagittal) and rows head-to-feet; the same flips are applied here.
    """
    ornt = nib.orientations.io_orientation(affine)
    canonical_affine = affine @ nib.orientations.inv_ornt_aff(ornt, tuple(shape))
    canonical_shape = [0, 0, 0]
    for axis, (target, _flip) in enumerate(ornt):
        canonical_shape[int(target)] = int(shape[axis])
    spacing = np.linalg.norm(canonical_affine[:3, :3], axis=0)
    inv = np.linalg.inv(canonical_affine)
    vox = inv[:3, :3] @ np.asarray(point_mm, dtype=float) + inv[:3, 3]
    horizontal = 0 if view == "coronal" else 1
    col = canonical_shape[horizontal] - 1 - vox[horizontal]
    row = canonical_shape[2] - 1 - vox[2]
    return (col + 0.5) * spacing[horizontal], (row + 0.5) * spacing[2]


def _draw_panel(
    ax: Any,
    tp: TimepointResult,
    view: str,
    statuses: dict[int, str],
    markers: Sequence[tuple[str, np.ndarray | None, str]],
    vmax_suv: float,
) -> None:
    """One MIP panel (petflare.inference.figures.mip) with status contours and markers."""
    from petflare.inference.figures import mip

    image, col_mm, row_mm = mip(tp.study.pet, tp.study.affine, view)
    n_rows, n_cols = image.shape
    ax.imshow(
        image,
        cmap="gray_r",
        vmin=0.0,
        vmax=vmax_suv,
        extent=(0.0, n_cols * col_mm, n_rows * row_mm, 0.0),
        interpolation="nearest",
    )
    xs = (np.arange(n_cols) + 0.5) * col_mm
    ys = (np.arange(n_rows) + 0.5) * row_mm
    for lesion_id in tp.lesion_ids:
        projected, _, _ = mip((tp.instances == lesion_id).astype(np.uint8), tp.study.affine, view)
        colour = STATUS_COLOURS.get(statuses.get(lesion_id, "lesion"), "#CC79A7")
        if n_rows > 1 and n_cols > 1:
            ax.contour(xs, ys, projected, levels=[0.5], colors=[colour], linewidths=1.2)
    for symbol, centre, _ in markers:
        if centre is None:
            continue
        x_mm, y_mm = _display_position(centre, tp.study.shape, tp.study.affine, view)
        ax.plot(
            [x_mm],
            [y_mm],
            marker=symbol,
            color="#009E73",
            markersize=11,
            markeredgewidth=2.2,
            fillstyle="none",
        )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal")


def _hottest_centre(tp: TimepointResult) -> np.ndarray | None:
    report = tp.scan_report
    if report.hottest_lesion_id is None:
        return None
    return np.asarray(report.lesion(report.hottest_lesion_id).peak_centre_mm, dtype=float)


def _legend(fig: Any, is_pair: bool) -> None:
    from matplotlib.lines import Line2D

    items: Iterable[tuple[str, str]] = (
        [("persisting", "persisting"), ("new", "new"), ("resolved", "resolved")]
        if is_pair
        else [("lesion", "lesion")]
    )
    handles = [Line2D([], [], color=STATUS_COLOURS[key], lw=2, label=label) for key, label in items]
    handles.append(
        Line2D([], [], color="#009E73", marker="+", lw=0, markersize=10, label="hottest lesion")
    )
    if is_pair:
        handles.append(
            Line2D([], [], color="#009E73", marker="x", lw=0, markersize=9, label="focal nodule")
        )
        handles.append(
            Line2D(
                [],
                [],
                color="#009E73",
                marker="o",
                fillstyle="none",
                lw=0,
                markersize=9,
                label="rising focus, not segmented",
            )
        )
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=8)
