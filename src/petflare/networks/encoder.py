"""Multi-scale encoder features from a segmentation network (MONAI UNet, DynUNet or SegResNet).

The change-pattern head reads the segmentation network's own encoder so both tasks share weights.
``EncoderFeatures`` finds the down-path blocks of the three supported MONAI architectures and
either runs them alone (encoder-only forward: no decoder cost, used to precompute features) or
records their outputs with forward hooks during a full segmentation forward (joint training, where
one pass yields both the segmentation logits and the features).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from monai.networks.layers import SkipConnection
from monai.networks.nets import DynUNet, SegResNet, UNet
from torch import nn


def _unwrap(net: nn.Module) -> nn.Module:
    """Return the MONAI network inside common wrappers (``.net`` / ``.model`` / ``.network``)."""
    seen = 0
    while not isinstance(net, UNet | DynUNet | SegResNet) and seen < 4:
        for name in ("net", "network", "model"):
            inner = getattr(net, name, None)
            if isinstance(inner, nn.Module):
                net = inner
                break
        else:
            break
        seen += 1
    return net


def unet_down_blocks(net: UNet) -> list[nn.Module]:
    """Down-path blocks of a MONAI ``UNet``, from full resolution to the bottom layer.

    MONAI builds the UNet recursively as ``Sequential(down, SkipConnection(sub), up)``; the
    encoder is ``down`` at each level followed by the innermost bottom layer.
    """
    blocks: list[nn.Module] = []
    block: nn.Module = net.model
    while (
        isinstance(block, nn.Sequential)
        and len(block) == 3
        and isinstance(block[1], SkipConnection)
    ):
        blocks.append(block[0])
        block = block[1].submodule
    blocks.append(block)  # bottom layer
    return blocks


class EncoderFeatures(nn.Module):
    """Multi-scale features of a segmentation network's encoder.

    Args:
        net: a MONAI ``UNet``, ``DynUNet`` or ``SegResNet`` (optionally wrapped in a module that
            holds it as ``.net``/``.model``/``.network``). Its weights are shared, not copied.
        scales: indices of the encoder levels to return (0 = full resolution); None = all.

    Example:
        >>> enc = EncoderFeatures(unet)
        >>> feats = enc(x)  # list of [B, C_s, D_s, H_s, W_s], finest first
    """

    def __init__(self, net: nn.Module, scales: Sequence[int] | None = None) -> None:
        super().__init__()
        self.net = _unwrap(net)
        if not isinstance(self.net, UNet | DynUNet | SegResNet):
            raise TypeError(
                f"EncoderFeatures supports MONAI UNet, DynUNet and SegResNet, got "
                f"{type(self.net).__name__}"
            )
        n_levels = len(self.hook_modules())
        self.scales = list(range(n_levels)) if scales is None else [int(s) for s in scales]
        bad = [s for s in self.scales if not -n_levels <= s < n_levels]
        if bad:
            raise ValueError(f"scales {bad} out of range for an encoder with {n_levels} levels")

    def hook_modules(self) -> list[nn.Module]:
        """The modules whose outputs are the encoder levels, finest first."""
        net = self.net
        if isinstance(net, UNet):
            return unet_down_blocks(net)
        if isinstance(net, DynUNet):
            return [net.input_block, *net.downsamples, net.bottleneck]
        assert isinstance(net, SegResNet)
        return list(net.down_layers)

    def _encode_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        net = self.net
        if isinstance(net, SegResNet):
            _, levels = net.encode(x)
            return list(levels)
        levels = []
        for block in self.hook_modules():  # UNet and DynUNet down paths chain directly
            x = block(x)
            levels.append(x)
        return levels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Run only the encoder and return the selected levels, finest first."""
        levels = self._encode_all(x)
        return [levels[s] for s in self.scales]

    @contextmanager
    def capture(self) -> Iterator[list[torch.Tensor]]:
        """Record the selected encoder levels during a full forward of the network.

        Example:
            >>> with enc.capture() as feats:
            ...     seg_logits = net(x)
            >>> feats  # the encoder levels of that forward, finest first
        """
        modules = self.hook_modules()
        store: dict[int, torch.Tensor] = {}
        handles = []
        for i, module in enumerate(modules):

            def hook(_m: nn.Module, _inp: object, out: torch.Tensor, i: int = i) -> None:
                store[i] = out

            handles.append(module.register_forward_hook(hook))
        result: list[torch.Tensor] = []
        try:
            yield result
        finally:
            for handle in handles:
                handle.remove()
            n = len(modules)
            result.extend(store[s % n] for s in self.scales if s % n in store)

    @torch.no_grad()
    def channels(self, spatial_size: Sequence[int] | None = None) -> list[int]:
        """Channel count of each selected level, found by a dry run on a tiny input."""
        in_ch = _in_channels(self.net)
        size = tuple(spatial_size) if spatial_size is not None else (32, 32, 32)
        was_training = self.training
        self.eval()
        try:
            param = next(self.net.parameters())
            dummy = torch.zeros((1, in_ch, *size), dtype=param.dtype, device=param.device)
            out = [int(f.shape[1]) for f in self(dummy)]
        finally:
            self.train(was_training)
        return out


def _in_channels(net: nn.Module) -> int:
    """Input channel count of a supported network, read from its first convolution."""
    for module in net.modules():
        if isinstance(module, nn.Conv3d | nn.Conv2d):
            return int(module.in_channels)
    raise TypeError(f"cannot find an input convolution in {type(net).__name__}")
