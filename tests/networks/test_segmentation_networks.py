"""Network builders: output shape, registry, argument checks."""

from __future__ import annotations

import pytest
import torch

from petflare.networks import NETWORK_BUILDERS, build_network

TINY = {
    "petflare.networks.build_unet": {"channels": (4, 8, 16), "strides": (2, 2)},
    "petflare.networks.build_dynunet": {"filters": (4, 8, 16), "strides": (1, 2, 2)},
    "petflare.networks.build_segresnet": {
        "init_filters": 8,
        "blocks_down": (1, 1, 1),
        "blocks_up": (1, 1),
    },
}


@pytest.mark.parametrize("target", sorted(NETWORK_BUILDERS))
@pytest.mark.parametrize("in_channels", [1, 2])
def test_builders_return_two_class_logits(target: str, in_channels: int) -> None:
    net = build_network(target, {"in_channels": in_channels, **TINY[target]})
    with torch.no_grad():
        out = net(torch.randn(2, in_channels, 16, 16, 12))
    assert out.shape == (2, 2, 16, 16, 12)


def test_unknown_network_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown network"):
        build_network("os.system", {})


@pytest.mark.parametrize(
    ("target", "kwargs"),
    [
        ("petflare.networks.build_unet", {"channels": (4, 8), "strides": (2, 2)}),
        ("petflare.networks.build_dynunet", {"filters": (4, 8), "strides": (1,)}),
    ],
)
def test_inconsistent_strides_are_refused(target: str, kwargs: dict) -> None:
    with pytest.raises(ValueError, match="len"):
        build_network(target, kwargs)
