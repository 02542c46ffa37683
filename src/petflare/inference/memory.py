"""Memory guard: refuse, before any voxel is read, a scan that would need more memory than there is.

A 1024^3 volume at fine spacing needs tens of GiB in the pipeline; without a guard the operating
system kills the process half-way (no message, maybe a half-written output). The estimate is
linear in the voxel counts of the input grid (the study, its CT, the masks and the quantification
live there) and of the model grid (network input and sliding-window outputs at the model
spacing); the two costs per voxel were measured as peak resident memory of a CPU run (see
docs/inference.md, "Memory guard", for the command and the numbers).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from petflare.errors import PetflareInputError

#: Peak bytes per voxel of the input grid, per scan: 9.6 measured in-process (the float32 PET,
#: its copy, the instance mask, the quantification's maps) plus 12 for reading the file (a
#: scaled NIfTI is read as float64, then copied to float32); rounded up.
BYTES_PER_INPUT_VOXEL = 24.0
#: Peak bytes per voxel of the model grid (network input, MONAI sliding-window output, count
#: and importance maps, softmax, resampling): 80 measured with a body whose bounding box is 48 %
#: of the field of view (the preprocessing crops to the body), scaled to a body filling it.
BYTES_PER_MODEL_VOXEL = 170.0
#: Fixed overhead in bytes: the interpreter, torch and the loaded network (371 MiB measured) and
#: the pipeline's fixed working set (120 MiB).
BASE_BYTES = 0.5 * 2**30

#: Hint shown with the refusal.
MEMORY_OVERRIDE_HINT = (
    "pass memory_limit_gb=N to set the limit yourself (e.g. on a machine with swap), or crop / "
    "resample the image"
)


@dataclass(frozen=True)
class ScanGrid:
    """Voxel grid of a scan as read from its header (no voxel data read)."""

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    path: Path

    @property
    def n_voxels(self) -> int:
        """Number of voxels."""
        return int(np.prod(np.asarray(self.shape, dtype=np.int64)))


def scan_grid(path: str | Path) -> ScanGrid | None:
    """The grid of a NIfTI file or a DICOM PET folder from headers only; None when unknown.

    A DICOM folder's grid is (Columns, Rows, number of files) of its first PET image, so a
    folder holding several series is over-estimated (the guard errs on the safe side).
    """
    path = Path(path)
    if path.is_dir():
        return _dicom_grid(path)
    try:
        import nibabel as nib

        img: Any = nib.load(str(path))  # a spatial image; typed loosely by nibabel
        shape = tuple(int(s) for s in img.shape[:3])
        spacing = np.linalg.norm(np.asarray(img.affine, dtype=np.float64)[:3, :3], axis=0)
    except Exception:  # unreadable: the reader reports it with the right message
        return None
    if len(shape) != 3:
        return None
    return ScanGrid(shape, tuple(float(s) for s in spacing), path)  # type: ignore[arg-type]


def _dicom_grid(folder: Path) -> ScanGrid | None:
    import pydicom

    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        if ds.get("Modality") != "PT":
            continue
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
            row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
            slice_mm = float(ds.get("SliceThickness") or 0.0) or min(row_mm, col_mm)
        except (AttributeError, TypeError, ValueError):
            return None
        return ScanGrid((cols, rows, len(files)), (col_mm, row_mm, slice_mm), folder)
    return None


def estimate_peak_bytes(
    grids: list[ScanGrid], model_spacing_mm: tuple[float, float, float] | None
) -> float:
    """Estimated peak memory (bytes) to run the scans of one request together (a pair is held
    in memory at once). Without a model spacing, the input spacing is used (an over-estimate
    for scans finer than the model)."""
    total = BASE_BYTES
    for grid in grids:
        model_voxels = float(grid.n_voxels)
        if model_spacing_mm is not None:
            ratio = np.prod(np.asarray(grid.spacing_mm) / np.asarray(model_spacing_mm))
            model_voxels *= float(ratio)
        total += BYTES_PER_INPUT_VOXEL * grid.n_voxels + BYTES_PER_MODEL_VOXEL * model_voxels
    return total


def available_memory_bytes() -> float | None:
    """Memory the machine can give now: MemAvailable (Linux), else total physical memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024.0
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(
    paths: list[Path],
    *,
    model_spacing_mm: tuple[float, float, float] | None = None,
    limit_gb: float | None = None,
) -> float:
    """Refuse inputs whose estimated peak memory exceeds the limit; return the estimate (bytes).

    Args:
        paths: the PET files / DICOM folders processed together (both scans of a pair).
        model_spacing_mm: the model's voxel size (the grid the network runs on).
        limit_gb: the limit in GiB; None = the memory available on this machine now.

    Raises:
        PetflareInputError: naming the largest scan, with the estimate, the limit and the
            override (``memory_limit_gb=``).
    """
    grids = [g for g in (scan_grid(p) for p in paths) if g is not None]
    if not grids:
        return 0.0
    estimate = estimate_peak_bytes(grids, model_spacing_mm)
    limit = limit_gb * 2**30 if limit_gb is not None else available_memory_bytes()
    if limit is not None and estimate > limit:
        largest = max(grids, key=lambda g: g.n_voxels)
        where = "available on this machine" if limit_gb is None else "memory_limit_gb"
        raise PetflareInputError(
            largest.path,
            f"needs about {estimate / 2**30:.1f} GiB of memory (grid "
            f"{'x'.join(str(n) for n in largest.shape)} at "
            f"{'x'.join(f'{s:.3g}' for s in largest.spacing_mm)} mm"
            f"{f', {len(grids)} scans' if len(grids) > 1 else ''}), more than the "
            f"{limit / 2**30:.1f} GiB {where}; refused before reading it. {MEMORY_OVERRIDE_HINT}",
        )
    return estimate
