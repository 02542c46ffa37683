"""Institutional labels in: an RTSTRUCT or a DICOM SEG as a label map on a PET series' grid.

An institution's contours come as an RTSTRUCT (planar contours per ROI) or a DICOM SEG (frames
per segment). Either is turned into an integer label map on the grid of the PET
:class:`~petflare.io.study.Study` it was drawn on: label ``n`` is the ``n``-th chosen ROI, or
segment number ``n`` of a SEG, so the map doubles as an instance (lesion) mask for
``evaluate`` and training manifests. Where two ROIs or segments overlap, the lower label keeps
the voxel, and the overlap is counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from petflare.errors import PetflareInputError
from petflare.io.dicom import LPS_TO_RAS, read_rtstruct_mask, rtstruct_roi_names
from petflare.io.study import Study

_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"

#: A SEG pixel centre must land this close (in voxels) to a PET voxel centre.
_GRID_TOLERANCE_VOXELS = 0.1


@dataclass(frozen=True)
class LabelMap:
    """Labels read from an RTSTRUCT or SEG on a PET grid.

    Attributes:
        labels: uint16 map, 0 background, ``n`` = ``names[n - 1]``.
        names: ROI names (RTSTRUCT) or segment labels (SEG), in label order.
        source: the file read, and its kind ("RTSTRUCT" or "SEG").
        overlap_voxels: voxels claimed by more than one ROI / segment (kept by the lower label).
    """

    labels: np.ndarray
    names: tuple[str, ...]
    source: Path
    kind: str
    overlap_voxels: int = 0

    def describe(self) -> str:
        """One line for the command's summary."""
        counts = [int((self.labels == n).sum()) for n in range(1, len(self.names) + 1)]
        parts = ", ".join(
            f"{n}={name} ({c} voxels)"
            for n, (name, c) in enumerate(zip(self.names, counts, strict=True), start=1)
        )
        overlap = (
            f"; {self.overlap_voxels} overlapping voxels kept by the lower label"
            if (self.overlap_voxels)
            else ""
        )
        return f"{self.kind} {self.source.name}: {parts}{overlap}"


def _read(path: Path) -> Dataset:
    if not path.is_file():
        raise PetflareInputError(path, "label file (RTSTRUCT or DICOM SEG) not found")
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise PetflareInputError(path, f"cannot be read as DICOM ({exc})") from exc


def label_file_kind(path: str | Path) -> str:
    """'RTSTRUCT' or 'SEG' for a DICOM label file.

    Raises:
        PetflareInputError: missing, not DICOM, or another kind of object.
    """
    path = Path(path)
    if not path.is_file():
        raise PetflareInputError(path, "label file (RTSTRUCT or DICOM SEG) not found")
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise PetflareInputError(path, f"cannot be read as DICOM ({exc})") from exc
    modality = str(ds.get("Modality", ""))
    sop = str(ds.get("SOPClassUID", ""))
    if modality == "RTSTRUCT" or sop == _RTSTRUCT_SOP_CLASS:
        return "RTSTRUCT"
    if modality == "SEG" or sop == _SEG_SOP_CLASS:
        return "SEG"
    raise PetflareInputError(
        path, f"is neither an RTSTRUCT nor a DICOM SEG (Modality {modality or 'missing'})"
    )


def read_dicom_labels(
    path: str | Path, study: Study, roi_names: Sequence[str] | None = None
) -> LabelMap:
    """Read an RTSTRUCT (the named ROIs, or all) or a DICOM SEG (all segments) onto ``study``.

    Raises:
        PetflareInputError: unreadable file, unknown ROI, ROI names given for a SEG, another
            frame of reference, or contours / frames off the PET grid.
    """
    path = Path(path)
    if label_file_kind(path) == "RTSTRUCT":
        return read_rtstruct_labels(path, study, roi_names)
    if roi_names:
        raise PetflareInputError(
            path, "roi= selects RTSTRUCT ROIs; a DICOM SEG is read whole (every segment)"
        )
    return read_seg_labels(path, study)


