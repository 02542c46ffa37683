"""``petflare-convert``: a DICOM PET series to a body-weight SUV NIfTI (and an RTSTRUCT ROI mask).

:func:`convert_dicom` holds the logic and works without Hydra; :func:`main` only composes the
config and calls it. Every output is checked before anything is read, and written atomically,
so a rejected input leaves no file behind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from petflare.cli._common import config_dir, exit_on_bad_input
from petflare.errors import PetflareInputError
from petflare.io.atomic import check_can_write
from petflare.io.dicom import DEFAULT_SPACING_TOLERANCE, read_dicom_pet, read_rtstruct_mask
from petflare.io.nifti import save_nifti

_NIFTI_ENDINGS = (".nii.gz", ".nii")


@dataclass(frozen=True)
class ConversionResult:
    """What :func:`convert_dicom` wrote, for the command's summary."""

    out: Path
    mask_out: Path | None
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    orientation: str
    suv_max: float
    suv_description: str
    mask_voxels: int | None
    seconds: float

    def summary(self) -> str:
        """A few human-readable lines."""
        shape = " x ".join(str(s) for s in self.shape)
        spacing = " x ".join(f"{s:.4g}" for s in self.spacing_mm)
        lines = [
            f"wrote {self.out}: SUVbw float32, {shape} voxels of {spacing} mm "
            f"({self.orientation}), SUVmax {self.suv_max:.2f}",
            f"  {self.suv_description}",
        ]
        if self.mask_out is not None:
            lines.append(f"wrote {self.mask_out}: ROI mask, {self.mask_voxels} voxels")
        lines.append(f"  converted in {self.seconds:.2f} s")
        return "\n".join(lines)


def _nifti_path(value: str | Path, option: str) -> Path:
    path = Path(value)
    if not path.name.endswith(_NIFTI_ENDINGS):
        raise PetflareInputError(path, f"{option}= must name a .nii.gz or .nii file")
    return path


def convert_dicom(
    dicom: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    series_uid: str | None = None,
    rtstruct: str | Path | None = None,
    roi: str | None = None,
    mask_out: str | Path | None = None,
    spacing_tolerance: float = DEFAULT_SPACING_TOLERANCE,
) -> ConversionResult:
    """Convert a DICOM PET series to an SUVbw NIfTI, optionally with one RTSTRUCT ROI as a mask.

    Args:
        dicom: folder holding the PET series (other DICOM objects and files are ignored).
        out: SUV NIfTI to write (float32, RAS affine).
        overwrite: replace existing outputs (otherwise they are refused).
        series_uid: SeriesInstanceUID when the folder holds several PET series.
        rtstruct, roi, mask_out: RTSTRUCT file, ROI name and mask NIfTI (uint8); all or none.
        spacing_tolerance: allowed slice-position deviation, as a fraction of the spacing.

    Raises:
        PetflareInputError: bad input or an existing output; nothing is written then.
    """
    start = time.perf_counter()
    out = check_can_write(_nifti_path(out, "out"), overwrite)
    mask_given = [rtstruct is not None, roi is not None, mask_out is not None]
    if any(mask_given) and not all(mask_given):
        raise PetflareInputError(
            rtstruct or mask_out, "rtstruct=, roi= and mask_out= must be given together"
        )
    mask_path = None
    if mask_out is not None:
        mask_path = check_can_write(_nifti_path(mask_out, "mask_out"), overwrite)
        if mask_path.resolve() == out.resolve():
            raise PetflareInputError(mask_path, "mask_out= must differ from out=")

    study = read_dicom_pet(dicom, series_uid=series_uid, spacing_tolerance=spacing_tolerance)
    mask = None
    if rtstruct is not None and roi is not None:
        mask = read_rtstruct_mask(rtstruct, study, roi)  # before writing: errors leave nothing

    save_nifti(study.pet, study.affine, out, overwrite=overwrite, dtype=np.float32)
    if mask is not None and mask_path is not None:
        save_nifti(mask, study.affine, mask_path, overwrite=overwrite, dtype=np.uint8)
    return ConversionResult(
        out=out,
        mask_out=mask_path,
        shape=study.shape,
        spacing_mm=study.spacing_mm,
        orientation=study.orientation,
        suv_max=float(study.pet.max()),
        suv_description=study.meta.source.get("suv_conversion", ""),
        mask_voxels=None if mask is None else int(mask.sum()),
        seconds=time.perf_counter() - start,
    )


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="convert")
def main(cfg: DictConfig) -> None:
    """Entry point of ``petflare-convert`` / ``scripts/convert.py``."""

    @exit_on_bad_input
    def run() -> None:
        if cfg.dicom is None or cfg.out is None:
            raise PetflareInputError(
                None, "dicom=DIR and out=FILE.nii.gz are required (see --help)"
            )
        result = convert_dicom(
            str(cfg.dicom),
            str(cfg.out),
            overwrite=bool(cfg.overwrite),
            series_uid=_optional_str(cfg.series_uid),
            rtstruct=_optional_str(cfg.rtstruct),
            roi=_optional_str(cfg.roi),
            mask_out=_optional_str(cfg.mask_out),
            spacing_tolerance=float(cfg.spacing_tolerance),
        )
        print(result.summary())

    run()
