"""X-ray conditioned UNet: MONAI's ``DiffusionModelUNet`` with depth in the down path and p/i guidance in the up path.

Conditions (paper section 2.2, Zero-1-to-3 conventions for the first two):

- X-ray latent ``(B, 4, h, w)``: concatenated to the noisy latent (8 input channels); zeros when absent/dropped.
- X-ray embedding ``context (B, 1, 768)``: joined with a Fourier code of the depth and passed through an
  identity-initialised ``Linear(768 + k, 768)`` (like Zero-1-to-3's ``cc_projection``); the result is the
  cross-attention context of every transformer block. A learned null embedding (zeros at start) replaces it when
  absent/dropped.
- depth ``d (B,)`` in [0, 1]: sinusoidal embedding + MLP, ADDED to the time embedding that the down blocks and the
  middle block see (and, through the depth code, to the context).
- guidance ``p (B, 5, 8, 8)`` and ``i (B, 16, 8, 8)``: fused by ``GuidanceEmbedding`` (paper Eq. 9-14) and ADDED
  to the time embedding that the up blocks see.

The depth MLP and the guidance projection end in zero-initialised layers, and the depth columns of the context
projection start at zero, so a new model (or one loaded from LDM/Zero-1-to-3 weights) starts as the plain
X-ray conditioned UNet and learns how much depth and guidance to use.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn
from torch.utils.checkpoint import checkpoint

from .adaptive_weight import GuidanceEmbedding
from .config import register_to_config
from .profiles import get_profile

__all__ = ["XrayConditionedUNet", "build_unet", "depth_fourier_code"]


def depth_fourier_code(depth: torch.Tensor, dim: int) -> torch.Tensor:
    """Fourier code of depth ``d (B,)`` in [0, 1]: ``[sin(pi 2^j d), cos(pi 2^j d)]`` for j < dim/2 -> ``(B, dim)``."""
    if dim % 2:
        raise ValueError(f"depth_code_dim must be even, got {dim}")
    freqs = math.pi * 2.0 ** torch.arange(dim // 2, dtype=torch.float32, device=depth.device)
    args = depth.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


def _rows(mask: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor | None:
    """Validate a drop mask ``(B,)`` of booleans; returns it on ``device`` (None stays None)."""
    if mask is None:
        return None
    mask = torch.as_tensor(mask, device=device).bool().reshape(-1)
    if mask.numel() != batch:
        raise ValueError(f"drop mask must have shape ({batch},), got {tuple(mask.shape)}")
    return mask


@register_to_config
class XrayConditionedUNet(DiffusionModelUNet):
    """Conditional latent-diffusion UNet predicting the noise ``eps (B, latent_channels, h, w)``.

    Args:
        latent_channels: channels of the noisy latent and of the X-ray latent (4); output has this many.
        channels, num_res_blocks, attention_levels, num_head_channels, transformer_num_layers, norm_num_groups,
        norm_eps, resblock_updown, upcast_attention, use_flash_attention: as in ``DiffusionModelUNet``
            (``num_head_channels`` is the width of one head: channels / 8 gives 8 heads).
        cross_attention_dim: width of the context seen by cross-attention.
        context_dim: width of the incoming X-ray embedding (768).
        depth_code_dim: k, size of the depth Fourier code appended to the embedding before projection.
        depth_scale: depth is multiplied by this before the sinusoidal embedding (1000: the timestep range).
        guidance_channels, guidance_key_dim: common channel count of p and i and d_k of ``AdaptiveWeight``.
        p_channels, i_channels: channels of the guidance maps (5 KL grades, 16 histogram bins).
        use_depth, use_xray_latent, use_context, use_guidance: switch a condition off (ablations); its layers are
            then not built and its inputs are ignored. Without ``use_xray_latent`` the UNet has
            ``latent_channels`` inputs; without ``use_context`` it has self-attention instead of
            cross-attention.
        use_checkpoint: gradient checkpointing over the down, middle and up blocks while training.
    """

    def __init__(
        self,
        latent_channels: int = 4,
        channels: Sequence[int] = (320, 640, 1280, 1280),
        num_res_blocks: Sequence[int] | int = 2,
        attention_levels: Sequence[bool] = (True, True, True, False),
        num_head_channels: Sequence[int] | int = (40, 80, 160, 160),
        transformer_num_layers: int = 1,
        cross_attention_dim: int = 768,
        context_dim: int = 768,
        depth_code_dim: int = 4,
        depth_scale: float = 1000.0,
        guidance_channels: int = 64,
        guidance_key_dim: int = 64,
        p_channels: int = 5,
        i_channels: int = 16,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        resblock_updown: bool = False,
        upcast_attention: bool = False,
        use_flash_attention: bool = False,
        use_depth: bool = True,
        use_xray_latent: bool = True,
        use_context: bool = True,
        use_guidance: bool = True,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__(
            spatial_dims=2,
            in_channels=latent_channels * (2 if use_xray_latent else 1),
            out_channels=latent_channels,
            num_res_blocks=num_res_blocks,
            channels=channels,
            attention_levels=attention_levels,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            resblock_updown=resblock_updown,
            num_head_channels=num_head_channels,
            with_conditioning=use_context,
            transformer_num_layers=transformer_num_layers,
            cross_attention_dim=cross_attention_dim if use_context else None,
            upcast_attention=upcast_attention,
            use_flash_attention=use_flash_attention,
        )
        self.latent_channels, self.context_dim, self.depth_scale = latent_channels, context_dim, depth_scale
        self.depth_code_dim = depth_code_dim if (use_depth and use_context) else 0
        # which conditions this network takes (the ablations switch them off)
        self.use_depth, self.use_xray_latent, self.use_context, self.use_guidance = (
            use_depth, use_xray_latent, use_context, use_guidance)
        self.use_checkpoint = use_checkpoint
        time_embed_dim = channels[0] * 4

        if use_depth:
            self.depth_embed = nn.Sequential(
                nn.Linear(channels[0], time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim)
            )
            nn.init.zeros_(self.depth_embed[-1].weight)
            nn.init.zeros_(self.depth_embed[-1].bias)
        if use_context:
            self.null_context = nn.Parameter(torch.zeros(1, 1, context_dim))
            self.context_proj = nn.Linear(context_dim + self.depth_code_dim, cross_attention_dim)
            with torch.no_grad():
                self.context_proj.weight.zero_()
                self.context_proj.bias.zero_()
                eye = torch.eye(cross_attention_dim, context_dim)
                self.context_proj.weight[:, :context_dim].copy_(eye)
        if use_guidance:
            self.guidance = GuidanceEmbedding(
                out_dim=time_embed_dim,
                p_channels=p_channels,
                i_channels=i_channels,
                channels=guidance_channels,
                key_dim=guidance_key_dim,
            )

    # ----------------------------------------------------------------------------------------------------------
    # conditions
    def time_embedding(self, timesteps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Timesteps ``(B,)`` -> embedding ``(B, 4 * channels[0])`` (MONAI's sinusoidal embedding + MLP)."""
        t_emb = get_timestep_embedding(timesteps, self.block_out_channels[0]).to(dtype=dtype)
        return self.time_embed(t_emb)

    def depth_embedding(self, depth: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Depth ``(B,)`` in [0, 1] -> embedding ``(B, 4 * channels[0])`` added in the down path."""
        d_emb = get_timestep_embedding(depth.float() * self.depth_scale, self.block_out_channels[0]).to(dtype)
        return self.depth_embed(d_emb)

    def guidance_embedding(self, p_map: torch.Tensor | None, i_map: torch.Tensor | None) -> torch.Tensor:
        """Guidance maps -> embedding ``(B, 4 * channels[0])`` added in the up path; a missing map is zeros."""
        reference = p_map if p_map is not None else i_map
        assert reference is not None
        batch, _, height, width = reference.shape
        if p_map is None:
            p_map = reference.new_zeros(batch, self.guidance.lift_p.in_channels, height, width)
        if i_map is None:
            i_map = reference.new_zeros(batch, self.guidance.lift_i.in_channels, height, width)
        return self.guidance(p_map, i_map)

    def build_context(
        self,
        context: torch.Tensor | None,
        depth_code: torch.Tensor,
        drop_context: torch.Tensor | None,
    ) -> torch.Tensor:
        """X-ray embedding ``(B, 1, context_dim)`` (or null) + depth code ``(B, k)`` -> context ``(B, 1, D)``."""
        batch = depth_code.shape[0]
        null = self.null_context.to(depth_code.dtype).expand(batch, 1, -1)
        if context is None:
            context = null
        else:
            if context.ndim == 2:
                context = context[:, None, :]
            if context.shape[1] != 1:
                raise ValueError(f"context must be (B, 1, {self.context_dim}), got {tuple(context.shape)}")
            if drop_context is not None:
                context = torch.where(drop_context[:, None, None], null, context)
        return self.context_proj(torch.cat([context, depth_code[:, None, :].to(context.dtype)], dim=-1))

    def build_input(
        self, x: torch.Tensor, xray_latent: torch.Tensor | None, drop_latent: torch.Tensor | None
    ) -> torch.Tensor:
        """Noisy latent ``(B, 4, h, w)`` + X-ray latent (zeros when absent/dropped) -> ``(B, 8, h, w)``."""
        if not self.use_xray_latent:
            return x
        if xray_latent is None:
            xray_latent = torch.zeros_like(x)
        elif xray_latent.shape != x.shape:
            raise ValueError(f"xray_latent {tuple(xray_latent.shape)} must match x {tuple(x.shape)}")
        elif drop_latent is not None:
            xray_latent = xray_latent * (~drop_latent).to(x.dtype)[:, None, None, None]
        return torch.cat([x, xray_latent], dim=1)

    def _block(self, block: nn.Module, *args: object) -> object:
        """Run one UNet block, with gradient checkpointing when enabled and training."""
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    # ----------------------------------------------------------------------------------------------------------
    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        xray_latent: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        depth: torch.Tensor | None = None,
        p_map: torch.Tensor | None = None,
        i_map: torch.Tensor | None = None,
        drop_context: torch.Tensor | None = None,
        drop_latent: torch.Tensor | None = None,
        drop_depth: torch.Tensor | None = None,
        drop_guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the noise ``eps (B, latent_channels, h, w)``.

        Args:
            x: noisy latent ``(B, latent_channels, h, w)``.
            timesteps: ``(B,)`` (or one shared scalar) integer or float diffusion steps.
            xray_latent: X-ray latent ``(B, latent_channels, h, w)`` (encoder posterior mean, unscaled).
            context: X-ray embedding ``(B, 1, context_dim)``.
            depth: normalised slice position ``(B,)`` in [0, 1].
            p_map: KOA probability map ``(B, 5, 8, 8)``; i_map: intensity distribution map ``(B, 16, 8, 8)``.
            drop_context, drop_latent, drop_depth, drop_guidance: ``(B,)`` booleans; True rows get the null
                condition (classifier-free guidance). A condition given as None is null for every row.
        """
        batch, device = x.shape[0], x.device
        timesteps = torch.as_tensor(timesteps, device=device).reshape(-1).expand(batch)
        drop_context = _rows(drop_context, batch, device)
        drop_latent = _rows(drop_latent, batch, device)
        drop_depth = _rows(drop_depth, batch, device)
        drop_guidance = _rows(drop_guidance, batch, device)

        # 1. embeddings: one for the down path + middle block (time + depth), one for the up path (time + guidance)
        emb = self.time_embedding(timesteps, x.dtype)
        emb_down, emb_up = emb, emb
        depth_code = x.new_zeros(batch, self.depth_code_dim)
        if self.use_depth and depth is not None:
            depth = torch.as_tensor(depth, device=device).float().reshape(-1).expand(batch)
            keep_depth = None if drop_depth is None else (~drop_depth).to(x.dtype)[:, None]
            depth_emb = self.depth_embedding(depth, x.dtype)
            code = depth_fourier_code(depth, self.depth_code_dim).to(x.dtype)
            if keep_depth is not None:
                depth_emb, code = depth_emb * keep_depth, code * keep_depth
            emb_down = emb + depth_emb
            depth_code = code
        if self.use_guidance and (p_map is not None or i_map is not None):
            guide = self.guidance_embedding(p_map, i_map).to(x.dtype)
            if drop_guidance is not None:
                guide = guide * (~drop_guidance).to(x.dtype)[:, None]
            emb_up = emb + guide

        # 2. inputs: concatenated latent, cross-attention context
        h = self.conv_in(self.build_input(x, xray_latent, drop_latent))
        ctx = self.build_context(context, depth_code, drop_context) if self.use_context else None

        # 3. down path and middle block see the depth
        skips: list[torch.Tensor] = [h]
        for down_block in self.down_blocks:
            h, res_samples = self._block(down_block, h, emb_down, ctx)
            skips.extend(res_samples)
        h = self._block(self.middle_block, h, emb_down, ctx)

        # 4. up path sees the guidance
        for up_block in self.up_blocks:
            n_skips = len(up_block.resnets)
            res_samples, skips = skips[-n_skips:], skips[:-n_skips]
            h = self._block(up_block, h, res_samples, emb_up, ctx)

        return self.out(h)


def build_unet(
    profile: str | Mapping[str, Any] = "small", config_dir: str | os.PathLike | None = None, **flags: Any
) -> XrayConditionedUNet:
    """``XrayConditionedUNet`` with the profile's sizes; ``flags`` (``use_depth=False``, ``use_checkpoint=True``,
    any constructor argument) override the profile."""
    kwargs = get_profile(profile, config_dir)["unet"]
    kwargs.update(flags)
    return XrayConditionedUNet(**kwargs)
