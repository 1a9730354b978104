"""The lean inference copy of an export: the weights generation loads, in one stored precision."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .format import parse_checkpoint, weights_used
from .quantization import INFERENCE_PRECISIONS, INT8_GROUP_SIZE, stored_state

__all__ = ["inference_checkpoint"]


def inference_checkpoint(checkpoint: Mapping[str, Any], dtype: torch.dtype | str = "int8") -> dict[str, Any]:
    """What inference needs of an export: of each network only the weights generation loads (EMA when present,
    else raw; the other entry becomes None), stored in ``dtype`` (a floating dtype, or ``"int8"`` for
    weight-only int8 with per-channel scales); configs, settings and scale factor unchanged. Loading
    dequantizes / casts back to the network's precision.

    Sets ``inference_only`` and ``weights_dtype``. The shipped weights are made this way
    (``scripts/slim_weights.py``; docs/training.md gives the measured effect on generated volumes).
    """
    precision = str(dtype).replace("torch.", "")
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"inference precision {precision!r}: choose from {', '.join(INFERENCE_PRECISIONS)}")
    checkpoint = parse_checkpoint(checkpoint)
    out = dict(checkpoint)
    out["networks"] = {}
    for name, entry in checkpoint["networks"].items():
        keep = weights_used(checkpoint, name)
        slim: dict[str, Any] = {"config": dict(entry["config"]), "model": None, "ema": None}
        if entry.get(keep):
            slim[keep], scales = stored_state(entry[keep], precision)
            if scales:
                slim["scales"] = scales
        out["networks"][name] = slim
    out["inference_only"] = True
    out["weights_dtype"] = precision
    if precision == "int8":
        out["int8_group_size"] = INT8_GROUP_SIZE
    else:
        out.pop("int8_group_size", None)
    return out
