"""Adaptive-weight fusion of the KOA probability map p and the X-ray intensity map i (paper Eq. 9-14).

The two guidance maps, as tensors:

- ``p``: KOA probability map, ``(B, 5, 8, 8)``: at each of 8 x 8 locations of the X-ray crop, the softmax over
  Kellgren-Lawrence grades 0-4 of the KOA classifier's per-location logits (``KOAClassifier.forward_maps``).
- ``i``: intensity-distribution map, ``(B, 16, 8, 8)``: the crop split into an 8 x 8 grid of cells, each cell's
  normalised 16-bin histogram of its [-1, 1] intensities (sums to 1 over the 16 bins).

``AdaptiveWeight`` is Eq. 9-14 itself on two maps of the same channel count; ``GuidanceEmbedding`` lifts p and
i to that channel count with 1 x 1 convolutions (5 and 16 channels cannot be summed in Eq. 14 otherwise), runs
``AdaptiveWeight``, averages the fused map over space and projects it to the UNet's time-embedding width with a
zero-initialised last layer, so a freshly built (or pretrained) UNet is unchanged until training moves it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["AdaptiveWeight", "GuidanceEmbedding"]


class AdaptiveWeight(nn.Module):
    """Paper Eq. 9-14 for two maps ``p, i`` of shape ``(B, C, h, w)``; returns the fused map ``(B, C, h, w)``.

    - Eq. 9/10: ``G_p = mu_p * (sum_{m,n} p_{m,n}^2 + kappa)^(1/2)``, one value per channel (learnable ``mu``
      per channel), likewise ``G_i``.
    - Eq. 11: ``Ĝ_p = G_p / (G_p + G_i + eps)``, ``Ĝ_i = G_i / (G_p + G_i + eps)``.
    - Eq. 12: ``p~ = p * (1 + sigmoid(nu_p * Ĝ_p + o_p))``, likewise ``i~`` (learnable ``nu``, ``o`` per channel).
    - Eq. 13: ``lambda = softmax((W_p p)^T (W_i i) / sqrt(d_k))``: attention between the ``h * w`` spatial tokens
      of p (queries) and of i (keys), ``(B, hw, hw)``, softmax over the keys.
    - Eq. 14: ``y = lambda · (p~ + i~)``: the attention weights applied to the tokens of the gated sum.

    Initialisation keeps the gate near identity: ``mu = nu = 1`` and ``o = o_init = -4``, so with
    ``Ĝ`` in [0, 1] the factor ``1 + sigmoid(nu * Ĝ + o)`` starts in [1.018, 1.047].

    Args:
        channels: C, the channel count of both maps.
        key_dim: d_k, the width of ``W_p p`` and ``W_i i``.
        kappa: constant under the square root of Eq. 9/10 (paper: 1e-5).
        eps: constant of the normalisation Eq. 11 (paper: 1e-8).
        mu_init, nu_init, o_init: initial values of the learnable per-channel parameters.
    """

    def __init__(
        self,
        channels: int,
        key_dim: int = 64,
        kappa: float = 1e-5,
        eps: float = 1e-8,
        mu_init: float = 1.0,
        nu_init: float = 1.0,
        o_init: float = -4.0,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.key_dim = key_dim
        self.kappa = kappa
        self.eps = eps
        self.mu_p = nn.Parameter(torch.full((channels,), mu_init))
        self.mu_i = nn.Parameter(torch.full((channels,), mu_init))
        self.nu_p = nn.Parameter(torch.full((channels,), nu_init))
        self.nu_i = nn.Parameter(torch.full((channels,), nu_init))
        self.o_p = nn.Parameter(torch.full((channels,), o_init))
        self.o_i = nn.Parameter(torch.full((channels,), o_init))
        self.w_p = nn.Linear(channels, key_dim, bias=False)
        self.w_i = nn.Linear(channels, key_dim, bias=False)

    def channel_weight(self, x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        """Eq. 9/10: ``mu * (sum over space of x^2 + kappa)^(1/2)``, ``(B, C, h, w) -> (B, C)``."""
        return mu * torch.sqrt(x.pow(2).sum(dim=(2, 3)) + self.kappa)

    def gates(self, p: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 9-12: the gate factors ``1 + sigmoid(nu * Ĝ + o)`` for p and i, each ``(B, C)``."""
        g_p = self.channel_weight(p, self.mu_p)
        g_i = self.channel_weight(i, self.mu_i)
        total = g_p + g_i + self.eps
        gate_p = 1.0 + torch.sigmoid(self.nu_p * (g_p / total) + self.o_p)
        gate_i = 1.0 + torch.sigmoid(self.nu_i * (g_i / total) + self.o_i)
        return gate_p, gate_i

    def attention(self, p: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """Eq. 13: joint weight ``lambda`` between spatial tokens, ``(B, h*w, h*w)`` (rows sum to 1)."""
        queries = self.w_p(p.flatten(2).transpose(1, 2))  # (B, hw, d_k)
        keys = self.w_i(i.flatten(2).transpose(1, 2))  # (B, hw, d_k)
        scores = queries @ keys.transpose(1, 2) / math.sqrt(self.key_dim)
        return torch.softmax(scores, dim=-1)

    def forward(self, p: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        if p.shape != i.shape:
            raise ValueError(f"p and i must have the same shape after lifting, got {tuple(p.shape)}, {tuple(i.shape)}")
        batch, channels, height, width = p.shape
        gate_p, gate_i = self.gates(p, i)
        gated_sum = p * gate_p[:, :, None, None] + i * gate_i[:, :, None, None]  # p~ + i~, Eq. 12
        weights = self.attention(p, i)  # Eq. 13
        fused = weights @ gated_sum.flatten(2).transpose(1, 2)  # Eq. 14, (B, hw, C)
        return fused.transpose(1, 2).reshape(batch, channels, height, width)


class GuidanceEmbedding(nn.Module):
    """Guidance maps ``p (B, P, h, w)`` and ``i (B, I, h, w)`` -> embedding ``(B, out_dim)`` added in the up path.

    Steps: 1 x 1 convolutions lift p and i to ``channels``; ``AdaptiveWeight`` (Eq. 9-14) fuses them; the fused
    map is averaged over space and projected by ``Linear -> SiLU -> Linear`` to ``out_dim`` (the UNet's
    time-embedding width). The last linear layer starts at zero, so the module is a no-op at initialisation.
    """

    def __init__(
        self,
        out_dim: int,
        p_channels: int = 5,
        i_channels: int = 16,
        channels: int = 64,
        key_dim: int = 64,
        o_init: float = -4.0,
    ) -> None:
        super().__init__()
        self.lift_p = nn.Conv2d(p_channels, channels, kernel_size=1)
        self.lift_i = nn.Conv2d(i_channels, channels, kernel_size=1)
        self.fuse = AdaptiveWeight(channels, key_dim=key_dim, o_init=o_init)
        self.proj = nn.Sequential(nn.Linear(channels, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
        nn.init.zeros_(self.proj[-1].weight)
        nn.init.zeros_(self.proj[-1].bias)

    def forward(self, p: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        fused = self.fuse(self.lift_p(p), self.lift_i(i))
        return self.proj(fused.mean(dim=(2, 3)))
