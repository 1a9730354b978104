"""Stage-1 AutoencoderKL (E1, D) per profile: MRI slice ``(B, 3, H, W)`` <-> latent ``(B, 4, H/8, W/8)``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from monai.networks import nets

from .config import register_to_config
from .profiles import get_profile

__all__ = ["AutoencoderKL", "build_autoencoder"]


@register_to_config
class AutoencoderKL(nets.AutoencoderKL):
    """MONAI's ``AutoencoderKL`` unchanged (same arguments, forward and state dict) that records its constructor
    arguments as ``config`` for the checkpoint writer (``xray2mri_bundle.networks.config``)."""


def build_autoencoder(
    profile: str | Mapping[str, Any] = "small", config_dir: str | os.PathLike | None = None, **overrides: Any
) -> AutoencoderKL:
    """``AutoencoderKL`` with the profile's settings (``overrides`` replace single keyword arguments).

    paper: 256 px, channels 128/256/512/512, 2 residual blocks per level, no dropout, latent 4 x 32 x 32.
    small: 128 px, latent 4 x 16 x 16. tiny: 64 px, latent 4 x 8 x 8.
    """
    kwargs = get_profile(profile, config_dir)["autoencoder"]
    kwargs.update(overrides)
    return AutoencoderKL(**kwargs)
