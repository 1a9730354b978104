"""Between image and diffusion space: ``z = scale * E1(x)`` on the way in, ``D(z / scale)`` on the way out."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["LATENT_TARGETS", "check_latent_target", "decode_slices", "training_latents"]

#: what the diffusion model learns to generate from E1's posterior N(mu, sigma^2) of a slice: a fresh draw
#: ``mu + sigma * eps`` at every step (the LDM recipe) or the posterior mean ``mu`` (docs/training.md compares them)
LATENT_TARGETS = ("sample", "mean")


def check_latent_target(latent_target: object) -> str:
    """``latent_target`` if it is one of ``LATENT_TARGETS``; ``ValueError`` otherwise."""
    if latent_target not in LATENT_TARGETS:
        raise ValueError(f"latent_target must be one of {LATENT_TARGETS}, got {latent_target!r}")
    return str(latent_target)


def training_latents(
    mu: torch.Tensor, sigma: torch.Tensor, latent_target: str = "sample",
    noise: Callable[[torch.Tensor], torch.Tensor] = torch.randn_like,
) -> torch.Tensor:
    """Unscaled training latents (B, 4, h, w) from E1's posterior: ``mu + sigma * noise(mu)`` or ``mu``.

    ``noise`` draws a standard normal tensor like its argument (a seeded generator in validation).
    """
    if check_latent_target(latent_target) == "mean":
        return mu
    return mu + sigma * noise(mu)


def decode_slices(
    autoencoder: nn.Module, latents: torch.Tensor, scale_factor: float, grey: bool = True
) -> torch.Tensor:
    """D(z / scale) in [-1, 1], float32, on the latents' device.

    ``grey``: the decoder's identical channels averaged, (B, H, W) (generated volumes); else (B, C, H, W).
    ``scale_factor`` is the latent scale stored with the diffusion checkpoint (``ScaleFactor.value``).
    """
    images = autoencoder.decode(latents / float(scale_factor or 1.0)).float()
    return (images.mean(dim=1) if grey else images).clamp(-1.0, 1.0)
