"""Figures of the evaluation (paper section 4), drawn with matplotlib's object API (no global pyplot state).

- ``box_plots``: PSNR, and SSIM beside RSSIM, per method (paper Fig. 5).
- ``difference_table``: X-ray, ground-truth slice and each method's slice, with Sobel edge-difference maps
  beneath, one block per KL grade (paper Table 1).
- ``depth_sweep_plot``: adjacent-slice correlation against the number of generated depths, real MRI as a line
  (paper Fig. 6).
- ``interpolation_strip``: two real adjacent slices with the generated depths between them (paper Table 2).
All images are 2-D arrays in [-1, 1] (MRI / X-ray intensities after the transforms); every figure carries the
line "synthetic - not for diagnosis".
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from skimage.filters import sobel

from xray2mri_bundle.constants import FIGURE_DISCLAIMER

__all__ = [
    "DISCLAIMER", "box_plots", "depth_sweep_plot", "difference_table", "interpolation_strip", "sobel_difference",
]

DISCLAIMER = FIGURE_DISCLAIMER
_DPI = 110


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.supxlabel(DISCLAIMER, fontsize=7, color="0.4")  # constrained layout keeps it clear of the axes
    fig.savefig(path, dpi=_DPI)
    return path


def _values(rows: Sequence[Mapping[str, object]], method: str, metric: str) -> list[float]:
    out = []
    for row in rows:
        value = row.get(metric)
        if row.get("method") == method and value is not None and np.isfinite(float(value)):  # type: ignore[arg-type]
            out.append(float(value))  # type: ignore[arg-type]
    return out


def _boxes(ax, rows, methods: Sequence[str], metric: str, positions, color: str, label: str | None = None) -> None:
    data = [_values(rows, m, metric) or [np.nan] for m in methods]
    parts = ax.boxplot(data, positions=positions, widths=0.35 if label else 0.6, patch_artist=True,
                       showfliers=True, medianprops={"color": "black"})
    for box in parts["boxes"]:
        box.set_facecolor(color)
        box.set_alpha(0.75)
    if label:
        parts["boxes"][0].set_label(label)


def box_plots(
    rows: Sequence[Mapping[str, object]], out_dir: str | os.PathLike, methods: Sequence[str] | None = None
) -> dict[str, Path]:
    """Fig. 5: ``fig5_psnr.png`` (PSNR per method) and ``fig5_ssim_rssim.png`` (SSIM and RSSIM per method)."""
    methods = list(methods or dict.fromkeys(str(r["method"]) for r in rows))
    ticks = np.arange(1, len(methods) + 1, dtype=float)
    width = max(5.0, 1.3 * len(methods) + 1.5)
    out_dir = Path(out_dir)

    fig = Figure(figsize=(width, 4.0), layout="constrained")
    ax = fig.add_subplot()
    _boxes(ax, rows, methods, "psnr", ticks, "tab:blue")
    ax.set_xticks(ticks, methods, rotation=20)
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("PSNR per knee volume")
    ax.grid(axis="y", alpha=0.3)
    psnr = _save(fig, out_dir / "fig5_psnr.png")

    fig = Figure(figsize=(width, 4.0), layout="constrained")
    ax = fig.add_subplot()
    _boxes(ax, rows, methods, "ssim", ticks - 0.2, "tab:orange", "SSIM")
    _boxes(ax, rows, methods, "rssim", ticks + 0.2, "tab:green", "RSSIM")
    ax.set_xticks(ticks, methods, rotation=20)
    ax.set_ylabel("index")
    ax.set_title("SSIM and RSSIM per knee volume")
    ax.legend(loc="best", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ssim = _save(fig, out_dir / "fig5_ssim_rssim.png")
    return {"psnr": psnr, "ssim_rssim": ssim}


def sobel_difference(generated: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Edge-difference map |Sobel(generated) - Sobel(real)| of two (H, W) slices in [-1, 1]; (H, W), >= 0.

    Sobel gradient magnitudes (skimage) of the [0, 1]-rescaled slices, so a map is large where edges differ in
    place or strength (the paper's Table 1 difference rows).
    """
    def edges(image: np.ndarray) -> np.ndarray:
        return sobel((np.asarray(image, dtype=np.float64) + 1.0) / 2.0)

    return np.abs(edges(generated) - edges(real))


def _image(ax, image: np.ndarray | None, title: str = "", cmap: str = "gray", vmin=-1.0, vmax=1.0) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)
    if image is not None:
        ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    else:
        ax.set_frame_on(False)


