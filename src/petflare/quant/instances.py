"""Lesion instances from a binary or instance-labelled mask (connected components with cc3d)."""

from __future__ import annotations

import cc3d
import numpy as np

#: Connectivities cc3d supports in 3D (faces, faces+edges, faces+edges+corners).
VALID_CONNECTIVITY = (6, 18, 26)


def is_instance_mask(mask: np.ndarray) -> bool:
    """True when the mask carries more than one distinct non-zero label."""
    mask = np.asarray(mask)
    return int(np.unique(mask[mask != 0]).size) > 1


def lesion_instances(
    mask: np.ndarray, connectivity: int = 26, keep_instances: bool = True
) -> np.ndarray:
    """Label lesions 1..N (uint32) from a binary or instance mask.

    A binary mask is split into connected components. An instance mask (several non-zero
    labels) keeps its labelling when ``keep_instances`` is True (a lesion annotated in two
    pieces stays one lesion; labels are renumbered to 1..N in increasing order of the input
    label); otherwise every label is split into its own connected components. Components are
    numbered in the deterministic scan order cc3d uses.

    Args:
        mask: 3D integer or boolean array, 0 = background.
        connectivity: 6, 18 or 26 (26 by default; the autoPET metrics use 18).
        keep_instances: keep an existing instance labelling instead of recomputing components.
    """
    if connectivity not in VALID_CONNECTIVITY:
        raise ValueError(f"connectivity must be one of {VALID_CONNECTIVITY}, got {connectivity}")
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3D, got shape {mask.shape}")
    # Checks and labels read the non-zero voxels only (a whole-body mask is mostly zeros).
    foreground = mask != 0
    values = mask[foreground]
    if mask.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            raise ValueError("mask must hold integer labels")
    if mask.dtype.kind != "b" and np.any(values < 0):
        raise ValueError("mask must not hold negative labels")
    distinct = np.unique(values)
    if keep_instances and distinct.size > 1:
        lut = np.zeros(int(distinct.max()) + 1, dtype=np.uint32)
        lut[distinct.astype(np.int64)] = np.arange(1, distinct.size + 1, dtype=np.uint32)
        out = np.zeros(mask.shape, dtype=np.uint32)
        out[foreground] = lut[values.astype(np.int64)]
        return out
    if distinct.size > 1:
        out = cc3d.connected_components(
            mask.astype(np.uint32),
            connectivity=connectivity,  # type: ignore[call-overload]
        )
    else:
        out = cc3d.connected_components(
            foreground,
            connectivity=connectivity,  # type: ignore[call-overload]
        )
    return np.asarray(out, dtype=np.uint32)
