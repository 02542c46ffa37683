"""A trained model as a folder: half-precision weights, resolved config and metadata.

Layout (in the spirit of a MONAI bundle's model card)::

    model_dir/
      model.pt        {"state_dict": {name: float16 tensor}} (torch.save; loaded weights_only)
      config.yaml     the resolved training config (for reproduction; not needed to predict)
      metadata.json   versions, training data, seed, metrics, channels, spacing, network,
                      inference settings, intended use

A checkpoint is untrusted input: it is only ever read with ``torch.load(weights_only=True)``,
which refuses pickled Python objects.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from petflare.constants import ORGANS
from petflare.data.transforms import PreprocessingConfig
from petflare.errors import PetflareInputError
from petflare.io.atomic import atomic_directory
from petflare.networks import build_network, widened_state_dict

WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "config.yaml"
METADATA_FILE = "metadata.json"
METADATA_SCHEMA_VERSION = "1.0"

#: Prefix of the network's parameters inside a SegmentationModule checkpoint.
MODULE_NET_PREFIX = "net."


@dataclass(frozen=True)
class InferenceSettings:
    """How a model is applied to a whole scan (stored with the model).

    Attributes:
        roi_size_vox: sliding-window size in voxels at the model spacing.
        overlap: fraction of overlap between windows (Gaussian blending).
        threshold: lesion probability above which a voxel is lesion.
        min_component_ml: predicted components smaller than this are removed.
        physiology_filter: remove predicted lesions that an anatomy-aware network's own organ
            output places in brain, myocardium, kidney or bladder (no effect without one).
    """

    roi_size_vox: tuple[int, int, int] = (64, 64, 64)
    overlap: float = 0.25
    threshold: float = 0.5
    min_component_ml: float = 0.1
    physiology_filter: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "roi_size_vox", tuple(int(s) for s in self.roi_size_vox))
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        d = asdict(self)
        d["roi_size_vox"] = list(self.roi_size_vox)
        return d


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers (no arbitrary unpickling).

    Raises:
        PetflareInputError: missing file, or a file that needs unpickling of Python objects.
    """
    path = Path(path)
    if not path.is_file():
        raise PetflareInputError(path, "checkpoint file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise PetflareInputError(
            path,
            "refused to load: the checkpoint contains Python objects beyond tensors and plain "
            f"containers (only weights_only loading is allowed) ({str(exc).splitlines()[0]})",
        ) from exc
    except Exception as exc:  # corrupt / not a torch file
        raise PetflareInputError(path, f"cannot be read as a PyTorch checkpoint ({exc})") from exc


def network_state_dict(checkpoint: Mapping[str, Any], path: str | Path) -> dict[str, torch.Tensor]:
    """The network weights from a Lightning checkpoint or a plain ``{"state_dict": ...}``.

    Lightning stores the module's parameters under ``net.``; that prefix is stripped.
    """
    state = checkpoint.get("state_dict") if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping) or not state:
        raise PetflareInputError(path, "no 'state_dict' with network weights in the checkpoint")
    if any(k.startswith(MODULE_NET_PREFIX) for k in state):
        state = {
            k[len(MODULE_NET_PREFIX) :]: v
            for k, v in state.items()
            if k.startswith(MODULE_NET_PREFIX)
        }
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise PetflareInputError(path, f"non-tensor entries in the state_dict: {bad[:5]}")
    return dict(state)


def _weights_file(model_dir: Path, metadata: Mapping[str, Any]) -> Path:
    """The weights file a model folder's metadata names (``model.pt`` by default)."""
    weights = metadata.get("weights")
    name = weights.get("file", WEIGHTS_FILE) if isinstance(weights, Mapping) else WEIGHTS_FILE
    return model_dir / name


def _load_weights_into(net: nn.Module, path: Path, mismatch: str, widen: bool = False) -> None:
    """Read ``path`` safely and load its network weights into ``net`` (cast to its dtypes).

    ``widen``: ``net``'s output layers may be wider than the checkpoint's (a lesion network
    fine-tuned into an anatomy-aware one, :func:`petflare.networks.widened_state_dict`).

    Raises:
        PetflareInputError: unsafe/missing file, or weights that do not fit ``net``; the
            message is ``weights do not <mismatch> (<first line of the error>)``.
    """
    state = network_state_dict(safe_torch_load(path), path)
    reference = net.state_dict()
    if widen:
        try:
            state = widened_state_dict(state, reference)
        except ValueError as exc:
            raise PetflareInputError(path, f"weights do not {mismatch} ({exc})") from exc
    try:
        net.load_state_dict(
            {k: v.to(reference[k].dtype) if k in reference else v for k, v in state.items()},
            strict=True,
        )
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise PetflareInputError(path, f"weights do not {mismatch} ({first})") from exc


