"""Post-processing of predicted lesion masks."""

from __future__ import annotations

import math

import cc3d
import numpy as np

from petflare.constants import ORGAN_TO_INDEX, PHYSIOLOGICAL_SITES


def remove_small_components(
    mask: np.ndarray,
    voxel_volume_ml: float,
    min_volume_ml: float,
    connectivity: int = 18,
) -> np.ndarray:
    """Remove connected components smaller than ``min_volume_ml``.

    Tiny isolated specks are mostly noise at PET resolution; the autoPET false-positive volume
    counts them. Components are found with ``connectivity`` (6, 18 or 26; autoPET uses 18).

    Args:
        mask: binary (or > 0) 3D mask.
        voxel_volume_ml: volume of one voxel in ml.
        min_volume_ml: components with a volume below this are removed; 0 keeps everything.

    Returns:
        uint8 mask of the same shape with the small components set to 0.
    """
    binary = np.asarray(mask) > 0
    if binary.ndim != 3:
        raise ValueError(f"mask must be 3D, got shape {binary.shape}")
    if not voxel_volume_ml > 0:
        raise ValueError(f"voxel_volume_ml must be positive, got {voxel_volume_ml}")
    if min_volume_ml <= 0 or not binary.any():
        return binary.astype(np.uint8)
    # smallest kept size in voxels; the epsilon guards 0.5 ml / 0.125 ml = 3.9999999
    min_voxels = math.ceil(min_volume_ml / voxel_volume_ml - 1e-9)
    if connectivity not in (6, 18, 26):
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    labels = cc3d.connected_components(binary, connectivity=connectivity)  # type: ignore[call-overload]
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels].astype(np.uint8)


#: Site of a lesion outside every organ the network knows.
NO_ORGAN_SITE = "other"


def component_sites(
    instances: np.ndarray, organs: np.ndarray, min_fraction: float = 0.5
) -> dict[int, str]:
    """The site of each labelled component: the organ (``petflare.constants.ORGANS``) holding
    at least ``min_fraction`` of its voxels, else :data:`NO_ORGAN_SITE`.

    Args:
        instances: components labelled 1..N (0 background), 3D.
        organs: organ label map of the same grid (values index ORGANS; others are ignored).
        min_fraction: share of the component's voxels that must lie in one organ.
    """
    from petflare.constants import ORGANS

    instances = np.asarray(instances)
    organs = np.asarray(organs)
    if instances.shape != organs.shape:
        raise ValueError(f"instances {instances.shape} and organs {organs.shape} differ")
    inside = instances > 0
    ids = instances[inside].astype(np.int64)
    organ_ids = organs[inside].astype(np.int64)
    valid = organ_ids < len(ORGANS)
    counts = np.zeros((int(instances.max(initial=0)) + 1, len(ORGANS)), dtype=np.int64)
    np.add.at(counts, (ids[valid], organ_ids[valid]), 1)
    sizes = np.bincount(ids, minlength=counts.shape[0])
    sites: dict[int, str] = {}
    for lesion in np.unique(ids):
        row = counts[lesion].copy()
        row[0] = 0  # "background" is no site
        best = int(np.argmax(row))
        share = row[best] / max(int(sizes[lesion]), 1)
        sites[int(lesion)] = ORGANS[best] if best and share >= min_fraction else NO_ORGAN_SITE
    return sites


def remove_physiological_components(
    mask: np.ndarray,
    organs: np.ndarray,
    sites: tuple[str, ...] = PHYSIOLOGICAL_SITES,
    min_fraction: float = 0.5,
    connectivity: int = 18,
) -> tuple[np.ndarray, dict[str, int]]:
    """Drop the predicted components that lie in a physiological-uptake organ.

    Returns:
        The uint8 mask without them, and how many components were dropped per site.
    """
    binary = np.asarray(mask) > 0
    labels = cc3d.connected_components(binary, connectivity=connectivity)  # type: ignore[call-overload]
    found = component_sites(labels, organs, min_fraction)
    dropped = [lesion for lesion, site in found.items() if site in sites]
    keep = binary & ~np.isin(labels, dropped)
    counts: dict[str, int] = {}
    for lesion in dropped:
        counts[found[lesion]] = counts.get(found[lesion], 0) + 1
    return keep.astype(np.uint8), counts


#: Pieces of each physiological organ an organ map may hold: one brain, one heart, one bladder,
#: two kidneys. A hot mass elsewhere that a network also calls one of these organs (a necrotic
#: thigh sarcoma called "bladder" or "myocardium" beside the real ones) is a second piece.
ORGAN_PIECES: dict[str, int] = {"brain": 1, "myocardium": 1, "kidney": 2, "bladder": 1}

#: A piece at least this share of its organ's largest piece competes for the bladder's place.
BLADDER_CANDIDATE_SHARE = 0.25


def plausible_organs(organs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The organ map with each physiological organ cut to the pieces anatomy allows.

    Brain, myocardium and kidneys keep their largest one or two 26-connected pieces
    (:data:`ORGAN_PIECES`). The bladder keeps, of its pieces at least
    :data:`BLADDER_CANDIDATE_SHARE` of the largest, the one nearest the head (world z of
    ``affine``): urine fills the bladder, and what lies below it in the thighs is not urine. The
    other pieces become background (0), so nothing in them is taken for physiology.

    Args:
        organs: organ label map (``petflare.constants.ORGANS`` indices), 3D.
        affine: its voxel-to-world (RAS or LPS: z runs feet to head) affine.
    """
    out = np.array(organs, copy=True)
    affine = np.asarray(affine, dtype=np.float64)
    for name, keep in ORGAN_PIECES.items():
        index = ORGAN_TO_INDEX[name]
        labels, n = cc3d.connected_components(  # type: ignore[call-overload]
            np.ascontiguousarray(out == index, dtype=np.uint8), connectivity=26, return_N=True
        )
        if n <= keep:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        if name == "bladder":
            candidates = np.flatnonzero(sizes >= BLADDER_CANDIDATE_SHARE * sizes.max()) + 1
            centroids = cc3d.statistics(labels)["centroids"]
            heights = [float(affine[2, :3] @ centroids[c] + affine[2, 3]) for c in candidates]
            kept = [int(candidates[int(np.argmax(heights))])]
        else:
            kept = [int(i) + 1 for i in np.argsort(-sizes, kind="stable")[:keep]]
        out[(labels > 0) & ~np.isin(labels, kept)] = 0
    return out
