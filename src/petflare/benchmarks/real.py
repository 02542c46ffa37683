"""Real-data segmentation benchmark: FDG-PET from outside the phantom generator.

Scores a model folder (or any ``Study -> mask`` callable) on the real scans in
``../shared/data/real`` (see its README):

- ``sts001_wholebody_fdg_dicom`` (GE, Bq/mL, RTSTRUCT ``GTV_Mass``): sarcoma found, Dice,
  false-positive volume (FPV) outside the GTV and per physiological organ;
- ``acrin_nsclc_042_fdg_dicom`` (GE, delayed 159 min) and ``chus052_fdg_dicom`` (Philips CNTS):
  no lesion labels, so FPV outside the annotated known disease, FPV per organ, whether a
  predicted component touches brain, bladder or myocardium, and how many pieces of the known
  disease are still found (a physiology filter must not buy its FPV with a tumour);
- ``ibsi_sts_crops/STS_001..005``: Dice beside the classical baselines SUV >= 2.5 and 41 % of
  SUVmax;
- a robustness battery on the whole-body scans (SUV x0.7 / x1.3, 2 / 3 / 5 mm voxels, extra blur,
  extra noise), each relative to the unperturbed scan;
- for an anatomy-aware network, its organ output against the annotated regions (Dice per organ,
  in how many pieces, whether the largest piece is in the organ): the sites the physiology-aware
  logic relies on, judged on real scans.

The physiological regions and known disease of the whole-body scans are the label maps in
``annotations/real/<case>/regions.nii.gz`` (made by :func:`make_regions`, checked by eye; see
``annotations/real/README.md``). Metrics follow autoPET (18-connectivity, see DOMAIN.md).

Command line (:func:`main`)::

    python scripts/benchmark_real.py --overwrite                      # default model folder
    python scripts/benchmark_real.py --model models/phantom-unet \\
        --out docs/reports/bench_real_cpu.md --overwrite
    python scripts/benchmark_real.py --make-annotations --overwrite   # rebuild annotations/real
    python scripts/benchmark_real.py --render-only                    # markdown from the JSON
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cc3d
import numpy as np
import scipy.ndimage as ndi

from petflare.constants import KNOWN_DISEASE_LABEL, ORGAN_TO_INDEX, ORGANS
from petflare.errors import PetflareInputError
from petflare.inference.baselines import fixed_threshold_mask, percent_suvmax_mask
from petflare.inference.request import default_model_dir
from petflare.io import atomic_write_text, load_nifti, save_nifti
from petflare.io.dicom import read_dicom_pet, read_rtstruct_mask
from petflare.io.study import Study, StudyMeta
from petflare.paths import project_dir
from petflare.training.metrics import scan_metrics

#: Name of the known-disease label in reports.
KNOWN_DISEASE = "known_disease"
#: Name of FPV voxels in no annotated region.
UNANNOTATED = "unannotated"
#: Organs where any predicted component counts as a detection in physiology (issue 32 target).
FORBIDDEN_ORGANS = ("brain", "bladder", "myocardium")
#: autoPET connectivity of the connected components.
CONNECTIVITY = 18
#: Classical baselines of issue 32 on the crops: a fixed SUV threshold and 41 % of SUVmax.
BASELINE_FIXED_SUV = 2.5
BASELINE_SUVMAX_FRACTION = 0.41
#: Robustness target: a perturbed scan's FPV and Dice within this fraction of the unperturbed.
ROBUSTNESS_TOLERANCE = 0.20
#: Where the region maps live, relative to the repository root.
ANNOTATIONS_DIR = Path("annotations") / "real"
REGIONS_FILE = "regions.nii.gz"

Segmenter = Callable[[Study], np.ndarray]


@dataclass(frozen=True)
class WholeBodyCase:
    """A real whole-body DICOM PET series of the benchmark.

    Attributes:
        name: folder name under the real-data root (also the annotation folder's name).
        image_dir: the PET series folder, relative to the case folder.
        rtstruct: RTSTRUCT file relative to the case folder (labelled cases), else None.
        roi: the RTSTRUCT ROI that is the lesion ground truth.
        description: one line for the report.
    """

    name: str
    image_dir: str = "image"
    rtstruct: str | None = None
    roi: str | None = None
    description: str = ""


#: The whole-body cases, in report order.
WHOLEBODY_CASES: tuple[WholeBodyCase, ...] = (
    WholeBodyCase(
        "sts001_wholebody_fdg_dicom",
        rtstruct="mask/1-1.dcm",
        roi="GTV_Mass",
        description="GE Discovery ST, Bq/mL; sarcoma of the thigh (RTSTRUCT GTV_Mass)",
    ),
    WholeBodyCase(
        "acrin_nsclc_042_fdg_dicom",
        description="GE Discovery ST, Bq/mL, delayed (159 min); lung cancer, unlabelled",
    ),
    WholeBodyCase(
        "chus052_fdg_dicom",
        description="Philips Guardian, Units CNTS; head-and-neck cancer post-treatment",
    ),
)
#: The IBSI soft-tissue-sarcoma crops (SUV, GTV_Mass) under ``ibsi_sts_crops``.
CROP_CASES = ("STS_001", "STS_002", "STS_003", "STS_004", "STS_005")


# --------------------------------------------------------------------------- reading


def read_real_pet(folder: str | Path) -> Study:
    """Read a real DICOM PET series as SUVbw with :func:`petflare.io.dicom.read_dicom_pet`
    (Bq/mL with the header's dose and times; Philips CNTS with its SUV Scale Factor)."""
    return read_dicom_pet(folder)


# --------------------------------------------------------------------------- annotations


@dataclass(frozen=True)
class RegionRule:
    """One step of the semi-automatic annotation: voxels of ``box`` with SUV >= ``min_suv``
    not yet labelled become ``region``.

    Attributes:
        region: an organ of :data:`petflare.constants.ORGANS`, or :data:`KNOWN_DISEASE`.
        box: voxel index box ``(i0, i1, j0, j1, k0, k1)`` (half-open) on the PET series' grid,
            chosen by looking at MIPs and axial slices of that series.
        min_suv: SUV threshold inside the box.
        note: what the rule is meant to catch (shown in the provenance README).
        largest_only: keep only the largest connected component (an organ such as the liver,
            whose threshold also catches neighbouring tissue).
        smooth_sigma_vox: Gaussian smoothing (voxels) of the SUV before thresholding, for
            organs close to the background level (liver), where noise would fragment them.
    """

    region: str
    box: tuple[int, int, int, int, int, int]
    min_suv: float
    note: str = ""
    largest_only: bool = False
    smooth_sigma_vox: float = 0.0


def region_value(region: str) -> int:
    """The label-map value of a region name (organ index, or :data:`KNOWN_DISEASE_LABEL`)."""
    if region == KNOWN_DISEASE:
        return KNOWN_DISEASE_LABEL
    if region not in ORGAN_TO_INDEX or region == ORGANS[0]:
        raise ValueError(f"unknown region {region!r}; use one of {ORGANS[1:]} or {KNOWN_DISEASE}")
    return ORGAN_TO_INDEX[region]


def region_names() -> dict[int, str]:
    """Label-map value -> region name, for every value a region map may hold (0 excluded)."""
    names = {ORGAN_TO_INDEX[o]: o for o in ORGANS[1:]}
    names[KNOWN_DISEASE_LABEL] = KNOWN_DISEASE
    return names


#: Annotation rules of each whole-body case, applied in order (first rule wins). Boxes were
#: chosen on coronal/sagittal MIPs and axial slices; see annotations/real/README.md.
REGION_RULES: dict[str, tuple[RegionRule, ...]] = {
    "sts001_wholebody_fdg_dicom": (
        RegionRule("brain", (0, 128, 0, 128, 249, 267), 3.0, "brain (cut at the top slice)"),
        RegionRule("other_physiological", (96, 128, 0, 128, 235, 267), 2.5, "raised arm"),
        RegionRule("other_physiological", (0, 36, 0, 128, 235, 267), 2.5, "raised arm"),
        RegionRule("head_neck", (40, 100, 20, 100, 222, 249), 3.0, "tonsils, salivary glands"),
        RegionRule("myocardium", (58, 98, 36, 82, 164, 196), 4.0, "left ventricle"),
        RegionRule("kidney", (38, 64, 58, 92, 98, 146), 3.0, "right kidney and pelvis"),
        RegionRule("kidney", (70, 98, 58, 94, 98, 146), 3.0, "left kidney and pelvis"),
        RegionRule("kidney", (66, 82, 62, 86, 66, 100), 3.5, "left ureter"),
        RegionRule("bladder", (50, 84, 52, 88, 50, 74), 4.0, "bladder"),
        RegionRule("liver", (30, 70, 36, 96, 128, 170), 1.6, "liver", True, 1.0),
        RegionRule("bowel", (28, 104, 28, 100, 74, 130), 3.5, "bowel loops"),
    ),
    "acrin_nsclc_042_fdg_dicom": (
        RegionRule(KNOWN_DISEASE, (40, 63, 44, 76, 60, 92), 4.0, "right lung primary / hilum"),
        RegionRule(KNOWN_DISEASE, (63, 75, 56, 74, 73, 87), 4.0, "mediastinal node"),
        RegionRule(KNOWN_DISEASE, (54, 71, 46, 66, 105, 123), 4.0, "upper mediastinal node"),
        RegionRule("head_neck", (40, 90, 30, 80, 123, 135), 3.5, "vocal cords, neck"),
        RegionRule("myocardium", (58, 88, 34, 66, 38, 66), 3.0, "left ventricle"),
        RegionRule("kidney", (36, 62, 50, 82, 0, 34), 4.0, "right kidney and pelvis"),
        RegionRule("kidney", (64, 92, 50, 82, 0, 34), 4.0, "left kidney and pelvis"),
        RegionRule("liver", (22, 64, 28, 92, 18, 54), 1.5, "liver", True, 1.0),
        RegionRule("bowel", (28, 98, 18, 62, 0, 42), 3.5, "bowel loops, stomach"),
    ),
    "chus052_fdg_dicom": (
        RegionRule(KNOWN_DISEASE, (60, 86, 40, 66, 196, 214), 4.0, "oropharyngeal mass"),
        RegionRule(KNOWN_DISEASE, (58, 70, 48, 62, 189, 205), 4.0, "ipsilateral neck nodes"),
        RegionRule("brain", (0, 144, 0, 144, 214, 255), 3.0, "brain"),
        RegionRule("head_neck", (48, 104, 28, 82, 184, 216), 3.0, "salivary glands, tonsils"),
        RegionRule("myocardium", (68, 106, 38, 72, 120, 152), 3.0, "left ventricle"),
        RegionRule("other_physiological", (122, 144, 50, 92, 78, 108), 3.0, "injection site"),
        RegionRule("kidney", (46, 68, 56, 86, 84, 114), 3.0, "right kidney and pelvis"),
        RegionRule("kidney", (78, 100, 56, 86, 84, 114), 3.0, "left kidney and pelvis"),
        RegionRule("bladder", (54, 94, 48, 82, 36, 58), 4.0, "bladder"),
        RegionRule("liver", (38, 86, 38, 92, 90, 130), 1.2, "liver", True, 1.0),
        RegionRule("bowel", (38, 112, 28, 82, 56, 92), 3.5, "bowel loops"),
    ),
}
#: Components of one rule smaller than this (voxels) are noise, not an organ.
MIN_REGION_VOXELS = 3
#: Each region is grown by this many voxels into unlabelled voxels, so that a prediction's
#: partial-volume halo around a hot organ is still counted as that organ.
REGION_MARGIN_VOX = 1


def make_regions(
    study: Study, rules: Sequence[RegionRule], known_disease: np.ndarray | None = None
) -> np.ndarray:
    """Semi-automatic region map: SUV thresholds inside anatomical boxes, then a margin.

    Args:
        study: the PET series (SUV) the map belongs to.
        rules: applied in order; a voxel keeps the first region that claims it.
        known_disease: a disease mask (e.g. a rasterised GTV) labelled before every rule.

    Returns:
        uint8 map on the study's grid: 0 unannotated, organ indices, :data:`KNOWN_DISEASE_LABEL`.
    """
    suv = study.pet
    out = np.zeros(study.shape, dtype=np.uint8)
    if known_disease is not None:
        out[np.asarray(known_disease) > 0] = KNOWN_DISEASE_LABEL
    for rule in rules:
        i0, i1, j0, j1, k0, k1 = rule.box
        box = (slice(i0, i1), slice(j0, j1), slice(k0, k1))
        values = suv[box]
        if rule.smooth_sigma_vox > 0:
            values = ndi.gaussian_filter(values, rule.smooth_sigma_vox)
        hot = (values >= rule.min_suv) & (out[box] == 0)
        labels, n = cc3d.connected_components(  # type: ignore[call-overload]
            np.ascontiguousarray(hot, dtype=np.uint8), connectivity=CONNECTIVITY, return_N=True
        )
        if n:
            sizes = np.bincount(labels.ravel(), minlength=n + 1)
            hot &= sizes[labels] >= MIN_REGION_VOXELS
            if rule.largest_only:
                hot &= labels == int(np.argmax(sizes[1:])) + 1
        out[box][hot] = region_value(rule.region)
    if REGION_MARGIN_VOX > 0:
        grown = ndi.grey_dilation(out, size=(2 * REGION_MARGIN_VOX + 1,) * 3)
        free = out == 0
        out[free] = grown[free]
    return out


def regions_path(annotations_root: str | Path, case: str) -> Path:
    """``<annotations_root>/<case>/regions.nii.gz``."""
    return Path(annotations_root) / case / REGIONS_FILE


def load_regions(path: str | Path, study: Study) -> np.ndarray:
    """Read a region map and check that it lies on the study's grid.

    Raises:
        PetflareInputError: missing file, another shape or affine, or unknown label values.
    """
    path = Path(path)
    data, affine = load_nifti(path)
    if data.shape != study.shape:
        raise PetflareInputError(path, f"shape {data.shape} differs from the PET's {study.shape}")
    if not np.allclose(affine, study.affine, atol=1e-3):
        raise PetflareInputError(path, "affine differs from the PET series' affine")
    values = {int(v) for v in np.unique(data)} - {0}
    unknown = values - set(region_names())
    if unknown:
        raise PetflareInputError(path, f"unknown region values {sorted(unknown)}")
    return np.asarray(data, dtype=np.uint8)


def write_regions(regions: np.ndarray, study: Study, path: str | Path, overwrite: bool) -> Path:
    """Write a region map (uint8) with the PET series' affine, atomically."""
    return save_nifti(
        regions.astype(np.uint8), study.affine, path, overwrite=overwrite, dtype=np.uint8
    )


def make_annotations(
    data_root: str | Path,
    annotations_root: str | Path,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Rebuild every whole-body case's region map (and the PNG it was checked on).

    STS_001's known disease is its RTSTRUCT GTV_Mass; the other cases' comes from their rules.
    Writes ``<annotations_root>/<case>/regions.nii.gz`` and ``check.png``.
    """
    data_root, annotations_root = Path(data_root), Path(annotations_root)
    written = []
    for case in WHOLEBODY_CASES:
        folder = data_root / case.name
        study = read_real_pet(folder / case.image_dir)
        gt = None
        if case.rtstruct is not None and case.roi is not None:
            gt = read_rtstruct_mask(folder / case.rtstruct, study, case.roi)
        regions = make_regions(study, REGION_RULES[case.name], gt)
        path = write_regions(regions, study, regions_path(annotations_root, case.name), overwrite)
        regions_figure(study, regions, path.parent / "check.png", case.name)
        if progress:
            volumes = {
                name: float((regions == v).sum()) * study.voxel_volume_ml
                for v, name in region_names().items()
            }
            progress(f"{path}: " + ", ".join(f"{k} {v:.0f} ml" for k, v in volumes.items()))
        written.append(path)
    return written


def regions_figure(study: Study, regions: np.ndarray, path: str | Path, title: str) -> Path:
    """PNG for checking a region map by eye: coronal and sagittal SUV MIPs with the regions'
    outlines (MIP of the labels), and the regions' volumes in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    names = region_names()
    values = sorted(names)
    colours = plt.get_cmap("tab10")(np.linspace(0, 1, len(values)))
    lut = np.zeros(max(values) + 1, dtype=int)
    for n, v in enumerate(values):
        lut[v] = n + 1
    cmap = ListedColormap([(0, 0, 0, 0), *colours])
    sx, sy, sz = study.spacing_mm
    fig, axes = plt.subplots(1, 2, figsize=(12, 10))
    for ax, axis, aspect in ((axes[0], 1, sz / sx), (axes[1], 0, sz / sy)):
        ax.imshow(study.pet.max(axis).T, origin="lower", cmap="gray_r", vmax=8, aspect=aspect)
        shown = lut[regions].max(axis).T.astype(float)
        ax.imshow(
            np.ma.masked_equal(shown, 0),
            origin="lower",
            cmap=cmap,
            alpha=0.45,
            vmin=0,
            vmax=len(values),
            aspect=aspect,
            interpolation="nearest",
        )
    axes[0].set_title("coronal MIP [i, k]")
    axes[1].set_title("sagittal MIP [j, k]")
    ml = study.voxel_volume_ml
    handles = [
        Patch(color=colours[n], label=f"{names[v]} {float((regions == v).sum()) * ml:.0f} ml")
        for n, v in enumerate(values)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=5)
    fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=50)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- metrics


@dataclass
class RealScanResult:
    """One method on one (possibly perturbed) real scan.

    Attributes:
        case: the case folder (whole body) or crop name.
        method: the segmenter's name.
        variant: ``unperturbed`` or the perturbation's name.
        fpv_ml: volume of predicted components (18-connectivity) touching no known disease (the
            GTV where labelled), autoPET's false-positive volume.
        fpv_by_region_ml: that volume split voxel by voxel over the annotated regions (plus
            ``unannotated``); sums to ``fpv_ml``.
        forbidden_touched: organs of :data:`FORBIDDEN_ORGANS` that a predicted voxel lies in.
        dice: Dice with the GTV (labelled cases), else None.
        found: whether a predicted voxel lies in the GTV (labelled cases), else None.
        pred_volume_ml: total predicted volume.
        seconds: time the segmenter took.
        disease_found: ``[found, total]`` pieces of known disease (26-connected; the GTV, or
            the annotated tumour and nodes) that a predicted voxel lies in; None without any.
            A filter that deletes a tumour shows here, where the FPV alone would improve.
    """

    case: str
    method: str
    variant: str
    fpv_ml: float
    fpv_by_region_ml: dict[str, float]
    forbidden_touched: tuple[str, ...]
    dice: float | None
    found: bool | None
    pred_volume_ml: float
    seconds: float = 0.0
    disease_found: list[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {
            "disease_found": self.disease_found,
            "case": self.case,
            "method": self.method,
            "variant": self.variant,
            "fpv_ml": self.fpv_ml,
            "fpv_by_region_ml": dict(self.fpv_by_region_ml),
            "forbidden_touched": list(self.forbidden_touched),
            "dice": self.dice,
            "found": self.found,
            "pred_volume_ml": self.pred_volume_ml,
            "seconds": self.seconds,
        }


def known_disease_found(
    pred: np.ndarray, regions: np.ndarray, gt: np.ndarray | None = None
) -> list[int] | None:
    """``[found, total]``: pieces of known disease (26-connected; ``gt`` where given, else the
    regions' :data:`KNOWN_DISEASE_LABEL`) holding at least one predicted voxel; None if none."""
    known = (np.asarray(gt) > 0) if gt is not None else np.asarray(regions) == KNOWN_DISEASE_LABEL
    labels, n = cc3d.connected_components(  # type: ignore[call-overload]
        np.ascontiguousarray(known, dtype=np.uint8), connectivity=26, return_N=True
    )
    if not n:
        return None
    hit = np.unique(labels[(np.asarray(pred) > 0) & known])
    return [int((hit > 0).sum()), int(n)]


def real_scan_metrics(
    pred: np.ndarray,
    regions: np.ndarray,
    voxel_volume_ml: float,
    gt: np.ndarray | None = None,
) -> tuple[float, dict[str, float], tuple[str, ...], float | None, bool | None, float]:
    """False-positive volume outside known disease, per region, and Dice where labelled.

    Args:
        pred: predicted mask (> 0 is lesion) on the regions' grid.
        regions: region map (organ indices, :data:`KNOWN_DISEASE_LABEL`, 0 unannotated).
        voxel_volume_ml: volume of one voxel.
        gt: lesion ground truth; when given it is the known disease (autoPET FPV outside it),
            else the regions' known-disease label is.

    Returns:
        ``(fpv_ml, fpv_by_region_ml, forbidden_touched, dice, found, pred_volume_ml)``.
    """
    pred_b = np.asarray(pred) > 0
    if pred_b.shape != regions.shape or (gt is not None and gt.shape != regions.shape):
        raise ValueError(f"shapes differ: pred {pred_b.shape}, regions {regions.shape}")
    known = (np.asarray(gt) > 0) if gt is not None else regions == KNOWN_DISEASE_LABEL
    labels = cc3d.connected_components(  # type: ignore[call-overload]
        np.ascontiguousarray(pred_b, dtype=np.uint8), connectivity=CONNECTIVITY
    )
    touched = np.unique(labels[known & pred_b])
    false_positive = pred_b & ~np.isin(labels, touched[touched > 0])
    fpv_ml = float(false_positive.sum()) * voxel_volume_ml
    names = region_names()
    counts = np.bincount(regions[false_positive].astype(np.intp), minlength=256)
    by_region = {UNANNOTATED: float(counts[0]) * voxel_volume_ml}
    for value, name in names.items():
        if counts[value]:
            by_region[name] = float(counts[value]) * voxel_volume_ml
    forbidden = tuple(
        o for o in FORBIDDEN_ORGANS if bool((pred_b & (regions == ORGAN_TO_INDEX[o])).any())
    )
    dice: float | None = None
    found: bool | None = None
    if gt is not None:
        metrics = scan_metrics(pred_b, known, voxel_volume_ml, connectivity=CONNECTIVITY)
        dice, found = float(metrics.dice), metrics.n_gt_detected > 0
    return fpv_ml, by_region, forbidden, dice, found, float(pred_b.sum()) * voxel_volume_ml


@dataclass
class OrganAgreement:
    """An anatomy-aware network's organ output against one annotated region of a real scan.

    Attributes:
        case: the whole-body case.
        organ: the organ (:data:`petflare.constants.ORGANS` name).
        annotated_ml: volume of the annotated region (0 when the scan has none).
        predicted_ml: volume the network labels as this organ.
        dice: Dice of the two (None when neither has a voxel).
        predicted_components: connected pieces (26-connectivity) of the predicted organ; one
            brain, one heart or one bladder predicted in dozens of places is not anatomy.
        largest_inside: share of the largest predicted piece that lies in the annotated region
            (None without either); low when the biggest "organ" is somewhere else.
    """

    case: str
    organ: str
    annotated_ml: float
    predicted_ml: float
    dice: float | None
    predicted_components: int
    largest_inside: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {
            "case": self.case,
            "organ": self.organ,
            "annotated_ml": self.annotated_ml,
            "predicted_ml": self.predicted_ml,
            "dice": self.dice,
            "predicted_components": self.predicted_components,
            "largest_inside": self.largest_inside,
        }


def organ_agreement(
    case: str, organs: np.ndarray, regions: np.ndarray, voxel_volume_ml: float
) -> list[OrganAgreement]:
    """Per organ, how the predicted organ map agrees with the annotated regions.

    Only the organs the annotations can judge are scored (every :data:`ORGANS` entry but
    ``background``); an organ neither annotated nor predicted is left out.

    Args:
        case: the case name (carried into the rows).
        organs: predicted organ labels (values index :data:`ORGANS`) on the regions' grid.
        regions: the annotated region map (organ indices, known disease, 0 unannotated).
        voxel_volume_ml: volume of one voxel.
    """
    organs = np.asarray(organs)
    if organs.shape != regions.shape:
        raise ValueError(f"shapes differ: organs {organs.shape}, regions {regions.shape}")
    rows = []
    for name in ORGANS[1:]:
        index = ORGAN_TO_INDEX[name]
        annotated = regions == index
        predicted = organs == index
        n_ann, n_pred = int(annotated.sum()), int(predicted.sum())
        if not n_ann and not n_pred:
            continue
        dice = 2.0 * float((annotated & predicted).sum()) / (n_ann + n_pred)
        labels, n = cc3d.connected_components(  # type: ignore[call-overload]
            np.ascontiguousarray(predicted, dtype=np.uint8), connectivity=26, return_N=True
        )
        inside = None
        if n and n_ann:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            largest = labels == int(np.argmax(sizes))
            inside = float((largest & annotated).sum()) / float(largest.sum())
        rows.append(
            OrganAgreement(
                case,
                name,
                n_ann * voxel_volume_ml,
                n_pred * voxel_volume_ml,
                dice,
                int(n),
                inside,
            )
        )
    return rows


# --------------------------------------------------------------------------- perturbations

#: A perturbation: the perturbed study, and a function taking a mask on the perturbed grid back
#: to the original grid (so that every variant is scored against the same annotations).
Perturbed = tuple[Study, Callable[[np.ndarray], np.ndarray]]
Perturbation = Callable[[Study], Perturbed]


def _same_grid(mask: np.ndarray) -> np.ndarray:
    return mask


def suv_scaled(factor: float) -> Perturbation:
    """Every SUV times ``factor`` (a calibration, weight or dose error)."""

    def apply(study: Study) -> Perturbed:
        return Study(pet=study.pet * np.float32(factor), affine=study.affine, meta=study.meta), (
            _same_grid
        )

    return apply


def resampled(spacing_mm: float) -> Perturbation:
    """The same field of view on isotropic ``spacing_mm`` voxels (voxel corners aligned).

    The SUV is linearly interpolated, after a Gaussian anti-aliasing filter (sigma
    ``(f - 1) / 2`` input voxels along axes whose voxels grow by ``f``); the prediction comes
    back to the input grid by nearest neighbour.
    """

    def apply(study: Study) -> Perturbed:
        old = np.asarray(study.spacing_mm)
        factors = spacing_mm / old
        shape = tuple(max(1, int(round(n / f))) for n, f in zip(study.shape, factors, strict=True))
        offsets = 0.5 * (factors - 1.0)
        sigma = np.maximum(factors - 1.0, 0.0) / 2.0
        pet = ndi.gaussian_filter(study.pet, sigma) if np.any(sigma > 0) else study.pet
        new_pet = ndi.affine_transform(
            pet, factors, offset=offsets, output_shape=shape, order=1, mode="nearest"
        )
        to_old = np.eye(4)
        to_old[:3, :3] = np.diag(factors)
        to_old[:3, 3] = offsets
        new_study = Study(
            pet=new_pet.astype(np.float32), affine=study.affine @ to_old, meta=study.meta
        )

        def back(mask: np.ndarray) -> np.ndarray:
            return ndi.affine_transform(
                np.asarray(mask, dtype=np.uint8),
                1.0 / factors,
                offset=-offsets / factors,
                output_shape=study.shape,
                order=0,
                mode="constant",
                cval=0,
            )

        return new_study, back

    return apply


def blurred(fwhm_mm: float) -> Perturbation:
    """An extra isotropic Gaussian blur of ``fwhm_mm`` (a scanner with a wider PSF)."""

    def apply(study: Study) -> Perturbed:
        sigma_vox = fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / np.asarray(study.spacing_mm)
        pet = ndi.gaussian_filter(study.pet, sigma_vox).astype(np.float32)
        return Study(pet=pet, affine=study.affine, meta=study.meta), _same_grid

    return apply


def noisy(cv_at_suv1: float, seed: int = 0) -> Perturbation:
    """Extra count-like noise: Gaussian with standard deviation ``cv_at_suv1 x sqrt(SUV)``
    (so ``cv_at_suv1`` of the signal at SUV 1), clipped at 0, fixed seed."""

    def apply(study: Study) -> Perturbed:
        rng = np.random.default_rng(seed)
        suv = np.clip(study.pet, 0.0, None)
        noise = rng.standard_normal(suv.shape).astype(np.float32) * np.float32(cv_at_suv1)
        pet = np.clip(suv + noise * np.sqrt(suv), 0.0, None).astype(np.float32)
        return Study(pet=pet, affine=study.affine, meta=study.meta), _same_grid

    return apply


#: The robustness battery of issue 32, in report order.
ROBUSTNESS_BATTERY: dict[str, Perturbation] = {
    "SUV x0.7": suv_scaled(0.7),
    "SUV x1.3": suv_scaled(1.3),
    "2 mm voxels": resampled(2.0),
    "3 mm voxels": resampled(3.0),
    "5 mm voxels": resampled(5.0),
    "blur +6 mm FWHM": blurred(6.0),
    "noise +15 % at SUV 1": noisy(0.15),
}
UNPERTURBED = "unperturbed"


# --------------------------------------------------------------------------- baselines


def fixed_suv_baseline(study: Study) -> np.ndarray:
    """Issue 32's first classical baseline: every voxel with SUV >= 2.5."""
    return fixed_threshold_mask(study, BASELINE_FIXED_SUV)


def percent_suvmax_baseline(study: Study) -> np.ndarray:
    """Issue 32's second classical baseline: 41 % of SUVmax, taken per connected region of
    SUV >= 2.5 (the EANM iso-contour, :func:`petflare.inference.baselines.percent_suvmax_mask`)."""
    return percent_suvmax_mask(study, BASELINE_SUVMAX_FRACTION, BASELINE_FIXED_SUV)


#: The baselines scored beside the model, by report name.
BASELINES: dict[str, Segmenter] = {
    "SUV>=2.5": fixed_suv_baseline,
    "41% SUVmax": percent_suvmax_baseline,
}


# --------------------------------------------------------------------------- training use

#: Strings that identify each real scan (and its patient) in a model folder's metadata.
CASE_ALIASES: dict[str, tuple[str, ...]] = {
    "sts001_wholebody_fdg_dicom": ("sts001", "sts_001"),
    "acrin_nsclc_042_fdg_dicom": ("acrin_nsclc_042", "acrin-nsclc-fdg-pet-042", "acrin042"),
    "chus052_fdg_dicom": ("chus052", "hn-chus-052", "chus_052"),
    **{c: (c.lower(), c.lower().replace("_", "")) for c in CROP_CASES},
}


#: Metadata keys whose contents name scans a model did NOT see (leave-one-background-out).
_NOT_SEEN_KEYS = ("exclude", "not_used", "unused", "held_out", "skipped", "left_out")


def _seen_strings(value: Any) -> list[str]:
    """Every key and string value in ``value``, except under keys of :data:`_NOT_SEEN_KEYS`."""
    if isinstance(value, Mapping):
        out = []
        for key, item in value.items():
            if any(word in str(key).lower() for word in _NOT_SEEN_KEYS):
                continue
            out += [str(key).lower(), *_seen_strings(item)]
        return out
    if isinstance(value, list | tuple):
        return [text for item in value for text in _seen_strings(item)]
    return [str(value).lower()] if isinstance(value, str) else []


def used_in_training(metadata: Mapping[str, Any], case: str) -> bool:
    """Whether a model folder's training metadata names this real scan or its patient.

    The whole ``training`` section is searched (data sources, hybrid backgrounds, extra sets),
    except lists of excluded / not-used backgrounds, so a model trained on a real background
    shows it here and its score on that scan is not out-of-sample.
    """
    training = metadata.get("training", {})
    aliases = CASE_ALIASES.get(case, (case.lower(),))
    recorded = training.get("real_backgrounds") if isinstance(training, Mapping) else None
    if isinstance(recorded, Mapping):  # written by the export from the hybrid set's record
        return any(
            alias == str(name).lower() for name in recorded.get("used", []) for alias in aliases
        )
    texts = _seen_strings(training)
    return any(alias in text for text in texts for alias in aliases)


def used_by_any(
    metadata: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None, case: str
) -> bool:
    """:func:`used_in_training` over one metadata record or several."""
    if metadata is None:
        return False
    records = [metadata] if isinstance(metadata, Mapping) else list(metadata)
    return any(used_in_training(record, case) for record in records)


# --------------------------------------------------------------------------- running


@dataclass
class CropResult:
    """Dice of each method on one IBSI crop."""

    case: str
    gtv_ml: float
    dice: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {"case": self.case, "gtv_ml": self.gtv_ml, "dice": dict(self.dice)}


@dataclass
class RealBenchmark:
    """Everything the report shows."""

    model: str
    methods: list[str]
    wholebody: list[RealScanResult] = field(default_factory=list)
    crops: list[CropResult] = field(default_factory=list)
    organs: list[OrganAgreement] = field(default_factory=list)
    used_in_training: dict[str, bool] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (NaN -> None)."""
        return _clean(
            {
                "schema_version": "1.0",
                "model": self.model,
                "methods": self.methods,
                "used_in_training": self.used_in_training,
                "descriptions": self.descriptions,
                "wholebody": [r.to_dict() for r in self.wholebody],
                "crops": [c.to_dict() for c in self.crops],
                "organs": [o.to_dict() for o in self.organs],
                "notes": self.notes,
                "seconds": self.seconds,
            }
        )


def benchmark_from_dict(payload: Mapping[str, Any]) -> RealBenchmark:
    """Rebuild a :class:`RealBenchmark` from its JSON (to re-render a report without rerunning)."""
    bench = RealBenchmark(
        model=str(payload["model"]),
        methods=list(payload["methods"]),
        used_in_training=dict(payload.get("used_in_training", {})),
        descriptions=dict(payload.get("descriptions", {})),
        notes=list(payload.get("notes", [])),
        seconds=float(payload.get("seconds", 0.0)),
    )
    for row in payload.get("wholebody", []):
        bench.wholebody.append(
            RealScanResult(
                case=row["case"],
                method=row["method"],
                variant=row["variant"],
                fpv_ml=float(row["fpv_ml"]),
                fpv_by_region_ml=dict(row["fpv_by_region_ml"]),
                forbidden_touched=tuple(row["forbidden_touched"]),
                dice=None if row["dice"] is None else float(row["dice"]),
                found=row["found"],
                pred_volume_ml=float(row["pred_volume_ml"]),
                seconds=float(row.get("seconds", 0.0)),
                disease_found=row.get("disease_found"),
            )
        )
    for row in payload.get("crops", []):
        dice = {k: (math.nan if v is None else float(v)) for k, v in row["dice"].items()}
        bench.crops.append(CropResult(row["case"], float(row["gtv_ml"]), dice))
    for row in payload.get("organs", []):
        bench.organs.append(
            OrganAgreement(
                case=row["case"],
                organ=row["organ"],
                annotated_ml=float(row["annotated_ml"]),
                predicted_ml=float(row["predicted_ml"]),
                dice=None if row["dice"] is None else float(row["dice"]),
                predicted_components=int(row["predicted_components"]),
                largest_inside=row["largest_inside"],
            )
        )
    return bench


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _timed(segment: Segmenter, study: Study) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    mask = np.asarray(segment(study))
    return mask, time.perf_counter() - start


def score_wholebody(
    case: str,
    study: Study,
    regions: np.ndarray,
    segmenters: Mapping[str, Segmenter],
    gt: np.ndarray | None = None,
    perturbations: Mapping[str, Perturbation] | None = None,
    baselines: Mapping[str, Segmenter] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[RealScanResult]:
    """Score segmenters on one whole-body scan and its perturbed variants.

    Args:
        case: the case name.
        study: the scan (SUV).
        regions: its region map (same grid).
        segmenters: named ``Study -> mask`` callables (the model, a filtered variant, ...);
            each is scored unperturbed and under every perturbation.
        gt: the GTV where labelled.
        perturbations: the robustness battery (default none).
        baselines: named callables scored on the unperturbed scan only.
        progress: called with a line before each prediction.

    Returns:
        One :class:`RealScanResult` per method and variant.
    """
    results = []
    ml = study.voxel_volume_ml

    def score(method: str, variant: str, mask: np.ndarray, seconds: float) -> None:
        fpv, by_region, forbidden, dice, found, volume = real_scan_metrics(mask, regions, ml, gt)
        results.append(
            RealScanResult(
                case,
                method,
                variant,
                fpv,
                by_region,
                forbidden,
                dice,
                found,
                volume,
                seconds,
                known_disease_found(mask, regions, gt),
            )
        )

    for method, segment in segmenters.items():
        if progress:
            progress(f"{case}: {method}")
        mask, seconds = _timed(segment, study)
        score(method, UNPERTURBED, mask, seconds)
        for variant, perturb in (perturbations or {}).items():
            if progress:
                progress(f"{case}: {method}, {variant}")
            perturbed, back = perturb(study)
            mask, seconds = _timed(segment, perturbed)
            score(method, variant, back(mask), seconds)
    for method, segment in (baselines or {}).items():
        mask, seconds = _timed(segment, study)
        score(method, UNPERTURBED, mask, seconds)
    return results


def score_crop(
    case: str, study: Study, gtv: np.ndarray, segmenters: Mapping[str, Segmenter]
) -> CropResult:
    """Dice of each segmenter on one crop with its GTV."""
    result = CropResult(case, float((gtv > 0).sum()) * study.voxel_volume_ml)
    for method, segment in segmenters.items():
        mask = np.asarray(segment(study))
        metrics = scan_metrics(mask, gtv, study.voxel_volume_ml, connectivity=CONNECTIVITY)
        result.dice[method] = float(metrics.dice)
    return result


def load_crop(case_dir: Path) -> tuple[Study, np.ndarray]:
    """An IBSI crop: ``PET_image.nii.gz`` (SUV) and ``PET_mask.nii.gz`` (GTV) on one grid."""
    pet, affine = load_nifti(case_dir / "PET_image.nii.gz")
    mask, mask_affine = load_nifti(case_dir / "PET_mask.nii.gz")
    if mask.shape != pet.shape or not np.allclose(affine, mask_affine, atol=1e-3):
        raise PetflareInputError(case_dir / "PET_mask.nii.gz", "not on the PET image's grid")
    study = Study(
        pet=pet.astype(np.float32),
        affine=affine,
        meta=StudyMeta(patient_id=case_dir.name, source={"pet": str(case_dir)}),
    )
    return study, (mask > 0).astype(np.uint8)


def load_wholebody(
    data_root: Path, annotations_root: Path, case: WholeBodyCase
) -> tuple[Study, np.ndarray, np.ndarray | None]:
    """A whole-body case: the SUV study, its region map, and its GTV where labelled."""
    folder = data_root / case.name
    study = read_real_pet(folder / case.image_dir)
    gt = None
    if case.rtstruct is not None and case.roi is not None:
        gt = read_rtstruct_mask(folder / case.rtstruct, study, case.roi)
    regions = load_regions(regions_path(annotations_root, case.name), study)
    return study, regions, gt


def run_benchmark(
    data_root: str | Path,
    annotations_root: str | Path,
    segmenters: Mapping[str, Segmenter],
    *,
    model_name: str = "",
    metadata: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    descriptions: Mapping[str, str] | None = None,
    perturbations: Mapping[str, Perturbation] | None = None,
    cases: Sequence[WholeBodyCase] = WHOLEBODY_CASES,
    crops: Sequence[str] = CROP_CASES,
    organ_map: Callable[[Study], np.ndarray | None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> RealBenchmark:
    """Run the whole benchmark.

    Args:
        data_root: the real-data folder (``../shared/data/real``).
        annotations_root: ``annotations/real`` (region maps).
        segmenters: the methods under test (e.g. ``{"model": predictor.predict}``); every
            callable ``Study -> mask`` can be scored, so a post-processed variant is one entry.
        model_name: shown in the report.
        metadata: the model folder's ``metadata.json`` (for the "used in training" column), or
            several (a folder and its site network: a scan either saw counts as seen).
        descriptions: one line per method for the report.
        perturbations: the robustness battery (default :data:`ROBUSTNESS_BATTERY`).
        cases: whole-body cases to score (those whose folder is missing are skipped, noted).
        crops: IBSI crop names under ``ibsi_sts_crops``.
        organ_map: an anatomy-aware network's organ output (``Study -> organ labels``); each
            whole-body scan's map is scored against its annotated regions
            (:func:`organ_agreement`).
        progress: called with a line per step.

    Raises:
        PetflareInputError: the data folder is missing, or a region map is missing or wrong.
    """
    start = time.perf_counter()
    data_root, annotations_root = Path(data_root), Path(annotations_root)
    if not data_root.is_dir():
        raise PetflareInputError(data_root, "real-data folder not found")
    battery = ROBUSTNESS_BATTERY if perturbations is None else perturbations
    bench = RealBenchmark(model=model_name, methods=[*segmenters, *BASELINES])
    bench.descriptions = {
        **dict(descriptions or {}),
        "SUV>=2.5": "fixed threshold SUV >= 2.5",
        "41% SUVmax": "41 % of SUVmax per region of SUV >= 2.5",
    }
    for case in cases:
        if not (data_root / case.name).is_dir():
            bench.notes.append(f"{case.name}: not found under {data_root}; skipped")
            continue
        if progress:
            progress(f"reading {case.name}")
        study, regions, gt = load_wholebody(data_root, annotations_root, case)
        bench.notes.append(f"{case.name}: {study.meta.source.get('suv_conversion', '')}")
        bench.used_in_training[case.name] = used_by_any(metadata, case.name)
        bench.wholebody += score_wholebody(
            case.name, study, regions, segmenters, gt, battery, BASELINES, progress
        )
        organs = organ_map(study) if organ_map is not None else None
        if organs is not None:
            bench.organs += organ_agreement(case.name, organs, regions, study.voxel_volume_ml)
    crop_root = data_root / "ibsi_sts_crops"
    for name in crops:
        if not (crop_root / name).is_dir():
            bench.notes.append(f"ibsi_sts_crops/{name}: not found; skipped")
            continue
        if progress:
            progress(f"crop {name}")
        study, gtv = load_crop(crop_root / name)
        bench.used_in_training[name] = used_by_any(metadata, name)
        bench.crops.append(score_crop(name, study, gtv, {**segmenters, **BASELINES}))
    bench.seconds = time.perf_counter() - start
    return bench


# --------------------------------------------------------------------------- report

#: Issue 32 targets on the real data.
TARGET_FPV_ML = 50.0
#: A perturbed FPV this close (ml) to the unperturbed one is within tolerance whatever the
#: percentage (a few voxels on a scan with ~0 ml must not fail it).
ROBUSTNESS_FPV_FLOOR_ML = 1.0


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _yes(flag: bool | None) -> str:
    return "n/a" if flag is None else ("yes" if flag else "no")


def _regions_text(by_region: Mapping[str, float], min_ml: float = 0.05) -> str:
    items = sorted(((v, k) for k, v in by_region.items() if v >= min_ml), reverse=True)
    return ", ".join(f"{k} {v:.1f}" for v, k in items) or "none"


def _pieces(found: list[int] | None) -> str:
    return "n/a" if found is None else f"{found[0]} of {found[1]}"


def _wholebody_target(r: RealScanResult) -> str:
    """Issue 32's target: labelled scan (STS_001) sarcoma found and FPV <= 50 ml; unlabelled
    scans FPV outside known disease <= 50 ml and nothing in brain, bladder or myocardium."""
    if r.found is not None:
        ok = r.found and r.fpv_ml <= TARGET_FPV_ML
        what = f"found, FPV <= {TARGET_FPV_ML:g} ml"
    else:  # the definition; "known disease found" is its own column
        ok = r.fpv_ml <= TARGET_FPV_ML and not r.forbidden_touched
        what = f"FPV <= {TARGET_FPV_ML:g} ml, none in brain/bladder/myocardium"
    return f"{'met' if ok else 'NOT met'} ({what})"


def within_tolerance(
    value: float | None, reference: float | None, floor: float = 0.0
) -> bool | None:
    """Whether ``value`` is within :data:`ROBUSTNESS_TOLERANCE` of ``reference`` (or within
    ``floor`` in absolute terms); None when either is undefined."""
    if (
        value is None
        or reference is None
        or not (math.isfinite(value) and math.isfinite(reference))
    ):
        return None
    return abs(value - reference) <= max(ROBUSTNESS_TOLERANCE * abs(reference), floor)


def _relative(value: float | None, reference: float | None) -> str:
    if value is None or reference is None or not math.isfinite(value) or not reference:
        return "n/a"
    return f"{100.0 * (value - reference) / abs(reference):+.0f} %"


def report_markdown(bench: RealBenchmark, command: str, context: Sequence[str] = ()) -> str:
    """The results as markdown: whole-body table, crops table, robustness table, notes."""
    tested = [m for m in bench.methods if m not in BASELINES]
    lines = [
        "# Real FDG-PET benchmark (outside the generator)",
        "",
        f"Model folder: `{bench.model}`. Regenerate with:",
        "",
        "```",
        command,
        "```",
        "",
        *context,
        f"Whole benchmark: {bench.seconds:.0f} s.",
        "",
        "Methods: "
        + "; ".join(f"**{m}**: {bench.descriptions.get(m, m)}" for m in bench.methods)
        + ".",
        "",
        "## Whole-body scans",
        "",
        "FPV: volume of predicted components (18-connectivity) that touch no known disease "
        "(STS_001: the RTSTRUCT GTV_Mass; ACRIN-042 and CHUS-052: the annotated tumour and "
        "nodes), split over the annotated physiological regions (`annotations/real/`).",
        "",
        "| scan | used in training | method | sarcoma found | known disease found | Dice | "
        "FPV outside known disease (ml) | FPV by region (ml) | in brain / bladder / myocardium "
        "| issue-32 target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in bench.wholebody:
        if r.variant != UNPERTURBED:
            continue
        target = _wholebody_target(r) if r.method in tested else ""
        lines.append(
            f"| {r.case} | {_yes(bench.used_in_training.get(r.case))} | {r.method} | "
            f"{_yes(r.found)} | {_pieces(r.disease_found)} | {_fmt(r.dice)} | {r.fpv_ml:.1f} | "
            f"{_regions_text(r.fpv_by_region_ml)} | {', '.join(r.forbidden_touched) or 'none'} | "
            f"{target} |"
        )
    if bench.crops:
        lines += [
            "",
            "## IBSI soft-tissue-sarcoma crops (SUV, GTV_Mass)",
            "",
            "| crop | used in training | GTV (ml) | "
            + " | ".join(f"Dice {m}" for m in bench.methods)
            + " |",
            "|---|---|---|" + "---|" * len(bench.methods),
        ]
        for c in bench.crops:
            lines.append(
                f"| {c.case} | {_yes(bench.used_in_training.get(c.case))} | {c.gtv_ml:.1f} | "
                + " | ".join(_fmt(c.dice.get(m), 3) for m in bench.methods)
                + " |"
            )
        means = {m: float(np.mean([c.dice[m] for c in bench.crops])) for m in bench.methods}
        lines.append(
            "| **mean** | | | " + " | ".join(f"**{means[m]:.3f}**" for m in bench.methods) + " |"
        )
        lines.append("")
        for m in tested:
            ok = all(means[m] > means[b] for b in BASELINES)
            lines.append(
                f"- {m}: mean Dice above both classical baselines: {'met' if ok else 'NOT met'}."
            )
    robust = [r for r in bench.wholebody if r.variant != UNPERTURBED]
    if robust:
        base = {(r.case, r.method): r for r in bench.wholebody if r.variant == UNPERTURBED}
        lines += [
            "",
            "## Robustness battery (whole-body scans)",
            "",
            f"Each perturbed scan against the unperturbed one; within {ROBUSTNESS_TOLERANCE:.0%}: "
            f"|change| <= 20 % (FPV: or <= {ROBUSTNESS_FPV_FLOOR_ML:g} ml). Predictions on "
            "resampled grids are mapped back to the original grid (nearest neighbour) and scored "
            "against the same annotations.",
            "",
            "| scan | method | variant | FPV (ml) | FPV change | Dice | Dice change | "
            "within 20 % |",
            "|---|---|---|---|---|---|---|---|",
        ]
        n_ok = n_all = 0
        for r in robust:
            ref = base[(r.case, r.method)]
            fpv_ok = within_tolerance(r.fpv_ml, ref.fpv_ml, ROBUSTNESS_FPV_FLOOR_ML)
            dice_ok = within_tolerance(r.dice, ref.dice)
            ok = bool(fpv_ok) and dice_ok is not False
            n_ok, n_all = n_ok + ok, n_all + 1
            lines.append(
                f"| {r.case} | {r.method} | {r.variant} | {r.fpv_ml:.1f} | "
                f"{_relative(r.fpv_ml, ref.fpv_ml)} | {_fmt(r.dice)} | "
                f"{_relative(r.dice, ref.dice)} | {'yes' if ok else 'NO'} |"
            )
        lines += ["", f"Within 20 %: {n_ok} of {n_all} perturbed scans."]
    if bench.organs:
        lines += [
            "",
            "## Organ output against the annotated regions",
            "",
            "The anatomy-aware network's organ map (its most probable organ per voxel) beside "
            "the regions annotated in `annotations/real/` (semi-automatic, checked by eye; they "
            "mark the physiological uptake, so a low Dice for liver or bowel partly reflects "
            "what was annotated). Pieces: 26-connected components of the predicted organ; "
            "largest inside: share of the largest predicted piece in the annotated region.",
            "",
            "| scan | used in training | organ | annotated (ml) | predicted (ml) | Dice | "
            "pieces | largest inside |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for o in bench.organs:
            lines.append(
                f"| {o.case} | {_yes(bench.used_in_training.get(o.case))} | {o.organ} | "
                f"{o.annotated_ml:.0f} | {o.predicted_ml:.0f} | {_fmt(o.dice)} | "
                f"{o.predicted_components} | {_fmt(o.largest_inside)} |"
            )
    if bench.notes:
        lines += ["", "## Notes", "", *(f"- {n}" for n in bench.notes)]
    return "\n".join(lines) + "\n"


def write_report(
    bench: RealBenchmark,
    markdown_path: str | Path,
    command: str,
    overwrite: bool = False,
    context: Sequence[str] = (),
) -> tuple[Path, Path]:
    """Write the markdown report and its JSON (same name, ``.json``) atomically."""
    markdown_path = Path(markdown_path)
    json_path = markdown_path.with_suffix(".json")
    payload = {**bench.to_dict(), "command": command, "context": list(context)}
    atomic_write_text(json_path, json.dumps(payload, indent=1) + "\n", overwrite=overwrite)
    atomic_write_text(markdown_path, report_markdown(bench, command, context), overwrite=overwrite)
    return markdown_path, json_path


def rerender_report(markdown_path: str | Path) -> Path:
    """Rewrite a report's markdown from the JSON beside it (same numbers, current layout)."""
    markdown_path = Path(markdown_path)
    json_path = markdown_path.with_suffix(".json")
    if not json_path.is_file():
        raise PetflareInputError(json_path, "benchmark JSON not found; run the benchmark first")
    payload = json.loads(json_path.read_text())
    bench = benchmark_from_dict(payload)
    text = report_markdown(bench, str(payload.get("command", "")), payload.get("context", []))
    return atomic_write_text(markdown_path, text, overwrite=True)


# --------------------------------------------------------------------------- command line

REPO = project_dir()
DEFAULT_DATA = REPO.parent / "shared" / "data" / "real"
DEFAULT_OUT = REPO / "docs" / "reports" / "bench_real.md"
#: Method name of the physiology-filtered variant (networks with an organ output only).
FILTERED = "model+physiology filter"


def _shown(path: Path) -> str:
    """A path relative to the repository when inside it (portable report), else absolute."""
    resolved = path.resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(resolved)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Real FDG-PET benchmark: a model folder on scans from outside the generator."
    )
    p.add_argument(
        "--model",
        type=Path,
        default=default_model_dir(),
        help="model folder (default: the default folder)",
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="real-data folder")
    p.add_argument("--annotations", type=Path, default=REPO / ANNOTATIONS_DIR, help="region maps")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown report (+ .json)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for the network")
    p.add_argument("--no-robustness", action="store_true", help="skip the perturbed scans")
    p.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite the markdown from the JSON beside --out (no scoring)",
    )
    p.add_argument(
        "--make-annotations", action="store_true", help="rebuild the region maps and stop"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """``scripts/benchmark_real.py``: run the benchmark (or rebuild annotations / re-render)."""
    args = _parser().parse_args(argv)

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        if args.make_annotations:
            make_annotations(args.data, args.annotations, args.overwrite, say)
            return 0
        if args.render_only:
            print(f"wrote {rerender_report(args.out)}")
            return 0
        import torch

        from petflare.inference.predictor import Predictor

        if not args.overwrite and args.out.exists():
            raise PetflareInputError(args.out, "exists; pass --overwrite to replace it")
        torch.set_num_threads(args.threads)
        # The network's own mask, without the physiology filter even where the folder enables it.
        predictor = Predictor.from_folder(args.model, device="cpu", physiology_filter=False)
        segmenters = {"model": predictor.predict}
        descriptions = {"model": f"model folder {_shown(args.model)}, physiology filter off"}
        if predictor.has_organs:  # an organ map (own or site network): score the filter apart
            filtered = Predictor.from_folder(args.model, device="cpu", physiology_filter=True)
            segmenters[FILTERED] = filtered.predict
            descriptions[FILTERED] = "the same network with its physiological-uptake filter"
        bench = run_benchmark(
            args.data,
            args.annotations,
            segmenters,
            model_name=_shown(args.model),
            metadata=predictor.networks_metadata,
            descriptions=descriptions,
            perturbations={} if args.no_robustness else None,
            organ_map=predictor.predict_organs if predictor.has_organs else None,
            progress=say,
        )
    except PetflareInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    command = "python scripts/benchmark_real.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    context = [
        f"Run {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()} CPU, "
        f"{args.threads} threads, torch {torch.__version__}.",
    ]
    md, js = write_report(bench, args.out, command, args.overwrite, context)
    print(f"wrote {md} and {js} ({bench.seconds:.0f} s)")
    return 0
