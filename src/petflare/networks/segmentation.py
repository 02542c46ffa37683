"""Plain ``nn.Module`` builders for 3D lesion segmentation (MONAI networks; no Hydra inside).

Every builder returns a network mapping ``(B, in_channels, X, Y, Z)`` to logits
``(B, out_channels, X, Y, Z)``; class 1 is "lesion". The registry lets a model folder name
its architecture by a fixed string, so loading a model never imports an arbitrary path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.networks.nets import DynUNet, SegResNet, UNet
from torch import nn


def build_unet(
    in_channels: int = 1,
    out_channels: int = 2,
    channels: Sequence[int] = (16, 32, 64, 128),
    strides: Sequence[int] = (2, 2, 2),
    num_res_units: int = 1,
    norm: str = "instance",
    dropout: float = 0.0,
) -> nn.Module:
    """MONAI residual U-Net (the default): small, fast on CPU, robust with instance norm."""
    if len(strides) != len(channels) - 1:
        raise ValueError(f"need len(strides) == len(channels) - 1, got {strides} / {channels}")
    return UNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(int(c) for c in channels),
        strides=tuple(int(s) for s in strides),
        num_res_units=num_res_units,
        norm=norm,
        dropout=dropout,
    )


def build_dynunet(
    in_channels: int = 1,
    out_channels: int = 2,
    filters: Sequence[int] = (32, 64, 128, 256, 320),
    strides: Sequence[int] = (1, 2, 2, 2, 2),
    kernel_size: int = 3,
    norm: str = "instance",
    res_block: bool = True,
) -> nn.Module:
    """nnU-Net-style DynUNet (isotropic kernels; deep supervision off so it returns logits)."""
    if len(filters) != len(strides):
        raise ValueError(f"need len(filters) == len(strides), got {filters} / {strides}")
    kernels = [[kernel_size] * 3 for _ in strides]
    return DynUNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=kernels,
        strides=[[int(s)] * 3 for s in strides],
        upsample_kernel_size=[[int(s)] * 3 for s in strides[1:]],
        filters=[int(f) for f in filters],
        norm_name=norm,
        res_block=res_block,
        deep_supervision=False,
    )


def build_segresnet(
    in_channels: int = 1,
    out_channels: int = 2,
    init_filters: int = 16,
    blocks_down: Sequence[int] = (1, 2, 2, 4),
    blocks_up: Sequence[int] = (1, 1, 1),
    dropout: float | None = None,
) -> nn.Module:
    """MONAI SegResNet (residual encoder, light decoder)."""
    return SegResNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        init_filters=init_filters,
        blocks_down=tuple(int(b) for b in blocks_down),
        blocks_up=tuple(int(b) for b in blocks_up),
        dropout_prob=dropout,
    )


#: Builders a model folder may name (by their import path, as written in the Hydra config).
NETWORK_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "petflare.networks.build_unet": build_unet,
    "petflare.networks.build_dynunet": build_dynunet,
    "petflare.networks.build_segresnet": build_segresnet,
}


def build_network(target: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """Build a registered network by name, e.g. from a model folder's metadata.

    Raises:
        ValueError: ``target`` is not one of :data:`NETWORK_BUILDERS`.
    """
    if target not in NETWORK_BUILDERS:
        raise ValueError(f"unknown network {target!r}; known: {sorted(NETWORK_BUILDERS)}")
    return NETWORK_BUILDERS[target](**dict(kwargs))


def channels_last(net: nn.Module) -> nn.Module:
    """The network with its weights in the channels-last 3D memory layout (in place).

    The arithmetic is unchanged (up to the order of floating-point sums); oneDNN's 3D
    convolutions run faster in this layout on the CPU (a training step about 1.5 times as fast,
    inference a little; docs/training.md). Inputs should be given in the same layout
    (:func:`channels_last_input`).
    """
    return net.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]


def channels_last_input(x: torch.Tensor) -> torch.Tensor:
    """A 5D tensor in the channels-last 3D layout (other tensors unchanged)."""
    return x.contiguous(memory_format=torch.channels_last_3d) if x.ndim == 5 else x


#: Output channels of a lesion network: (background, lesion). An anatomy-aware network has
#: ``LESION_CHANNELS + n_organ_classes`` outputs: the lesion pair first, then the organ logits.
LESION_CHANNELS = 2


def widened_state_dict(
    old: Mapping[str, torch.Tensor], new: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``old``'s weights fitted into a network whose output layers are wider (fine-tuning).

    Used to start an anatomy-aware network (lesion + organ outputs) from a trained lesion-only
    one: every tensor whose shape matches is copied; a tensor that is larger in some dimensions
    (the output convolution, its bias, the output residual unit) gets ``old`` in its leading
    block and keeps ``new``'s initialisation elsewhere, except that the entries feeding the
    old output channels from the new ones are zeroed, so the widened network's first
    ``old`` outputs are exactly the trained network's at the start.

    Raises:
        ValueError: a name is missing on either side, or a tensor is smaller than ``old``'s.
    """
    if set(old) != set(new):
        missing = sorted(set(new) ^ set(old))[:5]
        raise ValueError(f"the networks' parameter names differ: {missing}")
    out: dict[str, torch.Tensor] = {}
    for name, target in new.items():
        source = old[name].to(target.dtype)
        if source.shape == target.shape:
            out[name] = source.clone()
            continue
        if source.ndim != target.ndim or any(
            s > t for s, t in zip(source.shape, target.shape, strict=True)
        ):
            raise ValueError(
                f"{name}: trained shape {tuple(source.shape)} does not fit {tuple(target.shape)}"
            )
        widened = target.clone()
        lead = tuple(slice(0, s) for s in source.shape)
        if source.ndim >= 2 and source.shape[0] < target.shape[0]:
            # old output channels (dim 0) must not see the new channels (beyond the old block)
            head = widened[: source.shape[0]]
            head.zero_()
        widened[lead] = source
        out[name] = widened
    return out
