"""MIP figures: canonical orientation whatever the affine, aspect from spacing, files written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from petflare.errors import OutputExistsError
from petflare.inference.figures import mip, mip_pair_figure, mip_row_figure, to_canonical
from petflare.io.study import Study

SPACING_MM = (2.0, 3.0, 4.0)  # R, A, S


def _ras_volume() -> tuple[np.ndarray, np.ndarray]:
    """A RAS volume (x: 10, y: 8, z: 12) with a hot voxel at patient right, anterior, head."""
    vol = np.zeros((10, 8, 12), np.float32)
    vol[8, 6, 10] = 9.0  # x high = patient Right, y high = Anterior, z high = Superior
    vol[2, 1, 1] = 4.0  # left, posterior, feet
    affine = np.diag([*SPACING_MM, 1.0])
    affine[:3, 3] = (-10.0, 20.0, -300.0)
    return vol, affine


def _reoriented(
    vol: np.ndarray, affine: np.ndarray, perm: tuple[int, int, int], flips: tuple[bool, ...]
):
    """The same image stored with permuted / flipped axes, with the matching affine."""
    arr = np.transpose(vol, perm)
    aff = affine[:, [*perm, 3]].copy()
    for axis, flip in enumerate(flips):
        if flip:
            n = arr.shape[axis]
            arr = np.flip(arr, axis)
            aff[:3, 3] = aff[:3, 3] + aff[:3, axis] * (n - 1)
            aff[:3, axis] = -aff[:3, axis]
    return np.ascontiguousarray(arr), aff


@pytest.mark.parametrize(
    ("perm", "flips"),
    [
        ((0, 1, 2), (False, False, False)),
        ((1, 0, 2), (True, True, False)),
        ((2, 0, 1), (False, True, True)),
        ((2, 1, 0), (True, False, True)),
    ],
)
@pytest.mark.parametrize("view", ["coronal", "sagittal"])
def test_mip_is_independent_of_storage_orientation(perm, flips, view: str) -> None:  # noqa: ANN001
    vol, affine = _ras_volume()
    ref, col_ref, row_ref = mip(vol, affine, view)
    arr, aff = _reoriented(vol, affine, perm, flips)
    img, col, row = mip(arr, aff, view)
    np.testing.assert_array_equal(img, ref)
    assert (col, row) == (col_ref, row_ref)


def test_coronal_mip_head_up_patient_right_on_viewer_left() -> None:
    vol, affine = _ras_volume()
    img, col_mm, row_mm = mip(vol, affine, "coronal")
    assert img.shape == (12, 10)  # rows z, columns x
    assert (col_mm, row_mm) == (2.0, 4.0)
    r, c = np.unravel_index(np.argmax(img), img.shape)
    assert r == 1 and c == 1  # head end at the top, patient right at the left
    sag, col_s, _ = mip(vol, affine, "sagittal")
    assert col_s == 3.0
    r, c = np.unravel_index(np.argmax(sag), sag.shape)
    assert r == 1 and c == 1  # anterior on the left


def test_to_canonical_reports_ras_spacing() -> None:
    vol, affine = _ras_volume()
    arr, aff = _reoriented(vol, affine, (2, 0, 1), (True, False, True))
    canonical, spacing = to_canonical(arr, aff)
    np.testing.assert_array_equal(canonical, vol)
    assert spacing == SPACING_MM


def test_pair_figure_is_written_with_contours(tmp_path: Path) -> None:
    vol, affine = _ras_volume()
    rng = np.random.default_rng(0)
    vol = vol + rng.uniform(0, 1, vol.shape).astype(np.float32)
    mask = np.zeros(vol.shape, np.uint8)
    mask[7:10, 5:8, 9:12] = 1
    mask[1:4, 0:3, 0:3] = 2
    arr, aff = _reoriented(vol, affine, (1, 2, 0), (True, False, False))
    marr, _ = _reoriented(mask, affine, (1, 2, 0), (True, False, False))
    base = Study(vol, affine, mask=mask)
    follow = Study(arr, aff, mask=marr)
    out = tmp_path / "mip.png"
    path = mip_pair_figure(
        base, follow, out, title="pair", label_colors={1: "blue"}, views=("coronal", "sagittal")
    )
    assert path == out and out.stat().st_size > 5_000
    from matplotlib.image import imread

    pixels = imread(out)
    assert pixels.std() > 0.05  # not a blank canvas
    with pytest.raises(OutputExistsError):
        mip_pair_figure(base, follow, out)
    mip_pair_figure(base, follow, out, overwrite=True, baseline_mask=np.zeros_like(mask))
    with pytest.raises(ValueError, match="views"):
        mip_pair_figure(base, follow, tmp_path / "x.png", views=("axial",))


def test_row_figure_draws_any_number_of_panels(tmp_path: Path) -> None:
    vol, affine = _ras_volume()
    mask = np.zeros(vol.shape, np.uint8)
    mask[7:10, 5:8, 9:12] = 1
    arr, aff = _reoriented(vol, affine, (2, 0, 1), (False, True, False))
    panels = [
        (Study(vol, affine), mask, "a"),
        (Study(arr, aff), None, "b"),
        (Study(vol, affine), None, "c"),
    ]
    out = mip_row_figure(panels, tmp_path / "row.png", title="row", label_colors={1: "blue"})
    from matplotlib.image import imread

    pixels = imread(out)
    assert pixels.shape[1] >= 0.95 * 3 * 3.2 * 110  # three 3.2-inch panels side by side at 110 dpi
    assert pixels.std() > 0.05
    with pytest.raises(OutputExistsError):
        mip_row_figure(panels, out)
    with pytest.raises(ValueError, match="no panels"):
        mip_row_figure([], tmp_path / "none.png")
