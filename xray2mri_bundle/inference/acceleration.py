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

__all__ = ["PRECISIONS", "accelerate"]

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def accelerate(
    generator: VolumeGenerator, precision: str = "fp32", fast_attention: bool = False, compile: bool = False
) -> VolumeGenerator:
    """Apply the speed-ups to ``generator`` in place (and return it); records them in ``generator.acceleration``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and generator.device.type != "cuda":
        raise ValueError("fp16 autocast needs a CUDA device; use bf16 on the CPU")
    generator.autocast_dtype = PRECISIONS[precision]
    switched = 0
    if fast_attention:
        for module in generator.unet.modules():
            if hasattr(module, "use_flash_attention"):
                module.use_flash_attention = True
                switched += 1
    if compile:
        generator.unet = torch.compile(generator.unet)
    generator.acceleration = {"precision": precision, "fast_attention_blocks": switched, "compile": bool(compile)}
    return generator
