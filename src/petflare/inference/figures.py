"""Maximum-intensity-projection (MIP) figures of PET studies, with lesion contours.

Volumes are first reoriented to the closest canonical (RAS+) orientation, whatever the
affine's axis order and flips, so the head is always up and the patient's right is on the
viewer's left (radiological convention); pixel aspect ratios come from the voxel spacing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.figure import Figure

from petflare.io.atomic import atomic_path
from petflare.io.study import Study

#: Views a MIP can be drawn in.
VIEWS: tuple[str, ...] = ("coronal", "sagittal")

_DEFAULT_CONTOUR_COLOR = "#e8112d"


def to_canonical(
    array: np.ndarray, affine: np.ndarray
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Reorder and flip ``array`` axes to RAS+ (no resampling); return it and its spacing (mm)."""
    ornt = nib.orientations.io_orientation(affine)
    canonical = nib.orientations.apply_orientation(np.asarray(array), ornt)
    spacing = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
    ras_spacing = [0.0, 0.0, 0.0]
    for axis, (target, _flip) in enumerate(ornt):
        ras_spacing[int(target)] = float(spacing[axis])
    return canonical, (ras_spacing[0], ras_spacing[1], ras_spacing[2])


def _canonical_extent_mm(shape: Sequence[int], affine: np.ndarray) -> tuple[float, float, float]:
    """Field-of-view size along R, A, S (mm) of a grid."""
    ornt = nib.orientations.io_orientation(affine)
    spacing = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
    ext = [0.0, 0.0, 0.0]
    for axis, (target, _flip) in enumerate(ornt):
        ext[int(target)] = float(shape[axis] * spacing[axis])
    return ext[0], ext[1], ext[2]


