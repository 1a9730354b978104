"""Plain data out of tensors, arrays and paths: the one conversion for JSON sidecars, cached metadata, recorded
network arguments and benchmark records."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["to_plain"]

_BASIC = (str, int, float, bool)


def to_plain(value: Any, *, finite: bool = True, strict: bool = False) -> Any:
    """``value`` as plain data: dicts with string keys, lists, str, int, float, bool and None.

    Tensors and numpy arrays become nested lists, numpy scalars Python numbers, tuples lists, paths strings, and
    any other object its ``str``. ``finite``: NaN and infinities become None (strict JSON). ``strict``: only
    values that are plain data already are accepted (mappings, lists, tuples, basic types); anything else raises
    ``TypeError`` instead of being converted, for data that must round-trip exactly.
    """
    if isinstance(value, Mapping):
        return {str(k): to_plain(v, finite=finite, strict=strict) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v, finite=finite, strict=strict) for v in value]
    if value is None or isinstance(value, _BASIC):
        return None if finite and isinstance(value, float) and not math.isfinite(value) else value
    if strict:
        raise TypeError(f"{value!r} ({type(value).__name__}) is not plain data")
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, (np.ndarray, np.generic)):
        return to_plain(value.tolist(), finite=finite)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)
