"""Plain PyTorch networks (MONAI builders); no Hydra inside."""

from __future__ import annotations

from petflare.networks.segmentation import (
    LESION_CHANNELS,
    NETWORK_BUILDERS,
    build_dynunet,
    build_network,
    build_segresnet,
    build_unet,
    channels_last,
    channels_last_input,
    widened_state_dict,
)

__all__ = [
    "LESION_CHANNELS",
    "NETWORK_BUILDERS",
    "build_dynunet",
    "build_network",
    "build_segresnet",
    "build_unet",
    "channels_last",
    "channels_last_input",
    "widened_state_dict",
]
