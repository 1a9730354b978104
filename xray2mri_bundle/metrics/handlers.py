"""Ignite metric handler for RSSIM, the MONAI way (``IgniteMetricHandler`` over a cumulative metric).

Usage in a bundle config, as MONAI's own ``PeakSignalToNoiseRatio`` handler::

    "key_val_metric": {"val_rssim": {"_target_": "xray2mri_bundle.metrics.RegionSpecificSSIM",
                                     "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"}}
"""

from __future__ import annotations

from collections.abc import Callable

from monai.handlers import IgniteMetricHandler
from monai.utils import MetricReduction

from .image_quality import DATA_RANGE
from .rssim import RSSIMMetric

__all__ = ["RegionSpecificSSIM"]


class RegionSpecificSSIM(IgniteMetricHandler):
    """Mean RSSIM over an evaluation run (items without a joint region are skipped, see ``RSSIMMetric``)."""

    def __init__(
        self,
        data_range: float = DATA_RANGE,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        """
        Args:
            data_range: intensity range of the images (2.0 for the bundle's [-1, 1]).
            reduction: MONAI reduction over not-NaN values ("mean", "none", ...).
            output_transform: maps ``engine.state.output`` to ``(y_pred, y)``, batch-first (B, C, H, W[, S]).
            save_details: keep every item's value in ``engine.state.metric_details``.
        """
        super().__init__(
            metric_fn=RSSIMMetric(data_range=data_range, reduction=reduction),
            output_transform=output_transform,
            save_details=save_details,
        )
