"""The phantom's liver: true SUVmean over visible liver only, realistic homogeneity."""

from __future__ import annotations

import numpy as np
import pytest

import petflare.synth.dataset as dataset
from petflare.synth import generate_pair
from petflare.synth.anatomy import (
    LIVER_BROAD_TEXTURE,
    LIVER_FINE_TEXTURE,
    render_anatomy,
    sample_anatomy,
    sample_physiology,
)
from petflare.synth.canvas import Canvas
from petflare.synth.dataset import LIVER_VOXEL_FRACTION, true_liver_suv_mean
from petflare.synth.geometry import ScanGeometry, grid_affine

LIVER_SUV = 2.0


def _canvas(orientation: str = "PIL", spacing=(3.0, 4.0, 5.0)) -> tuple[Canvas, tuple]:
    """A small non-RAS, anisotropic canvas tracking the liver, and its patient-frame coords."""
    affine, shape = grid_affine(
        np.array([-60.0, -50.0, -70.0]),
        np.array([60.0, 50.0, 70.0]),
        np.array(spacing),
        orientation,
    )
    canvas = Canvas(
        ScanGeometry(shape, affine, np.eye(3), np.zeros(3)), np.random.default_rng(0), ("liver",)
    )
    full = tuple(slice(0, n) for n in shape)
    return canvas, full


def test_liver_fraction_follows_the_paint_and_truth_ignores_covered_voxels() -> None:
    canvas, full = _canvas()
    x, y, z = canvas.coords(full)
    liver_occ = canvas.occupancy(np.sqrt(x**2 + y**2 + z**2) - 45.0)
    canvas.paint(full, liver_occ, LIVER_SUV, 58.0, tissue="liver")
    kidney_occ = canvas.occupancy(np.sqrt((x - 40.0) ** 2 + y**2 + z**2) - 20.0)
    canvas.paint(full, kidney_occ, 30.0, 10.0, tissue="kidney")  # hot urine over the liver
    lesion_occ = canvas.occupancy(np.sqrt(x**2 + (y + 10.0) ** 2 + (z - 10.0) ** 2) - 12.0)
    canvas.paint(full, lesion_occ, 8.0, 40.0)  # a liver metastasis
    canvas.paint(full, np.ones_like(liver_occ), None, 0.0)  # CT-only paint changes nothing
    frac = canvas.fractions["liver"]
    # the fraction is the liver's share of the blended SUV wherever liver and one other meet
    both = (liver_occ == 1) & (lesion_occ == 0)
    np.testing.assert_allclose(frac[both], 1.0 - kidney_occ[both], atol=1e-6)
    np.testing.assert_allclose(
        canvas.suv[both], frac[both] * LIVER_SUV + (1 - frac[both]) * 30.0, rtol=1e-5
    )
    assert frac[(kidney_occ == 1) | (lesion_occ == 1)].max() == 0.0
    assert frac[liver_occ == 0].max() == 0.0
    # truth: exactly the liver level, although urine and a metastasis sit inside the liver shape
    assert true_liver_suv_mean(canvas.suv, frac, 99.0) == pytest.approx(LIVER_SUV, rel=1e-6)
    old_definition = float(canvas.suv[liver_occ > 0.99].mean())
    assert old_definition > 1.1 * LIVER_SUV  # what the shape's occupancy alone would report
    assert true_liver_suv_mean(canvas.suv, np.zeros_like(frac), 2.5) == 2.5  # no liver: level


def test_generate_pair_truth_is_the_mean_over_visible_liver(monkeypatch, coarse_config) -> None:
    canvases: list[Canvas] = []

    class Recording(Canvas):
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            super().__init__(*args, **kwargs)
            canvases.append(self)

    monkeypatch.setattr(dataset, "Canvas", Recording)
    _, _, truth = generate_pair(3, "nodule_within_mass", coarse_config)
    for canvas, tp in zip(canvases, ("baseline", "followup"), strict=True):
        visible = canvas.fractions["liver"] >= LIVER_VOXEL_FRACTION
        assert visible.sum() > 100
        expected = float(canvas.suv[visible].mean(dtype=np.float64))
        assert truth["liver_suv_mean"][tp] == pytest.approx(expected, abs=6e-4)  # JSON: 3 d.p.
        level = truth["physiology"][tp]["liver"]
        assert truth["liver_suv_mean"][tp] == pytest.approx(level, rel=0.05)


@pytest.mark.slow
def test_liver_is_homogeneous_at_the_scale_of_a_3cm_sphere() -> None:
    """Noise-free liver: voxel texture of a few %, 3 cm spheres within a few % of the mean."""
    from scipy import ndimage

    rng = np.random.default_rng(4)
    anatomy = sample_anatomy(rng)
    phys = sample_physiology(rng)
    lo, hi = anatomy.body_bounds()
    affine, shape = grid_affine(lo - 10, hi + 10, np.array([4.0, 4.0, 4.0]), "LPS")
    canvas = Canvas(ScanGeometry(shape, affine, np.eye(3), np.zeros(3)), rng, ("liver",))
    render_anatomy(canvas, anatomy, phys)
    liver = canvas.fractions["liver"] >= LIVER_VOXEL_FRACTION
    truth = true_liver_suv_mean(canvas.suv, canvas.fractions["liver"], phys.liver)
    rel = canvas.suv[liver] / truth
    expected_sd = float(np.hypot(LIVER_BROAD_TEXTURE[1], LIVER_FINE_TEXTURE[1]))
    assert float(rel.std()) == pytest.approx(expected_sd, rel=0.35)
    # every 3 cm sphere that fits inside the liver is within 8% of the liver's mean
    ball = np.linalg.norm(np.indices((9, 9, 9)) - 4, axis=0) * 4.0 <= 15.0
    inside = ndimage.distance_transform_edt(liver, sampling=4.0) >= 15.0
    means = ndimage.convolve(canvas.suv, ball / ball.sum(), mode="constant")[inside] / truth
    assert inside.sum() > 50
    assert float(np.abs(means - 1.0).max()) < 0.08
    assert float(means.std()) < 0.03
