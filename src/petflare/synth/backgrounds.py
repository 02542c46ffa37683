"""Real FDG-PET scans as backgrounds for hybrid training scans (see :mod:`petflare.synth.hybrid`).

A background is a real whole-body PET in body-weight SUV on its own grid, with what is known
about it: existing disease (an RTSTRUCT GTV, the annotated "known disease"), regions where no
lesion may be inserted, and, where an annotation exists, its physiological regions
(``annotations/real/<case>/regions.nii.gz``: ``petflare.constants.ORGAN_TO_INDEX`` values plus
``KNOWN_DISEASE_LABEL``). :func:`analyse_background` derives what insertion needs from the image
itself: a body mask, the liver and its noise, the hot (physiological or diseased) uptake to keep
away from, and candidate sites.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from petflare.constants import KNOWN_DISEASE_LABEL, ORGAN_TO_INDEX, ORGANS
from petflare.errors import PetflareInputError
from petflare.io.dicom import read_dicom_pet, read_rtstruct_mask
from petflare.io.loading import same_grid
from petflare.io.nifti import load_nifti

log = logging.getLogger(__name__)

#: Name of a real scan's region map inside ``annotations/real/<case>/``.
REGIONS_FILE = "regions.nii.gz"

#: Physiological regions no lesion is inserted into (nor within the avoid margin of).
EXCLUDED_ORGANS: tuple[str, ...] = ("brain", "myocardium", "bladder", "kidney")


@dataclass(frozen=True)
class BackgroundSpec:
    """Where a real background lives and what is known about it.

    Attributes:
        name: short identifier used in output folders and metadata (``sts001``).
        series: the PET series folder, relative to the real-data root.
        psf_fwhm_mm: reconstructed resolution (Gaussian FWHM) the inserted lesions are blurred
            with; set per scanner (GE Discovery ST, Philips Gemini/Guardian: 6-8 mm).
        rtstruct: RTSTRUCT file relative to the real-data root, or None.
        disease_rois: RTSTRUCT ROIs that are FDG-avid disease: labelled as lesion.
        avoid_rois: RTSTRUCT ROIs where nothing is inserted and nothing is labelled (e.g. the
            oedema around a sarcoma).
        unlabelled_disease: the scan shows disease that only an annotation labels; without
            ``annotations/real/<case>/regions.nii.gz`` the background is not used, so that its
            tumour is never taught as background.
        annotation_cases: folder names under the annotations root tried in order.
    """

    name: str
    series: str
    psf_fwhm_mm: float
    rtstruct: str | None = None
    disease_rois: tuple[str, ...] = ()
    avoid_rois: tuple[str, ...] = ()
    unlabelled_disease: bool = False
    annotation_cases: tuple[str, ...] = ()


#: The three whole-body series of ``../shared/data/real`` (README.md there).
REAL_BACKGROUNDS: dict[str, BackgroundSpec] = {
    "sts001": BackgroundSpec(
        name="sts001",
        series="sts001_wholebody_fdg_dicom/image",
        psf_fwhm_mm=7.0,
        rtstruct="sts001_wholebody_fdg_dicom/mask/1-1.dcm",
        disease_rois=("GTV_Mass",),
        avoid_rois=("GTV_Edema",),
        annotation_cases=("sts001", "sts001_wholebody_fdg_dicom", "STS_001"),
    ),
    "acrin042": BackgroundSpec(
        name="acrin042",
        series="acrin_nsclc_042_fdg_dicom/image",
        psf_fwhm_mm=7.0,
        unlabelled_disease=True,  # lung primary and chest nodes, visible, unlabelled
        annotation_cases=("acrin042", "acrin_nsclc_042_fdg_dicom", "acrin_nsclc_042"),
    ),
    "chus052": BackgroundSpec(
        name="chus052",
        series="chus052_fdg_dicom/image",
        psf_fwhm_mm=6.5,
        unlabelled_disease=True,  # post-treatment head and neck: residual disease unlabelled
        annotation_cases=("chus052", "chus052_fdg_dicom", "hn_chus_052"),
    ),
}


@dataclass
class Background:
    """A real PET scan ready for lesion insertion.

    Attributes:
        name: identifier (``sts001``).
        suv: float32 SUVbw volume.
        affine: its 4x4 voxel-to-world (RAS mm) matrix.
        psf_fwhm_mm: resolution the inserted lesions are blurred to.
        disease: known disease (labelled as lesion in every hybrid scan), or None.
        avoid: where nothing is inserted and nothing labelled (e.g. oedema), or None.
        organs: ``ORGANS`` index map from the annotation (0 elsewhere), or None.
        source: provenance strings (series folder, UID, SUV conversion, annotation file).
    """

    name: str
    suv: np.ndarray
    affine: np.ndarray
    psf_fwhm_mm: float
    disease: np.ndarray | None = None
    avoid: np.ndarray | None = None
    organs: np.ndarray | None = None
    source: dict[str, str] = field(default_factory=dict)

    @property
    def spacing_mm(self) -> np.ndarray:
        """Voxel size along the array axes (mm)."""
        return np.linalg.norm(np.asarray(self.affine)[:3, :3], axis=0)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _cases(spec: BackgroundSpec) -> list[str]:
    return list(dict.fromkeys((spec.name, *spec.annotation_cases)))


def find_regions(annotations_root: str | Path | None, spec: BackgroundSpec) -> Path | None:
    """The background's region map under ``annotations_root``, or None when there is none."""
    if annotations_root is None:
        return None
    for case in _cases(spec):
        path = Path(annotations_root) / case / REGIONS_FILE
        if path.is_file():
            return path
    return None