def load_network_weights(net: nn.Module, source: str | Path, widen: bool = False) -> Path:
    """Initialise ``net`` from a model folder or a checkpoint file (fine-tuning; safe loading).

    ``source`` is a model folder (its weights file is read) or a ``.ckpt``/``.pt`` file holding
    a Lightning checkpoint or ``{"state_dict": ...}``. Only the network weights are taken: no
    optimizer state or step count (that is what resuming with ``ckpt_path`` is for).

    ``widen``: ``net`` may have more output channels than the source (an anatomy-aware
    network started from a lesion-only one; see :func:`petflare.networks.widened_state_dict`).

    Returns:
        The weights file that was read.

    Raises:
        PetflareInputError: missing or unsafe file, or weights that do not fit ``net``.
    """
    path = Path(source)
    if path.is_dir():
        meta_path = path / METADATA_FILE
        metadata: Any = {}
        if meta_path.is_file():
            try:
                metadata = json.loads(meta_path.read_text())
            except ValueError as exc:
                raise PetflareInputError(meta_path, f"malformed model metadata ({exc})") from exc
        path = _weights_file(path, metadata if isinstance(metadata, Mapping) else {})
    _load_weights_into(net, path, "fit the configured network (check net=...)", widen=widen)
    return path


def _versions() -> dict[str, str]:
    import lightning
    import monai

    import petflare

    return {
        "petflare": getattr(petflare, "__version__", "unknown"),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
    }


def export_model_folder(
    out_dir: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    *,
    network_target: str,
    network_kwargs: Mapping[str, Any],
    preprocessing: PreprocessingConfig,
    inference: InferenceSettings,
    config_yaml: str,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    organ_classes: int = 0,
) -> Path:
    """Write a model folder atomically (weights cast to float16 to keep it small).

    The weights are checked against the network first (built from ``network_target`` and
    ``network_kwargs``), so a folder that cannot be loaded is never written.

    Args:
        out_dir: folder to create (an existing non-empty folder needs ``overwrite``).
        state_dict: network weights (without the Lightning ``net.`` prefix).
        network_target: registered builder, e.g. ``petflare.networks.build_unet``.
        network_kwargs: its keyword arguments.
        preprocessing: the preprocessing the network was trained with.
        inference: sliding-window and post-processing settings.
        config_yaml: the resolved training config, stored as ``config.yaml``.
        metadata: extra metadata (training data, seed, metrics, intended use, ...).
        overwrite: replace an existing folder.
        organ_classes: organ classes of an auxiliary organ output after the lesion pair
            (:data:`petflare.constants.ORGANS`; 0 for a lesion-only network).
    """
    if organ_classes and not 2 <= organ_classes <= len(ORGANS):
        raise ValueError(f"organ_classes must be 0 or 2..{len(ORGANS)}, got {organ_classes}")
    net = build_network(network_target, network_kwargs)
    net.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
    half = {
        k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous()
        for k, v in state_dict.items()
    }
    n_params = sum(int(p.numel()) for p in net.parameters())
    record: dict[str, Any] = {
        "schema_version": METADATA_SCHEMA_VERSION,
        **dict(metadata or {}),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "channels": list(preprocessing.channels),
        "spacing_mm": list(preprocessing.spacing_mm),
        "preprocessing": preprocessing.to_dict(),
        "network": {
            "target": network_target,
            "kwargs": dict(network_kwargs),
            "n_parameters": n_params,
            "out_channels_meaning": [
                "background",
                "lesion",
                *(f"organ:{name}" for name in ORGANS[:organ_classes]),
            ],
        },
        "organ_classes": int(organ_classes),
        "inference": inference.to_dict(),
    }
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        torch.save({"state_dict": half}, tmp / WEIGHTS_FILE)
        digest = hashlib.sha256((tmp / WEIGHTS_FILE).read_bytes()).hexdigest()
        record["weights"] = {"file": WEIGHTS_FILE, "dtype": "float16", "sha256": digest}
        (tmp / CONFIG_FILE).write_text(config_yaml)
        (tmp / METADATA_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return Path(out_dir)


@dataclass
class LoadedModel:
    """A model folder read into memory (network in float32, eval mode)."""

    net: nn.Module
    preprocessing: PreprocessingConfig
    inference: InferenceSettings
    metadata: dict[str, Any]


def load_model_folder(model_dir: str | Path) -> LoadedModel:
    """Read a model folder written by :func:`export_model_folder` (safe loading).

    Raises:
        PetflareInputError: missing folder/files, malformed metadata, unsafe or mismatched
            weights; the message names the file.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise PetflareInputError(model_dir, "model folder not found")
    meta_path = model_dir / METADATA_FILE
    if not meta_path.is_file():
        raise PetflareInputError(meta_path, "model folder has no metadata.json")
    try:
        metadata = json.loads(meta_path.read_text())
        network = metadata["network"]
        preprocessing = PreprocessingConfig.from_dict(metadata["preprocessing"])
        inference = InferenceSettings(**metadata["inference"])
        net = build_network(network["target"], network["kwargs"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PetflareInputError(meta_path, f"malformed model metadata ({exc!r})") from exc
    _load_weights_into(
        net, _weights_file(model_dir, metadata), "match the network in metadata.json"
    )
    net.eval()
    return LoadedModel(net=net, preprocessing=preprocessing, inference=inference, metadata=metadata)
