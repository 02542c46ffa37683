"""DICOM SEG export of an instance-labelled lesion mask, referencing its source PET series.

A PACS or viewer (3D Slicer, OHIF, ...) shows a DICOM SEG over the PET it was made from. Each
lesion becomes one segment (``Lesion <id>``, the report's lesion id) of a binary segmentation
whose frames reference the source PET slices by SOP Instance UID, written with ``highdicom``.

The mask must lie on the grid :func:`petflare.io.dicom.read_dicom_pet` built from that series
(``[column, row, slice]``, slices sorted along the normal): the series is read again here to
recover the slice order and the source headers, and the grid is checked against the study's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from petflare.errors import PetflareInputError
from petflare.io.atomic import atomic_path
from petflare.io.study import Study

#: Manufacturer written into the SEG's equipment module.
MANUFACTURER = "petflare (open source)"


def _algorithm(version: str, model_name: str) -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.AlgorithmIdentificationSequence(
        name=f"petflare {model_name}".strip(),
        family=codes.cid7162.ArtificialIntelligence,
        version=version,
    )


#: Type 2 patient/study attributes a SEG copies from its source (present, possibly empty, in
#: conformant PET files; some exports drop them).
_TYPE2_SOURCE_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "ReferringPhysicianName",
    "AccessionNumber",
)


def _complete_type2(headers: Sequence[Any]) -> None:
    """Give the (freshly read) source headers empty values for missing Type 2 attributes."""
    for ds in headers:
        for keyword in _TYPE2_SOURCE_KEYWORDS:
            if keyword not in ds:
                setattr(ds, keyword, "")


def lesion_segmentation_frames(instances: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """Per-source-image frames ``[n_images, rows, columns]`` of a ``[column, row, slice]`` mask.

    ``order[k]`` is the index (in the series' file list) of the image that slice ``k`` came
    from; frame ``i`` of the result belongs to image ``i`` of that list.
    """
    if instances.ndim != 3 or instances.shape[2] != len(order):
        raise ValueError(
            f"mask of shape {instances.shape} does not match a series of {len(order)} slices"
        )
    frames = np.zeros((len(order), instances.shape[1], instances.shape[0]), dtype=instances.dtype)
    for k, index in enumerate(order):
        frames[index] = instances[:, :, k].T  # [column, row] -> [row, column]
    return frames


def write_dicom_seg(
    study: Study,
    instances: np.ndarray,
    path: str | Path,
    *,
    version: str,
    model_name: str = "",
    overwrite: bool = False,
) -> Path | None:
    """Write the lesions of ``study`` (read from a DICOM series) as a DICOM SEG file.

    Args:
        study: a study from :func:`petflare.io.dicom.read_dicom_pet` (its ``meta.source``
            names the series folder and SeriesInstanceUID).
        instances: lesion ids ``1..N`` (0 = background) on the study's grid.
        path: output ``.dcm`` file (written atomically).
        version: software version written into the algorithm identification.
        model_name: segmentation model name (the algorithm's name is ``petflare <model>``).
        overwrite: replace an existing file.

    Returns:
        The written path, or None when the mask holds no lesion (a SEG needs one segment).

    Raises:
        PetflareInputError: the study did not come from a DICOM series, the series is no
            longer readable, or its grid differs from the study's.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from petflare.io.dicom import (
        DEFAULT_SPACING_TOLERANCE,
        LPS_TO_RAS,
        _select_series,
        _slice_geometry,
    )

    source = study.meta.source or {}
    if source.get("format") != "DICOM" or not source.get("pet"):
        raise PetflareInputError(None, "a DICOM SEG needs a study read from a DICOM PET series")
    folder = Path(str(source["pet"]))
    instances = np.asarray(instances)
    if instances.shape != study.shape:
        raise ValueError(f"mask shape {instances.shape} differs from the study's {study.shape}")
    ids = [int(v) for v in np.unique(instances) if v != 0]
    if not ids:
        return None

    series = _select_series(folder, source.get("series_instance_uid") or None)
    headers = list(series.headers)
    order, affine_lps, _ = _slice_geometry(headers, folder, DEFAULT_SPACING_TOLERANCE)
    if not np.allclose(LPS_TO_RAS @ affine_lps, study.affine, atol=1e-3):
        raise PetflareInputError(
            folder, "the DICOM series' geometry no longer matches the study it was read into"
        )
    _complete_type2(headers)
    frames = lesion_segmentation_frames(instances, order)
    # Segment numbers must run 1..N; map lesion id -> segment number in sorted id order.
    lut = np.zeros(int(max(ids)) + 1, dtype=np.uint16)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.uint16)
    labels = lut[frames]

    algorithm = _algorithm(version, model_name)
    segments = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=f"Lesion {lesion_id}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Neoplasm,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=f"lesion-{lesion_id}",
            tracking_uid=hd.UID(),
        )
        for number, lesion_id in enumerate(ids, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=headers,
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=hd.UID(),
        series_number=9901,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=f"petflare {model_name}".strip(),
        software_versions=version,
        device_serial_number="0",
        content_description="FDG-avid lesions (research use only)",
        content_label="LESIONS",
    )
    with atomic_path(path, overwrite) as tmp:
        seg.save_as(tmp)
    return Path(path)
