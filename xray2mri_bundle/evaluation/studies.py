"""The depth studies of paper section 4.2, run on one method and a few knees.

- ``depth_sweep``: generate each knee at s = 30, 50, 100, ..., 500 evenly spaced depths over the training
  extent (slice k at depth k / (s - 1)) and measure the adjacent-slice correlation of each volume (Fig. 6).
  The real MRI's value (50 slices) is the benchmark line.
- ``interpolation``: between two adjacent real slices k and k + 1 (depths k / 49 and (k + 1) / 49), generate
  ``frames`` intermediate depths (Table 2).
The method is called with the knee's key and seed, so a diffusion method reuses the knee's conditions (computed
once per X-ray) and initial noise across all calls.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xray2mri_bundle.data.datasets import slice_depths
from xray2mri_bundle.metrics import adjacent_slice_correlation

from .evaluator import knee_key, knee_seed

__all__ = ["DEPTH_COUNTS", "Interpolation", "SweepResult", "depth_sweep", "interpolation", "write_sweep"]

DEPTH_COUNTS: tuple[int, ...] = (30, 50, 100, 200, 300, 400, 500)
"""The paper's numbers of inference depths s (Fig. 6)."""

VolumeFn = Callable[..., torch.Tensor]


def _grey(volume: torch.Tensor) -> np.ndarray:
    v = torch.as_tensor(volume).detach().float().cpu()
    while v.ndim > 3:
        v = v.mean(dim=0)
    return v.numpy()


def _call(method: VolumeFn, knee: Mapping[str, Any], depths: torch.Tensor, seed: int) -> np.ndarray:
    key = knee_key(knee)
    xray = torch.as_tensor(knee["xray"]).float()
    return _grey(method(xray, depths, knee_id=key, seed=knee_seed(key, seed)))


@dataclass
class SweepResult:
    """``generated[s]``: one adjacent-slice correlation per knee; ``real``: the knees' real-MRI values."""

    knees: list[str]
    generated: dict[int, list[float]]
    real: list[float]

    @property
    def real_mean(self) -> float | None:
        values = [v for v in self.real if np.isfinite(v)]
        return float(np.mean(values)) if values else None


def depth_sweep(
    method: VolumeFn, knees: Sequence[Mapping[str, Any]], counts: Sequence[int] = DEPTH_COUNTS, seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> SweepResult:
    """Adjacent-slice correlation of volumes of ``counts`` depths for each knee (items of a knee dataset)."""
    generated: dict[int, list[float]] = {int(s): [] for s in counts}
    real, names = [], []
    for knee in knees:
        names.append(knee_key(knee))
        real.append(adjacent_slice_correlation(torch.as_tensor(knee["mri"])))
        for s in counts:
            volume = _call(method, knee, slice_depths(int(s)), seed)
            generated[int(s)].append(adjacent_slice_correlation(volume))
            if progress is not None:
                progress(f"{names[-1]}: s={s} r={generated[int(s)][-1]:.4f}")
    return SweepResult(names, generated, real)


def write_sweep(result: SweepResult, path: str | os.PathLike) -> Path:
    """CSV with columns knee, n_depths, adjacent_corr (n_depths "real" for the real MRI)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["knee", "n_depths", "adjacent_corr"])
        for i, knee in enumerate(result.knees):
            writer.writerow([knee, "real", f"{result.real[i]:.6g}"])
            for s, values in result.generated.items():
                writer.writerow([knee, s, f"{values[i]:.6g}"])
    return path


@dataclass
class Interpolation:
    """Real slices ``start`` / ``end`` (H, W), generated ``frames`` between them, and all depths (frames + 2)."""

    knee: str
    start: np.ndarray
    frames: list[np.ndarray]
    end: np.ndarray
    depths: list[float]


def interpolation(
    method: VolumeFn, knee: Mapping[str, Any], slice_index: int | None = None, frames: int = 4, seed: int = 0,
) -> Interpolation:
    """Generate ``frames`` depths strictly between real slices k and k + 1 (k = the middle slice by default)."""
    real = _grey(torch.as_tensor(knee["mri"]))
    total = real.shape[-1]
    k = (total - 1) // 2 if slice_index is None else int(slice_index)
    if not 0 <= k < total - 1:
        raise ValueError(f"slice_index must be in [0, {total - 2}], got {k}")
    depths = [(k + j / (frames + 1)) / (total - 1) for j in range(frames + 2)]
    volume = _call(method, knee, torch.tensor(depths[1:-1], dtype=torch.float32), seed)
    return Interpolation(knee_key(knee), real[..., k], [volume[..., j] for j in range(frames)], real[..., k + 1],
                         depths)