def read_rtstruct_labels(
    path: str | Path, study: Study, roi_names: Sequence[str] | None = None
) -> LabelMap:
    """Rasterise RTSTRUCT ROIs (``roi_names`` in that order, or every ROI) into one label map.

    With every ROI requested, ROIs without closed planar contours (points, open lines) are
    left out; a named ROI without them is an error.
    """
    path = Path(path)
    available = rtstruct_roi_names(path)
    names = list(roi_names) if roi_names else available
    if not names:
        raise PetflareInputError(path, "the RTSTRUCT holds no ROI")
    labels = np.zeros(study.shape, dtype=np.uint16)
    kept: list[str] = []
    overlap = 0
    for name in names:
        try:
            mask = read_rtstruct_mask(path, study, name) > 0
        except PetflareInputError as exc:
            if roi_names or "no closed planar contours" not in exc.problem:
                raise
            continue
        kept.append(name)
        overlap += int(np.count_nonzero(mask & (labels > 0)))
        labels[mask & (labels == 0)] = len(kept)
    if not kept:
        raise PetflareInputError(path, "no ROI of the RTSTRUCT has closed planar contours")
    return LabelMap(labels, tuple(kept), path, "RTSTRUCT", overlap)


def read_seg_labels(path: str | Path, study: Study) -> LabelMap:
    """Read every segment of a DICOM SEG onto the grid of ``study`` (label = segment number).

    Each frame's pixel centres are placed by the frame's ImagePositionPatient and the SEG's
    orientation and spacing, then mapped through the study's affine; they must land on PET
    voxel centres (a SEG drawn on the series, any frame order). FRACTIONAL segments are
    thresholded at half their maximum value.
    """
    path = Path(path)
    ds = _read(path)
    if label_file_kind(path) != "SEG":
        raise PetflareInputError(path, "is not a DICOM SEG")
    frame_uid = (study.meta.source or {}).get("frame_of_reference_uid", "")
    seg_frame = str(ds.get("FrameOfReferenceUID", ""))
    if frame_uid and seg_frame and seg_frame != frame_uid:
        raise PetflareInputError(
            path, f"SEG is in frame of reference {seg_frame}, the PET series in {frame_uid}"
        )
    segments = {int(s.SegmentNumber): str(s.get("SegmentLabel", "")) for s in ds.SegmentSequence}
    if not segments:
        raise PetflareInputError(path, "the SEG holds no segment")
    pixels = np.asarray(ds.pixel_array)
    if pixels.ndim == 2:
        pixels = pixels[None]
    if str(ds.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL":
        pixels = pixels >= 0.5 * float(ds.get("MaximumFractionalValue", 255))
    else:
        pixels = pixels > 0

    shared = ds.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", [])
    if len(per_frame) != pixels.shape[0]:
        raise PetflareInputError(
            path, f"{pixels.shape[0]} frames but {len(per_frame)} per-frame functional groups"
        )
    world_to_voxel = np.linalg.inv(LPS_TO_RAS @ study.affine)
    labels = np.zeros(study.shape, dtype=np.uint16)
    overlap = 0
    for index in np.argsort([_segment_number(f, shared, path) for f in per_frame], kind="stable"):
        frame = per_frame[int(index)]
        rows, cols = np.nonzero(pixels[index])
        if rows.size == 0:
            continue
        number = _segment_number(frame, shared, path)
        iop = np.array(
            [
                float(v)
                for v in _group(
                    frame, shared, "PlaneOrientationSequence", "ImageOrientationPatient", path
                )
            ]
        )
        spacing = [
            float(v) for v in _group(frame, shared, "PixelMeasuresSequence", "PixelSpacing", path)
        ]
        origin = np.array(
            [
                float(v)
                for v in _group(
                    frame, shared, "PlanePositionSequence", "ImagePositionPatient", path
                )
            ]
        )
        lps = origin + np.outer(cols * spacing[1], iop[:3]) + np.outer(rows * spacing[0], iop[3:])
        ijk = lps @ world_to_voxel[:3, :3].T + world_to_voxel[:3, 3]
        voxel = np.round(ijk).astype(int)
        if np.abs(ijk - voxel).max() > _GRID_TOLERANCE_VOXELS:
            raise PetflareInputError(
                path,
                f"segment {number}: frame pixels do not lie on the PET grid's voxel centres "
                f"(off by up to {np.abs(ijk - voxel).max():.2f} voxels); the SEG was drawn on "
                "another grid",
            )
        inside = np.all((voxel >= 0) & (voxel < np.array(study.shape)), axis=1)
        if not inside.all():
            raise PetflareInputError(
                path, f"segment {number} extends outside the PET series' field of view"
            )
        i, j, k = voxel.T
        current = labels[i, j, k]
        overlap += int(np.count_nonzero((current != 0) & (current != number)))
        fresh = current == 0
        labels[i[fresh], j[fresh], k[fresh]] = number
    names = tuple(segments[n] for n in sorted(segments))
    return LabelMap(labels, names, path, "SEG", overlap)


def _segment_number(frame: Dataset, shared: Dataset, path: Path) -> int:
    """A frame's segment (per frame, or shared when the SEG holds one segment)."""
    try:
        return int(
            _group(frame, shared, "SegmentIdentificationSequence", "ReferencedSegmentNumber", path)
        )
    except (TypeError, ValueError) as exc:
        raise PetflareInputError(path, "a SEG frame does not name its segment") from exc


def _group(frame: Dataset, shared: Dataset, sequence: str, keyword: str, path: Path) -> Any:
    """An attribute of a frame's functional group, else of the shared functional groups."""
    for groups in (frame, shared):
        items = groups.get(sequence)
        if items and keyword in items[0]:
            return items[0].get(keyword)
    raise PetflareInputError(path, f"SEG frames lack {sequence} / {keyword}")


# --------------------------------------------------------------------------------------------
# Labelled studies from DICOM or NIfTI (evaluate, manifests)
# --------------------------------------------------------------------------------------------

#: In a manifest, ``mask/rt.dcm#GTV_Mass,GTV_Node`` selects RTSTRUCT ROIs (default: every ROI).
ROI_SEPARATOR = "#"


def split_roi_selection(value: str | Path) -> tuple[Path, list[str] | None]:
    """``path#ROI1,ROI2`` -> (path, [ROI1, ROI2]); a plain path -> (path, None)."""
    text = str(value)
    path, sep, rois = text.partition(ROI_SEPARATOR)
    if not sep or Path(text).exists():
        return Path(text), None
    names = [r.strip() for r in rois.split(",") if r.strip()]
    return Path(path), names or None


def is_dicom_input(path: str | Path) -> bool:
    """True for a DICOM PET folder or a DICOM label file (not a NIfTI file)."""
    text = str(split_roi_selection(path)[0])
    return Path(text).is_dir() or not text.endswith((".nii.gz", ".nii"))


def load_labelled_study(
    pet: str | Path, ct: str | Path | None = None, mask: str | Path | None = None
) -> Study:
    """A study from NIfTI files or from a DICOM PET folder with RTSTRUCT / SEG labels.

    NIfTI PET: :func:`petflare.io.load_study` (the mask must be NIfTI on its grid). DICOM PET
    folder: :func:`petflare.io.dicom.read_dicom_pet` (series picked as ``convert`` does), the
    CT (NIfTI) resampled onto its grid, and the mask either a NIfTI on the PET grid or an
    RTSTRUCT (``file#ROI1,ROI2`` selects ROIs) / DICOM SEG read as an instance label map.

    Raises:
        PetflareInputError: any invalid input; the message names the file.
    """
    import dataclasses

    from petflare.io.dicom import read_dicom_pet
    from petflare.io.loading import load_ct_on_grid, load_study, same_grid, validate_mask
    from petflare.io.nifti import load_nifti

    pet_path = Path(pet)
    if not pet_path.is_dir():
        if mask is not None and is_dicom_input(mask):
            raise PetflareInputError(
                split_roi_selection(mask)[0],
                f"RTSTRUCT / SEG labels need the DICOM PET series they were drawn on, not the "
                f"NIfTI {pet_path.name}",
            )
        return load_study(pet_path, ct, mask)
    study = read_dicom_pet(pet_path)
    source = dict(study.meta.source)
    ct_arr = None
    if ct is not None:
        ct_arr = load_ct_on_grid(ct, study.shape, study.affine)
        source["ct"] = str(ct)
    labels = None
    if mask is not None:
        mask_path, rois = split_roi_selection(mask)
        if is_dicom_input(mask):
            label_map = read_dicom_labels(mask_path, study, rois)
            labels = label_map.labels
            source["label_names"] = ", ".join(label_map.names)
        else:
            raw, affine = load_nifti(mask_path)
            if not same_grid(raw.shape, affine, study.shape, study.affine):
                raise PetflareInputError(
                    mask_path,
                    f"mask is not on the grid of the DICOM PET series {pet_path}; masks are "
                    "never resampled",
                )
            labels = validate_mask(raw, mask_path)
        source["mask"] = str(mask)
    meta = dataclasses.replace(study.meta, source=source)
    return Study(pet=study.pet, affine=study.affine, ct=ct_arr, mask=labels, meta=meta)
