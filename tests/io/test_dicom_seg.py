"""DICOM SEG export: segments per lesion, frames on the right source slices, safe writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import AXIAL, AXIAL_FLIPPED, CORONAL, write_pet_series

from petflare.errors import OutputExistsError, PetflareInputError
from petflare.io.dicom import read_dicom_pet
from petflare.io.dicom_seg import lesion_segmentation_frames, write_dicom_seg
from petflare.io.study import Study

hd = pytest.importorskip("highdicom")


def _two_lesions(shape: tuple[int, ...]) -> np.ndarray:
    """Asymmetric instance mask: lesion 1 (one voxel), lesion 3 (an L-shaped pair)."""
    mask = np.zeros(shape, dtype=np.uint16)
    mask[1, 0, 2] = 1
    mask[3, 2, 4] = 3
    mask[3, 3, 4] = 3
    return mask


def _seg_mask_on_study_grid(seg_path: Path, series_files: list[Path], study: Study) -> np.ndarray:
    """Read the SEG back and put segment numbers onto the study grid via the source SOP UIDs."""
    seg = hd.seg.segread(seg_path)
    by_uid: dict[str, np.ndarray] = {}
    # Per-source-image label maps (segment numbers), keyed by the referenced SOP Instance UID.
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in series_files]
    labels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids,
        combine_segments=True,
        skip_overlap_checks=True,
    )
    for uid, frame in zip(uids, labels, strict=True):
        by_uid[uid] = frame
    # Rebuild [column, row, slice]: slice k of the study is the file whose position is k-th.
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in series_files]
    normal = np.cross(
        np.array(headers[0].ImageOrientationPatient[:3], float),
        np.array(headers[0].ImageOrientationPatient[3:], float),
    )
    order = np.argsort([np.dot(np.array(h.ImagePositionPatient, float), normal) for h in headers])
    out = np.zeros(study.shape, dtype=np.uint16)
    for k, index in enumerate(order):
        out[:, :, k] = by_uid[headers[index].SOPInstanceUID].T
    return out


@pytest.mark.parametrize("orientation", [AXIAL, AXIAL_FLIPPED, CORONAL], ids=["ax", "axf", "cor"])
def test_seg_round_trip(tmp_path: Path, orientation: tuple[float, ...]) -> None:
    series = write_pet_series(tmp_path / "pet", shape=(5, 4, 6), orientation=orientation)
    study = read_dicom_pet(series.folder)
    mask = _two_lesions(study.shape)
    out = write_dicom_seg(study, mask, tmp_path / "seg.dcm", version="9.9", model_name="tiny")
    assert out == tmp_path / "seg.dcm" and out.is_file()

    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG"
    assert ds.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["Lesion 1", "Lesion 3"]
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    assert ds.FrameOfReferenceUID == series.frame_uid
    algo = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "petflare tiny" and algo.AlgorithmVersion == "9.9"

    back = _seg_mask_on_study_grid(out, series.files, study)
    expected = np.zeros_like(back)
    expected[mask == 1] = 1  # segment numbers 1, 2 for lesion ids 1, 3
    expected[mask == 3] = 2
    np.testing.assert_array_equal(back, expected)


def test_frames_follow_source_order() -> None:
    mask = np.zeros((3, 2, 4), dtype=np.uint8)  # [column, row, slice]
    mask[2, 1, 0] = 1
    frames = lesion_segmentation_frames(mask, order=[3, 1, 0, 2])
    assert frames.shape == (4, 2, 3)  # [image, row, column]
    assert frames[3, 1, 2] == 1 and frames.sum() == 1
    with pytest.raises(ValueError, match="slices"):
        lesion_segmentation_frames(mask, order=[0, 1])


def test_no_lesion_writes_nothing(tmp_path: Path) -> None:
    series = write_pet_series(tmp_path / "pet")
    study = read_dicom_pet(series.folder)
    empty = np.zeros(study.shape, dtype=np.uint8)
    assert write_dicom_seg(study, empty, tmp_path / "seg.dcm", version="1") is None
    assert not (tmp_path / "seg.dcm").exists()


def test_refusals(tmp_path: Path) -> None:
    series = write_pet_series(tmp_path / "pet")
    study = read_dicom_pet(series.folder)
    mask = _two_lesions(study.shape)
    nifti_like = Study(pet=study.pet, affine=study.affine)
    with pytest.raises(PetflareInputError, match="DICOM PET series"):
        write_dicom_seg(nifti_like, mask, tmp_path / "a.dcm", version="1")
    with pytest.raises(ValueError, match="shape"):
        write_dicom_seg(study, mask[:-1], tmp_path / "a.dcm", version="1")
    target = tmp_path / "seg.dcm"
    target.write_bytes(b"keep")
    with pytest.raises(OutputExistsError):
        write_dicom_seg(study, mask, target, version="1")
    assert target.read_bytes() == b"keep"
    write_dicom_seg(study, mask, target, version="1", overwrite=True)
    assert pydicom.dcmread(target).Modality == "SEG"
