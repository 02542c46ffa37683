"""Rigid alignment of a follow-up scan to its baseline with SimpleITK.

Euler 3D transform, Mattes mutual information, two pyramid levels at about 2x and 1x
``final_spacing_mm`` (each scan is first averaged over blocks of whole voxels about as wide as
the finer level, axis by axis, so a 2 mm or a 4.5 mm whole-body scan costs about what a 4 mm one
does, and a follow-up on another grid than its baseline is brought to the same block size),
initialised by the identity or by aligning the bodies' centroids. It runs on CT when both scans
have CT (anatomy is stable there, uptake is what changes), else on PET. The transform is
reported in the NIfTI world frame (RAS mm) as a 4x4 matrix mapping baseline points to follow-up
points, with the final metric and the normalised cross-correlation before and after alignment as
quality.

SimpleITK works in LPS; the conversion is the fixed flip ``diag(-1, -1, 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from petflare.io.study import Study
from petflare.quant.report import RegistrationResult

_FLIP = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class RegistrationConfig:
    """Optimiser settings; defaults are sized for whole-body PET/CT at 2-5 mm voxels.

    The pyramid has two levels, at about 2x and 1x ``final_spacing_mm`` (rigid alignment of a
    body needs no finer grid, and this keeps a whole-body pair at a few seconds of CPU).
    """

    modality: str = "auto"  # "auto" (CT if both have it), "ct", "pet", or "none" (identity)
    histogram_bins: int = 32
    samples: int = 100_000
    learning_rate: float = 1.0
    iterations: int = 100
    final_spacing_mm: float = 8.0
    #: Seed of the metric's random sample of voxels. SimpleITK reads 0 as "seed from the wall
    #: clock" (``sitk.sitkWallClock``), which would make every run differ, so it is refused.
    seed: int = 1

    def __post_init__(self) -> None:
        if self.seed < 1:
            raise ValueError(
                f"registration seed must be >= 1 (got {self.seed}): SimpleITK reads 0 as "
                "'seed from the wall clock', which makes the registration irreproducible"
            )


def to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """Numpy (i, j, k) volume with a RAS affine -> SimpleITK image with LPS geometry."""
    lin = _FLIP @ np.asarray(affine[:3, :3], dtype=np.float64)
    spacing = np.linalg.norm(lin, axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in (lin / spacing).ravel()])
    img.SetOrigin([float(v) for v in _FLIP @ np.asarray(affine[:3, 3], dtype=np.float64)])
    return img


def from_sitk(img: sitk.Image) -> np.ndarray:
    """SimpleITK image -> numpy (i, j, k) array (inverse of :func:`to_sitk`'s axis order)."""
    return np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))


def transform_to_matrix_ras(transform: sitk.Transform) -> np.ndarray:
    """4x4 RAS matrix of an affine-like SimpleITK transform (fixed point -> moving point).

    The transform is probed at four points, which is exact for any affine map (Euler, versor,
    affine, or a composite of them) and independent of how SimpleITK stores its centre.
    """
    pts = np.array([[0, 0, 0], [100, 0, 0], [0, 100, 0], [0, 0, 100]], dtype=float)
    out = np.array([transform.TransformPoint(p.tolist()) for p in pts])
    lin_lps = (out[1:] - out[0]).T / 100.0
    mat = np.eye(4)
    mat[:3, :3] = _FLIP @ lin_lps @ _FLIP
    mat[:3, 3] = _FLIP @ out[0]
    return mat


def matrix_ras_to_sitk(matrix_ras: np.ndarray) -> sitk.AffineTransform:
    """4x4 RAS (fixed -> moving) matrix -> SimpleITK affine transform in LPS."""
    tx = sitk.AffineTransform(3)
    tx.SetMatrix((_FLIP @ matrix_ras[:3, :3] @ _FLIP).ravel().tolist())
    tx.SetTranslation((_FLIP @ matrix_ras[:3, 3]).tolist())
    return tx


