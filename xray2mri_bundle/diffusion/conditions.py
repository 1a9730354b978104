"""Conditions of the denoiser, computed once per X-ray and broadcast over a batch of depths.

For a knee crop x_c (1, 1, H, W) in [-1, 1] the UNet is conditioned on
- ``xray_latent``: E1(x_c), the MRI autoencoder's posterior mean, UNSCALED (Zero-1-to-3 concat conditioning),
  (1, 4, h, w) with h = H / 2**(levels - 1);
- ``context``: E2(x_c), the X-ray image embedding, (1, 1, 768);
- ``p_map``: the KOA classifier's per-location KL probabilities ``forward_maps`` -> (1, 5, 8, 8);
- ``i_map``: the X-ray intensity distribution, 16-bin histograms over an 8x8 grid -> (1, 16, 8, 8).
None of these depends on the depth, so a volume needs them once (the paper's Algorithm 2 recomputes them for
every slice; ``VolumeGenerator(per_slice_conditions=True)`` keeps that behaviour for comparison).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ConditionEncoder", "XrayConditions", "autoencoder_in_channels", "encode_xray"]

IntensityFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps one crop (1, H, W) in [-1, 1] to its intensity distribution (16, 8, 8)."""


@dataclass(frozen=True)
class XrayConditions:
    """Depth-independent conditions of X-ray crops (batch size 1 for one crop broadcast over depths, or B)."""

    xray_latent: torch.Tensor
    context: torch.Tensor | None
    p_map: torch.Tensor | None
    i_map: torch.Tensor | None
    kl_probs: torch.Tensor | None = None
    """(1, 5) softmax of the classifier's global logits; reported, not fed to the UNet."""

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape (C, h, w) of one diffusion latent (the UNet predicts as many channels as E1 produces)."""
        return tuple(self.xray_latent.shape[1:])

    def model_kwargs(self, depth: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """Keyword arguments of the UNet for a batch of depths (B,) in [0, 1].

        Conditions of one crop are broadcast with ``expand`` (views, no copies, no recomputation); conditions of
        B crops pair with the B depths.
        """
        batch = depth.shape[0]

        def expand(value: torch.Tensor | None) -> torch.Tensor | None:
            return None if value is None else value.expand(batch, *value.shape[1:])

        return {
            "xray_latent": expand(self.xray_latent),
            "context": expand(self.context),
            "depth": depth.to(self.xray_latent.device, self.xray_latent.dtype),
            "p_map": expand(self.p_map),
            "i_map": expand(self.i_map),
        }


def autoencoder_in_channels(autoencoder: nn.Module) -> int:
    """Channels the autoencoder E1 expects (3 for the paper's RGB-shaped MRI slices)."""
    encoder = getattr(autoencoder, "encoder", None)
    return int(getattr(encoder, "in_channels", 3))


def encode_xray(
    autoencoder: nn.Module, xray: torch.Tensor, classifier: nn.Module | None = None, channels: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The frozen networks' conditions of grey crops ``xray`` (B, 1, H, W) in [-1, 1]: ``(xray_latent, logits,
    p_map)``.

    ``xray_latent`` (B, 4, h, w) is E1's posterior mean of the crop repeated to ``channels`` (default: E1's input
    channels), unscaled; ``logits`` (B, 5) and ``p_map`` (B, 5, 8, 8) are the KOA classifier's ``forward_maps``
    (None without a classifier). The one place where sampling (:class:`ConditionEncoder`) and training (the
    diffusion PrepareBatch, the latent cache) compute them. No gradient handling here: callers decide.
    """
    channels = autoencoder_in_channels(autoencoder) if channels is None else int(channels)
    latent, _ = autoencoder.encode(xray.expand(-1, channels, -1, -1))
    logits = p_map = None
    if classifier is not None:
        logits, p_map = classifier.forward_maps(xray)
    return latent, logits, p_map


class ConditionEncoder:
    """Compute ``XrayConditions`` from a knee crop with the frozen stage-1/2 networks.

    Args:
        autoencoder: MONAI ``AutoencoderKL`` (E1); the grey crop is repeated to its input channels.
        xray_encoder: E2, maps (B, 1, H, W) -> (B, 1, 768); None gives the null context.
        classifier: KOA classifier with ``forward_maps(x) -> (logits (B, 5), p_map (B, 5, 8, 8))``; None gives
            the null p.
        intensity_fn: the intensity-distribution transform (one crop -> (16, 8, 8)); None gives the null i.
    """

    def __init__(
        self,
        autoencoder: nn.Module,
        xray_encoder: nn.Module | None = None,
        classifier: nn.Module | None = None,
        intensity_fn: IntensityFn | None = None,
    ) -> None:
        self.autoencoder = autoencoder
        self.xray_encoder = xray_encoder
        self.classifier = classifier
        self.intensity_fn = intensity_fn

    @property
    def in_channels(self) -> int:
        """Channels the autoencoder expects (3 for the paper's RGB-shaped MRI slices)."""
        return autoencoder_in_channels(self.autoencoder)

    @torch.inference_mode()
    def __call__(self, xray: torch.Tensor) -> XrayConditions:
        """Encode crops ``xray`` (1, H, W) or (B, 1, H, W) float in [-1, 1] (already on the networks' device)."""
        if xray.ndim == 3:
            xray = xray.unsqueeze(0)
        if xray.ndim != 4 or xray.shape[1] != 1:
            raise ValueError(f"expected grey crops (B, 1, H, W), got shape {tuple(xray.shape)}")
        latent, logits, p_map = encode_xray(self.autoencoder, xray, self.classifier)
        context = None if self.xray_encoder is None else self.xray_encoder(xray)
        kl_probs = None if logits is None else torch.softmax(logits.float(), dim=1)
        i_map = None
        if self.intensity_fn is not None:
            i_map = torch.stack([torch.as_tensor(self.intensity_fn(crop)) for crop in xray]).to(xray.device, xray.dtype)
        return XrayConditions(xray_latent=latent, context=context, p_map=p_map, i_map=i_map, kl_probs=kl_probs)
