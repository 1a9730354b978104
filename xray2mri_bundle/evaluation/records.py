"""Per-knee result table (CSV) and its summary (JSON): medians and inter-quartile ranges per method and KL grade.

One row per (knee, method). The paper reports medians (Fig. 5 box plots), so the summary gives the median, the
first and third quartiles and the IQR (numpy's linear interpolation between order statistics, the same as
``statistics.quantiles(method="inclusive")``), overall and per KL grade. Missing values (a metric that could not
be measured on a knee, e.g. a joint-space width when no bone edge was found) are empty cells in the CSV and are
left out of the statistics; ``n`` says how many values each statistic used.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "COLUMNS", "IDENTITY_COLUMNS", "SUMMARY_METRICS", "bootstrap_differences", "paired_differences", "quartiles",
    "read_rows", "summarise", "write_rows", "write_summary",
]

IDENTITY_COLUMNS: tuple[str, ...] = ("subject", "visit", "side", "kl", "method")
"""Columns that name a row (the knee and the method)."""

COLUMNS: tuple[str, ...] = IDENTITY_COLUMNS + (
    "n_slices",  # depths compared with the real volume
    "steps",  # DDIM steps (empty for baselines)
    "psnr",  # dB, data range 2 (intensities in [-1, 1])
    "ssim",
    "rssim",  # SSIM of Canny (sigma 3) bone edges in the femur-to-tibia joint band
    "adjacent_corr",  # mean Pearson correlation of adjacent generated slices
    "adjacent_corr_real",  # the same on the real volume (upper benchmark)
    "jsw_medial_gt_mm",  # cohort ground truth
    "jsw_lateral_gt_mm",
    "jsw_medial_real_mm",  # measured on the real MRI volume
    "jsw_lateral_real_mm",
    "jsw_medial_gen_mm",  # measured on the generated volume
    "jsw_lateral_gen_mm",
    "jsw_medial_err_mm",  # generated - ground truth (signed)
    "jsw_lateral_err_mm",
    "jsw_medial_abs_err_mm",  # |generated - ground truth|
    "jsw_lateral_abs_err_mm",
    "jsw_medial_real_abs_err_mm",  # |real - ground truth|: the measurement's own error
    "jsw_lateral_real_abs_err_mm",
    "seconds",  # wall time to produce the volume
)

SUMMARY_METRICS: tuple[str, ...] = (
    "psnr", "ssim", "rssim", "adjacent_corr", "adjacent_corr_real",
    "jsw_medial_abs_err_mm", "jsw_lateral_abs_err_mm", "jsw_medial_real_abs_err_mm", "jsw_lateral_real_abs_err_mm",
    "seconds",
)
"""Columns summarised in the JSON (per method, overall and per KL grade)."""

_INT_COLUMNS = {"kl", "n_slices", "steps"}
_TEXT_COLUMNS = {"subject", "visit", "side", "method"}


def _cell(value: object) -> str:
    """CSV text of one value: empty for None/NaN, 6 significant digits for floats."""
    if value is None:
        return ""
    if isinstance(value, float | np.floating):
        return "" if math.isnan(float(value)) else f"{float(value):.6g}"
    return str(value)


def write_rows(rows: Iterable[Mapping[str, object]], path: str | os.PathLike) -> Path:
    """Write rows to ``path`` as CSV with ``COLUMNS`` first (extra keys follow, sorted). Returns the path."""
    rows = list(rows)
    extra = sorted({key for row in rows for key in row} - set(COLUMNS))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*COLUMNS, *extra])
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _cell(row.get(key)) for key in writer.fieldnames})
    return path


def _parse(key: str, text: str) -> object:
    if key in _TEXT_COLUMNS:
        return text
    if text == "":
        return None
    try:
        return int(text) if key in _INT_COLUMNS else float(text)
    except ValueError:
        return text


def read_rows(path: str | os.PathLike) -> list[dict[str, object]]:
    """Read a per-knee CSV back: numbers as int/float, empty cells as None."""
    with Path(path).open(newline="") as handle:
        return [{key: _parse(key, text) for key, text in row.items()} for row in csv.DictReader(handle)]


def quartiles(values: Sequence[float]) -> dict[str, float | int | None]:
    """Median, quartiles, IQR, mean and count of the finite ``values`` (None for all statistics when empty)."""
    data = np.asarray([v for v in values if v is not None and math.isfinite(float(v))], dtype=np.float64)
    if data.size == 0:
        return {"n": 0, "median": None, "q1": None, "q3": None, "iqr": None, "mean": None}
    q1, median, q3 = np.percentile(data, [25, 50, 75])
    return {"n": int(data.size), "median": float(median), "q1": float(q1), "q3": float(q3),
            "iqr": float(q3 - q1), "mean": float(data.mean())}


def _stats(rows: Sequence[Mapping[str, object]], metrics: Sequence[str]) -> dict[str, dict]:
    return {metric: quartiles([row.get(metric) for row in rows]) for metric in metrics}  # type: ignore[misc]


def summarise(
    rows: Iterable[Mapping[str, object]], metrics: Sequence[str] = SUMMARY_METRICS
) -> dict[str, dict]:
    """Summary per method: ``{method: {"n_knees", "overall": {metric: stats}, "by_kl": {"0": {...}, ...}}}``.

    Methods keep the order of their first row; KL grades are sorted.
    """
    rows = list(rows)
    summary: dict[str, dict] = {}
    for method in dict.fromkeys(str(row["method"]) for row in rows):
        mine = [row for row in rows if row["method"] == method]
        grades = sorted({int(row["kl"]) for row in mine if row.get("kl") is not None})  # type: ignore[arg-type]
        summary[method] = {
            "n_knees": len(mine),
            "overall": _stats(mine, metrics),
            "by_kl": {str(g): _stats([r for r in mine if r.get("kl") == g], metrics) for g in grades},
        }
    return summary


def paired_differences(rows: Sequence[Mapping[str, object]], method: str, other: str, metric: str) -> np.ndarray:
    """``method - other`` of ``metric`` per knee, over the knees where both have a finite value (subject, side)."""
    def values(name: str) -> dict[tuple[object, object], float]:
        return {(r["subject"], r["side"]): float(r[metric]) for r in rows  # type: ignore[arg-type]
                if r["method"] == name and r.get(metric) is not None and math.isfinite(float(r[metric]))}  # type: ignore[arg-type]
    mine, theirs = values(method), values(other)
    return np.asarray([mine[k] - theirs[k] for k in mine if k in theirs], dtype=np.float64)


def bootstrap_differences(
    rows: Iterable[Mapping[str, object]], methods: Sequence[str], metrics: Sequence[str] = ("psnr", "ssim", "rssim"),
    n_boot: int = 2000, confidence: float = 0.95, seed: int = 0,
) -> dict[str, dict[str, dict[str, dict[str, float | int]]]]:
    """Paired bootstrap over knees of the difference ``method - other`` for every other method in the rows.

    For each pair and metric: the per-knee differences d (knees both methods scored), their median, and a
    percentile interval of the median of d over ``n_boot`` resamples of the knees with replacement (seeded).
    An interval above 0 means ``method`` is better on that metric for the median knee (all metrics here are
    higher-is-better). ``{method: {other: {metric: {"n", "median", "low", "high"}}}}``.
    """
    rows = list(rows)
    names = list(dict.fromkeys(str(r["method"]) for r in rows))
    rng = np.random.default_rng(seed)
    alpha = (1.0 - confidence) / 2.0
    out: dict[str, dict[str, dict[str, dict[str, float | int]]]] = {}
    for method in methods:
        if method not in names:
            continue
        out[method] = {}
        for other in names:
            if other == method:
                continue
            out[method][other] = {}
            for metric in metrics:
                d = paired_differences(rows, method, other, metric)
                if d.size == 0:
                    continue
                boot = np.median(d[rng.integers(0, d.size, size=(n_boot, d.size))], axis=1)
                low, high = np.quantile(boot, [alpha, 1.0 - alpha])
                out[method][other][metric] = {"n": int(d.size), "median": float(np.median(d)), "low": float(low),
                                              "high": float(high)}
    return out


def write_summary(summary: Mapping[str, object], path: str | os.PathLike, **extra: object) -> Path:
    """Write ``{"methods": summary, **extra}`` as indented JSON (``extra``: settings, disclaimer, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**extra, "methods": summary}, indent=2) + "\n")
    return path
