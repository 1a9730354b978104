"""Between image and diffusion space: ``z = scale * E1(x)`` on the way in, ``D(z / scale)`` on the way out."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["decode_slices"]


def decode_slices(
    autoencoder: nn.Module, latents: torch.Tensor, scale_factor: float, grey: bool = True
) -> torch.Tensor:
    """D(z / scale) in [-1, 1], float32, on the latents' device.

    ``grey``: the decoder's identical channels averaged, (B, H, W) (generated volumes); else (B, C, H, W).
    ``scale_factor`` is the latent scale stored with the diffusion checkpoint (``ScaleFactor.value``).
    """
    images = autoencoder.decode(latents / float(scale_factor or 1.0)).float()
    return (images.mean(dim=1) if grey else images).clamp(-1.0, 1.0)