def read_background(
    spec: BackgroundSpec, data_root: str | Path, annotations_root: str | Path | None = None
) -> Background:
    """Read one real background: SUV, its RTSTRUCT disease and avoid ROIs, its annotation.

    Raises:
        PetflareInputError: missing or unreadable series, RTSTRUCT or annotation, or an
            annotation on another grid.
    """
    root = Path(data_root)
    regions_path = find_regions(annotations_root, spec)
    if regions_path is None and spec.unlabelled_disease:
        raise PetflareInputError(
            root / spec.series,
            f"background {spec.name} shows unlabelled disease and has no "
            f"<annotations>/<case>/{REGIONS_FILE} (cases tried: {', '.join(_cases(spec))}); "
            "its tumour would be taught as background",
        )
    study = read_dicom_pet(root / spec.series)
    shape = study.shape
    source = {k: str(v) for k, v in study.meta.source.items()}
    source["series"] = spec.series
    disease = np.zeros(shape, dtype=bool)
    avoid = np.zeros(shape, dtype=bool)
    if spec.rtstruct is not None:
        for roi in spec.disease_rois:
            disease |= read_rtstruct_mask(root / spec.rtstruct, study, roi) > 0
        for roi in spec.avoid_rois:
            avoid |= read_rtstruct_mask(root / spec.rtstruct, study, roi) > 0
        source["rtstruct"] = spec.rtstruct
        source["disease_rois"] = ",".join(spec.disease_rois)
    organs = None
    if regions_path is not None:
        regions, regions_affine = load_nifti(regions_path)
        if not same_grid(regions.shape, regions_affine, shape, study.affine):
            raise PetflareInputError(regions_path, "region map is not on the PET series' grid")
        regions = np.rint(regions).astype(np.int32)
        disease |= regions == KNOWN_DISEASE_LABEL
        organs = np.where((regions > 0) & (regions < len(ORGANS)), regions, 0).astype(np.uint8)
        source["regions"] = str(regions_path)
    avoid &= ~disease
    return Background(
        name=spec.name,
        suv=study.pet.astype(np.float32),
        affine=study.affine,
        psf_fwhm_mm=spec.psf_fwhm_mm,
        disease=disease if disease.any() else None,
        avoid=avoid if avoid.any() else None,
        organs=organs,
        source=source,
    )


