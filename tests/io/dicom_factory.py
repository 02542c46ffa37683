"""Write tiny synthetic PET DICOM series and RTSTRUCTs with pydicom, with known ground truth.

The factory knows the world position (DICOM LPS mm) of every stored pixel from the geometry it
writes, so tests can check the reader's affine and array layout without re-using the reader's
own logic: :meth:`SyntheticPetSeries.activity_at_lps` looks a stored activity up by position.

Defaults follow the STS_001 header facts: 71 kg, 388,777,472 Bq injected at 10:35:00, series at
11:20:11 (2711 s later), F-18 half-life 6588 s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

PET_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.128"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"

WEIGHT_KG = 71.0
DOSE_BQ = 388_777_472.0
HALF_LIFE_S = 6588.0
INJECTION_TIME = "103500.00"
SERIES_TIME = "112011.00"
SERIES_DATE = "20000907"
DECAY_TIME_S = 2711.0  # 11:20:11 - 10:35:00

#: Orientations (ImageOrientationPatient) without obliquity, including non-axial ones.
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
AXIAL_FLIPPED = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # normal points to the feet
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def expected_suv_scale(
    weight_kg: float = WEIGHT_KG,
    dose_bq: float = DOSE_BQ,
    decay_time_s: float = DECAY_TIME_S,
    half_life_s: float = HALF_LIFE_S,
) -> float:
    """SUVbw per Bq/mL written out by hand: weight [g] / (dose decayed to the scan time)."""
    return weight_kg * 1000.0 / (dose_bq * 0.5 ** (decay_time_s / half_life_s))


@dataclass
class SyntheticPetSeries:
    """What the factory wrote.

    Attributes:
        folder: the series folder.
        files: written files, in the order written (not the slice order).
        activity_bq_ml: stored activity (int16 x slope), indexed [column, row, slice] with the
            slice index counting along ``slice_direction * normal`` from ``origin_lps``.
        row_cos, col_cos: ImageOrientationPatient halves; ``normal`` their cross product.
        pixel_spacing_mm: (between rows, between columns), as DICOM PixelSpacing.
        slice_spacing_mm, slice_direction, origin_lps: slice placement.
        series_uid, frame_uid: identifiers.
    """

    folder: Path
    files: list[Path]
    activity_bq_ml: np.ndarray
    row_cos: np.ndarray
    col_cos: np.ndarray
    pixel_spacing_mm: tuple[float, float]
    slice_spacing_mm: float
    slice_direction: int
    origin_lps: np.ndarray
    series_uid: str
    frame_uid: str
    slopes: list[float] = field(default_factory=list)

    @property
    def normal(self) -> np.ndarray:
        """Slice normal, row direction x column direction."""
        return np.cross(self.row_cos, self.col_cos)

    def pixel_to_lps_matrix(self) -> np.ndarray:
        """4x4 matrix (column, row, slice) -> LPS mm, from the geometry written."""
        m = np.eye(4)
        m[:3, 0] = self.row_cos * self.pixel_spacing_mm[1]
        m[:3, 1] = self.col_cos * self.pixel_spacing_mm[0]
        m[:3, 2] = self.normal * self.slice_spacing_mm * self.slice_direction
        m[:3, 3] = self.origin_lps
        return m

    def activity_at_lps(self, points_lps: np.ndarray) -> np.ndarray:
        """Stored activity (Bq/mL) at LPS points that must be pixel centres of this series."""
        inv = np.linalg.inv(self.pixel_to_lps_matrix())
        idx = points_lps @ inv[:3, :3].T + inv[:3, 3]
        rounded = np.round(idx).astype(int)
        if np.abs(idx - rounded).max() > 1e-4:
            raise AssertionError(
                f"points are not pixel centres (offset {np.abs(idx - rounded).max()})"
            )
        return self.activity_bq_ml[rounded[:, 0], rounded[:, 1], rounded[:, 2]]


def _file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def default_activity(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Distinct positive activities (Bq/mL), a ramp along every axis plus noise, no symmetry."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return 2000.0 + 700.0 * i + 130.0 * j + 37.0 * k + 50.0 * rng.random(shape)


def write_pet_series(
    folder: str | Path,
    *,
    shape: tuple[int, int, int] = (5, 4, 6),
    activity_bq_ml: np.ndarray | None = None,
    orientation: Sequence[float] = AXIAL,
    pixel_spacing_mm: tuple[float, float] = (3.0, 2.0),
    slice_spacing_mm: float = 3.27,
    slice_direction: int = 1,
    origin_lps: Sequence[float] = (-120.5, 80.25, -310.0),
    slopes: Sequence[float] | None = None,
    reverse_files: bool = False,
    skip_slices: Sequence[int] = (),
    tags: dict[str, Any] | None = None,
    info_tags: dict[str, Any] | None = None,
    slice_tags: dict[int, dict[str, Any]] | None = None,
    series_uid: str | None = None,
    frame_uid: str | None = None,
) -> SyntheticPetSeries:
    """Write a PET series (one file per slice) and return its ground truth.

    Args:
        folder: output folder (created).
        shape: (columns, rows, slices).
        activity_bq_ml: activity per [column, row, slice]; default :func:`default_activity`.
        orientation: ImageOrientationPatient (row direction, column direction).
        pixel_spacing_mm: DICOM PixelSpacing (between rows, between columns).
        slice_spacing_mm, slice_direction: slice s is at origin + s * spacing * direction * normal.
        origin_lps: ImagePositionPatient of slice 0.
        slopes: RescaleSlope per slice (default: a different one per slice).
        reverse_files: write files (and InstanceNumber) in reverse slice order.
        skip_slices: slice indices not written (to make a gap).
        tags: keyword -> value set on every slice; value None deletes the tag.
        info_tags: the same for the RadiopharmaceuticalInformationSequence item.
        slice_tags: per slice index, keyword -> value (None deletes).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_slices = shape[2]
    if activity_bq_ml is None:
        activity_bq_ml = default_activity(shape)
    if slopes is None:
        slopes = [0.5 + 0.25 * s for s in range(n_slices)]
    row_cos = np.asarray(orientation[:3], dtype=float)
    col_cos = np.asarray(orientation[3:], dtype=float)
    normal = np.cross(row_cos, col_cos)
    origin = np.asarray(origin_lps, dtype=float)
    series_uid = series_uid or generate_uid()
    frame_uid = frame_uid or generate_uid()
    study_uid = generate_uid()

    stored = np.zeros(shape, dtype=np.float64)
    files: list[Path] = []
    order = list(range(n_slices))[::-1] if reverse_files else list(range(n_slices))
    for number, s in enumerate(order, start=1):
        raw = np.round(activity_bq_ml[:, :, s] / slopes[s]).astype(np.int16)
        stored[:, :, s] = raw.astype(np.float64) * slopes[s]
        if s in skip_slices:
            continue
        sop_uid = generate_uid()
        ds = Dataset()
        ds.file_meta = _file_meta(PET_SOP_CLASS, sop_uid)
        ds.SOPClassUID = PET_SOP_CLASS
        ds.SOPInstanceUID = sop_uid
        ds.Modality = "PT"
        ds.PatientID = "SYNTH_001"
        ds.PatientName = "Synthetic^Phantom"
        ds.PatientSex = "F"
        ds.PatientSize = "1.68"
        ds.PatientWeight = str(WEIGHT_KG)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.StudyDate = SERIES_DATE
        ds.SeriesDate = SERIES_DATE
        ds.AcquisitionDate = SERIES_DATE
        ds.SeriesTime = SERIES_TIME
        ds.AcquisitionTime = SERIES_TIME
        ds.SeriesDescription = "PET AC synthetic"
        ds.InstanceNumber = number
        ds.Units = "BQML"
        ds.DecayCorrection = "START"
        ds.CorrectedImage = ["DECY", "ATTN", "SCAT", "DTIM", "RAN", "NORM"]
        info = Dataset()
        info.Radiopharmaceutical = "FDG -- fluorodeoxyglucose"
        info.RadiopharmaceuticalStartTime = INJECTION_TIME
        info.RadionuclideTotalDose = str(DOSE_BQ)
        info.RadionuclideHalfLife = str(HALF_LIFE_S)
        for key, value in (info_tags or {}).items():
            _set(info, key, value)
        ds.RadiopharmaceuticalInformationSequence = DicomSequence([info])
        ds.ImageOrientationPatient = [f"{v:g}" for v in orientation]
        position = origin + s * slice_spacing_mm * slice_direction * normal
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.PixelSpacing = [f"{v:g}" for v in pixel_spacing_mm]
        ds.SliceThickness = f"{slice_spacing_mm:g}"
        ds.Rows, ds.Columns = shape[1], shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope = f"{slopes[s]!r}"
        ds.RescaleIntercept = "0"
        ds.PixelData = np.ascontiguousarray(raw.T).tobytes()  # rows x columns on disk
        for key, value in {**(tags or {}), **((slice_tags or {}).get(s, {}))}.items():
            _set(ds, key, value)
        path = folder / f"slice_{number:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return SyntheticPetSeries(
        folder=folder,
        files=files,
        activity_bq_ml=stored,
        row_cos=row_cos,
        col_cos=col_cos,
        pixel_spacing_mm=pixel_spacing_mm,
        slice_spacing_mm=slice_spacing_mm,
        slice_direction=slice_direction,
        origin_lps=origin,
        series_uid=series_uid,
        frame_uid=frame_uid,
        slopes=list(slopes),
    )


