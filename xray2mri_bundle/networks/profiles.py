"""Network sizes per profile ("paper", "small", "tiny"), read from the bundle's JSON configs: defined once there.

The bundle configs spell every network out as a MONAI ``network_def``-style dict: ``configs/common.json`` holds
the paper's (``autoencoder_def``, ``classifier_def``, ``unet_def``, ``xray_encoder_def``: ``_target_`` plus the
constructor keywords) and ``image_size``; ``configs/profiles/<name>.json`` replaces them for a smaller profile
(MONAI merges config files key by key at the top level). :func:`get_profile` reads the same two files, so the
Python ``build_*(profile)`` helpers and the bundle runs build the same networks from one definition. A trained
checkpoint needs neither: it stores the arguments its networks recorded (``xray2mri_bundle.checkpoint``).

- ``paper``: the published settings (AutoencoderKL 128/256/512/512, UNet 320/640/1280/1280, 8 heads,
  context 768). GPU only: about 860 M UNet parameters.
- ``small``: 128 px slices, latent 4 x 16 x 16 (same down-sampling factor 8 as the paper), a UNet of a few
  million parameters sized so that a 50-slice volume samples on 2 CPU cores (see docs/networks.md).
- ``tiny``: 64 px slices, latent 4 x 8 x 8; for tests only.

The configs are read from ``config_dir``, by default ``configs/`` of the current folder (the bundle root, as
for the other commands that read the checkout); an installed package outside a checkout has no profiles and
says so (FileNotFoundError naming the missing file).
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["NETWORK_DEFS", "PROFILE_NAMES", "get_profile", "profile_config_files"]

#: the profiles shipped in ``configs/profiles/``
PROFILE_NAMES: tuple[str, ...] = ("paper", "small", "tiny")
#: profile part -> its ``network_def`` key in the bundle configs
NETWORK_DEFS: dict[str, str] = {
    "autoencoder": "autoencoder_def", "classifier": "classifier_def", "unet": "unet_def",
    "xray_encoder": "xray_encoder_def",
}


def _config_folder(config_dir: str | os.PathLike | None) -> Path:
    """The bundle's config folder: ``config_dir``, default ``configs/`` of the current folder (absolute)."""
    return (Path(config_dir) if config_dir is not None else Path.cwd() / "configs").resolve()


def profile_config_files(profile: str, config_dir: str | os.PathLike | None = None) -> list[Path]:
    """``[<config_dir>/common.json, <config_dir>/profiles/<profile>.json]``, checked to exist."""
    if profile not in PROFILE_NAMES:
        raise KeyError(f"unknown network profile {profile!r}; choose one of {', '.join(PROFILE_NAMES)}")
    folder = _config_folder(config_dir)
    files = [folder / "common.json", folder / "profiles" / f"{profile}.json"]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: network profile {profile!r} is read from the bundle's configs; run from the "
                "bundle folder or pass config_dir (a trained checkpoint needs no profile)")
    return files


@functools.lru_cache(maxsize=16)
def _read_profile(profile: str, folder: str) -> dict[str, Any]:
    from monai.bundle import ConfigParser  # MONAI's merge of config files (top-level keys replaced)

    merged = ConfigParser.load_config_files([str(p) for p in profile_config_files(profile, folder)])
    sizes: dict[str, Any] = {"image_size": int(merged["image_size"])}
    for part, key in NETWORK_DEFS.items():
        # constructor keywords only: the class (`_target_`) and the condition flags, which refer to the stage
        # settings (`@use_depth`, ...) and default to the class's own defaults, are not sizes
        sizes[part] = {k: v for k, v in merged[key].items()
                       if k != "_target_" and not (isinstance(v, str) and v[:1] in "@$%")}
    autoencoder = sizes["autoencoder"]
    side = sizes["image_size"] // 2 ** (len(autoencoder["channels"]) - 1)
    sizes["image_channels"] = int(autoencoder["in_channels"])
    sizes["latent_shape"] = [int(autoencoder["latent_channels"]), side, side]
    return sizes


def get_profile(profile: str | Mapping[str, Any], config_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Sizes of a named profile (a fresh copy): ``image_size``, ``image_channels``, ``latent_shape`` and the
    constructor keywords of ``autoencoder``, ``classifier``, ``unet``, ``xray_encoder``; a profile dictionary
    given directly (custom sizes) is returned as a copy."""
    if isinstance(profile, Mapping):
        return copy.deepcopy(dict(profile))
    return copy.deepcopy(_read_profile(profile, str(_config_folder(config_dir))))
