"""Per-lesion metrics against analytic ground truth on non-RAS anisotropic grids."""

from __future__ import annotations

import math

import numpy as np
import pytest
from quant_phantoms import centred_affine, make_affine

from petflare.io.study import StudyMeta
from petflare.quant import analyze_study, lean_body_mass_kg, lesion_instances
from petflare.quant.metrics import SUV_PEAK_RADIUS_MM, ball_kernel

CENTRE = np.array([3.0, -4.0, 5.0])


def _sphere(radius_mm: float, centre=CENTRE):
    return lambda xyz: np.linalg.norm(xyz - centre, axis=-1) <= radius_mm


def _ellipsoid(semi_mm, centre=CENTRE):
    semi = np.asarray(semi_mm, dtype=float)
    return lambda xyz: (((xyz - centre) / semi) ** 2).sum(-1) <= 1.0


GRIDS = [
    ((28, 24, 20), (1.5, 2.0, 2.5), dict(axes=(2, 0, 1), signs=(-1, 1, -1))),
    ((22, 30, 26), (2.5, 1.5, 2.0), dict(axes=(1, 2, 0), signs=(1, -1, -1))),
]


@pytest.mark.parametrize(("shape", "spacing", "orient"), GRIDS)
@pytest.mark.parametrize(
    ("shape_fn", "true_ml"),
    [
        (_sphere(15.0), 4.0 / 3.0 * math.pi * 15.0**3 / 1000.0),
        (_ellipsoid((18.0, 13.0, 10.0)), 4.0 / 3.0 * math.pi * 18 * 13 * 10 / 1000.0),
    ],
)
def test_volume_suvpeak_tlg_centroid(study_from, shape, spacing, orient, shape_fn, true_ml):
    affine = centred_affine(shape, spacing, **orient)
    assert "".join(__import__("nibabel").aff2axcodes(affine)) != "RAS"
    study = study_from(
        shape, affine, lambda xyz: np.where(shape_fn(xyz), 4.0, 1.0), mask_fn=shape_fn
    )
    report = analyze_study(study)
    assert report.n_lesions == 1
    les = report.lesions[0]
    assert true_ml > 5.0
    assert les.volume_ml == pytest.approx(true_ml, rel=0.05)
    # Uniform uptake: the 1 ml ball fits inside the lesion, so SUVpeak is exactly the uptake.
    assert les.suv_peak == pytest.approx(4.0, abs=1e-6)
    assert les.suv_max == pytest.approx(4.0) and les.suv_mean == pytest.approx(4.0)
    assert les.tlg == pytest.approx(les.suv_mean * les.volume_ml, rel=1e-9)
    assert np.allclose(les.centroid_mm, CENTRE, atol=0.6)
    assert report.total_tlg == pytest.approx(les.tlg)
    # Uniform: no focal hotspot, heterogeneity 0.
    assert les.heterogeneity_cov == pytest.approx(0.0, abs=1e-6)
    assert les.focality is not None and les.focality.ratio == pytest.approx(1.0)


def test_longest_diameter_and_extent(study_from):
    shape, spacing = (40, 30, 24), (1.0, 1.5, 2.0)
    affine = centred_affine(shape, spacing)
    fn = _ellipsoid((16.0, 9.0, 7.0), centre=np.zeros(3))
    study = study_from(shape, affine, lambda xyz: fn(xyz) * 3.0, mask_fn=fn)
    les = analyze_study(study).lesions[0]
    # Voxel-centre diameter along x: within one voxel of 32 mm.
    assert 30.0 <= les.longest_diameter_mm <= 32.0 + 1e-6
    assert les.extent_mm[0] == pytest.approx(32.0, abs=2.5)
    assert les.extent_mm[1] == pytest.approx(18.0, abs=2.5)


def test_suvpeak_is_best_ball_mean_not_max(study_from):
    """Peak of a hot point in a warm lesion: the 1 ml ball dilutes it (peak < max)."""
    shape, spacing = (30, 30, 30), (2.0, 2.0, 2.0)
    affine = make_affine(spacing, axes=(0, 1, 2), signs=(-1, -1, 1), origin_mm=(30, 30, -30))
    body = _sphere(20.0, centre=np.zeros(3))

    def pet(xyz):
        out = np.where(body(xyz), 2.0, 0.5)
        hot = np.linalg.norm(xyz, axis=-1) < 1.0  # one voxel at the centre
        return np.where(hot, 20.0, out)

    les = analyze_study(study_from(shape, affine, pet, mask_fn=body)).lesions[0]
    n = ball_kernel(affine, SUV_PEAK_RADIUS_MM).sum()
    assert les.suv_max == pytest.approx(20.0)
    assert les.suv_peak == pytest.approx((20.0 + 2.0 * (n - 1)) / n, rel=1e-6)
    # Every ball holding the hot voxel ties; the chosen centre must hold it.
    assert np.linalg.norm(les.peak_centre_mm) <= SUV_PEAK_RADIUS_MM