def mip(
    array: np.ndarray, affine: np.ndarray, view: str = "coronal"
) -> tuple[np.ndarray, float, float]:
    """MIP for display: rows run head (top) to feet, columns as a radiologist views them.

    Returns:
        ``(image, column_spacing_mm, row_spacing_mm)``. Coronal: columns from the patient's
        right to left (patient faces the viewer). Sagittal: columns from anterior to posterior
        (patient faces the viewer's left).
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    ras, (sx, sy, sz) = to_canonical(array, affine)
    if view == "coronal":
        proj = ras.max(axis=1)  # (x: R->L reversed in RAS, z)
        image = proj[::-1, ::-1].T  # columns x descending (patient right first), rows z descending
        return image, sx, sz
    proj = ras.max(axis=0)  # (y, z)
    image = proj[::-1, ::-1].T  # columns anterior first, rows head first
    return image, sy, sz


def _draw_panel(
    ax,  # noqa: ANN001 - matplotlib Axes
    study: Study,
    mask: np.ndarray | None,
    view: str,
    suv_max: float,
    colors: Mapping[int, str] | None,
    label: str,
) -> None:
    """One MIP panel with optional per-lesion contours."""
    image, col_mm, row_mm = mip(study.pet, study.affine, view)
    n_rows, n_cols = image.shape
    extent = (0.0, n_cols * col_mm, n_rows * row_mm, 0.0)
    ax.imshow(image, cmap="gray_r", vmin=0.0, vmax=suv_max, extent=extent, interpolation="bilinear")
    if mask is not None and np.any(mask):
        mask = np.asarray(mask)
        if mask.shape != study.pet.shape:
            raise ValueError(f"mask shape {mask.shape} differs from PET shape {study.pet.shape}")
        labels = [int(v) for v in np.unique(mask) if v != 0]
        xs = (np.arange(n_cols) + 0.5) * col_mm
        ys = (np.arange(n_rows) + 0.5) * row_mm
        for lab in labels:
            proj, _, _ = mip((mask == lab).astype(np.uint8), study.affine, view)
            color = (colors or {}).get(lab, _DEFAULT_CONTOUR_COLOR)
            ax.contour(xs, ys, proj, levels=[0.5], colors=[color], linewidths=0.8)
    ax.set_title(label, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal")


def mip_pair_figure(
    baseline: Study,
    followup: Study,
    path: str | Path,
    *,
    title: str = "",
    baseline_mask: np.ndarray | None = None,
    followup_mask: np.ndarray | None = None,
    overwrite: bool = False,
    suv_max: float = 10.0,
    views: Sequence[str] = ("coronal",),
    label_colors: Mapping[int, str] | None = None,
    dpi: int = 110,
) -> Path:
    """Save baseline and follow-up PET MIPs side by side (inverted grey, SUV 0..``suv_max``).

    Args:
        baseline, followup: the two studies (any orientation; masks default to ``study.mask``
            when the mask arguments are None).
        path: PNG file to write (atomically; an existing file needs ``overwrite``).
        title: figure title.
        baseline_mask, followup_mask: instance or binary lesion masks on each study's grid,
            drawn as contours of their projections.
        suv_max: upper end of the grey scale (SUV), e.g. 10 for whole-body FDG.
        views: ``"coronal"`` and/or ``"sagittal"``; one row of panels per view.
        label_colors: optional lesion label -> matplotlib colour (e.g. by response status).
        dpi: resolution of the PNG.

    Returns:
        The written path.
    """
    views = tuple(views)
    bad = [v for v in views if v not in VIEWS]
    if not views or bad:
        raise ValueError(f"views must be a non-empty subset of {VIEWS}, got {views}")
    masks = (
        baseline.mask if baseline_mask is None else baseline_mask,
        followup.mask if followup_mask is None else followup_mask,
    )
    studies = (baseline, followup)
    names = ("Baseline", "Follow-up")
    sizes_mm = []  # (height, width) of every panel in mm
    for study in studies:
        ext = _canonical_extent_mm(study.shape, study.affine)
        sizes_mm += [(ext[2], ext[0] if v == "coronal" else ext[1]) for v in views]
    aspect = max(h for h, _ in sizes_mm) / max(max(w for _, w in sizes_mm), 1.0)
    panel_w = 3.2
    fig = Figure(figsize=(2 * panel_w, len(views) * panel_w * aspect + (0.5 if title else 0.2)))
    axes = fig.subplots(len(views), 2, squeeze=False)
    for r, view in enumerate(views):
        for c, (study, mask, name) in enumerate(zip(studies, masks, names, strict=True)):
            date = f" {study.meta.study_date}" if study.meta.study_date else ""
            _draw_panel(
                axes[r][c], study, mask, view, suv_max, label_colors, f"{name}{date} ({view})"
            )
    return _save(fig, path, title, overwrite, dpi)


def mip_row_figure(
    panels: Sequence[tuple[Study, np.ndarray | None, str]],
    path: str | Path,
    *,
    title: str = "",
    overwrite: bool = False,
    suv_max: float = 10.0,
    label_colors: Mapping[int, str] | None = None,
    dpi: int = 110,
) -> Path:
    """Save coronal PET MIPs side by side, each ``(study, mask or None, panel title)``.

    The same drawing as :func:`mip_pair_figure` for any number of scans (e.g. a real background
    and hybrid scans made from it); masks are drawn as contours of their projections.
    """
    if not panels:
        raise ValueError("no panels to draw")
    sizes_mm = [_canonical_extent_mm(s.shape, s.affine) for s, _, _ in panels]
    aspect = max(e[2] for e in sizes_mm) / max(max(e[0] for e in sizes_mm), 1.0)
    panel_w = 3.2
    fig = Figure(figsize=(len(panels) * panel_w, panel_w * aspect + (0.5 if title else 0.2)))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for c, (study, mask, name) in enumerate(panels):
        _draw_panel(axes[0][c], study, mask, "coronal", suv_max, label_colors, name)
    return _save(fig, path, title, overwrite, dpi)


def _save(fig: Figure, path: str | Path, title: str, overwrite: bool, dpi: int) -> Path:
    """Title the figure, lay it out and write it as a PNG atomically."""
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, facecolor="white")
    return path
