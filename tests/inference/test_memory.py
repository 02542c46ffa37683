"""Memory guard: the estimate comes from headers alone and refuses before any voxel is read."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from petflare.errors import PetflareInputError
from petflare.inference.memory import (
    BASE_BYTES,
    BYTES_PER_INPUT_VOXEL,
    BYTES_PER_MODEL_VOXEL,
    ScanGrid,
    check_memory,
    estimate_peak_bytes,
    scan_grid,
)
from petflare_testing import load_module

#: The io tests' synthetic DICOM writer, loaded by path (tests/io is not on the import path).
dicom_factory = load_module("dicom_factory", Path(__file__).parents[1] / "io" / "dicom_factory.py")


def write_header_only(path: Path, shape: tuple[int, int, int], spacing_mm: float) -> Path:
    """A NIfTI whose header claims ``shape`` but holds no voxels: reading them would fail, so
    a refusal naming the memory proves the guard ran before the data were read."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape)
    affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    header.set_sform(affine, code=1)
    header.set_qform(affine, code=1)
    header["vox_offset"] = 352
    path.write_bytes(header.binaryblock + b"\0" * 4)
    return path


def test_grid_from_nifti_header_only(tmp_path: Path) -> None:
    path = write_header_only(tmp_path / "big.nii", (1024, 1024, 1024), 0.5)
    grid = scan_grid(path)
    assert grid is not None
    assert grid.shape == (1024, 1024, 1024) and grid.n_voxels == 1024**3
    assert grid.spacing_mm == pytest.approx((0.5, 0.5, 0.5))


def test_grid_from_dicom_folder(tmp_path: Path) -> None:
    dicom_factory.write_pet_series(tmp_path, shape=(5, 4, 6), pixel_spacing_mm=(3.0, 2.0))
    grid = scan_grid(tmp_path)
    assert grid is not None
    assert grid.shape == (5, 4, 6)  # (Columns, Rows, files)
    assert grid.spacing_mm == pytest.approx((2.0, 3.0, 3.27))


def test_estimate_is_linear_in_both_grids() -> None:
    grid = ScanGrid((100, 100, 100), (2.0, 2.0, 2.0), Path("x.nii.gz"))
    n = 1e6
    expected = BASE_BYTES + BYTES_PER_INPUT_VOXEL * n + BYTES_PER_MODEL_VOXEL * n / 8
    assert estimate_peak_bytes([grid], (4.0, 4.0, 4.0)) == pytest.approx(expected)
    pair = estimate_peak_bytes([grid, grid], (4.0, 4.0, 4.0))
    assert pair == pytest.approx(2 * expected - BASE_BYTES)
    # unknown model spacing: the input grid is taken as the model grid (over-estimate)
    assert estimate_peak_bytes([grid], None) > estimate_peak_bytes([grid], (4.0, 4.0, 4.0))


def test_1024_cube_at_fine_spacing_is_refused_up_front(tmp_path: Path) -> None:
    path = write_header_only(tmp_path / "big.nii", (1024, 1024, 1024), 0.5)
    with pytest.raises(PetflareInputError) as info:
        check_memory([path], model_spacing_mm=(4.0, 4.0, 4.0), limit_gb=16.0)
    message = str(info.value)
    assert message.startswith(f"{path}: needs about 24.8 GiB")
    assert "1024x1024x1024 at 0.5x0.5x0.5 mm" in message
    assert "16.0 GiB memory_limit_gb" in message and "memory_limit_gb=N" in message
    assert check_memory([path], model_spacing_mm=(4.0, 4.0, 4.0), limit_gb=32.0) > 24 * 2**30


def test_ordinary_scan_passes_the_machine_limit(tmp_path: Path) -> None:
    """An autoPET-sized scan (400 x 400 x 326 at 2.04 x 2.04 x 3 mm) needs a few GiB."""
    path = write_header_only(tmp_path / "wb.nii", (400, 400, 326), 2.0)
    estimate = check_memory([path, path], model_spacing_mm=(4.0, 4.0, 4.0), limit_gb=8.0)
    assert 2 * 2**30 < estimate < 8 * 2**30


def test_unreadable_input_is_left_to_the_reader(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not a nifti")
    assert scan_grid(garbage) is None
    assert check_memory([garbage], limit_gb=0.001) == 0.0
