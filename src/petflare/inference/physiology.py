"""Physiology-aware change logic for pairs (issue 34).

An anatomy-aware network gives every predicted lesion a site (its organ output). In a pair, the
predicted components that lie in a physiological-uptake organ (brain, myocardium, kidney,
bladder: :data:`~petflare.inference.postprocess.PHYSIOLOGICAL_SITES`) are not disease: the
heart's uptake halving, the bladder filling or the brain cortex segmented at one visit only must
not read as response, flare or new lesions. They are taken out of the lesions the pair compares
(matching, disease change, criteria, rules and head all see disease lesions only), measured per
site at both visits, and named in the pattern's evidence as physiological changes that were not
counted. A "new lesion" therefore needs a focal lesion at a non-physiological site.

Without an organ output (a lesion-only network) nothing changes: there are no sites.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from petflare.inference.postprocess import NO_ORGAN_SITE, PHYSIOLOGICAL_SITES
from petflare.io.study import Study


@dataclass
class DiseaseSplit:
    """One scan's predicted components split into disease and physiological uptake.

    Attributes:
        instances: the disease lesions, labelled 1..N in the order of the input labels.
        sites: the site of each disease lesion (None when the network gives no sites).
        physiological: per physiological site, what was segmented there and taken out
            (``components``, ``volume_ml``, ``suv_max``, ``suv_mean``).
    """

    instances: np.ndarray
    sites: dict[int, str] | None
    physiological: dict[str, dict[str, float]] = field(default_factory=dict)


def split_physiological(
    study: Study,
    instances: np.ndarray,
    sites: Mapping[int, str] | None,
    physiological_sites: tuple[str, ...] = PHYSIOLOGICAL_SITES,
) -> DiseaseSplit:
    """Take the components at physiological sites out of ``instances`` and measure them.

    Args:
        study: the scan (its PET in SUV measures the removed uptake).
        instances: predicted lesions labelled 1..N (0 background), on the study's grid.
        sites: each lesion's site (:func:`~petflare.inference.postprocess.component_sites`);
            None (no organ output) keeps every lesion.
        physiological_sites: the sites whose uptake is physiological.
    """
    instances = np.asarray(instances)
    if sites is None:
        return DiseaseSplit(instances, None)
    if not any(site in physiological_sites for site in sites.values()):
        return DiseaseSplit(instances, dict(sites))  # the usual case: no pass over the volume
    present = [int(i) for i in np.unique(instances) if i > 0]
    removed = [i for i in present if sites.get(i) in physiological_sites]
    if not removed:
        return DiseaseSplit(instances, dict(sites))
    out = set(removed)
    kept = [i for i in present if i not in out]
    lookup = np.zeros(int(instances.max(initial=0)) + 1, dtype=instances.dtype)
    for new, old in enumerate(kept, start=1):
        lookup[old] = new
    disease = lookup[instances]
    pet = np.asarray(study.pet)
    physiological: dict[str, dict[str, float]] = {}
    for site in sorted({sites[i] for i in removed}):
        ids = [i for i in removed if sites[i] == site]
        voxels = np.isin(instances, ids)
        values = pet[voxels]
        physiological[site] = {
            "components": float(len(ids)),
            "volume_ml": round(float(voxels.sum()) * study.voxel_volume_ml, 2),
            "suv_max": round(float(values.max()), 2),
            "suv_mean": round(float(values.mean()), 2),
        }
    kept_sites = {new: sites.get(old, NO_ORGAN_SITE) for new, old in enumerate(kept, start=1)}
    return DiseaseSplit(disease, kept_sites, physiological)


def physiology_evidence(
    baseline: Mapping[str, Mapping[str, float]], followup: Mapping[str, Mapping[str, float]]
) -> list[str]:
    """One evidence line per physiological site segmented at either visit."""

    def describe(entry: Mapping[str, float] | None) -> str:
        if entry is None:
            return "not segmented"
        return f"SUVmax {entry['suv_max']:.1f}, {entry['volume_ml']:.1f} ml"

    lines = []
    for site in sorted(set(baseline) | set(followup)):
        lines.append(
            f"{site}: {describe(baseline.get(site))} -> {describe(followup.get(site))} "
            "(physiological uptake; not counted as disease change)"
        )
    return lines


def with_evidence(evidence: Any, lines: list[str]) -> Any:
    """``evidence`` (the rules' list, or the head's dict of explanations) with ``lines`` added."""
    if not lines:
        return evidence
    if evidence is None:
        return list(lines)
    if isinstance(evidence, Mapping):
        out = dict(evidence)
        out["explanations"] = [*list(out.get("explanations") or []), *lines]
        return out
    if isinstance(evidence, (list, tuple)):
        return [*evidence, *lines]
    return [str(evidence), *lines]
