"""The evaluation engine: a MONAI ``SupervisedEvaluator`` whose iteration is one knee.

Each iteration takes one preprocessed knee of the validation split (``build_knee_dataset`` item: ``mri``
(1, H, W, 50) in [-1, 1], ``xray`` (1, H, W), ``intensity``, ``kl``, ``subject``, ``side``, ``mri_meta``),
asks a method for a volume at the depths of the compared real slices, and hands (pred, label), both
(1, 1, H, W, n), to the metric handlers:

- ``psnr``, ``ssim``: mean over slices of 2-D PSNR (dB, data range 2) / SSIM (MONAI), ``metrics.volume_*``;
- ``rssim``: ``metrics.RegionSpecificSSIM`` (SSIM in the femur-to-tibia band of Canny bone edges);
- ``adjacent_corr``: mean Pearson r of adjacent generated slices (``metrics.adjacent_slice_correlation``).

The handlers keep every knee's value (``save_details``); ``KneeRecorder`` (a val handler, attached after the
metrics) adds the knee's identity, the real volume's adjacent-slice correlation, joint-space widths measured on
the generated and the real volume against the cohort's ground truth, the wall time, and keeps a few example
slices for the figures. After a run, ``recorder.rows`` is the method's part of the per-knee table.

``MethodNetwork`` wraps any method ``(xray (1, H, W), depths (n,), knee_id=, seed=, intensity=) -> volume``
as the evaluator's ``network`` (diffusion pipelines and baselines alike); MONAI's ``SimpleInferer`` calls it with the
depths and the knee that ``KneePrepareBatch`` supplies.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from monai.handlers import IgniteMetricHandler, from_engine
from monai.inferers import SimpleInferer
from monai.metrics.regression import RegressionMetric
from monai.utils import MetricReduction
from torch import nn

from xray2mri_bundle.constants import OAI_MRI_FOV_MM
from xray2mri_bundle.data.datasets import slice_depths
from xray2mri_bundle.metrics import (
    RegionSpecificSSIM,
    adjacent_slice_correlation,
    volume_joint_space_width,
    volume_psnr,
    volume_ssim,
)

__all__ = [
    "METRIC_NAMES", "KneePrepareBatch", "KneeRecorder", "MethodNetwork", "VolumeFunctionMetric",
    "VolumeMethod", "build_evaluator", "knee_key", "knee_loader", "knee_seed", "metric_handlers",
    "pick_examples", "read_ground_truth", "read_mri_matrix", "select_knees", "slice_indices",
]

logger = logging.getLogger(__name__)

METRIC_NAMES: tuple[str, ...] = ("psnr", "ssim", "rssim", "adjacent_corr")
"""Metric handlers of the evaluator (``engine.state.metrics`` keys); psnr is the key metric."""
FOV_MM = OAI_MRI_FOV_MM
"""MRI field of view (cohort and OAI COR_T1_3D_FLASH): maps ground-truth columns of knees prepared without the
joint-centred frame (no ``crop_box``) to the resized grid."""


class VolumeMethod(Protocol):
    """A way to produce a pseudo-MRI volume from one knee X-ray (diffusion pipeline or baseline)."""

    name: str

    def __call__(
        self, xray: torch.Tensor, depths: torch.Tensor, *, knee_id: str = "", seed: int = 0,
        intensity: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """xray (1, H, W) in [-1, 1]; depths (n,) in [0, 1] -> volume (H, W, n) or (C, H, W, n) in [-1, 1]."""
        ...


# ----------------------------------------------------------------------------------------------- knees, data


def knee_key(knee: Mapping[str, Any]) -> str:
    """Stable name of a knee: ``subject_visit_side`` (e.g. ``9000099_V00_RIGHT``)."""
    return f"{knee.get('subject', '')}_{knee.get('visit', 'V00')}_{str(knee.get('side', '')).upper()}"


def knee_seed(key: str, base_seed: int = 0) -> int:
    """Seed of a knee's shared initial noise: the same for every method and run (CRC32 of the key + base)."""
    return (zlib.crc32(key.encode()) + int(base_seed)) % (2**31)


