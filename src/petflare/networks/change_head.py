"""Temporal change-pattern head: baseline vs aligned follow-up -> four pattern logits.

Inputs per pair: multi-scale encoder features of the baseline and of the follow-up aligned to it
(same encoder weights), one region mask per matched lesion (the union of its baseline and
follow-up masks), and quantitative change features per lesion and per pair. Features are pooled
inside each region at every scale (masked mean and max), baseline and follow-up pooled values and
their differences are embedded per lesion, and the lesion embeddings are pooled with attention,
max and mean, which makes the output independent of lesion order and of the lesion count. A pair
without lesions uses a learned empty token. The two global regions (all lesions together and the
whole field of view) are pooled the same way. A small MLP returns logits in ``PATTERNS`` order.

Pooling has no parameters, so with a frozen encoder the pooled values can be precomputed once per
pair (``pool_regions``) and only ``forward_pooled`` is trained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from petflare.constants import PATTERNS

#: Statistics pooled per region, scale and channel: baseline mean, follow-up minus baseline mean,
#: baseline max, follow-up minus baseline max.
POOLED_STATS = ("mean_baseline", "mean_change", "max_baseline", "max_change")
#: Number of global regions appended after the lesions by ``global_regions``.
N_GLOBAL_REGIONS = 2


def pooled_dim(feature_channels: Sequence[int]) -> int:
    """Length of one region's pooled vector for encoder levels with these channel counts."""
    return len(POOLED_STATS) * int(sum(feature_channels))


def global_regions(lesion_masks: torch.Tensor, lesion_valid: torch.Tensor) -> torch.Tensor:
    """The two global regions of each pair: union of all valid lesions, and the whole volume.

    Args:
        lesion_masks: [B, L, D, H, W] region masks (0/1).
        lesion_valid: [B, L] bool, False for padding.

    Returns:
        [B, 2, D, H, W] float masks.
    """
    weights = lesion_valid.to(lesion_masks.dtype)[..., None, None, None]
    union = (lesion_masks * weights).amax(dim=1, keepdim=True) if lesion_masks.shape[1] else None
    if union is None:
        union = lesion_masks.new_zeros((lesion_masks.shape[0], 1, *lesion_masks.shape[2:]))
    return torch.cat([union.float(), torch.ones_like(union, dtype=torch.float32)], dim=1)


def pool_regions(
    feats_baseline: Sequence[torch.Tensor],
    feats_followup: Sequence[torch.Tensor],
    regions: torch.Tensor,
) -> torch.Tensor:
    """Pool encoder features inside each region at every scale.

    The region masks are brought to each level's grid by max pooling, so a lesion smaller than a
    coarse voxel still covers one. Empty regions give zeros.

    Args:
        feats_baseline: per level, [B, C_s, D_s, H_s, W_s].
        feats_followup: the same levels for the follow-up aligned to the baseline.
        regions: [B, R, D, H, W] masks on the input grid.

    Returns:
        [B, R, pooled_dim(channels)] with, per level, the ``POOLED_STATS`` blocks.
    """
    if len(feats_baseline) != len(feats_followup):
        raise ValueError("baseline and follow-up must have the same number of levels")
    b, r = regions.shape[:2]
    out = []
    for fb, ff in zip(feats_baseline, feats_followup, strict=True):
        if fb.shape != ff.shape:
            raise ValueError(f"level shapes differ: {tuple(fb.shape)} vs {tuple(ff.shape)}")
        if r == 0:
            out.append(fb.new_zeros((b, 0, len(POOLED_STATS) * fb.shape[1])))
            continue
        m = F.adaptive_max_pool3d(regions.float(), fb.shape[2:]) > 0  # [B, R, d, h, w]
        m = m.flatten(2).unsqueeze(2)  # [B, R, 1, N]
        count = m.sum(-1).clamp_min(1)  # [B, R, 1]
        fb_flat = fb.flatten(2).unsqueeze(1)  # [B, 1, C, N]
        ff_flat = ff.flatten(2).unsqueeze(1)
        mean_b = (fb_flat * m).sum(-1) / count
        mean_f = (ff_flat * m).sum(-1) / count
        neg = torch.finfo(fb.dtype).min
        max_b = torch.where(m, fb_flat, neg).amax(-1)
        max_f = torch.where(m, ff_flat, neg).amax(-1)
        empty = ~m.any(-1)  # [B, R, 1]
        max_b = torch.where(empty, 0.0, max_b)
        max_f = torch.where(empty, 0.0, max_f)
        out.append(torch.cat([mean_b, mean_f - mean_b, max_b, max_f - max_b], dim=-1))
    return torch.cat(out, dim=-1)


@dataclass
class HeadOutput:
    """Logits and the per-lesion attention that explains them."""

    logits: torch.Tensor  # [B, n_classes]
    attention: torch.Tensor  # [B, L], zero on padding; all zero for a pair without lesions


