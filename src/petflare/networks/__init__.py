"""Plain PyTorch networks (MONAI builders); no Hydra inside."""

from __future__ import annotations

from petflare.networks.segmentation import (
    NETWORK_BUILDERS,
    build_dynunet,
    build_network,
    build_segresnet,
    build_unet,
    channels_last,
    channels_last_input,
)

__all__ = [
    "NETWORK_BUILDERS",
    "build_dynunet",
    "build_network",
    "build_segresnet",
    "build_unet",
    "channels_last",
    "channels_last_input",
]
