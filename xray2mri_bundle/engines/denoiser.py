"""The trainable part of the diffusion stage: the conditional UNet U plus the X-ray image encoder E2.

E2 is trained together with U (the paper takes it from a pretrained image encoder; here the default encoder
is trainable, a frozen local CLIP encoder also fits), so the crop goes through E2 inside the network's forward
and gradients reach it. At sampling time the context is computed once per X-ray and passed directly.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["XrayDenoiser"]


class XrayDenoiser(nn.Module):
    """``eps = U(x_t, t, xray_latent, E2(x_c), depth, p, i)`` with classifier-free-guidance masks.

    Args:
        unet: ``XrayConditionedUNet`` (forward ``(x, timesteps, xray_latent, context, depth, p_map, i_map,
            drop_context, drop_latent)``).
        xray_encoder: E2, (B, 1, H, W) -> (B, 1, 768); None always uses the UNet's null context.
    """

    def __init__(self, unet: nn.Module, xray_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.unet = unet
        self.xray_encoder = xray_encoder

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        xray: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        **conditions: torch.Tensor | None,
    ) -> torch.Tensor:
        """x: noisy latents (B, 4, h, w); xray: crops (B, 1, H, W) for E2 (ignored when ``context`` is given);
        ``conditions``: the UNet's other keyword inputs (``xray_latent``, ``depth``, ``p_map``, ``i_map`` and the
        ``drop_*`` masks), passed on unchanged. Returns the UNet's prediction (B, 4, h, w)."""
        if context is None and xray is not None and self.xray_encoder is not None:
            context = self.xray_encoder(xray)
        return self.unet(x, timesteps, context=context, **conditions)
