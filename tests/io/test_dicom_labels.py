"""Institutional labels in: RTSTRUCT ROIs and DICOM SEG segments as a label map on the PET grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import (
    AXIAL,
    AXIAL_FLIPPED,
    CORONAL,
    SyntheticPetSeries,
    write_pet_series,
    write_rtstruct,
)

from petflare.errors import PetflareInputError
from petflare.io.dicom import read_dicom_pet
from petflare.io.dicom_labels import (
    label_file_kind,
    read_dicom_labels,
    read_rtstruct_labels,
    read_seg_labels,
)
from petflare.io.dicom_seg import write_dicom_seg

pytest.importorskip("highdicom")


def _square_lps(series: SyntheticPetSeries, slice_index: int, lo: float, hi: float) -> np.ndarray:
    """Closed square contour between voxel indices lo..hi of the factory's own indexing."""
    corners = np.array([[lo, lo], [hi, lo], [hi, hi], [lo, hi]])
    ijk = np.column_stack([corners, np.full(4, slice_index), np.ones(4)])
    return (ijk @ series.pixel_to_lps_matrix().T)[:, :3]


def _instances(shape: tuple[int, ...]) -> np.ndarray:
    """Three lesions, asymmetric, ids 1..3 (what the pipeline's instance masks hold)."""
    mask = np.zeros(shape, dtype=np.uint16)
    mask[1, 0, 2] = 1
    mask[3, 2, 4] = 2
    mask[3, 3, 4] = 2
    mask[0:2, 1:3, 0] = 3
    return mask


@pytest.mark.parametrize("orientation", [AXIAL, AXIAL_FLIPPED, CORONAL], ids=["ax", "axf", "cor"])
@pytest.mark.parametrize("slice_direction", [1, -1])
def test_seg_reads_back_voxel_equal(
    tmp_path: Path, orientation: tuple[float, ...], slice_direction: int
) -> None:
    series = write_pet_series(
        tmp_path / "pet",
        shape=(5, 4, 6),
        orientation=orientation,
        slice_direction=slice_direction,
        reverse_files=slice_direction < 0,
    )
    study = read_dicom_pet(series.folder)
    mask = _instances(study.shape)
    seg = write_dicom_seg(study, mask, tmp_path / "seg.dcm", version="1", model_name="t")
    assert seg is not None and label_file_kind(seg) == "SEG"
    labels = read_seg_labels(seg, study)
    np.testing.assert_array_equal(labels.labels, mask)
    assert labels.names == ("Lesion 1", "Lesion 2", "Lesion 3")
    assert labels.kind == "SEG" and labels.overlap_voxels == 0
    np.testing.assert_array_equal(read_dicom_labels(seg, study).labels, mask)


def test_seg_on_another_grid_is_refused(tmp_path: Path) -> None:
    series = write_pet_series(tmp_path / "pet", shape=(5, 4, 6))
    study = read_dicom_pet(series.folder)
    seg = write_dicom_seg(study, _instances(study.shape), tmp_path / "seg.dcm", version="1")
    assert seg is not None
    shifted = write_pet_series(
        tmp_path / "other",
        shape=(5, 4, 6),
        origin_lps=(-119.0, 80.25, -310.0),  # half a voxel along x
        frame_uid=series.frame_uid,
    )
    with pytest.raises(PetflareInputError, match="PET grid") as info:
        read_seg_labels(seg, read_dicom_pet(shifted.folder))
    assert str(seg) in str(info.value)
    other_frame = read_dicom_pet(write_pet_series(tmp_path / "third", shape=(5, 4, 6)).folder)
    with pytest.raises(PetflareInputError, match="frame of reference"):
        read_seg_labels(seg, other_frame)
    with pytest.raises(PetflareInputError, match="SEG is read whole"):
        read_dicom_labels(seg, study, ["Lesion 1"])


def test_rtstruct_label_map(tmp_path: Path) -> None:
    series = write_pet_series(tmp_path / "pet", shape=(8, 7, 5), slopes=[1.0] * 5)
    big = _square_lps(series, 1, 0.5, 3.5)  # voxel centres 1..3 of slice 1: 9 voxels
    small = _square_lps(series, 1, 2.5, 4.5)  # 3..4: 4 voxels, one shared with big
    far = _square_lps(series, 3, 1.5, 2.5)  # one voxel on slice 3
    rt = write_rtstruct(tmp_path / "rt.dcm", series, {"A": [big], "B": [small, far], "C": []})
    study = read_dicom_pet(series.folder)
    assert label_file_kind(rt) == "RTSTRUCT"

    every = read_rtstruct_labels(rt, study)  # C has no contour: left out when reading all
    assert every.names == ("A", "B")
    assert every.overlap_voxels == 1
    assert int((every.labels == 1).sum()) == 9
    assert int((every.labels == 2).sum()) == 4 - 1 + 1

    chosen = read_dicom_labels(rt, study, ["B", "A"])  # order given = label order
    assert chosen.names == ("B", "A")
    assert int((chosen.labels == 1).sum()) == 5 and int((chosen.labels == 2).sum()) == 8
    with pytest.raises(PetflareInputError, match="no closed planar contours"):
        read_rtstruct_labels(rt, study, ["C"])
    with pytest.raises(PetflareInputError, match="available ROIs: A, B, C"):
        read_rtstruct_labels(rt, study, ["D"])


def test_label_file_kind_refuses_other_objects(tmp_path: Path) -> None:
    series = write_pet_series(tmp_path / "pet")
    with pytest.raises(PetflareInputError, match="neither an RTSTRUCT nor a DICOM SEG"):
        label_file_kind(series.files[0])
    with pytest.raises(PetflareInputError, match="not found"):
        label_file_kind(tmp_path / "missing.dcm")
    (tmp_path / "text.dcm").write_text("not DICOM")
    with pytest.raises(PetflareInputError, match="cannot be read as DICOM"):
        label_file_kind(tmp_path / "text.dcm")
    assert pydicom.dcmread(series.files[0]).Modality == "PT"
