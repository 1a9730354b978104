"""Stage-1 AutoencoderKL (E1, D) per profile: MRI slice ``(B, 3, H, W)`` <-> latent ``(B, 4, H/8, W/8)``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from monai.networks.nets import AutoencoderKL

from .profiles import get_profile

__all__ = ["build_autoencoder"]


def build_autoencoder(profile: str | Mapping[str, Any] = "small", **overrides: Any) -> AutoencoderKL:
    """MONAI ``AutoencoderKL`` with the profile's settings (``overrides`` replace single keyword arguments).

    paper: 256 px, channels 128/256/512/512, 2 residual blocks per level, no dropout, latent 4 x 32 x 32.
    small: 128 px, latent 4 x 16 x 16. tiny: 64 px, latent 4 x 8 x 8.
    """
    kwargs = get_profile(profile)["autoencoder"]
    kwargs.update(overrides)
    return AutoencoderKL(**kwargs)