class _Standardize(nn.Module):
    """Fixed (x - mean) / std with statistics fitted on training data and saved with the head."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Set the statistics from rows of ``x`` ([N, dim]); constant columns keep std 1."""
        if x.numel() == 0:
            return
        x = x.reshape(-1, x.shape[-1]).float()
        self.mean.copy_(x.mean(0))
        std = x.std(0, unbiased=False)
        self.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))


def _mlp(in_dim: int, hidden_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden_dim, out_dim),
    )


class ChangePatternHead(nn.Module):
    """Classify the change between a baseline and an aligned follow-up into ``PATTERNS``.

    Args:
        feature_channels: channel count of each encoder level used (finest first).
        n_lesion_features: length of the per-lesion quantitative change vector.
        n_pair_features: length of the per-pair quantitative change vector.
        hidden_dim: width of the lesion embedding and the MLPs.
        dropout: dropout inside the MLPs.
        n_classes: number of output classes (the four ``PATTERNS``).
        image_dropout: during training, the probability of hiding a pair's image features
            (lesion and global embeddings set to zero), so the head cannot lean on them alone;
            with a few hundred training pairs, a frozen encoder's hundreds of pooled channels
            overfit easily while the quantitative features generalise.

    The logits are the MLP's output plus a linear ("wide") term on the pair features, so
    the strong whole-pair evidence is learnt quickly and the MLP adds interactions.
    """

    def __init__(
        self,
        feature_channels: Sequence[int],
        n_lesion_features: int,
        n_pair_features: int,
        hidden_dim: int = 64,
        dropout: float = 0.1,
        n_classes: int = len(PATTERNS),
        image_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.image_dropout = float(image_dropout)
        self.feature_channels = [int(c) for c in feature_channels]
        self.n_lesion_features = int(n_lesion_features)
        self.n_pair_features = int(n_pair_features)
        self.hidden_dim = int(hidden_dim)
        self.dropout = float(dropout)
        self.n_classes = int(n_classes)
        p_dim = pooled_dim(self.feature_channels)
        self.pooled_dim = p_dim
        self.norm_pooled = _Standardize(p_dim)
        self.norm_lesion = _Standardize(self.n_lesion_features)
        self.norm_pair = _Standardize(self.n_pair_features)
        self.norm_global = _Standardize(N_GLOBAL_REGIONS * p_dim)
        self.image_proj = nn.Sequential(nn.Linear(p_dim, hidden_dim), nn.LayerNorm(hidden_dim))
        self.lesion_mlp = _mlp(hidden_dim + self.n_lesion_features, hidden_dim, hidden_dim, dropout)
        self.attn_score = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, 1)
        )
        self.empty_token = nn.Parameter(torch.zeros(3 * hidden_dim))
        self.global_proj = nn.Sequential(
            nn.Linear(N_GLOBAL_REGIONS * p_dim, hidden_dim), nn.LayerNorm(hidden_dim)
        )
        self.classifier = _mlp(
            3 * hidden_dim + hidden_dim + self.n_pair_features + 1, hidden_dim, n_classes, dropout
        )
        self.pair_linear = nn.Linear(self.n_pair_features, n_classes)

    def config(self) -> dict[str, object]:
        """Constructor arguments, saved next to the weights so the head can be rebuilt."""
        return {
            "feature_channels": self.feature_channels,
            "n_lesion_features": self.n_lesion_features,
            "n_pair_features": self.n_pair_features,
            "hidden_dim": self.hidden_dim,
            "dropout": self.dropout,
            "n_classes": self.n_classes,
            "image_dropout": self.image_dropout,
        }

    def fit_normalization(
        self,
        lesion_pooled: torch.Tensor,
        lesion_features: torch.Tensor,
        lesion_valid: torch.Tensor,
        global_pooled: torch.Tensor,
        pair_features: torch.Tensor,
    ) -> None:
        """Fit the input standardisation on training data (valid lesions only)."""
        valid = lesion_valid.bool()
        self.norm_pooled.fit(lesion_pooled[valid])
        self.norm_lesion.fit(lesion_features[valid])
        self.norm_global.fit(global_pooled.flatten(1))
        self.norm_pair.fit(pair_features)

    def forward_pooled(
        self,
        lesion_pooled: torch.Tensor,
        lesion_features: torch.Tensor,
        lesion_valid: torch.Tensor,
        global_pooled: torch.Tensor,
        pair_features: torch.Tensor,
    ) -> HeadOutput:
        """Classify from pooled region features (the trainable part of the head).

        Args:
            lesion_pooled: [B, L, pooled_dim] from ``pool_regions`` on the lesion regions.
            lesion_features: [B, L, n_lesion_features] quantitative change per lesion.
            lesion_valid: [B, L] bool, False for padding (L may be 0).
            global_pooled: [B, 2, pooled_dim] from ``pool_regions`` on ``global_regions``.
            pair_features: [B, n_pair_features] quantitative change of the whole pair.
        """
        b, n_les = lesion_valid.shape
        valid = lesion_valid.bool()
        keep_image = torch.ones((b, 1), device=lesion_valid.device)
        if self.training and self.image_dropout > 0:
            keep = torch.rand((b, 1), device=lesion_valid.device) >= self.image_dropout
            # inverted scaling (as nn.Dropout): the expected input is the same in eval mode
            keep_image = keep.float() / max(1.0 - self.image_dropout, 1e-6)
        if n_les:
            img = self.image_proj(self.norm_pooled(lesion_pooled)) * keep_image[:, :, None]
            h = self.lesion_mlp(torch.cat([img, self.norm_lesion(lesion_features)], dim=-1))
            score = self.attn_score(h).squeeze(-1).masked_fill(~valid, float("-inf"))
            any_valid = valid.any(1, keepdim=True)
            attn = torch.softmax(torch.where(any_valid, score, torch.zeros_like(score)), dim=1)
            attn = attn * valid
            attn_pool = (attn.unsqueeze(-1) * h).sum(1)
            vmask = valid.unsqueeze(-1)
            max_pool = torch.where(vmask, h, torch.finfo(h.dtype).min).amax(1)
            mean_pool = (h * vmask).sum(1) / vmask.sum(1).clamp_min(1)
            pooled = torch.cat([attn_pool, max_pool, mean_pool], dim=-1)
            pooled = torch.where(any_valid, pooled, self.empty_token.expand(b, -1))
        else:
            attn = lesion_valid.new_zeros((b, 0), dtype=torch.float32)
            pooled = self.empty_token.expand(b, -1)
        glob = self.global_proj(self.norm_global(global_pooled.flatten(1))) * keep_image
        n_valid = torch.log1p(valid.sum(1, keepdim=True).float())
        pair = self.norm_pair(pair_features)
        x = torch.cat([pooled, glob, pair, n_valid], dim=-1)
        return HeadOutput(logits=self.classifier(x) + self.pair_linear(pair), attention=attn)

    def forward(
        self,
        feats_baseline: Sequence[torch.Tensor],
        feats_followup: Sequence[torch.Tensor],
        lesion_masks: torch.Tensor,
        lesion_valid: torch.Tensor,
        lesion_features: torch.Tensor,
        pair_features: torch.Tensor,
    ) -> HeadOutput:
        """Classify from encoder features and region masks.

        Args:
            feats_baseline: encoder levels of the baseline, finest first, [B, C_s, ...].
            feats_followup: encoder levels of the follow-up aligned to the baseline.
            lesion_masks: [B, L, D, H, W] union masks of the matched lesions (input grid).
            lesion_valid: [B, L] bool, False for padding.
            lesion_features: [B, L, n_lesion_features].
            pair_features: [B, n_pair_features].
        """
        lesion_pooled = pool_regions(feats_baseline, feats_followup, lesion_masks)
        global_pooled = pool_regions(
            feats_baseline, feats_followup, global_regions(lesion_masks, lesion_valid)
        )
        return self.forward_pooled(
            lesion_pooled, lesion_features, lesion_valid, global_pooled, pair_features
        )