def _ncc(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> float | None:
    if valid.sum() < 10:
        return None
    x = a[valid].astype(np.float64)
    y = b[valid].astype(np.float64)
    x -= x.mean()
    y -= y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else None


def resample_to(
    moving: np.ndarray,
    moving_affine: np.ndarray,
    fixed_shape: tuple[int, int, int],
    fixed_affine: np.ndarray,
    matrix_ras: np.ndarray,
    nearest: bool = False,
    default: float = 0.0,
) -> np.ndarray:
    """Resample a follow-up array onto the baseline grid with the fixed->moving transform."""
    ref = to_sitk(np.zeros(fixed_shape, dtype=np.float32), fixed_affine)
    mov = to_sitk(moving, moving_affine)
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    out = sitk.Resample(mov, ref, matrix_ras_to_sitk(matrix_ras), interp, float(default))
    return from_sitk(out)


def _rotation_angles_deg(mat: np.ndarray) -> list[float]:
    """Euler angles (x, y, z; degrees) of the rotation part, ZYX convention."""
    r = mat[:3, :3]
    sy = float(np.hypot(r[0, 0], r[1, 0]))
    ax = np.degrees(np.arctan2(r[2, 1], r[2, 2]))
    ay = np.degrees(np.arctan2(-r[2, 0], sy))
    az = np.degrees(np.arctan2(r[1, 0], r[0, 0]))
    return [float(ax), float(ay), float(az)]


def identity_registration(reason: str = "registration disabled") -> RegistrationResult:
    """The identity transform (same world frame assumed)."""
    return RegistrationResult(
        method="identity",
        modality="none",
        matrix_ras=np.eye(4).tolist(),
        rotation_deg=[0.0, 0.0, 0.0],
        translation_mm=[0.0, 0.0, 0.0],
        final_metric=None,
        ncc_before=None,
        ncc_after=None,
        iterations=0,
        stop_condition=reason,
    )


def _body_centroid_lps(study: Study, arr: np.ndarray, is_ct: bool) -> np.ndarray:
    """World (LPS) centroid of the body: CT above -500 HU, or PET above SUV 0.1."""
    body = arr > (-500.0 if is_ct else 0.1)
    if not body.any():
        body = np.ones(arr.shape, dtype=bool)
    ijk = np.asarray(ndimage.center_of_mass(body))  # mean voxel index, without listing them
    return _FLIP @ (study.affine[:3, :3] @ ijk + study.affine[:3, 3])


def _initial_transform(
    reg: sitk.ImageRegistrationMethod,
    fixed: sitk.Image,
    moving: sitk.Image,
    fixed_arr: np.ndarray,
    moving_arr: np.ndarray,
    baseline: Study,
    followup: Study,
    shrink: int,
) -> sitk.Euler3DTransform:
    """Identity or body-centroid alignment, whichever has the better (lower) metric.

    Scans of one patient usually share the scanner frame (identity is right), but a
    different table position or field of view is caught by aligning the body centroids.
    """
    is_ct = baseline.ct is not None and fixed_arr is baseline.ct
    c_fixed = _body_centroid_lps(baseline, fixed_arr, is_ct)
    c_moving = _body_centroid_lps(followup, moving_arr, is_ct)
    best, best_value = None, np.inf
    small_fixed = sitk.Shrink(fixed, [shrink] * 3)
    small_moving = sitk.Shrink(moving, [shrink] * 3)
    for translation in (np.zeros(3), c_moving - c_fixed):
        tx = sitk.Euler3DTransform()
        tx.SetCenter(c_fixed.tolist())
        tx.SetTranslation(translation.tolist())
        reg.SetInitialTransform(tx, inPlace=False)
        value = reg.MetricEvaluate(small_fixed, small_moving)
        if value < best_value:
            best, best_value = tx, value
    assert best is not None
    return best


def block_factors(spacing_mm: Sequence[float], final_spacing_mm: float) -> list[int]:
    """Voxels per block along each axis, so that a block is as close as whole voxels allow to
    ``final_spacing_mm`` wide (each scan and axis on its own: anisotropic voxels, and a
    follow-up on another grid than its baseline, are averaged to the same block size)."""
    return [max(1, int(round(final_spacing_mm / float(s)))) for s in spacing_mm]


def register_followup_to_baseline(
    baseline: Study, followup: Study, config: RegistrationConfig | None = None
) -> RegistrationResult:
    """Rigidly align ``followup`` to ``baseline``; see the module docstring for the method."""
    cfg = config or RegistrationConfig()
    modality = cfg.modality
    if modality == "none":
        return identity_registration()
    both_ct = baseline.ct is not None and followup.ct is not None
    if modality == "auto":
        modality = "ct" if both_ct else "pet"
    if modality == "ct" and not both_ct:
        raise ValueError("registration on CT requested but a scan has no CT")
    if modality == "ct":
        assert baseline.ct is not None and followup.ct is not None
        fixed_arr, moving_arr = baseline.ct, followup.ct
    else:
        fixed_arr, moving_arr = baseline.pet, followup.pet
    # Block averages to the finest level: the pyramid's smoothing then runs on small images.
    fixed = sitk.BinShrink(
        to_sitk(fixed_arr.astype(np.float32), baseline.affine),
        block_factors(baseline.spacing_mm, cfg.final_spacing_mm),
    )
    moving = sitk.BinShrink(
        to_sitk(moving_arr.astype(np.float32), followup.affine),
        block_factors(followup.spacing_mm, cfg.final_spacing_mm),
    )
    n_final = int(np.prod(fixed.GetSize()))

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=cfg.histogram_bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(float(np.clip(cfg.samples / n_final, 0.01, 1.0)), cfg.seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=cfg.learning_rate,
        minStep=1e-3,
        numberOfIterations=cfg.iterations,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])
    sigma = cfg.final_spacing_mm / 2.0
    reg.SetSmoothingSigmasPerLevel([2.0 * sigma, sigma])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    initial = _initial_transform(reg, fixed, moving, fixed_arr, moving_arr, baseline, followup, 2)
    reg.SetInitialTransform(initial, inPlace=False)
    final = reg.Execute(fixed, moving)

    mat = transform_to_matrix_ras(final)
    # Quality on the blocks: the moving image on the fixed grid without (scanner frames) and
    # with the registration, compared by normalised cross-correlation.
    fixed_blocks = from_sitk(fixed)
    before, after = (
        from_sitk(
            sitk.Resample(moving, fixed, matrix_ras_to_sitk(m), sitk.sitkLinear, float("nan"))
        )
        for m in (np.eye(4), mat)
    )
    return RegistrationResult(
        method="rigid_euler3d_mattes_mi",
        modality=modality,
        matrix_ras=mat.tolist(),
        rotation_deg=_rotation_angles_deg(mat),
        translation_mm=mat[:3, 3].tolist(),
        final_metric=float(reg.GetMetricValue()),
        ncc_before=_ncc(fixed_blocks, before, np.isfinite(before)),
        ncc_after=_ncc(fixed_blocks, after, np.isfinite(after)),
        iterations=int(reg.GetOptimizerIteration()),
        stop_condition=reg.GetOptimizerStopConditionDescription(),
    )
