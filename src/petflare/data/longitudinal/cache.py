"""The on-disk feature cache: keys, stamps and the worker processes that fill it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from petflare.data.longitudinal.mask_sources import MaskSource


def cache_key(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def file_stamp(path: str | None) -> list[Any] | None:
    if path is None:
        return None
    p = Path(path)
    return [str(p.resolve()), p.stat().st_size, int(p.stat().st_mtime)]


def weights_digest(net: nn.Module) -> str:
    """Short hash of a network's weights (part of the feature cache key)."""
    h = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


#: One unit of cached work: (manifest row, number of mask variants, mask source, seed).
RowTask = tuple[Mapping[str, Any], int, str | MaskSource, int]


def present(paths: Sequence[Path]) -> bool:
    """Whether a row's cached samples are all on disk."""
    return all(p.is_file() for p in paths)


@dataclass
class WorkerState:
    """What a feature worker process holds: the DataModule and the tasks' mask sources."""

    datamodule: Any
    sources: list[Any]


_WORKER: WorkerState | None = None


def init_worker(state: WorkerState) -> None:
    """Worker start: one thread each (the workers share the machine's cores), then the state."""
    global _WORKER
    import SimpleITK as sitk

    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    _WORKER = state


def compute_job(job: Sequence[tuple[dict[str, Any], int, int, int]]) -> None:
    """Compute one pair's tasks into the cache (in a worker set up by :func:`init_worker`)."""
    assert _WORKER is not None, "worker not initialised"
    for row, n_variants, source, seed in job:
        _WORKER.datamodule.samples_for_row(row, n_variants, _WORKER.sources[source], seed)
