"""The in-memory study: PET in SUV, optional CT and lesion mask on the same grid, with geometry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np


@dataclass
class StudyMeta:
    """Descriptive metadata of one PET study (not needed for computation, kept for reports).

    The identity and timing fields let a baseline / follow-up pair be checked (same patient,
    follow-up after baseline, same tracer, comparable uptake time; PERCIST wants the uptake times
    within 15 min). They are filled from DICOM headers, or from what a user gives with a NIfTI;
    an empty string / None means unknown, and unknown is never treated as a mismatch.
    """

    patient_id: str = ""
    study_id: str = ""
    study_date: str = ""
    tracer: str = "FDG"
    units: str = "SUVbw"
    sex: str | None = None
    height_m: float | None = None
    weight_kg: float | None = None
    source: dict[str, str] = field(default_factory=dict)  # e.g. {"pet": path, "ct": path}
    #: DICOM PatientName as stored (``Family^Given``), or "" when unknown.
    patient_name: str = ""
    #: Patient birth date, ISO ``YYYY-MM-DD``, or "" when unknown.
    birth_date: str = ""
    #: Scan start (the SUV reference time for DICOM), ISO ``YYYY-MM-DDTHH:MM:SS``, or "".
    acquisition_datetime: str = ""
    #: The radiopharmaceutical as written in the header (``tracer`` is its normalised name).
    radiopharmaceutical: str = ""
    #: Seconds from injection to scan start (FDG uptake time), or None when unknown.
    uptake_time_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict."""
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class Study:
    """One PET(/CT) study on a single voxel grid.

    Attributes:
        pet: PET volume in SUV (body weight), float32, array axes as in the file (i, j, k).
        affine: 4x4 voxel-to-world (RAS+ mm, NIfTI convention) matrix of ``pet``.
        ct: CT in Hounsfield units on the PET grid, or None.
        mask: lesion mask on the PET grid (0 background, 1..N lesions / or binary), or None.
        meta: descriptive metadata.
        organs: organ label map on the PET grid (values: ``petflare.constants.ORGAN_TO_INDEX``,
            0 elsewhere), or None; the phantom writes one for anatomy-aware training.
    """

    pet: np.ndarray
    affine: np.ndarray
    ct: np.ndarray | None = None
    mask: np.ndarray | None = None
    meta: StudyMeta = field(default_factory=StudyMeta)
    organs: np.ndarray | None = None

    def __post_init__(self) -> None:
        # C-contiguous copies only where needed: views with negative strides (what nibabel's
        # reorientation and np.flip give) cannot become torch tensors without one
        self.pet = np.ascontiguousarray(self.pet, dtype=np.float32)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.ct is not None:
            self.ct = np.ascontiguousarray(self.ct)
        if self.mask is not None:
            self.mask = np.ascontiguousarray(self.mask)
        if self.organs is not None:
            self.organs = np.ascontiguousarray(self.organs)
        if self.pet.ndim != 3:
            raise ValueError(f"PET must be 3D, got shape {self.pet.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")
        for name in ("ct", "mask", "organs"):
            arr = getattr(self, name)
            if arr is not None and arr.shape != self.pet.shape:
                raise ValueError(
                    f"{name} shape {arr.shape} differs from PET shape {self.pet.shape}"
                )

    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxel grid shape."""
        return tuple(int(s) for s in self.pet.shape)  # type: ignore[return-value]

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along each array axis in mm, from the affine (not the header pixdim)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (1 ml = 1000 mm^3), from the affine determinant."""
        return float(abs(np.linalg.det(self.affine[:3, :3])) / 1000.0)

    @property
    def orientation(self) -> str:
        """Axis codes of the array, e.g. 'LPS' or 'RAS' (nibabel convention)."""
        return "".join(nib.orientations.aff2axcodes(self.affine))
