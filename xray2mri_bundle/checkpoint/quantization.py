"""Stored precisions of inference-only exports: weight-only int8 in groups (and plain casts), and back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["INFERENCE_PRECISIONS", "INT8_GROUP_SIZE", "dequantize_entry", "dequantize_int8", "quantize_int8",
           "stored_state"]

#: the precisions ``inference_checkpoint`` stores (``"int8"``: weight-only int8, see the module docstring)
INFERENCE_PRECISIONS = ("float32", "float16", "bfloat16", "int8")
#: entries per int8 scale (consecutive entries of one output channel, GPTQ/AWQ-style groups). Per-channel scales
#: (one per row) lost the small entries of rows with one large entry (the UNet's near-identity context
#: projection: 6 % RMS error); with groups of 64 the RMS error of a weight is at most 3 % by construction
#: (entry error <= |max| / 254, group RMS >= |max| / 8) and at most 1.7 % on the shipped weights.
INT8_GROUP_SIZE = 64


def quantize_int8(tensor: torch.Tensor, group_size: int = INT8_GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric group-wise int8 of a weight ``(out, ...)``: each row (one output channel, flattened) is cut
    into groups of ``group_size`` consecutive entries (the last one shorter), each with its own scale.

    Returns ``(q, scale)``: ``q`` int8 of the weight's shape, ``scale`` float16 ``(out, groups)``; the weight is
    ``q * scale`` per group (absolute error at most ``scale / 2`` per entry, plus the scale's float16 rounding).
    """
    rows = tensor.detach().float().reshape(tensor.shape[0], -1)
    groups = -(-rows.shape[1] // group_size)
    padded = torch.nn.functional.pad(rows, (0, groups * group_size - rows.shape[1])).reshape(len(rows), groups, -1)
    scale = (padded.abs().amax(dim=2) / 127.0).to(torch.float16).float()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(padded / scale[..., None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(len(rows), -1)[:, : rows.shape[1]].reshape(tensor.shape), scale.to(torch.float16)


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, group_size: int = INT8_GROUP_SIZE) -> torch.Tensor:
    """The float32 weight of ``quantize_int8``'s pair."""
    rows = q.reshape(q.shape[0], -1).float()
    if scale.shape != (rows.shape[0], -(-rows.shape[1] // group_size)):
        raise ValueError(f"int8 scales of shape {tuple(scale.shape)} do not fit a weight {tuple(q.shape)} "
                         f"in groups of {group_size}")
    per_entry = scale.float().repeat_interleave(group_size, dim=1)[:, : rows.shape[1]]
    return (rows * per_entry).reshape(q.shape)


def stored_state(state: Mapping[str, torch.Tensor], precision: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``state`` in ``precision``: the tensors to store and, for int8, the scales of the quantized ones."""
    if precision != "int8":
        dtype = getattr(torch, precision)
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, {}
    tensors, scales = {}, {}
    for key, value in state.items():
        if value.is_floating_point() and value.dim() >= 2:
            tensors[key], scales[key] = quantize_int8(value)
        else:
            tensors[key] = value.to(torch.float16) if value.is_floating_point() else value
    return tensors, scales


def dequantize_entry(entry: Mapping[str, Any], where: str, group_size: int) -> dict[str, Any]:
    """A network entry with its int8 weights (``"scales"``) turned back into float32 tensors."""
    scales = entry.get("scales")
    if not scales:
        return dict(entry)
    out = {k: v for k, v in entry.items() if k != "scales"}
    for which in ("model", "ema"):
        state = entry.get(which)
        if not state:
            continue
        missing = [key for key in scales if key not in state]
        if missing:
            raise ValueError(f"{where} has int8 scales for missing weights {missing[:3]}")
        try:
            out[which] = {k: dequantize_int8(v, scales[k], group_size) if k in scales else v
                          for k, v in state.items()}
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
    return out