def _set(ds: Dataset, keyword: str, value: Any) -> None:
    if value is None:
        if keyword in ds:
            delattr(ds, keyword)
    else:
        setattr(ds, keyword, value)


def write_rtstruct(
    path: str | Path,
    series: SyntheticPetSeries,
    rois: dict[str, list[np.ndarray]],
) -> Path:
    """Write an RTSTRUCT whose ROIs are lists of closed planar contours (N x 3 LPS mm arrays)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(RTSTRUCT_SOP_CLASS, sop_uid)
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "RTSTRUCT"
    ds.PatientID = "SYNTH_001"
    ds.SeriesInstanceUID = generate_uid()
    ds.StructureSetLabel = "synthetic"
    set_rois, contour_rois = [], []
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ROIName = name
        roi.ReferencedFrameOfReferenceUID = series.frame_uid
        set_rois.append(roi)
        items = []
        for points in contours:
            contour = Dataset()
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points)
            contour.ContourData = [f"{v:.4f}" for v in np.asarray(points).ravel()]
            items.append(contour)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = number
        roi_contour.ContourSequence = DicomSequence(items)
        contour_rois.append(roi_contour)
    ds.StructureSetROISequence = DicomSequence(set_rois)
    ds.ROIContourSequence = DicomSequence(contour_rois)
    ds.save_as(path, enforce_file_format=True)
    return path


def add_philips_factors(
    series: SyntheticPetSeries,
    *,
    suv_factor: float | None,
    activity_factor: float | None,
    creator: str = "Philips PET Private Group",
) -> None:
    """Rewrite a series as Philips counts: Units CNTS plus the (7053,10xx) private factors.

    Stored value x RescaleSlope x ``activity_factor`` is then Bq/mL and x ``suv_factor`` SUVbw
    (each factor is skipped when None).
    """
    import pydicom

    for path in series.files:
        ds = pydicom.dcmread(path)
        ds.Units = "CNTS"
        ds.Manufacturer = "Philips Medical Systems"
        block = ds.private_block(0x7053, creator, create=True)
        if suv_factor is not None:
            block.add_new(0x00, "DS", f"{suv_factor:.8g}")
        if activity_factor is not None:
            block.add_new(0x09, "DS", f"{activity_factor:.8g}")
        ds.save_as(path, enforce_file_format=True)


def add_ge_scan_start(series: SyntheticPetSeries, scan_datetime: str) -> None:
    """Add GE's private scan start (0009,100D) "Scan DateTime" (GEMS_PETD_01) to every image."""
    import pydicom

    for path in series.files:
        ds = pydicom.dcmread(path)
        ds.private_block(0x0009, "GEMS_PETD_01", create=True).add_new(0x0D, "DT", scan_datetime)
        ds.save_as(path, enforce_file_format=True)
