"""Network builders: output shape, registry, argument checks."""

from __future__ import annotations

import pytest
import torch

from petflare.networks import NETWORK_BUILDERS, build_network, build_unet, widened_state_dict

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


def test_channels_last_layout_gives_the_same_logits_and_loss() -> None:
    """The channels-last option changes the memory layout only: same logits, same training loss."""
    from monai.losses import DiceCELoss

    from petflare.constants import Keys
    from petflare.networks import channels_last, channels_last_input
    from petflare.training.module import SegmentationModule

    torch.manual_seed(0)
    x = torch.randn(2, 1, 16, 16, 16)
    label = (torch.rand(2, 1, 16, 16, 16) > 0.8).long()
    logits, losses = [], []
    for layout in (False, True):
        torch.manual_seed(1)
        net = build_network("petflare.networks.build_unet", TINY["petflare.networks.build_unet"])
        module = SegmentationModule(
            net,
            DiceCELoss(to_onehot_y=True, softmax=True),
            optimizer=torch.optim.AdamW,
            roi_size=(16, 16, 16),
            channels_last=layout,
        )
        kernels = [w for w in module.net.parameters() if w.ndim == 5 and w.shape[1] > 1]
        wanted = torch.channels_last_3d if layout else torch.contiguous_format
        assert kernels and all(w.is_contiguous(memory_format=wanted) for w in kernels)
        assert layout or not all(
            w.is_contiguous(memory_format=torch.channels_last_3d) for w in kernels
        )
        with torch.no_grad():
            logits.append(module(x))
            losses.append(module.training_step({Keys.IMAGE: x, Keys.LABEL: label}, 0))
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-6)
    # the helpers: a 5D input is laid out channels-last, anything else is left alone
    assert channels_last_input(x).is_contiguous(memory_format=torch.channels_last_3d)
    assert channels_last_input(x[0]).is_contiguous()
    conv = channels_last(torch.nn.Conv3d(2, 4, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)


def test_widened_network_keeps_the_trained_lesion_output() -> None:
    """An anatomy-aware network started from a lesion-only one predicts the same lesion logits
    at the start, and its organ channels are free to learn."""
    torch.manual_seed(0)
    kwargs = {"channels": (4, 8, 16), "strides": (2, 2), "num_res_units": 1}
    trained = build_unet(out_channels=2, **kwargs).eval()
    wide = build_unet(out_channels=2 + 9, **kwargs).eval()
    wide.load_state_dict(widened_state_dict(trained.state_dict(), wide.state_dict()))
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        a, b = trained(x), wide(x)
    assert b.shape[1] == 11
    torch.testing.assert_close(b[:, :2], a, rtol=1e-5, atol=1e-5)
    assert b[:, 2:].abs().sum() > 0


def test_widened_state_dict_refuses_a_narrower_or_other_network() -> None:
    kwargs = {"channels": (4, 8, 16), "strides": (2, 2), "num_res_units": 1}
    wide = build_unet(out_channels=11, **kwargs).state_dict()
    narrow = build_unet(out_channels=2, **kwargs).state_dict()
    with pytest.raises(ValueError, match="does not fit"):
        widened_state_dict(wide, narrow)
    other = build_unet(out_channels=11, channels=(4, 8), strides=(2,)).state_dict()
    with pytest.raises(ValueError, match="names differ"):
        widened_state_dict(narrow, other)
