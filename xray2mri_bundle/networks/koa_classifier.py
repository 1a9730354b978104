"""KOA classifier C: a MONAI 2-D DenseNet grading an X-ray crop into Kellgren-Lawrence grades 0-4.

Besides the logits it gives the KOA probability map p ``(B, 5, 8, 8)`` that guides the UNet's up path: the
classification layer applied at every location of the last feature map (global average pooling and a linear
layer commute, so these per-location logits average exactly to the image logits), resampled to 8 x 8 and
passed through a softmax over the grades.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import DenseNet

from .config import register_to_config
from .profiles import get_profile

__all__ = ["KOAClassifier", "build_classifier"]


@register_to_config
class KOAClassifier(DenseNet):
    """DenseNet (MONAI, ``spatial_dims=2``) on an X-ray crop ``(B, 1, H, W)`` in [-1, 1].

    ``forward(x) -> logits (B, num_classes)``; ``forward_maps(x) -> (logits, p_map (B, num_classes, s, s))``
    with ``s = map_size`` (8). The default sizes are DenseNet-121's; a 256 px input gives an 8 x 8 feature map.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 5,
        init_features: int = 64,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        bn_size: int = 4,
        dropout_prob: float = 0.0,
        map_size: int = 8,
    ) -> None:
        # MONAI DenseNet(spatial_dims, in_channels, out_channels, init_features, growth_rate, block_config, bn_size)
        super().__init__(2, in_channels, num_classes, init_features, growth_rate, block_config, bn_size,
                         dropout_prob=dropout_prob)
        self.num_classes = num_classes
        self.map_size = map_size

    def logit_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Per-location logits ``(B, num_classes, h, w)`` on the last feature map (h = H / 32)."""
        features = self.class_layers.relu(self.features(x))
        linear = self.class_layers.out
        return torch.einsum("bchw,kc->bkhw", features, linear.weight) + linear.bias[None, :, None, None]

    def forward_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """X-ray ``(B, 1, H, W)`` -> ``(logits (B, K), p_map (B, K, 8, 8))``, p_map sums to 1 over K."""
        maps = self.logit_maps(x)
        logits = maps.mean(dim=(2, 3))
        size = (self.map_size, self.map_size)
        if maps.shape[-2] >= self.map_size and maps.shape[-1] >= self.map_size:
            maps = F.adaptive_avg_pool2d(maps, size)
        else:
            maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        return logits, torch.softmax(maps, dim=1)


def build_classifier(
    profile: str | Mapping[str, Any] = "small", config_dir: str | os.PathLike | None = None, **overrides: Any
) -> KOAClassifier:
    """KOA classifier with the profile's sizes (paper: DenseNet-121; small and tiny: narrower DenseNets)."""
    kwargs = get_profile(profile, config_dir)["classifier"]
    kwargs.update(overrides)
    return KOAClassifier(**kwargs)
