"""PSNR and SSIM of a generated volume against the real one, through MONAI's metrics.

Both are computed in 2-D on every coronal slice (the paper's unit) and averaged over the volume.
Intensities are the bundle's [-1, 1] range, so the data range (MAX of PSNR, L of SSIM) is 2.0.
SSIM uses MONAI's defaults: Gaussian window 11 x 11, sigma 1.5, k1 = 0.01, k2 = 0.03, "valid" windows only
(no padding, so the outer 5 pixels are not window centres).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.metrics import PSNRMetric
from monai.metrics.regression import compute_ssim_and_cs

from ._arrays import as_volume, check_same_shape

__all__ = [
    "DATA_RANGE",
    "SSIM_KERNEL_SIGMA",
    "SSIM_WIN_SIZE",
    "psnr_slices",
    "ssim_map",
    "ssim_slices",
    "volume_psnr",
    "volume_ssim",
]

DATA_RANGE = 2.0
"""Images are in [-1, 1]: max - min = 2."""
SSIM_WIN_SIZE = 11
SSIM_KERNEL_SIGMA = 1.5


def _as_slice_batch(volume: Any) -> torch.Tensor:
    """(H, W, S) or (C, H, W, S) -> (S, 1, H, W) float32 tensor, one batch item per slice."""
    v = as_volume(volume)
    return torch.from_numpy(np.ascontiguousarray(v.transpose(2, 0, 1)[:, None])).float()


def _pair(pred: Any, gt: Any) -> tuple[torch.Tensor, torch.Tensor]:
    p, g = _as_slice_batch(pred), _as_slice_batch(gt)
    check_same_shape(p.numpy(), g.numpy())
    return p, g


def psnr_slices(pred: Any, gt: Any, data_range: float = DATA_RANGE) -> np.ndarray:
    """PSNR (dB) of every slice, shape (S,). Volumes (H, W, S) or (C, H, W, S).

    PSNR = 10 log10(data_range^2 / MSE); identical slices give +inf (MONAI's convention).
    """
    p, g = _pair(pred, gt)
    metric = PSNRMetric(max_val=data_range, reduction="none")
    return metric(y_pred=p, y=g).reshape(-1).double().numpy()


def ssim_map(pred: Any, gt: Any, data_range: float = DATA_RANGE) -> np.ndarray:
    """MONAI SSIM map of 2-D slices (H, W) or a batch (B, H, W) -> (…, H - 10, W - 10).

    Entry (i, j) belongs to the window centred on pixel (i + 5, j + 5) ("valid" convolution).
    """
    p = torch.as_tensor(np.asarray(pred, dtype=np.float32))
    g = torch.as_tensor(np.asarray(gt, dtype=np.float32))
    check_same_shape(p.numpy(), g.numpy())
    squeeze = p.ndim == 2
    if squeeze:
        p, g = p[None], g[None]
    full, _ = compute_ssim_and_cs(
        y_pred=p[:, None],
        y=g[:, None],
        spatial_dims=2,
        kernel_size=[SSIM_WIN_SIZE] * 2,
        kernel_sigma=[SSIM_KERNEL_SIGMA] * 2,
        data_range=data_range,
    )
    out = full[:, 0].double().numpy()
    return out[0] if squeeze else out


def ssim_slices(pred: Any, gt: Any, data_range: float = DATA_RANGE) -> np.ndarray:
    """SSIM of every slice (mean of the MONAI SSIM map), shape (S,). Volumes (H, W, S) or (C, H, W, S)."""
    p, g = _pair(pred, gt)
    return ssim_map(p[:, 0].numpy(), g[:, 0].numpy(), data_range).reshape(p.shape[0], -1).mean(axis=1)


def volume_psnr(pred: Any, gt: Any, data_range: float = DATA_RANGE) -> float:
    """Mean per-slice PSNR (dB) of a volume; +inf if any slice is identical to its ground truth."""
    return float(np.mean(psnr_slices(pred, gt, data_range)))


def volume_ssim(pred: Any, gt: Any, data_range: float = DATA_RANGE) -> float:
    """Mean per-slice SSIM of a volume."""
    return float(np.mean(ssim_slices(pred, gt, data_range)))
