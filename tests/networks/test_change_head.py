"""ChangePatternHead: lesion-order invariance, zero lesions, pooling and all three encoders."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import DynUNet, SegResNet, UNet

from petflare.constants import PATTERNS
from petflare.networks.change_head import (
    N_GLOBAL_REGIONS,
    ChangePatternHead,
    HeadEnsemble,
    build_head,
    global_regions,
    pool_regions,
    pooled_dim,
)
from petflare.networks.encoder import EncoderFeatures

SHAPE = (16, 12, 20)


def _nets() -> dict[str, torch.nn.Module]:
    return {
        "unet": UNet(3, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1),
        "dynunet": DynUNet(
            3,
            1,
            2,
            kernel_size=[3, 3, 3],
            strides=[1, 2, 2],
            upsample_kernel_size=[2, 2],
            filters=[4, 8, 16],
        ),
        "segresnet": SegResNet(
            3,
            init_filters=8,
            in_channels=1,
            out_channels=2,
            blocks_down=(1, 1, 1),
            blocks_up=(1, 1),
        ),
    }


@pytest.mark.parametrize("name", ["unet", "dynunet", "segresnet"])
def test_encoder_levels_match_a_full_forward(name: str) -> None:
    net = _nets()[name].eval()
    enc = EncoderFeatures(net)
    x = torch.randn(1, 1, *SHAPE)
    feats = enc(x)
    assert len(feats) == 3
    assert [f.shape[1] for f in feats] == enc.channels()
    # levels get coarser
    sizes = [f.shape[2:].numel() for f in feats]
    assert sizes == sorted(sizes, reverse=True)
    with torch.no_grad(), enc.capture() as hooked:
        net(x)
    assert len(hooked) == 3
    for a, b in zip(feats, hooked, strict=True):
        torch.testing.assert_close(a, b)


def test_encoder_rejects_other_networks() -> None:
    with pytest.raises(TypeError, match="supports MONAI"):
        EncoderFeatures(torch.nn.Conv3d(1, 1, 3))


def _inputs(batch: int, n_lesions: int, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    enc = EncoderFeatures(_nets()["unet"]).eval()
    with torch.no_grad():
        fb = enc(torch.randn(batch, 1, *SHAPE, generator=g))
        ff = enc(torch.randn(batch, 1, *SHAPE, generator=g))
    masks = torch.zeros(batch, n_lesions, *SHAPE)
    for i in range(n_lesions):  # disjoint boxes of different sizes
        masks[:, i, 2 * i : 2 * i + 2 + i, 3:6, 4 : 5 + 2 * i] = 1
    valid = torch.ones(batch, n_lesions, dtype=torch.bool)
    lesion_feats = torch.randn(batch, n_lesions, 5, generator=g)
    pair_feats = torch.randn(batch, 3, generator=g)
    return enc, fb, ff, masks, valid, lesion_feats, pair_feats


def test_head_is_invariant_to_lesion_order() -> None:
    enc, fb, ff, masks, valid, lf, pf = _inputs(2, 4)
    head = ChangePatternHead(enc.channels(), 5, 3, hidden_dim=16).eval()
    out = head(fb, ff, masks, valid, lf, pf)
    perm = torch.tensor([2, 0, 3, 1])
    out_perm = head(fb, ff, masks[:, perm], valid[:, perm], lf[:, perm], pf)
    torch.testing.assert_close(out.logits, out_perm.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.attention[:, perm], out_perm.attention)
    assert out.logits.shape == (2, len(PATTERNS))
    # the output does depend on the lesions (the invariance is not a constant output)
    lf2 = lf.clone()
    lf2[:, 0] += 3.0
    assert not torch.allclose(head(fb, ff, masks, valid, lf2, pf).logits, out.logits)


@pytest.mark.slow
def test_ensemble_averages_its_members_and_rebuilds_from_its_config() -> None:
    enc, fb, ff, masks, valid, lf, pf = _inputs(2, 3)
    torch.manual_seed(1)
    members = [ChangePatternHead(enc.channels(), 5, 3, hidden_dim=16).eval() for _ in range(3)]
    ens = HeadEnsemble(members).eval()
    outs = [m(fb, ff, masks, valid, lf, pf) for m in members]
    out = ens(fb, ff, masks, valid, lf, pf)
    torch.testing.assert_close(out.logits, torch.stack([o.logits for o in outs]).mean(0))
    torch.testing.assert_close(out.attention, torch.stack([o.attention for o in outs]).mean(0))
    assert not torch.allclose(outs[0].logits, outs[1].logits)
    config = ens.config()
    assert config["n_members"] == 3
    rebuilt = build_head(config)
    assert isinstance(rebuilt, HeadEnsemble)
    rebuilt.load_state_dict(ens.state_dict())
    torch.testing.assert_close(rebuilt.eval()(fb, ff, masks, valid, lf, pf).logits, out.logits)
    single = build_head(members[0].config())
    assert isinstance(single, ChangePatternHead)
    with pytest.raises(ValueError, match="share one configuration"):
        HeadEnsemble([members[0], ChangePatternHead(enc.channels(), 5, 3, hidden_dim=8)])


def test_padding_lesions_do_not_change_the_output() -> None:
    enc, fb, ff, masks, valid, lf, pf = _inputs(1, 3)
    head = ChangePatternHead(enc.channels(), 5, 3, hidden_dim=16).eval()
    out = head(fb, ff, masks, valid, lf, pf)
    pad_masks = torch.cat([masks, torch.ones_like(masks[:, :2])], dim=1)
    pad_valid = torch.cat([valid, torch.zeros(1, 2, dtype=torch.bool)], dim=1)
    pad_lf = torch.cat([lf, 100 * torch.ones(1, 2, 5)], dim=1)
    out_pad = head(fb, ff, pad_masks, pad_valid, pad_lf, pf)
    torch.testing.assert_close(out.logits, out_pad.logits, atol=1e-5, rtol=1e-5)
    assert float(out_pad.attention[0, 3:].detach().abs().sum()) == 0.0


@pytest.mark.parametrize("n_lesions", [0, 1])
def test_zero_lesions_use_the_empty_token(n_lesions: int) -> None:
    enc, fb, ff, masks, valid, lf, pf = _inputs(2, n_lesions)
    valid[:] = False  # no lesion at either timepoint (as padding, or as an empty L)
    head = ChangePatternHead(enc.channels(), 5, 3, hidden_dim=16).eval()
    out = head(fb, ff, masks, valid, lf, pf)
    assert torch.isfinite(out.logits).all()
    assert out.attention.shape == (2, n_lesions)
    # the learned empty token reaches the output
    with torch.no_grad():
        head.empty_token.add_(1.0)
    assert not torch.allclose(head(fb, ff, masks, valid, lf, pf).logits, out.logits)
    out.logits.sum().backward()


def test_zero_lesions_train_with_gradient_to_empty_token() -> None:
    enc, fb, ff, masks, valid, lf, pf = _inputs(1, 0)
    head = ChangePatternHead(enc.channels(), 5, 3, hidden_dim=16)
    head(fb, ff, masks, valid, lf, pf).logits.sum().backward()
    assert head.empty_token.grad is not None and head.empty_token.grad.abs().sum() > 0


def test_new_lesion_only_at_followup_is_a_valid_lesion() -> None:
    """A lesion present only at follow-up (baseline had none) is pooled like any other."""
    enc, fb, ff, masks, valid, lf, pf = _inputs(1, 1)
    pooled = pool_regions(fb, ff, masks)
    assert pooled.shape == (1, 1, pooled_dim(enc.channels()))
    assert torch.isfinite(pooled).all() and pooled.abs().sum() > 0


def test_pool_regions_mean_and_max_match_a_direct_computation() -> None:
    fb = [torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4, 4)]
    ff = [fb[0] * 2]
    region = torch.zeros(1, 1, 4, 4, 4)
    region[0, 0, 1, 2, 3] = 1
    region[0, 0, 2, 0, 1] = 1
    pooled = pool_regions(fb, ff, region)[0, 0]
    vals = fb[0][0][:, region[0, 0] > 0]  # [C, 2]
    mean_b, max_b = vals.mean(1), vals.amax(1)
    expected = torch.cat([mean_b, mean_b, max_b, max_b])  # follow-up = 2 x baseline
    torch.testing.assert_close(pooled, expected)
    # an empty region pools to zeros, not -inf
    assert torch.equal(pool_regions(fb, ff, torch.zeros(1, 1, 4, 4, 4)), torch.zeros(1, 1, 8))


def test_small_lesion_survives_coarse_levels() -> None:
    fb = [torch.ones(1, 1, 2, 2, 2)]
    region = torch.zeros(1, 1, 8, 8, 8)
    region[0, 0, 5, 5, 5] = 1  # one fine voxel
    assert pool_regions(fb, fb, region)[0, 0, 0] == 1.0  # mean of ones, not an empty region


def test_global_regions() -> None:
    masks = torch.zeros(2, 2, 3, 3, 3)
    masks[0, 0, 0, 0, 0] = 1
    masks[0, 1, 1, 1, 1] = 1
    valid = torch.tensor([[True, False], [False, False]])
    regions = global_regions(masks, valid)
    assert regions.shape == (2, N_GLOBAL_REGIONS, 3, 3, 3)
    assert regions[0, 0].sum() == 1  # the padded lesion is not in the union
    assert regions[1, 0].sum() == 0 and regions[1, 1].sum() == 27


def test_normalization_is_fitted_and_saved_with_the_weights() -> None:
    head = ChangePatternHead([4], 2, 1, hidden_dim=8)
    lp = torch.randn(3, 2, pooled_dim([4])) * 5 + 2
    lf = torch.randn(3, 2, 2) * 10
    valid = torch.tensor([[True, False], [True, True], [False, False]])
    head.fit_normalization(lp, lf, valid, torch.randn(3, 2, pooled_dim([4])), torch.randn(3, 1))
    torch.testing.assert_close(head.norm_lesion.mean, lf[valid].mean(0))
    clone = ChangePatternHead(**head.config())
    clone.load_state_dict(head.state_dict())
    torch.testing.assert_close(clone.norm_lesion.std, head.norm_lesion.std)


def test_image_dropout_hides_image_features_in_training_only() -> None:
    enc, fb, ff, masks, valid, lf, pf = _inputs(4, 2)
    head = ChangePatternHead(enc.channels(), 5, 3, hidden_dim=16, dropout=0.0, image_dropout=1.0)
    head.train()
    out = head(fb, ff, masks, valid, lf, pf)
    ff2 = [f + 5.0 for f in ff]  # different images, same quantitative features
    torch.testing.assert_close(head(fb, ff2, masks, valid, lf, pf).logits, out.logits)
    head.eval()
    assert not torch.allclose(
        head(fb, ff2, masks, valid, lf, pf).logits, head(fb, ff, masks, valid, lf, pf).logits
    )
