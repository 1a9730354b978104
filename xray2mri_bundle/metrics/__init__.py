"""Evaluation metrics of pseudo-MRI volumes (paper section 4): PSNR, SSIM, RSSIM, adjacent-slice correlation,
joint-space width.

Layouts: slices (H, W) or (C, H, W), volumes (H, W, S) or (C, H, W, S) (MONAI channel-first, S along depth,
rows superior -> inferior); intensities in [-1, 1] (data range 2). Torch tensors or numpy arrays.
See docs/metrics.md for the definitions and their limits.
"""

from .adjacent import adjacent_correlations, adjacent_slice_correlation
from .handlers import RegionSpecificSSIM
from .image_quality import DATA_RANGE, psnr_slices, ssim_map, ssim_slices, volume_psnr, volume_ssim
from .jsw import JSWResult, joint_space_width, jsw_errors, volume_joint_space_width
from .rssim import JointROI, RSSIMMetric, joint_roi, rssim, rssim_slices, volume_rssim

__all__ = [
    "DATA_RANGE",
    "JSWResult",
    "JointROI",
    "RSSIMMetric",
    "RegionSpecificSSIM",
    "adjacent_correlations",
    "adjacent_slice_correlation",
    "joint_roi",
    "joint_space_width",
    "jsw_errors",
    "psnr_slices",
    "rssim",
    "rssim_slices",
    "ssim_map",
    "ssim_slices",
    "volume_joint_space_width",
    "volume_psnr",
    "volume_rssim",
    "volume_ssim",
]