class HeadEnsemble(nn.Module):
    """Heads trained alike from different initialisations; their logits are averaged.

    A few hundred training pairs leave a single head's call sensitive to its random start;
    averaging a handful of members steadies the call and the probabilities. The lesion weights
    are the members' mean attention. Exposes the interface of :class:`ChangePatternHead`.
    """

    def __init__(self, members: Sequence[ChangePatternHead]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one head")
        configs = [m.config() for m in members]
        if any(c != configs[0] for c in configs):
            raise ValueError("ensemble members must share one configuration")
        self.members = nn.ModuleList(members)

    def heads(self) -> list[ChangePatternHead]:
        """The members, typed."""
        return [m for m in self.members if isinstance(m, ChangePatternHead)]

    def config(self) -> dict[str, object]:
        """The members' constructor arguments plus ``n_members``."""
        return {**self.heads()[0].config(), "n_members": len(self.members)}

    def _mean(self, outs: Sequence[HeadOutput]) -> HeadOutput:
        return HeadOutput(
            logits=torch.stack([o.logits for o in outs]).mean(0),
            attention=torch.stack([o.attention for o in outs]).mean(0),
        )

    def forward_pooled(self, *args: torch.Tensor) -> HeadOutput:
        """Mean of the members' :meth:`ChangePatternHead.forward_pooled`."""
        return self._mean([m.forward_pooled(*args) for m in self.heads()])

    def forward(self, *args: Any) -> HeadOutput:
        """Mean of the members' :meth:`ChangePatternHead.forward`."""
        return self._mean([m(*args) for m in self.heads()])


def build_head(config: Mapping[str, Any]) -> ChangePatternHead | HeadEnsemble:
    """The head described by ``config`` (a saved ``config()``): one head, or an ensemble of
    ``n_members`` heads when that key is present and above 1."""
    cfg = dict(config)
    n = int(cfg.pop("n_members", 1))
    if n < 1:
        raise ValueError(f"n_members must be >= 1, got {n}")
    if n == 1:
        return ChangePatternHead(**cfg)
    return HeadEnsemble([ChangePatternHead(**cfg) for _ in range(n)])