def select_knees(
    records: Sequence[Mapping[str, Any]], max_knees: int | None = None, grade_order: Sequence[int] = (0, 2, 4, 1, 3)
) -> list[dict[str, Any]]:
    """At most ``max_knees`` records (all when None or <= 0), spread over KL grades.

    Round robin over the grades in ``grade_order`` (0, 2, 4 first: the grades of the paper's Table 1), each
    grade in datalist order; the chosen records keep their datalist order. Deterministic.
    """
    records = [dict(r) for r in records]
    if not max_knees or max_knees <= 0 or max_knees >= len(records):
        return records
    by_grade: dict[object, list[int]] = {}
    for index, rec in enumerate(records):
        by_grade.setdefault(rec.get("kl"), []).append(index)
    order = [g for g in grade_order if g in by_grade] + [g for g in by_grade if g not in grade_order]
    chosen: list[int] = []
    while len(chosen) < max_knees:
        for grade in order:
            if by_grade[grade] and len(chosen) < max_knees:
                chosen.append(by_grade[grade].pop(0))
    return [records[i] for i in sorted(chosen)]


def pick_examples(records: Sequence[Mapping[str, Any]], grades: Sequence[int] = (0, 2, 4)) -> dict[int, str | None]:
    """For each KL grade the key of the first knee of that grade (None when the set has none): Table 1 rows."""
    return {g: next((knee_key(r) for r in records if r.get("kl") == g), None) for g in grades}


def _first(batch: Sequence[Any]) -> Any:
    return batch[0]


def knee_loader(dataset: Sequence[Any], num_workers: int = 0) -> DataLoader:
    """One knee per iteration, in dataset order; the item is passed through uncollated (a dict)."""
    return DataLoader(dataset, batch_size=1, shuffle=False, num_workers=num_workers, collate_fn=_first)


def slice_indices(total: int = 50, slices: int | None = None) -> list[int]:
    """Indices of the real slices compared: all ``total`` when ``slices`` is None/0, else ``slices`` evenly
    spaced ones (rounded, first and last included) - the CPU-budget option ``--slices``."""
    if not slices or slices >= total:
        return list(range(total))
    if slices < 2:
        raise ValueError(f"slices must be >= 2 (adjacent-slice correlation needs pairs), got {slices}")
    return sorted({round(k * (total - 1) / (slices - 1)) for k in range(slices)})


def read_ground_truth(dataset_dir: str | os.PathLike | None) -> dict[tuple[str, str], dict[str, Any]]:
    """``ground_truth.csv`` of a synthetic cohort, keyed by (ParticipantID, side); {} when there is none."""
    if dataset_dir is None:
        return {}
    path = Path(dataset_dir) / "ground_truth.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        return {(row["ParticipantID"], row["side"].upper()): row for row in csv.DictReader(handle)}


def read_mri_matrix(dataset_dir: str | os.PathLike | None) -> int | None:
    """The cohort's MRI matrix N (``cohort.json``), the pixel grid of ``mri_joint_col``; None when unknown."""
    path = Path(dataset_dir) / "cohort.json" if dataset_dir else None
    if path is None or not path.is_file():
        return None
    return int(json.loads(path.read_text()).get("mri_matrix") or 0) or None


# ------------------------------------------------------------------------------------ engine components


class KneePrepareBatch:
    """Knee dict -> (xray (1, 1, H, W), real volume (1, C, H, W, n), (), {"depths": (n,), "knee": dict}).

    ``slices``: how many of the knee's real slices to compare (evenly spaced, see ``slice_indices``).
    """

    def __init__(self, slices: int | None = None) -> None:
        self.slices = slices

    def __call__(
        self, knee: Mapping[str, Any], device: torch.device | str | None = None, non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict[str, Any]]:
        mri = torch.as_tensor(knee["mri"]).float()
        total = mri.shape[-1]
        index = torch.tensor(slice_indices(total, self.slices))
        depths = slice_depths(total)[index]  # the depths `xray2mri generate` gives these slices of `total`
        target = mri[..., index][None]
        xray = torch.as_tensor(knee["xray"]).float()[None]
        return (xray.to(device, non_blocking=non_blocking), target.to(device, non_blocking=non_blocking), (),
                {"depths": depths, "knee": knee})