def difference_table(
    examples: Mapping[int, Mapping[str, object] | None], methods: Sequence[str], path: str | os.PathLike
) -> Path:
    """Table 1: for each KL grade a row of images and a row of Sobel difference maps.

    ``examples[kl]`` is None when no knee of that grade was evaluated (the row says so), else a dict with
    ``"xray"`` (H, W), ``"real"`` (H, W), ``"methods"`` {name: (H, W)}, and optional ``"label"`` (knee name).
    """
    grades = list(examples)
    ncols = 2 + len(methods)
    ratios = [r for g in grades for r in ((1.0, 1.0) if examples[g] is not None else (0.25, 0.01))]
    fig = Figure(figsize=(1.6 * ncols, 1.65 * sum(ratios) + 0.4), layout="constrained")
    axes = fig.subplots(2 * len(grades), ncols, squeeze=False, gridspec_kw={"height_ratios": ratios})
    vmax = 0.0
    for ex in examples.values():
        for img in (ex or {}).get("methods", {}).values():  # type: ignore[union-attr]
            vmax = max(vmax, float(np.percentile(sobel_difference(img, ex["real"]), 99.5)))  # type: ignore[index]
    vmax = vmax or 1.0
    for index, grade in enumerate(grades):
        top, bottom = axes[2 * index], axes[2 * index + 1]
        ex = examples[grade]
        for ax in (*top, *bottom):
            _image(ax, None)
        if ex is None:
            top[0].text(0.0, 0.5, f"KL {grade}: no knee of this grade in the evaluated set", fontsize=9,
                        transform=top[0].transAxes, va="center")
            continue
        label = f"KL {grade}" + (f"\n{ex['label']}" if ex.get("label") else "")
        _image(top[0], ex["xray"], "X-ray input")  # type: ignore[arg-type]
        top[0].set_ylabel(label, fontsize=8)
        _image(top[1], ex["real"], "MRI ground truth")  # type: ignore[arg-type]
        bottom[1].text(0.5, 0.5, "difference\n(Sobel)", ha="center", va="center", fontsize=8,
                       transform=bottom[1].transAxes)
        for col, name in enumerate(methods, start=2):
            generated = ex["methods"].get(name)  # type: ignore[union-attr]
            if generated is None:
                top[col].text(0.5, 0.5, f"{name}\nnot run", ha="center", va="center", fontsize=8,
                              transform=top[col].transAxes)
                continue
            _image(top[col], generated, name)
            _image(bottom[col], sobel_difference(generated, ex["real"]), cmap="magma",  # type: ignore[arg-type]
                   vmin=0.0, vmax=vmax)
    return _save(fig, path)


def depth_sweep_plot(
    sweep: Mapping[int, Sequence[float]], real_corr: float | None, path: str | os.PathLike,
    reference_depths: int = 50,
) -> Path:
    """Fig. 6: mean (and range) of the adjacent-slice correlation per number of generated depths.

    ``sweep[n]`` holds one correlation per knee for volumes of ``n`` depths; ``real_corr`` is the real MRI's
    mean adjacent-slice correlation (a horizontal line), the value at ``reference_depths`` a dashed line.
    """
    counts = sorted(sweep)
    means = np.array([np.mean(sweep[n]) for n in counts])
    lows = np.array([np.min(sweep[n]) for n in counts])
    highs = np.array([np.max(sweep[n]) for n in counts])
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.fill_between(counts, lows, highs, color="tab:blue", alpha=0.2, label="range over knees")
    ax.plot(counts, means, "o-", color="tab:blue", label="generated (mean over knees)")
    if real_corr is not None:
        ax.axhline(real_corr, color="tab:red", label=f"real MRI ({real_corr:.3f})")
    if reference_depths in sweep:
        ref = float(np.mean(sweep[reference_depths]))
        ax.axhline(ref, color="tab:red", linestyle="--", label=f"{reference_depths} depths ({ref:.3f})")
    ax.set_xlabel("number of generated depths s")
    ax.set_ylabel("adjacent-slice correlation")
    ax.set_title("Adjacent-slice correlation vs number of depths")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def interpolation_strip(
    start: np.ndarray, frames: Sequence[np.ndarray], end: np.ndarray, depths: Sequence[float],
    path: str | os.PathLike, title: str = "",
) -> Path:
    """Table 2: real slice, generated intermediate depths, real slice; ``depths`` has len(frames) + 2 entries."""
    images = [start, *frames, end]
    if len(depths) != len(images):
        raise ValueError(f"need {len(images)} depths (start, frames, end), got {len(depths)}")
    fig = Figure(figsize=(1.7 * len(images), 2.3), layout="constrained")
    axes = fig.subplots(1, len(images), squeeze=False)[0]
    for index, (ax, image, depth) in enumerate(zip(axes, images, depths, strict=True)):
        kind = "real" if index in (0, len(images) - 1) else "generated"
        _image(ax, image, f"{kind}\nd={depth:.4f}")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)
