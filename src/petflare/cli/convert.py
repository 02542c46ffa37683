"""``petflare-convert``: a DICOM PET series to a body-weight SUV NIfTI (and its labels as a map).

:func:`convert_dicom` holds the logic and works without Hydra; :func:`main` only composes the
config and calls it. Every output is checked before anything is read, and written atomically,
so a rejected input leaves no file behind.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, ListConfig

from petflare.cli._common import hydra_command
from petflare.errors import PetflareInputError
from petflare.io.atomic import atomic_write_text, check_can_write
from petflare.io.dicom import DEFAULT_SPACING_TOLERANCE, read_dicom_pet
from petflare.io.dicom_labels import label_file_kind, read_dicom_labels
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
    provenance_out: Path | None = None
    series_selection: str = ""
    scan_start: str = ""
    sul: str = ""
    labels_description: str = ""

    def summary(self) -> str:
        """A few human-readable lines."""
        shape = " x ".join(str(s) for s in self.shape)
        spacing = " x ".join(f"{s:.4g}" for s in self.spacing_mm)
        lines = [
            f"wrote {self.out}: SUVbw float32, {shape} voxels of {spacing} mm "
            f"({self.orientation}), SUVmax {self.suv_max:.2f}",
            f"  series: {self.series_selection}",
            f"  {self.suv_description}",
            f"  scan start: {self.scan_start}",
            f"  {self.sul}",
        ]
        if self.mask_out is not None:
            lines.append(f"wrote {self.mask_out}: label map, {self.mask_voxels} voxels")
            lines.append(f"  {self.labels_description}")
        if self.provenance_out is not None:
            lines.append(f"wrote {self.provenance_out}: conversion provenance (JSON)")
        lines.append(f"  converted in {self.seconds:.2f} s")
        return "\n".join(lines)


def _nifti_path(value: str | Path, option: str) -> Path:
    path = Path(value)
    if not path.name.endswith(_NIFTI_ENDINGS):
        raise PetflareInputError(path, f"{option}= must name a .nii.gz or .nii file")
    return path


def provenance_path(out: str | Path) -> Path:
    """The JSON provenance written beside an SUV NIfTI (``suv.nii.gz`` -> ``suv.json``)."""
    out = Path(out)
    for ending in _NIFTI_ENDINGS:
        if out.name.endswith(ending):
            return out.with_name(out.name[: -len(ending)] + ".json")
    return out.with_name(out.name + ".json")


def convert_dicom(
    dicom: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    series_uid: str | None = None,
    rtstruct: str | Path | None = None,
    roi: str | Sequence[str] | None = None,
    mask_out: str | Path | None = None,
    labels: str | Path | None = None,
    spacing_tolerance: float = DEFAULT_SPACING_TOLERANCE,
) -> ConversionResult:
    """Convert a DICOM PET series to an SUVbw NIfTI, optionally with its labels as a label map.

    Args:
        dicom: folder holding the PET series, or a study folder: the attenuation-corrected PET
            in activity units is picked (other series and files are ignored).
        out: SUV NIfTI to write (float32, RAS affine); the provenance goes beside it as JSON.
        overwrite: replace existing outputs (otherwise they are refused).
        series_uid: SeriesInstanceUID when the folder holds several candidate PET series.
        labels: RTSTRUCT or DICOM SEG file drawn on that series (``rtstruct`` is the older name).
        roi: RTSTRUCT ROI name(s) in label order (default: every ROI); not for a SEG.
        mask_out: the label map NIfTI (label n = n-th ROI, or SEG segment number n).
        spacing_tolerance: allowed slice-position deviation, as a fraction of the spacing.

    Raises:
        PetflareInputError: bad input or an existing output; nothing is written then.
    """
    start = time.perf_counter()
    out = check_can_write(_nifti_path(out, "out"), overwrite)
    provenance_out = check_can_write(provenance_path(out), overwrite)
    if rtstruct is not None and labels is not None:
        raise PetflareInputError(rtstruct, "give labels= or rtstruct=, not both")
    label_file = labels if labels is not None else rtstruct
    roi_names = [roi] if isinstance(roi, str) else (list(roi) if roi is not None else None)
    if (label_file is None) != (mask_out is None) or (roi_names and label_file is None):
        raise PetflareInputError(
            label_file or mask_out,
            "labels= (or rtstruct=) and mask_out= must be given together (roi= only with them)",
        )
    mask_path = None
    if mask_out is not None:
        mask_path = check_can_write(_nifti_path(mask_out, "mask_out"), overwrite)
        if mask_path.resolve() == out.resolve():
            raise PetflareInputError(mask_path, "mask_out= must differ from out=")
    if label_file is not None:
        label_file_kind(label_file)  # a wrong file is refused before the PET is read

    study = read_dicom_pet(dicom, series_uid=series_uid, spacing_tolerance=spacing_tolerance)
    label_map = None
    if label_file is not None:  # before writing: errors leave nothing
        label_map = read_dicom_labels(label_file, study, roi_names)

    provenance = dict(study.meta.source)
    provenance.update(
        {
            "suv_max": repr(float(study.pet.max())),
            "patient_sex": study.meta.sex or "",
            "patient_height_m": "" if study.meta.height_m is None else repr(study.meta.height_m),
            "patient_weight_kg": "" if study.meta.weight_kg is None else repr(study.meta.weight_kg),
        }
    )
    if label_map is not None:
        provenance["labels"] = str(label_map.source)
        provenance["labels_kind"] = label_map.kind
        provenance["label_names"] = json.dumps(list(label_map.names))
    save_nifti(study.pet, study.affine, out, overwrite=overwrite, dtype=np.float32)
    if label_map is not None and mask_path is not None:
        dtype = np.uint8 if len(label_map.names) < 256 else np.uint16
        save_nifti(label_map.labels, study.affine, mask_path, overwrite=overwrite, dtype=dtype)
    atomic_write_text(
        provenance_out, json.dumps(provenance, indent=2, sort_keys=True) + "\n", overwrite
    )
    return ConversionResult(
        out=out,
        mask_out=mask_path,
        shape=study.shape,
        spacing_mm=study.spacing_mm,
        orientation=study.orientation,
        suv_max=float(study.pet.max()),
        suv_description=study.meta.source.get("suv_conversion", ""),
        mask_voxels=None if label_map is None else int(np.count_nonzero(label_map.labels)),
        seconds=time.perf_counter() - start,
        provenance_out=provenance_out,
        series_selection=study.meta.source.get("series_selection", ""),
        scan_start=" ".join(
            v
            for v in (
                study.meta.source.get("suv_reference_time", ""),
                study.meta.source.get("scan_start_rule", ""),
                study.meta.source.get("scan_start_note", ""),
            )
            if v
        ),
        sul=study.meta.source.get("sul", "")
        + (
            f": factor {float(study.meta.source['sul_factor']):.4f}"
            if "sul_factor" in study.meta.source
            else ""
        ),
        labels_description="" if label_map is None else label_map.describe(),
    )


def convert_manifest(
    manifest: str | Path, out: str | Path, *, overwrite: bool = False
) -> tuple[Path, list[str]]:
    """Turn a manifest listing DICOM studies into a NIfTI dataset that training can read.

    Every PET that is a DICOM series folder is converted (SUV NIfTI, provenance JSON) and its
    RTSTRUCT / SEG mask (``file#ROI,...`` selects ROIs) written as a label map on its grid;
    NIfTI files are copied. The result is ``out/<patient>/<timepoint>/`` plus
    ``out/manifest.csv`` with the same patients, patterns and splits. Everything is written
    into a temporary folder that replaces ``out`` only when every study converted.

    Returns:
        The new manifest and one summary line per converted study.

    Raises:
        PetflareInputError: a bad manifest row or study (nothing is written), or ``out``
            exists and is not empty without ``overwrite``.
    """
    import shutil

    from petflare.constants import TIMEPOINTS
    from petflare.io import load_manifest, write_manifest
    from petflare.io.atomic import atomic_directory
    from petflare.io.dicom_labels import is_dicom_input, split_roi_selection

    rows = load_manifest(manifest)
    out = Path(out)
    lines: list[str] = []
    new_rows: list[dict[str, object]] = []
    with atomic_directory(out, overwrite) as tmp:
        done: dict[str, dict[str, str | None]] = {}  # PET path -> its new cells
        for row in rows:
            new_row: dict[str, object] = dict(row)
            for timepoint in TIMEPOINTS:
                pet = row.get(f"{timepoint}_pet")
                if pet is None:
                    continue
                key = f"{pet}|{row.get(f'{timepoint}_mask')}|{row.get(f'{timepoint}_ct')}"
                if key not in done:
                    folder = Path(str(row["patient_id"])) / timepoint
                    while (tmp / folder).exists():
                        folder = folder.with_name(folder.name + "_")
                    (tmp / folder).mkdir(parents=True)
                    cells: dict[str, str | None] = {"pet": None, "ct": None, "mask": None}
                    mask = row.get(f"{timepoint}_mask")
                    if Path(str(pet)).is_dir():
                        cells["pet"] = (folder / "suv.nii.gz").as_posix()
                        label_path, rois = (None, None)
                        if mask is not None and is_dicom_input(mask):
                            label_path, rois = split_roi_selection(mask)
                            cells["mask"] = (folder / "labels.nii.gz").as_posix()
                        result = convert_dicom(
                            pet,
                            tmp / str(cells["pet"]),
                            labels=label_path,
                            roi=rois,
                            mask_out=None if label_path is None else tmp / str(cells["mask"]),
                        )
                        lines.append(f"{folder}: {result.series_selection}")
                    else:
                        cells["pet"] = (folder / Path(str(pet)).name).as_posix()
                        shutil.copy2(str(pet), tmp / folder / Path(str(pet)).name)
                    if mask is not None and cells["mask"] is None:
                        copied = folder / ("mask_" + Path(str(mask)).name)
                        cells["mask"] = copied.as_posix()
                        shutil.copy2(str(mask), tmp / copied)
                    ct = row.get(f"{timepoint}_ct")
                    if ct is not None:
                        copied = folder / ("ct_" + Path(str(ct)).name)
                        cells["ct"] = copied.as_posix()
                        shutil.copy2(str(ct), tmp / copied)
                    done[key] = cells
                for part in ("pet", "ct", "mask"):
                    new_row[f"{timepoint}_{part}"] = done[key][part]
            new_rows.append(new_row)
        write_manifest(new_rows, tmp / "manifest.csv")
    return out / "manifest.csv", lines


def _roi_option(value: object) -> str | list[str] | None:
    """``roi=NAME`` or ``roi=[A,B]`` from the command line."""
    if value is None:
        return None
    if isinstance(value, (ListConfig, list, tuple)):
        return [str(v) for v in value]
    return str(value)


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


@hydra_command("convert")
def main(cfg: DictConfig) -> None:
    """Entry point of ``petflare-convert`` / ``scripts/convert.py``."""
    if cfg.manifest is not None:
        if cfg.out is None or cfg.dicom is not None:
            raise PetflareInputError(
                cfg.manifest, "manifest= needs out=DIR (and no dicom=); see --help"
            )
        written, lines = convert_manifest(
            str(cfg.manifest), str(cfg.out), overwrite=bool(cfg.overwrite)
        )
        print("\n".join(lines))
        print(f"wrote {written}: the NIfTI copy of the dataset, for training or evaluate")
        return
    if cfg.dicom is None or cfg.out is None:
        raise PetflareInputError(None, "dicom=DIR and out=FILE.nii.gz are required (see --help)")
    result = convert_dicom(
        str(cfg.dicom),
        str(cfg.out),
        overwrite=bool(cfg.overwrite),
        series_uid=_optional_str(cfg.series_uid),
        rtstruct=_optional_str(cfg.rtstruct),
        labels=_optional_str(cfg.labels),
        roi=_roi_option(cfg.roi),
        mask_out=_optional_str(cfg.mask_out),
        spacing_tolerance=float(cfg.spacing_tolerance),
    )
    print(result.summary())
