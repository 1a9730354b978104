"""X-ray encoders E2: X-ray crop ``(B, 1, H, W)`` in [-1, 1] -> image embedding ``(B, 1, 768)`` (the UNet context).

- ``XrayEncoder``: small trainable CNN (default; trained with the UNet).
- ``ClipImageEncoder``: frozen CLIP ViT-L/14 image encoder as in the paper, loaded only from a local folder
  (Hugging Face ``transformers`` layout); nothing is ever downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

from .config import register_to_config
from .profiles import get_profile

__all__ = ["ClipImageEncoder", "XrayEncoder", "build_xray_encoder"]

# CLIP's image normalisation (RGB mean and std of its training images).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@register_to_config
class XrayEncoder(nn.Module):
    """Trainable CNN: strided conv blocks (GroupNorm, SiLU) -> global average -> Linear -> LayerNorm.

    Input ``(B, in_channels, H, W)`` of any size; output ``(B, 1, embed_dim)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128, 256),
        embed_dim: int = 768,
        norm_num_groups: int = 8,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for width in channels:
            layers.append(
                Convolution(
                    spatial_dims=2,
                    in_channels=previous,
                    out_channels=width,
                    strides=2,
                    kernel_size=3,
                    act="swish",
                    norm=("group", {"num_groups": min(norm_num_groups, width)}),
                )
            )
            previous = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(previous, embed_dim)
        self.norm = nn.LayerNorm(embed_dim)
        self.embed_dim = embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x).mean(dim=(2, 3))
        return self.norm(self.head(pooled))[:, None, :]


class ClipImageEncoder(nn.Module):
    """Frozen CLIP image encoder: X-ray ``(B, 1, H, W)`` in [-1, 1] -> projected image embedding ``(B, 1, D)``.

    The X-ray is mapped to [0, 1], repeated to RGB, resized to ``image_size`` and normalised with CLIP's mean and
    std, then ``vision_model(pixel_values=...).image_embeds`` is returned. ``vision_model`` is a
    ``transformers.CLIPVisionModelWithProjection``; build it with ``ClipImageEncoder.from_folder(path)``.
    Its parameters never train (``requires_grad`` off, always in eval mode).
    """

    def __init__(self, vision_model: nn.Module, image_size: int = 224) -> None:
        super().__init__()
        self.vision_model = vision_model
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.vision_model.requires_grad_(False)
        self.vision_model.eval()

    @classmethod
    def from_folder(cls, folder: str | Path, image_size: int = 224) -> ClipImageEncoder:
        """Load CLIP ViT-L/14 (``CLIPVisionModelWithProjection``) from a local folder; never downloads."""
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"CLIP image encoder folder not found: {path}. Put a local copy of a CLIP vision model there (for "
                "example openai/clip-vit-large-patch14 saved with transformers' save_pretrained: config.json and "
                "model weights); this project never downloads weights."
            )
        try:
            from transformers import CLIPVisionModelWithProjection
        except ImportError as error:
            raise ImportError(
                "ClipImageEncoder needs the Hugging Face `transformers` package: pip install transformers "
                "(or use the trainable XrayEncoder, the default)."
            ) from error
        model = CLIPVisionModelWithProjection.from_pretrained(str(path), local_files_only=True)
        encoder = cls(model, image_size=image_size)
        # the folder is the user's, not the model's: the checkpoint reader asks for it again (``clip_folder``)
        encoder.config = {"_target_": f"{cls.__module__}.{cls.__qualname__}.from_folder", "image_size": image_size}
        return encoder

    def train(self, mode: bool = True) -> ClipImageEncoder:
        super().train(mode)
        self.vision_model.eval()
        return self

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """X-ray ``(B, 1, H, W)`` in [-1, 1] -> CLIP pixel values ``(B, 3, S, S)``."""
        x = ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        return (x.clamp(0.0, 1.0) - self.mean) / self.std

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embeds = self.vision_model(pixel_values=self.preprocess(x)).image_embeds
        return embeds[:, None, :]


def build_xray_encoder(
    profile: str | Mapping[str, Any] = "small", kind: str = "trainable", clip_folder: str | Path | None = None,
    config_dir: str | os.PathLike | None = None,
) -> nn.Module:
    """E2 for a profile: ``kind="trainable"`` (``XrayEncoder``) or ``"clip"`` (``ClipImageEncoder``, local folder)."""
    if kind == "trainable":
        return XrayEncoder(**get_profile(profile, config_dir)["xray_encoder"])
    if kind == "clip":
        if clip_folder is None:
            raise ValueError("kind='clip' needs clip_folder, a local folder holding the CLIP vision model")
        return ClipImageEncoder.from_folder(clip_folder)
    raise ValueError(f"unknown X-ray encoder kind {kind!r}; choose 'trainable' or 'clip'")
