"""Network sizes per profile ("paper", "small", "tiny") as plain JSON-friendly dictionaries.

Each profile holds the keyword arguments of every network for the Python ``build_*`` helpers. The bundle configs
spell the same arguments out as ``network_def``-style dicts (``configs/common.json``: the paper's ``*_def``;
``configs/profiles/<name>.json`` replaces them); ``tests/test_checkpoint.py`` checks that both agree. A trained
checkpoint does not depend on either: it stores the arguments its networks recorded (``xray2mri_bundle.checkpoint``).

- ``paper``: the published settings (AutoencoderKL 128/256/512/512, UNet 320/640/1280/1280, 8 heads,
  context 768). GPU only: about 860 M UNet parameters.
- ``small``: 128 px slices, latent 4 x 16 x 16 (same down-sampling factor 8 as the paper), a UNet of a few
  million parameters sized so that a 50-slice volume samples on 2 CPU cores (see docs/networks.md).
- ``tiny``: 64 px slices, latent 4 x 8 x 8; for tests only.

The X-ray embedding (cross-attention context) is 768 wide in every profile, as the data/engine code
expects ``(B, 1, 768)``; the depth code appended to it has 4 values, so the context projection is
``Linear(772, 768)`` like Zero-1-to-3's ``cc_projection``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = ["PROFILES", "PROFILE_NAMES", "get_profile"]

CONTEXT_DIM = 768
DEPTH_CODE_DIM = 4

PROFILES: dict[str, dict[str, Any]] = {
    "paper": {
        "image_size": 256,
        "image_channels": 3,
        "latent_shape": [4, 32, 32],
        "autoencoder": {
            "spatial_dims": 2,
            "in_channels": 3,
            "out_channels": 3,
            "channels": [128, 256, 512, 512],
            "num_res_blocks": 2,
            # Like the LDM kl-f8 autoencoder: no attention inside the levels, one self-attention block in
            # the encoder's and the decoder's middle (the "non-local" block).
            "attention_levels": [False, False, False, False],
            "latent_channels": 4,
            "norm_num_groups": 32,
            "norm_eps": 1e-6,
            "with_encoder_nonlocal_attn": True,
            "with_decoder_nonlocal_attn": True,
        },
        "unet": {
            "latent_channels": 4,
            "channels": [320, 640, 1280, 1280],
            "num_res_blocks": 2,
            "attention_levels": [True, True, True, False],
            # 8 heads at every level: head width = channels / 8.
            "num_head_channels": [40, 80, 160, 160],
            "transformer_num_layers": 1,
            "cross_attention_dim": CONTEXT_DIM,
            "context_dim": CONTEXT_DIM,
            "depth_code_dim": DEPTH_CODE_DIM,
            "guidance_channels": 128,
            "guidance_key_dim": 64,
            "norm_num_groups": 32,
        },
        # DenseNet-121 layout: a 256 px X-ray gives an 8 x 8 final feature map.
        "classifier": {"init_features": 64, "growth_rate": 32, "block_config": [6, 12, 24, 16]},
        "xray_encoder": {"channels": [64, 128, 256, 512], "embed_dim": CONTEXT_DIM},
    },
}


def _derived(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``changes`` applied: nested dicts merged key by key, other values replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in changes.items():
        merged[key] = _derived(merged[key], value) if isinstance(value, Mapping) else copy.deepcopy(value)
    return merged


# The smaller profiles list only what differs from the paper's.
PROFILES["small"] = _derived(PROFILES["paper"], {
    "image_size": 128,
    "latent_shape": [4, 16, 16],
    "autoencoder": {"channels": [32, 32, 64, 64], "num_res_blocks": 1},
    "unet": {
        "channels": [32, 64, 128], "num_res_blocks": 1, "attention_levels": [False, False, True],
        "num_head_channels": [32, 32, 32], "guidance_channels": 64, "guidance_key_dim": 32,
    },
    "classifier": {"init_features": 32, "growth_rate": 16, "block_config": [2, 4, 8, 6]},
    "xray_encoder": {"channels": [32, 64, 128, 256]},
})
PROFILES["tiny"] = _derived(PROFILES["small"], {
    "image_size": 64,
    "latent_shape": [4, 8, 8],
    "autoencoder": {
        "channels": [32, 32, 32, 32], "with_encoder_nonlocal_attn": False, "with_decoder_nonlocal_attn": False,
    },
    "unet": {
        "channels": [32, 32], "attention_levels": [False, True], "num_head_channels": [16, 16],
        "guidance_channels": 16, "guidance_key_dim": 16,
    },
    "classifier": {"init_features": 16, "growth_rate": 8, "block_config": [1, 1, 1, 1]},
    "xray_encoder": {"channels": [16, 32]},
})

PROFILE_NAMES: tuple[str, ...] = tuple(PROFILES)


def get_profile(profile: str | Mapping[str, Any]) -> dict[str, Any]:
    """Return a deep copy of a named profile, or of a profile dictionary given directly (custom sizes)."""
    if isinstance(profile, Mapping):
        return copy.deepcopy(dict(profile))
    if profile not in PROFILES:
        raise KeyError(f"unknown network profile {profile!r}; choose one of {', '.join(PROFILE_NAMES)}")
    return copy.deepcopy(PROFILES[profile])
