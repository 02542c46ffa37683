"""Match lesions between time points: persisting, new (follow-up) and resolved (baseline).

Follow-up lesions are first mapped into the baseline grid with the registration transform.
A follow-up lesion persists when it overlaps a baseline lesion (the overlap is at least
``min_overlap_fraction`` of the smaller of the two), or, failing any overlap, when its mapped
centroid lies within ``tolerance_mm`` of a baseline lesion's centroid (a lesion that shrank
or moved a little). Many-to-many matches (merges, splits) are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from petflare.quant.report import LesionMatch, LesionMetrics

PERSISTING = "persisting"
NEW = "new"
RESOLVED = "resolved"


@dataclass(frozen=True)
class MatchingConfig:
    """Thresholds for lesion correspondence."""

    min_overlap_fraction: float = 0.1
    tolerance_mm: float = 15.0


def map_points_to_baseline(matrix_ras: np.ndarray, points_mm: np.ndarray) -> np.ndarray:
    """Follow-up world points -> baseline world points (inverse of the baseline->follow-up map)."""
    inv = np.linalg.inv(np.asarray(matrix_ras, dtype=np.float64))
    pts = np.atleast_2d(np.asarray(points_mm, dtype=np.float64))
    return pts @ inv[:3, :3].T + inv[:3, 3]


def match_lesions(
    baseline_labels: np.ndarray,
    followup_labels_on_baseline: np.ndarray,
    baseline_lesions: list[LesionMetrics],
    followup_lesions: list[LesionMetrics],
    matrix_ras: np.ndarray,
    config: MatchingConfig | None = None,
) -> list[LesionMatch]:
    """Status of every lesion at both time points.

    Args:
        baseline_labels: baseline instance labels (baseline grid).
        followup_labels_on_baseline: follow-up instance labels resampled onto the baseline
            grid (nearest neighbour) with the registration transform.
        baseline_lesions, followup_lesions: the per-lesion metrics (for centroids and sizes).
        matrix_ras: baseline-world -> follow-up-world 4x4 matrix from the registration.
        config: matching thresholds.

    Returns:
        One :class:`LesionMatch` per follow-up lesion (``timepoint="followup"``) then per
        baseline lesion (``timepoint="baseline"``).
    """
    cfg = config or MatchingConfig()
    b = np.asarray(baseline_labels, dtype=np.int64)
    f = np.asarray(followup_labels_on_baseline, dtype=np.int64)
    both = (b > 0) & (f > 0)
    pair_counts: dict[tuple[int, int], int] = {}
    if both.any():
        pairs, counts = np.unique(np.stack([f[both], b[both]], axis=1), axis=0, return_counts=True)
        pair_counts = {(int(p[0]), int(p[1])): int(c) for p, c in zip(pairs, counts, strict=True)}
    n_base = np.bincount(b.ravel())
    n_fmap = np.bincount(f.ravel())

    base_ids = [les.lesion_id for les in baseline_lesions]
    base_centroids = (
        np.array([les.centroid_mm for les in baseline_lesions]) if baseline_lesions else None
    )
    base_links: dict[int, list[int]] = {i: [] for i in base_ids}
    out: list[LesionMatch] = []
    for les in followup_lesions:
        fid = les.lesion_id
        mapped = map_points_to_baseline(matrix_ras, np.array(les.centroid_mm))[0]
        matched: list[int] = []
        overlap_total = 0
        for (pf, pb), count in pair_counts.items():
            if pf != fid:
                continue
            smaller = min(n_base[pb], n_fmap[fid] if fid < len(n_fmap) else 0)
            if smaller > 0 and count / smaller >= cfg.min_overlap_fraction:
                matched.append(pb)
                overlap_total += count
        distance = None
        if base_centroids is not None:
            dists = np.linalg.norm(base_centroids - mapped, axis=1)
            nearest = int(np.argmin(dists))
            distance = float(dists[nearest])
            if not matched and distance <= cfg.tolerance_mm:
                matched.append(base_ids[nearest])
        matched.sort()
        for pb in matched:
            base_links[pb].append(fid)
        out.append(
            LesionMatch(
                timepoint="followup",
                lesion_id=fid,
                status=PERSISTING if matched else NEW,
                matched_ids=matched,
                overlap_voxels=overlap_total,
                distance_mm=distance,
            )
        )
    for les in baseline_lesions:
        links = sorted(base_links[les.lesion_id])
        overlap = sum(pair_counts.get((fid, les.lesion_id), 0) for fid in links)
        out.append(
            LesionMatch(
                timepoint="baseline",
                lesion_id=les.lesion_id,
                status=PERSISTING if links else RESOLVED,
                matched_ids=links,
                overlap_voxels=overlap,
                distance_mm=None,
            )
        )
    return out
