"""The SUV plausibility checks' margins on the real scans (docs/inference.md, "Input checks").

``python -m petflare.benchmarks.plausibility [REAL_DATA_DIR]`` converts every real DICOM series
to SUV, reads the IBSI SUV crops, and prints per scan what the checks of
:func:`petflare.io.validation.check_suv_plausibility` compare with their thresholds: the maximum
SUV, the fraction of voxels with uptake and the negative share of the total |SUV|. The default
folder is ``$PETFLARE_REAL_DATA`` or ``../shared/data/real``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

#: The real DICOM PET series quantified as SUV (folder names under the real-data root).
DICOM_SERIES = (
    "sts001_wholebody_fdg_dicom/image",
    "acrin_nsclc_042_fdg_dicom/image",
    "chus052_fdg_dicom/image",
)


def plausibility_rows(root: Path) -> list[tuple[str, float, float, float]]:
    """(scan, SUV max, % voxels with uptake, % negative share) for each real scan found."""
    import nibabel as nib

    from petflare.io.dicom import read_dicom_pet
    from petflare.io.validation import BODY_UPTAKE_SUV

    volumes: list[tuple[str, np.ndarray]] = []
    for series in DICOM_SERIES:
        if (root / series).is_dir():
            volumes.append((series.split("/")[0], read_dicom_pet(root / series).pet))
    for crop in sorted((root / "ibsi_sts_crops").glob("STS_*/PET_image.nii.gz")):
        img: Any = nib.load(crop)  # a spatial image; typed loosely by nibabel
        volumes.append((f"ibsi_sts_crops/{crop.parent.name}", np.asarray(img.dataobj)))
    rows = []
    for name, pet in volumes:
        values = pet.astype(np.float64)
        negative = float(np.abs(values[values < 0]).sum() / np.abs(values).sum())
        uptake = float(np.mean(values > BODY_UPTAKE_SUV))
        rows.append((name, float(values.max()), 100.0 * uptake, 100.0 * negative))
    return rows


def main(argv: list[str] | None = None) -> None:
    """Print the table as Markdown."""
    args = sys.argv[1:] if argv is None else argv
    default = os.environ.get("PETFLARE_REAL_DATA", "../shared/data/real")
    root = Path(args[0] if args else default)
    print("| scan | SUV max | voxels with SUV > 0.1 | negative share of total SUV |")
    print("|---|---|---|---|")
    for name, maximum, uptake, negative in plausibility_rows(root):
        print(f"| {name} | {maximum:.1f} | {uptake:.0f} % | {negative:.1f} % |")


if __name__ == "__main__":
    main()
