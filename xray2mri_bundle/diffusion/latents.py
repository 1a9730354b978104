"""Between image and diffusion space: ``z = scale * E1(x)`` on the way in, ``D(z / scale)`` on the way out."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["LATENT_TARGETS", "check_latent_target", "decode_slices", "latent_shape_of", "training_latents"]

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


@torch.no_grad()
def latent_shape_of(autoencoder: nn.Module, image_size: int) -> list[int]:
    """``[c, h, w]`` of E1's latent for a square slice of ``image_size`` px (what the diffusion model generates).

    Read from the autoencoder itself, so an autoencoder with another down-sampling factor than its profile's
    (e.g. ``autoencoder_def#channels`` overridden) records the right shape in the diffusion export.
    """
    parameter = next(autoencoder.parameters())
    probe = torch.zeros(1, int(autoencoder.encoder.in_channels), int(image_size), int(image_size),
                        device=parameter.device, dtype=parameter.dtype)
    return [int(n) for n in autoencoder.encode(probe)[0].shape[1:]]
