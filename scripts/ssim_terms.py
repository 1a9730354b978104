"""Where does a method lose SSIM inside the RSSIM joint region: luminance, contrast or structure?

SSIM of a window is ``l * c * s`` (Wang et al. 2004): luminance ``l = (2 mx my + C1) / (mx^2 + my^2 + C1)``,
contrast ``c = (2 sx sy + C2) / (sx^2 + sy^2 + C2)``, structure ``s = (sxy + C2/2) / (sx sy + C2/2)``, with the
Gaussian window of ``metrics.image_quality`` (11 px, sigma 1.5). For each method this averages the three terms
over the windows of the RSSIM region (``metrics.rssim.joint_roi`` of the true slice) of evenly spaced slices of
the validation knees, and gives SSIM and RSSIM twice: on the bundle's ``[-1, 1]`` intensities (data range 2,
what the evaluator reports, as the paper normalises) and on ``(x + 1) / 2`` in ``[0, 1]`` (data range 1, the
non-negative intensities SSIM's luminance term assumes; ``c`` and ``s`` do not change under that map, ``l`` does).

    python scripts/ssim_terms.py --model-dir models/small --dataset-dir data/cohort_train --knees 8 \
        --methods mean_volume,knn_xray,nearest_xray,full,full_mean4 --out outputs/ssim_terms.json

Synthetic data; the figures say nothing about real radiographs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xray2mri_bundle.data import build_knee_dataset
from xray2mri_bundle.engines.datalist import load_datalist
from xray2mri_bundle.evaluation.evaluator import MethodNetwork, select_knees, slice_indices
from xray2mri_bundle.evaluation.methods import SampleMean, base_method, build_method
from xray2mri_bundle.metrics.image_quality import SSIM_KERNEL_SIGMA, SSIM_WIN_SIZE
from xray2mri_bundle.metrics.rssim import joint_roi

TERMS = ("l", "c", "s")


def _window() -> torch.Tensor:
    half = SSIM_WIN_SIZE // 2
    g = torch.exp(-((torch.arange(SSIM_WIN_SIZE, dtype=torch.float64) - half) ** 2) / (2 * SSIM_KERNEL_SIGMA ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim_terms(pred: torch.Tensor, true: torch.Tensor, data_range: float) -> dict[str, torch.Tensor]:
    """Maps (H - 10, W - 10) of l, c, s and their product for two slices (H, W) ("valid" windows, as MONAI)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    k = _window()
    x, y = pred.double()[None, None], true.double()[None, None]
    mx, my = F.conv2d(x, k), F.conv2d(y, k)
    vx = (F.conv2d(x * x, k) - mx ** 2).clamp_min(0)
    vy = (F.conv2d(y * y, k) - my ** 2).clamp_min(0)
    cov = F.conv2d(x * y, k) - mx * my
    sx, sy = vx.sqrt(), vy.sqrt()
    maps = {"l": (2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1), "c": (2 * sx * sy + c2) / (vx + vy + c2),
            "s": (cov + c2 / 2) / (sx * sy + c2 / 2)}
    maps["ssim"] = maps["l"] * maps["c"] * maps["s"]
    return {name: m[0, 0] for name, m in maps.items()}


def method_terms(method, knees, slices: int) -> dict[str, float]:
    """Means over the region windows of every slice that has a joint region (and over all windows: ``ssim``)."""
    rows: list[dict[str, float]] = []
    half = SSIM_WIN_SIZE // 2
    for knee in knees:
        mri = torch.as_tensor(knee["mri"]).float()
        index = torch.tensor(slice_indices(mri.shape[-1], slices))
        depths = index.float() / (mri.shape[-1] - 1)
        xray = torch.as_tensor(knee["xray"]).float()[None]
        volume = MethodNetwork(method)(xray, depths, knee)[0, 0]  # (H, W, n), grey, the evaluator's call
        truth = mri[..., index].mean(0)
        for j in range(volume.shape[-1]):
            roi = joint_roi(truth[..., j].numpy())
            if not roi.found:
                continue
            mask = torch.as_tensor(roi.mask())[half:-half, half:-half]
            minus = ssim_terms(volume[..., j], truth[..., j], 2.0)
            unit = ssim_terms((volume[..., j] + 1) / 2, (truth[..., j] + 1) / 2, 1.0)
            row = {name: float(minus[name][mask].mean()) for name in TERMS}
            row.update(l_unit=float(unit["l"][mask].mean()), rssim=float(minus["ssim"][mask].mean()),
                       rssim_unit=float(unit["ssim"][mask].mean()), ssim=float(minus["ssim"].mean()),
                       ssim_unit=float(unit["ssim"].mean()))
            rows.append(row)
    return {name: round(float(np.mean([r[name] for r in rows])), 4) for name in rows[0]} | {"slices": len(rows)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--dataset-dir", required=True)
    parser.add_argument("--knees", type=int, default=8, help="validation knees (spread over KL grades)")
    parser.add_argument("--slices", type=int, default=25)
    parser.add_argument("--methods", default="mean_volume,knn_xray,nearest_xray,full,full_mean4")
    parser.add_argument("--cache-dir", default="outputs/ssim_terms_cache")
    parser.add_argument("--profile", default="small")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--out", default="outputs/ssim_terms.json")
    args = parser.parse_args(argv)
    datalist = load_datalist(args.dataset_dir, None, cache_file=Path(args.cache_dir) / "datalist.json")
    kwargs = {"cache": "persistent", "cache_dir": Path(args.cache_dir) / f"knees_{args.image_size}",
              "mri_size": args.image_size, "xray_size": args.image_size}
    knees = build_knee_dataset(select_knees(datalist["validation"], args.knees), **kwargs)
    training = build_knee_dataset(datalist["training"], **kwargs)
    results: dict[str, dict[str, float]] = {}
    for name in args.methods.split(","):
        base = base_method(name)
        samples = 1 if base == name else int(name.rpartition("_mean")[2])
        method = build_method(base, args.model_dir, training, profile=args.profile, image_size=args.image_size)
        results[name] = method_terms(SampleMean(method, samples) if samples > 1 else method, knees, args.slices)
        print(name, json.dumps(results[name]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
