"""Array layout helpers shared by the metrics: torch or numpy in, float64 numpy out.

Conventions (MONAI channel-first, as the rest of the bundle):
- a slice is (H, W) or (C, H, W);
- a volume is (H, W, S) or (C, H, W, S), S along depth (coronal slices stacked anterior -> posterior).
Multi-channel inputs are averaged over C: the bundle's 3 channels are copies of one grey image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["as_numpy", "as_slice", "as_volume", "check_same_shape"]


def as_numpy(x: Any) -> np.ndarray:
    """Detach a tensor (any device) or wrap an array-like as a float64 numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _channels_averaged(x: Any, ndim: int, what: str, layout: str) -> np.ndarray:
    """``x`` as a float64 array of ``ndim`` dimensions, a leading channel axis averaged away."""
    a = as_numpy(x)
    if a.ndim == ndim + 1:
        a = a.mean(axis=0)
    if a.ndim != ndim:
        raise ValueError(f"expected a {what} {layout}, got shape {a.shape}")
    return a


def as_slice(x: Any) -> np.ndarray:
    """(H, W) or (C, H, W) -> (H, W) float64 (channels averaged)."""
    return _channels_averaged(x, 2, "slice", "(H, W) or (C, H, W)")


def as_volume(x: Any) -> np.ndarray:
    """(H, W, S) or (C, H, W, S) -> (H, W, S) float64 (channels averaged)."""
    return _channels_averaged(x, 3, "volume", "(H, W, S) or (C, H, W, S)")


def check_same_shape(pred: np.ndarray, gt: np.ndarray) -> None:
    """Raise ValueError unless the prediction and the ground truth have the same shape."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
