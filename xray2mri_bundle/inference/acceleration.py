"""Opt-in speed-ups for generation, the ones docs/performance.md measures (mostly for GPUs).

- ``precision``: ``bf16`` / ``fp16`` runs the DDIM loop's UNet under ``torch.autocast`` (about 2x on an H100
  for the paper profile); the autoencoder's decoder stays in float32. ``fp32`` (default) is bit-reproducible.
- ``fast_attention``: MONAI's attention blocks use ``torch.nn.functional.scaled_dot_product_attention``
  (their ``use_flash_attention`` flag) instead of the einsum + softmax path; same weights, same maths up to
  float rounding, less memory and time on a GPU.
- ``compile``: ``torch.compile`` of the UNet (first volume pays the compile time; needs a C compiler on CPU).
"""

from __future__ import annotations

import torch

from .generator import VolumeGenerator

__all__ = ["PRECISIONS", "accelerate", "attention_blocks"]

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def attention_blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """MONAI's attention blocks inside ``module`` (``SABlock``, ``CrossAttentionBlock``): the modules with a
    ``use_flash_attention`` switch between torch SDPA and the einsum + softmax path."""
    return [m for m in module.modules() if hasattr(m, "use_flash_attention")]


def accelerate(
    generator: VolumeGenerator, precision: str = "fp32", fast_attention: bool = False, compile: bool = False
) -> VolumeGenerator:
    """Apply the speed-ups to ``generator`` in place (and return it); records them in ``generator.acceleration``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and generator.device.type != "cuda":
        raise ValueError("fp16 autocast needs a CUDA device; use bf16 on the CPU")
    generator.autocast_dtype = PRECISIONS[precision]
    blocks = attention_blocks(generator.unet) if fast_attention else []
    for block in blocks:
        block.use_flash_attention = True
    if compile:
        generator.unet = torch.compile(generator.unet)
    generator.acceleration = {"precision": precision, "fast_attention_blocks": len(blocks), "compile": bool(compile)}
    return generator