def load_backgrounds(
    names: Sequence[str],
    data_root: str | Path,
    annotations_root: str | Path | None = None,
    exclude: Sequence[str] = (),
) -> tuple[list[Background], dict[str, str]]:
    """Read the named backgrounds except ``exclude`` (leave-one-background-out).

    Returns:
        The backgrounds read, and ``{name: reason}`` for those not used (excluded on request,
        or unusable: e.g. unlabelled disease without an annotation).

    Raises:
        PetflareInputError: an unknown name, or no background left to use.
    """
    unknown = sorted(set(names) - set(REAL_BACKGROUNDS)) + sorted(
        set(exclude) - set(REAL_BACKGROUNDS)
    )
    if unknown:
        raise PetflareInputError(
            None, f"unknown background(s) {unknown}; known: {sorted(REAL_BACKGROUNDS)}"
        )
    used: list[Background] = []
    skipped: dict[str, str] = {}
    for name in names:
        if name in exclude:
            skipped[name] = "excluded (exclude=...)"
            continue
        spec = REAL_BACKGROUNDS[name]
        try:
            used.append(read_background(spec, data_root, annotations_root))
        except PetflareInputError as exc:
            if spec.unlabelled_disease and find_regions(annotations_root, spec) is None:
                skipped[name] = exc.problem
                log.warning("background %s not used: %s", name, exc.problem)
                continue
            raise
    if not used:
        raise PetflareInputError(
            data_root, f"no usable background: {'; '.join(f'{k}: {v}' for k, v in skipped.items())}"
        )
    return used, skipped


# --------------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------------


@dataclass
class BackgroundAnalysis:
    """What insertion needs to know about a background, derived from its image.

    Attributes:
        body: voxels inside the patient (holes, e.g. the lungs, filled per slice).
        liver: liver voxels (annotation when present, else the heuristic of
            :func:`analyse_background`); may be empty.
        liver_suv_mean: mean SUV of the (eroded) liver: the reference level.
        noise_cv: coefficient of variation of the SUV in the eroded liver (noise estimate).
        forbidden: where no inserted lesion may reach: outside the body, hot uptake, excluded
            organs, known disease and avoid regions (each with the avoid margin).
        sites: candidate lesion-centre masks by site kind (``soft_tissue``, ``lung``,
            ``liver``); an empty kind falls back to ``soft_tissue``.
    """

    body: np.ndarray
    liver: np.ndarray
    liver_suv_mean: float
    noise_cv: float
    forbidden: np.ndarray
    sites: dict[str, np.ndarray]


#: Body: SUV (smoothed over ~1 voxel) above this (air and the table are ~0, fat ~0.3).
BODY_SUV = 0.12
#: Hot uptake to keep away from: smoothed SUV above this multiple of the liver SUVmean
#: (brain, heart, kidneys, bladder, bowel hot spots and tumour; liver itself is x1).
HOT_LIVER_RATIO = 1.7
#: Lung: smoothed SUV below this multiple of the median deep-chest SUV.
LUNG_BODY_RATIO = 0.8


def _within_mm(mask: np.ndarray, spacing: np.ndarray, margin_mm: float) -> np.ndarray:
    """Voxels within ``margin_mm`` of ``mask`` (the mask dilated by a distance in mm)."""
    if not mask.any():
        return np.zeros_like(mask, dtype=bool)
    if margin_mm <= 0:
        return mask.astype(bool)
    return ndimage.distance_transform_edt(~mask, sampling=spacing) <= margin_mm


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def _fill_slices(mask: np.ndarray, axis: int) -> np.ndarray:
    out = np.empty_like(mask)
    for k in range(mask.shape[axis]):
        index = [slice(None)] * 3
        index[axis] = slice(k, k + 1)
        out[tuple(index)] = ndimage.binary_fill_holes(mask[tuple(index)])
    return out


def _axial_axis(affine: np.ndarray) -> int:
    """Array axis closest to the world's superior-inferior direction."""
    return int(
        np.argmax(np.abs(np.asarray(affine)[2, :3]) / np.linalg.norm(affine[:3, :3], axis=0))
    )