def test_peak_kernel_is_about_one_ml():
    for spacing in [(1.0, 1.0, 1.0), (2.0, 2.0, 3.0), (4.0, 4.0, 2.0)]:
        aff = make_affine(spacing)
        k = ball_kernel(aff, SUV_PEAK_RADIUS_MM)
        ml = k.sum() * np.prod(spacing) / 1000.0
        assert 0.7 < ml < 1.4, (spacing, ml)


def test_focal_nodule_ratio(study_from):
    shape, spacing = (36, 36, 30), (2.0, 2.0, 2.5)
    affine = centred_affine(shape, spacing)
    mass = _sphere(30.0, centre=np.zeros(3))
    nodule_c = np.array([10.0, 5.0, 0.0])
    nodule = _sphere(6.0, centre=nodule_c)
    study = study_from(
        shape,
        affine,
        lambda xyz: np.where(nodule(xyz), 8.0, np.where(mass(xyz), 2.0, 0.5)),
        mask_fn=mass,
    )
    foc = analyze_study(study).lesions[0].focality
    assert foc is not None and foc.ratio is not None
    assert foc.ratio > 2.0
    assert np.linalg.norm(np.array(foc.centre_mm) - nodule_c) < 4.0


@pytest.mark.parametrize(
    ("mask", "conn", "expected"),
    [
        ("corner", 26, 1),
        ("corner", 18, 2),
        ("edge", 18, 1),
        ("edge", 6, 2),
    ],
)
def test_connectivity(mask, conn, expected):
    m = np.zeros((6, 6, 6), dtype=np.uint8)
    m[1, 1, 1] = 1
    if mask == "corner":
        m[2, 2, 2] = 1
    else:
        m[2, 2, 1] = 1
    assert lesion_instances(m, connectivity=conn).max() == expected


def test_instance_mask_is_kept_and_renumbered():
    m = np.zeros((8, 8, 8), dtype=np.int16)
    m[1:3, 1:3, 1:3] = 7
    m[2:4, 2:4, 3:5] = 3  # touches label 7 but stays a separate lesion
    out = lesion_instances(m)
    assert set(np.unique(out)) == {0, 1, 2}
    assert (out[m == 3] == 1).all() and (out[m == 7] == 2).all()
    with pytest.raises(ValueError):
        lesion_instances(m, connectivity=10)


def test_sul_with_lbm(study_from):
    # Janmahasatian: man 80 kg, 1.80 m -> BMI 24.69, LBM = 9270*80/(6680+216*24.69) = 61.73 kg.
    assert lean_body_mass_kg("M", 1.80, 80.0) == pytest.approx(61.73, abs=0.01)
    assert lean_body_mass_kg("F", 1.65, 60.0) == pytest.approx(
        9270 * 60 / (8780 + 244 * 60 / 1.65**2), rel=1e-12
    )
    shape, spacing = (20, 20, 20), (2.0, 2.0, 2.0)
    affine = centred_affine(shape, spacing)
    fn = _sphere(10.0, centre=np.zeros(3))
    meta = StudyMeta(sex="M", height_m=1.80, weight_kg=80.0)
    rep = analyze_study(study_from(shape, affine, lambda x: fn(x) * 5.0, mask_fn=fn, meta=meta))
    assert rep.sul_factor == pytest.approx(61.73 / 80.0, abs=1e-3)
    assert rep.lesions[0].sul_max == pytest.approx(5.0 * rep.sul_factor)
    rep2 = analyze_study(study_from(shape, affine, lambda x: fn(x) * 5.0, mask_fn=fn))
    assert rep2.sul_factor is None and "unknown" in rep2.sul_reason


def test_bounding_box_route_measures_the_same_lesion():
    """measure_lesion with a find_objects box (what analyze_study uses) equals the full scan."""
    from scipy import ndimage

    from petflare.quant.metrics import LesionContext, measure_lesion

    rng = np.random.default_rng(3)
    affine = make_affine((3.0, 2.5, 4.0), axes=(1, 0, 2), signs=(-1, 1, -1))
    pet = rng.gamma(4.0, 0.3, size=(40, 36, 30)).astype(np.float32)
    mask = np.zeros(pet.shape, dtype=np.uint8)
    mask[2:9, 30:36, 3:8] = 1  # touches the array border: the box is clipped there
    mask[20:27, 10:15, 12:20] = 1
    pet[mask > 0] += 5.0
    labels = lesion_instances(mask)
    ctx = LesionContext(pet=pet, affine=affine)
    boxes = ndimage.find_objects(labels)
    assert len(boxes) == 2
    for i, box in enumerate(boxes, start=1):
        assert measure_lesion(ctx, labels, i, box) == measure_lesion(ctx, labels, i)


def test_bad_label_values_are_refused():
    m = np.zeros((6, 6, 6), dtype=np.float32)
    m[1, 1, 1] = 1.5
    with pytest.raises(ValueError, match="integer"):
        lesion_instances(m)
    m[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="integer"):
        lesion_instances(m)
    n = np.zeros((6, 6, 6), dtype=np.int16)
    n[2, 2, 2] = -1
    with pytest.raises(ValueError, match="negative"):
        lesion_instances(n)
