"""Adjacent-slice correlation: how smoothly a volume changes from one slice to the next (paper section 4.2).

For a volume with slices x_0 .. x_{S-1} along depth, it is the mean over k of Pearson's r(x_k, x_{k+1})
computed over all pixels of the pair. The paper reports 0.82 for real T1 MRI and 0.73 for 50 generated
slices. A pair with a constant slice has no r (NaN) and is left out of the mean.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._arrays import as_volume

__all__ = ["adjacent_correlations", "adjacent_slice_correlation"]


def adjacent_correlations(volume: Any) -> np.ndarray:
    """Pearson r of every neighbouring slice pair, shape (S - 1,). Volume (H, W, S) or (C, H, W, S)."""
    v = as_volume(volume)
    if v.shape[-1] < 2:
        raise ValueError(f"need at least 2 slices, got {v.shape[-1]}")
    flat = v.reshape(-1, v.shape[-1])
    centred = flat - flat.mean(axis=0, keepdims=True)
    norms = np.sqrt((centred**2).sum(axis=0))
    num = (centred[:, :-1] * centred[:, 1:]).sum(axis=0)
    den = norms[:-1] * norms[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return np.clip(r, -1.0, 1.0)


def adjacent_slice_correlation(volume: Any) -> float:
    """Mean adjacent-slice Pearson r of a volume (H, W, S) or (C, H, W, S); NaN if no pair has contrast."""
    r = adjacent_correlations(volume)
    valid = r[~np.isnan(r)]
    return float(valid.mean()) if valid.size else float("nan")