class MethodNetwork(nn.Module):
    """A ``VolumeMethod`` as the evaluator's network: (1, 1, H, W) X-ray -> (1, 1, H, W, n) volume.

    The knee's seed comes from its key (``knee_seed``), so every method sees the same initial noise per knee.
    ``last_seconds`` is the wall time of the last call; ``last_info`` what the method reported (e.g. the
    nearest training knee).
    """

    def __init__(self, method: VolumeMethod, seed: int = 0) -> None:
        super().__init__()
        self.method = method
        if isinstance(method, nn.Module):
            self.add_module("inner", method)
        self.seed = int(seed)
        self.last_seconds = 0.0
        self.last_info: dict[str, Any] = {}
        self.last_depths: torch.Tensor | None = None

    @property
    def name(self) -> str:
        return str(getattr(self.method, "name", type(self.method).__name__))

    def forward(self, xray: torch.Tensor, depths: torch.Tensor, knee: Mapping[str, Any]) -> torch.Tensor:
        if xray.shape[0] != 1:
            raise ValueError(f"one knee per iteration, got a batch of {xray.shape[0]}")
        key = knee_key(knee)
        start = time.perf_counter()
        intensity = knee.get("intensity")
        extra: dict[str, Any] = {}
        if getattr(self.method, "uses_truth", False):  # an oracle (a ceiling): it is shown the true volume
            from .baselines import sample_depths

            extra["truth"] = sample_depths(torch.as_tensor(knee["mri"]).float(), depths.cpu())
        volume = self.method(
            xray[0], depths, knee_id=key, seed=knee_seed(key, self.seed),
            intensity=None if intensity is None else torch.as_tensor(intensity), **extra,
        )
        self.last_seconds = time.perf_counter() - start
        self.last_depths = depths.detach().cpu()
        neighbour = getattr(self.method, "last_neighbour", None)
        self.last_info = {"neighbour": neighbour} if neighbour else {}
        volume = torch.as_tensor(volume).float()
        if volume.ndim == 3:
            volume = volume[None]
        volume = volume.mean(dim=0, keepdim=True)  # grey: the 3 decoder / cache channels are copies
        return volume[None].to(xray.device)


