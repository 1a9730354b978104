"""Region-specific SSIM (RSSIM): SSIM inside the knee-joint region found from bone edges.

Paper (section 4.1.2): "the Canny operator with a sigma of 3 to filter and extract bone edges, followed by the
application of SSIM ... from the lower third of the femoral edge to the upper third of the tibial edge".
Our reading, on one coronal slice (H, W), rows superior -> inferior:

1. The femoral and tibial edges are found on the GROUND-TRUTH slice (``bone_edges.find_joint``: Canny
   sigma 3, the femoral joint surface lying over the tibial one, each bone's connected edge).
2. With the femoral edge spanning rows [f_top, f_bottom] and the tibial edge [t_top, t_bottom], the region's
   rows run from the start of the femoral edge's lower third, f_bottom - floor((f_bottom - f_top) / 3), to
   the end of the tibial edge's upper third, t_top + ceil((t_bottom - t_top) / 3), inclusive.
   Its columns run from the leftmost to the rightmost femoral or tibial edge pixel inside those rows.
3. The same rectangle is applied to both slices: RSSIM is the mean of MONAI's SSIM map (window 11,
   sigma 1.5, data range 2 for [-1, 1] images) over the windows centred inside the rectangle.

No femur-over-tibia edge pair (e.g. slices in front of or behind the joint, a blank slice): the slice has no
region and its RSSIM is NaN, with the reason recorded. Volume RSSIM is the mean over the slices that have a
region (NaN if none has); MONAI's metric reduction skips NaNs the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from monai.metrics.regression import RegressionMetric
from monai.utils import MetricReduction

from ._arrays import as_numpy, as_slice, as_volume, check_same_shape
from .bone_edges import CANNY_SIGMA, find_joint
from .image_quality import DATA_RANGE, SSIM_WIN_SIZE, ssim_map

__all__ = ["JointROI", "RSSIMMetric", "joint_roi", "rssim", "rssim_slices", "volume_rssim"]


@dataclass(frozen=True)
class JointROI:
    """Rectangle (inclusive rows / cols) between the femoral lower third and the tibial upper third.

    rows / cols are None when no joint was found; ``reason`` then says why.
    """

    shape: tuple[int, int]
    rows: tuple[int, int] | None
    cols: tuple[int, int] | None
    femoral_extent: tuple[int, int] | None = None
    tibial_extent: tuple[int, int] | None = None
    reason: str = ""
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def found(self) -> bool:
        return self.rows is not None

    def mask(self) -> np.ndarray:
        """(H, W) bool mask of the rectangle (all False when not found)."""
        m = np.zeros(self.shape, dtype=bool)
        if self.rows is not None and self.cols is not None:
            m[self.rows[0] : self.rows[1] + 1, self.cols[0] : self.cols[1] + 1] = True
        return m


def joint_roi(gt_slice: Any, sigma: float = CANNY_SIGMA, max_gap_fraction: float = 0.15) -> JointROI:
    """RSSIM region of a ground-truth slice (H, W) or (C, H, W), rows superior -> inferior."""
    image = as_slice(gt_slice)
    joint, reason = find_joint(image, sigma=sigma, max_gap_fraction=max_gap_fraction)
    if joint is None:
        return JointROI(shape=image.shape, rows=None, cols=None, reason=reason)
    f_top, f_bottom = joint.femoral_extent
    t_top, t_bottom = joint.tibial_extent
    r0 = f_bottom - (f_bottom - f_top) // 3
    r1 = t_top + math.ceil((t_bottom - t_top) / 3)
    inside = (joint.femoral_edge | joint.tibial_edge)[r0 : r1 + 1]
    cols = np.nonzero(inside.any(axis=0))[0]
    return JointROI(
        shape=image.shape,
        rows=(int(r0), int(r1)),
        cols=(int(cols[0]), int(cols[-1])),
        femoral_extent=(f_top, f_bottom),
        tibial_extent=(t_top, t_bottom),
        extras={"femoral_row": joint.femoral_row, "tibial_row": joint.tibial_row},
    )


def _mean_in_roi(smap: np.ndarray, roi: JointROI) -> float:
    """Mean of a valid-mode SSIM map (H - 10, W - 10) over the windows centred inside the ROI."""
    if not roi.found:
        return float("nan")
    half = SSIM_WIN_SIZE // 2
    height, width = roi.shape
    inside = roi.mask()[half : height - half, half : width - half]
    return float(smap[inside].mean()) if inside.any() else float("nan")


def _check_size(shape: tuple[int, ...]) -> None:
    if min(shape[:2]) < SSIM_WIN_SIZE:
        raise ValueError(f"slices must be at least {SSIM_WIN_SIZE} px for SSIM, got {shape[:2]}")


def rssim(pred_slice: Any, gt_slice: Any, data_range: float = DATA_RANGE, roi: JointROI | None = None) -> float:
    """RSSIM of one slice pair (H, W) or (C, H, W); NaN when the ground truth has no joint region.

    roi: a region computed earlier with ``joint_roi(gt_slice)`` (it is computed here when None).
    """
    pred, gt = as_slice(pred_slice), as_slice(gt_slice)
    check_same_shape(pred, gt)
    _check_size(gt.shape)
    roi = joint_roi(gt) if roi is None else roi
    return _mean_in_roi(ssim_map(pred, gt, data_range), roi) if roi.found else float("nan")


def rssim_slices(pred: Any, gt: Any, data_range: float = DATA_RANGE) -> np.ndarray:
    """RSSIM of every slice of a volume (H, W, S) or (C, H, W, S), shape (S,), NaN where no region."""
    p, g = as_volume(pred), as_volume(gt)
    check_same_shape(p, g)
    _check_size(g.shape)
    maps = ssim_map(p.transpose(2, 0, 1), g.transpose(2, 0, 1), data_range)  # one batch: (S, H - 10, W - 10)
    return np.array([_mean_in_roi(maps[k], joint_roi(g[..., k])) for k in range(g.shape[-1])], dtype=np.float64)


def volume_rssim(pred: Any, gt: Any, data_range: float = DATA_RANGE) -> float:
    """Mean RSSIM over the slices that have a joint region; NaN if none has."""
    values = rssim_slices(pred, gt, data_range)
    valid = values[~np.isnan(values)]
    return float(valid.mean()) if valid.size else float("nan")


class RSSIMMetric(RegressionMetric):
    """RSSIM as a MONAI ``CumulativeIterationMetric`` (for ``IgniteMetricHandler`` / evaluators).

    y_pred, y: batch-first (B, C, H, W) slices or (B, C, H, W, S) volumes in [-1, 1] (or lists of
    channel-first items). Each item gives one value, shape (B, 1): a slice's RSSIM or a volume's mean RSSIM,
    NaN when no joint region exists. ``aggregate`` skips NaNs (MONAI's ``do_metric_reduction``); with
    ``get_not_nans=True`` it also returns how many items counted (0 -> the mean reads 0, not NaN).
    """

    def __init__(
        self,
        data_range: float = DATA_RANGE,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans)
        self.data_range = data_range

    def _compute_metric(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y.ndim not in (4, 5):
            raise ValueError(f"expected (B, C, H, W) or (B, C, H, W, S), got {tuple(y.shape)}")
        pred, gt = as_numpy(y_pred), as_numpy(y)
        fn = rssim if y.ndim == 4 else volume_rssim
        values = [fn(pred[b], gt[b], self.data_range) for b in range(gt.shape[0])]
        return torch.tensor(values, dtype=torch.float32, device=y.device)[:, None]