def estimate_liver(smooth: np.ndarray, body: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Heuristic liver: the largest homogeneous moderate-uptake region of the body.

    Voxels with smoothed SUV 1.2-4.0 (liver SUVmean spans ~1.5-3 in FDG scans) are opened by
    two voxels (which cuts the thin bridges to the spine and the blood pool); the largest
    component gives a level ``L``; the liver is then the largest component of
    ``0.8 L <= SUV <= 1.25 L``, opened by two voxels. Good enough to measure the
    noise and the reference level; an annotation replaces it.
    """
    band = body & (smooth >= 1.2) & (smooth <= 4.0)
    first = _largest_component(ndimage.binary_opening(band, iterations=2))
    if first.sum() * np.prod(spacing) < 100_000:  # < 100 ml: no liver-like region
        return np.zeros_like(body)
    level = float(np.median(smooth[first]))
    band = body & (smooth >= 0.8 * level) & (smooth <= 1.25 * level)
    return _largest_component(ndimage.binary_opening(band, iterations=2))


def _lung(
    smooth: np.ndarray,
    body: np.ndarray,
    liver: np.ndarray,
    affine: np.ndarray,
    spacing: np.ndarray,
) -> np.ndarray:
    """Heuristic lungs: the lowest-uptake deep body voxels of the chest.

    The chest is taken as the 40-260 mm above the liver's centre; there, voxels more than
    30 mm inside the body whose smoothed SUV is below ``LUNG_BODY_RATIO`` x the median of the
    deep voxels, in components of >= 150 ml. PET alone separates lung from muscle poorly on
    old scanners (STS_001: lung ~0.45, muscle ~0.6): a site, not a segmentation.
    """
    depth = ndimage.distance_transform_edt(body, sampling=spacing)
    deep = depth > 30.0
    if not liver.any() or not deep.any():
        return np.zeros_like(body)
    centre = np.array([*np.argwhere(liver).mean(axis=0), 1.0])
    grid = np.indices(body.shape, dtype=np.float32)
    height_mm = sum(float(affine[2, a]) * (grid[a] - centre[a]) for a in range(3))
    chest = deep & (height_mm > 40.0) & (height_mm < 260.0)
    if not chest.any():
        return np.zeros_like(body)
    lung = chest & (smooth < LUNG_BODY_RATIO * float(np.median(smooth[chest])))
    labels, n = ndimage.label(lung)
    if n == 0:
        return lung
    sizes_ml = np.bincount(labels.ravel()) * float(np.prod(spacing)) / 1000.0
    return np.isin(labels, np.flatnonzero(sizes_ml >= 150.0)) & (labels > 0)


def analyse_background(
    bg: Background, avoid_margin_mm: float = 10.0, surface_margin_mm: float = 8.0
) -> BackgroundAnalysis:
    """Body, liver, noise, forbidden regions and candidate sites of one background."""
    spacing = bg.spacing_mm
    smooth = ndimage.gaussian_filter(bg.suv.astype(np.float32), 1.0)
    body = _largest_component(smooth > BODY_SUV)
    body = _fill_slices(body, _axial_axis(bg.affine))
    if bg.organs is not None and (bg.organs == ORGAN_TO_INDEX["liver"]).sum() > 100:
        liver = bg.organs == ORGAN_TO_INDEX["liver"]
    else:
        liver = estimate_liver(smooth, body, spacing)
    core = ndimage.binary_erosion(liver, iterations=2)
    core = core if core.sum() > 50 else liver
    if core.any():
        values = bg.suv[core].astype(np.float64)
        liver_mean = float(values.mean())
        noise_cv = float(values.std() / max(liver_mean, 1e-6))
    else:  # no liver found: the body's moderate uptake as a stand-in
        values = bg.suv[body & (smooth > 0.5)].astype(np.float64)
        liver_mean = float(np.median(values)) if values.size else 1.0
        noise_cv = 0.15
    hot = body & (smooth > HOT_LIVER_RATIO * liver_mean)
    hot = ndimage.binary_opening(hot, iterations=1) | (smooth > 2.5 * HOT_LIVER_RATIO * liver_mean)
    avoid = hot.copy()
    if bg.organs is not None:
        for organ in EXCLUDED_ORGANS:
            avoid |= bg.organs == ORGAN_TO_INDEX[organ]
    for extra in (bg.disease, bg.avoid):
        if extra is not None:
            avoid |= extra
    inner = ndimage.distance_transform_edt(body, sampling=spacing) > surface_margin_mm
    forbidden = ~inner | _within_mm(avoid, spacing, avoid_margin_mm)
    lung = _lung(smooth, body, liver, bg.affine, spacing)
    liver_sites = ndimage.binary_erosion(liver, iterations=1) & ~forbidden
    soft = ~forbidden & ~lung & ~liver & (smooth > 0.25)
    return BackgroundAnalysis(
        body=body,
        liver=liver,
        liver_suv_mean=liver_mean,
        noise_cv=noise_cv,
        forbidden=forbidden,
        sites={"soft_tissue": soft, "lung": lung & ~forbidden, "liver": liver_sites},
    )