class VolumeFunctionMetric(RegressionMetric):
    """A per-volume function ``fn(pred, label) -> float`` as a MONAI cumulative metric (one value per item).

    y_pred, y: (B, C, H, W, S). NaN values are skipped by the reduction (MONAI's ``do_metric_reduction``).
    ``pred_only``: call ``fn(pred)`` (e.g. the adjacent-slice correlation of the generated volume).
    """

    def __init__(
        self, fn: Callable[..., float], pred_only: bool = False,
        reduction: MetricReduction | str = MetricReduction.MEAN, get_not_nans: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans)
        self.fn = fn
        self.pred_only = pred_only

    def _compute_metric(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        values = [self.fn(y_pred[b]) if self.pred_only else self.fn(y_pred[b], y[b]) for b in range(y.shape[0])]
        return torch.tensor(values, dtype=torch.float32, device=y.device)[:, None]


def metric_handlers() -> dict[str, IgniteMetricHandler]:
    """The evaluator's metric handlers by name (``METRIC_NAMES``), each keeping per-knee details."""
    transform = from_engine(["pred", "label"])

    def handler(fn: Callable[..., float], pred_only: bool = False) -> IgniteMetricHandler:
        return IgniteMetricHandler(VolumeFunctionMetric(fn, pred_only), output_transform=transform, save_details=True)

    return {
        "psnr": handler(volume_psnr),
        "ssim": handler(volume_ssim),
        "rssim": RegionSpecificSSIM(output_transform=transform, save_details=True),
        "adjacent_corr": handler(adjacent_slice_correlation, pred_only=True),
    }


def _grey(volume: torch.Tensor) -> np.ndarray:
    """(1, C, H, W, n) or (C, H, W, n) tensor -> (H, W, n) float32 numpy (channels averaged)."""
    v = torch.as_tensor(volume).detach().float().cpu()
    while v.ndim > 3:
        v = v.mean(dim=0)
    return v.numpy()


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


class KneeRecorder:
    """Val handler: one table row per knee (identity, JSW, timing) joined with the metric handlers' details.

    Args:
        method: the method's name (the ``method`` column).
        ground_truth: ``read_ground_truth`` of the cohort ({} -> no JSW ground truth, errors left empty).
        examples: knee keys whose joint slice is kept for the Table 1 figure (the compared slice nearest the
            ground truth's ``mri_joint_slice``; without ground truth ``example_fraction`` of the way, 0.5 = middle).
        example_fraction: see ``examples``.
        steps: DDIM steps, recorded in the table (None for baselines).
        measure_jsw: measure joint-space width on the generated and the real volumes.
        real_cache: dict shared across methods; real-volume measurements are computed once per knee.
        mri_matrix: the cohort's MRI matrix (ground-truth ``mri_joint_col`` is in that grid).
    """

    def __init__(
        self, method: str, ground_truth: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
        examples: Sequence[str] = (), example_fraction: float = 0.5, steps: int | None = None,
        measure_jsw: bool = True, real_cache: dict[str, dict[str, Any]] | None = None,
        mri_matrix: int | None = None, aligned_joint_slice: float | None = None,
    ) -> None:
        self.method = method
        # the canonical-pose frame (AlignMRIPose): the joint sits at the crop's centre column and at this slice of
        # the series, where the coil-frame ground truth (mri_joint_col / mri_joint_slice) no longer applies
        self.aligned_joint_slice = aligned_joint_slice
        self.ground_truth = dict(ground_truth or {})
        self.examples = {k for k in examples if k}
        self.example_fraction = float(example_fraction)
        self.steps = steps
        self.measure_jsw = measure_jsw
        self.real_cache = real_cache if real_cache is not None else {}
        self.mri_matrix = mri_matrix
        self.rows: list[dict[str, Any]] = []
        self.example_slices: dict[str, dict[str, Any]] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def reset(self, engine: Engine | None = None) -> None:
        self.rows = []
        self.example_slices = {}

    def _truth(self, knee: Mapping[str, Any]) -> Mapping[str, Any]:
        return self.ground_truth.get((str(knee.get("subject")), str(knee.get("side", "")).upper()), {})

    def _joint_col(self, knee: Mapping[str, Any], width: int) -> float | None:
        """Ground-truth joint-centre column mapped to the evaluated grid (None when unknown): through the MRI's
        joint-centred crop box when the knee has one (``mri_meta['crop_box']``), else the resized field of view; in
        the canonical-pose frame the centre column, where the alignment put the joint."""
        if self.aligned_joint_slice is not None:
            return (width - 1) / 2.0
        truth = self._truth(knee)
        col = _float(truth.get("mri_joint_col"))
        box = (knee.get("mri_meta") or {}).get("crop_box")
        if col is not None and box:
            c0, c1 = float(box[1]), float(box[3])
            return (col - c0 + 0.5) * width / (c1 - c0) - 0.5
        matrix = _float(truth.get("mri_matrix")) or self.mri_matrix
        if col is None or not matrix:
            return None
        return (col + 0.5) * width / matrix - 0.5

    def _example_slice(self, knee: Mapping[str, Any], depths: torch.Tensor | None, count: int) -> int:
        """Compared slice for Table 1: the one nearest the ground-truth joint-centre slice when known (the
        slice "that best represents the complete knee joint"), else ``example_fraction`` of the way."""
        joint = self.aligned_joint_slice if self.aligned_joint_slice is not None else \
            _float(self._truth(knee).get("mri_joint_slice"))
        meta = knee.get("mri_meta") or {}
        if joint is not None and depths is not None and len(depths) == count:
            total = int(meta.get("slice_count") or 50)
            target = joint - float(meta.get("slice_start", 13))
            return int(torch.argmin((torch.as_tensor(depths).float() * (total - 1) - target).abs()))
        return min(int(round(self.example_fraction * (count - 1))), count - 1)

    def _jsw(self, volume: np.ndarray, knee: Mapping[str, Any]) -> tuple[float | None, float | None]:
        spacing = (knee.get("mri_meta") or {}).get("spacing") or (FOV_MM / volume.shape[0],) * 2
        side = str(knee.get("side", "RIGHT")).upper()
        result = volume_joint_space_width(volume, side, (float(spacing[0]), float(spacing[1])),
                                          joint_col=self._joint_col(knee, volume.shape[1]))
        return _float(result.jsw_medial_mm), _float(result.jsw_lateral_mm)

    def _real(self, key: str, real: np.ndarray, knee: Mapping[str, Any]) -> dict[str, Any]:
        cache_key = f"{key}@{real.shape}"
        if cache_key not in self.real_cache:
            stats: dict[str, Any] = {"adjacent_corr_real": _float(adjacent_slice_correlation(real))}
            if self.measure_jsw:
                stats["jsw_medial_real_mm"], stats["jsw_lateral_real_mm"] = self._jsw(real, knee)
            self.real_cache[cache_key] = stats
        return self.real_cache[cache_key]

    def iteration_completed(self, engine: Engine) -> None:
        knee = engine.state.batch
        output = engine.state.output
        item = output[0] if isinstance(output, list) else output
        pred, real = _grey(item["pred"]), _grey(item["label"])
        key = knee_key(knee)
        network = getattr(engine, "network", None)
        row: dict[str, Any] = {
            "subject": knee.get("subject"), "visit": knee.get("visit", "V00"), "side": knee.get("side"),
            "kl": knee.get("kl"), "method": self.method, "n_slices": pred.shape[-1], "steps": self.steps,
            "seconds": getattr(network, "last_seconds", None),
        }
        row.update(getattr(network, "last_info", {}) or {})
        row.update(self._real(key, real, knee))
        truth = self._truth(knee)
        row["jsw_medial_gt_mm"] = _float(truth.get("jsw_medial_mm"))
        row["jsw_lateral_gt_mm"] = _float(truth.get("jsw_lateral_mm"))
        if self.measure_jsw:
            row["jsw_medial_gen_mm"], row["jsw_lateral_gen_mm"] = self._jsw(pred, knee)
            for side in ("medial", "lateral"):
                gt, gen, meas = row[f"jsw_{side}_gt_mm"], row[f"jsw_{side}_gen_mm"], row[f"jsw_{side}_real_mm"]
                if gt is not None and gen is not None:
                    row[f"jsw_{side}_err_mm"] = gen - gt
                    row[f"jsw_{side}_abs_err_mm"] = abs(gen - gt)
                if gt is not None and meas is not None:
                    row[f"jsw_{side}_real_abs_err_mm"] = abs(meas - gt)
        if key in self.examples:
            k = self._example_slice(knee, getattr(network, "last_depths", None), pred.shape[-1])
            self.example_slices[key] = {
                "kl": knee.get("kl"), "slice": k, "pred": pred[..., k], "real": real[..., k],
                "xray": _grey(torch.as_tensor(knee["xray"])[..., None])[..., 0],
            }
        self.rows.append(row)

    def epoch_completed(self, engine: Engine) -> None:
        details = getattr(engine.state, "metric_details", {}) or {}
        for name in METRIC_NAMES:
            values = details.get(name)
            if values is None:
                continue
            flat = torch.as_tensor(values).reshape(len(self.rows), -1)[:, 0].tolist()
            for row, value in zip(self.rows, flat, strict=True):
                row[name] = _float(value)


def build_evaluator(
    method: VolumeMethod,
    knees: Sequence[Mapping[str, Any]],
    recorder: KneeRecorder,
    slices: int | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    extra_handlers: Sequence[Any] = (),
) -> SupervisedEvaluator:
    """A ``SupervisedEvaluator`` over ``knees`` (a knee dataset) for one method, metrics attached, recorder last.

    ``engine.state.metrics`` after ``run()``: ``METRIC_NAMES`` (means over knees, NaNs skipped); the per-knee
    table is ``recorder.rows``.
    """
    handlers = metric_handlers()
    return SupervisedEvaluator(
        device=torch.device(device),
        val_data_loader=knee_loader(knees),
        network=MethodNetwork(method, seed=seed),
        prepare_batch=KneePrepareBatch(slices),
        inferer=SimpleInferer(),
        key_val_metric={"psnr": handlers.pop("psnr")},
        additional_metrics=handlers,
        val_handlers=[*extra_handlers, recorder],
        decollate=False,  # one knee per iteration; the batch is the knee dict itself
    )
