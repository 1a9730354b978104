"""Turn final exports into inference-only checkpoints (EMA weights, int8 or half precision) and measure the effect.

    python scripts/slim_weights.py --models /work/runs/models_small --out models/small \
        --check-xray data/cohort/<an X-ray> [--check-xray <another>] [--dtype int8]

For every ``*.pt`` of ``--models`` writes ``--out/<name>.pt`` through
``xray2mri_bundle.checkpoint.inference_checkpoint`` (training checkpoints never go there). With ``--check-xray`` it
generates the same volumes (every knee of each X-ray, same seed, 50 slices, the bundle's default sampler) from
the full and from the slimmed weights and prints the largest absolute difference and the PSNR between them,
the tolerance recorded in docs/training.md. ``--models`` may itself hold inference-only files (then the
comparison is between the two stored precisions).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from xray2mri_bundle.checkpoint import INFERENCE_PRECISIONS, atomic_save, inference_checkpoint, read_checkpoint


def slim(models: Path, out: Path, dtype: str) -> dict[str, dict[str, int]]:
    """Write the inference-only copy of each checkpoint; returns bytes before / after per file."""
    sizes = {}
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(models.glob("*.pt")):
        target = out / path.name
        atomic_save(inference_checkpoint(read_checkpoint(path), dtype), target)
        sizes[path.name] = {"bytes_before": path.stat().st_size, "bytes_after": target.stat().st_size}
    return sizes


def compare(models: Path, out: Path, xrays: Sequence[Path], steps: int | None = None) -> dict[str, object]:
    """Same X-rays, seed and settings through both folders: max / mean |difference| and the PSNR between
    the volumes (data range 2), over every knee of every X-ray; ``steps`` None = the default sampler's."""
    from xray2mri_bundle.diffusion import DEFAULT_SAMPLING
    from xray2mri_bundle.inference.generator import load_pipeline
    from xray2mri_bundle.inference.knees import prepare_knees

    steps = DEFAULT_SAMPLING.steps if steps is None else int(steps)
    generators = [load_pipeline(folder, "small", "cpu") for folder in (models, out)]
    diffs = []
    for xray in xrays:
        for knee in prepare_knees(xray, image_size=generators[0].image_size):
            a, b = (g(knee.crop, slices=50, num_inference_steps=steps, seed=0).volume.float() for g in generators)
            diffs.append((a - b).abs())
    diff = torch.cat([d.flatten() for d in diffs])
    mse = float((diff**2).mean())
    return {"knees": len(diffs), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "psnr_db": float("inf") if mse == 0 else float(10 * torch.log10(torch.tensor(4.0 / mse))),
            "sampler": DEFAULT_SAMPLING.sampler, "steps": steps}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, required=True, help="folder of final exports (training output)")
    p.add_argument("--out", type=Path, required=True, help="folder of the inference-only copies")
    p.add_argument("--dtype", choices=INFERENCE_PRECISIONS, default="int8",
                   help="stored precision (int8: weight-only int8 with per-channel scales; default)")
    p.add_argument("--check-xray", type=Path, action="append", default=[],
                   help="X-ray to generate from with both folders (repeatable)")
    args = p.parse_args(argv)
    if args.models.resolve() == args.out.resolve():
        p.error("--out must differ from --models (the full exports are the reference of --check-xray)")
    report: dict[str, object] = {"sizes": slim(args.models, args.out, args.dtype),
                                 "dtype": args.dtype}
    if args.check_xray:
        report["check"] = compare(args.models, args.out, args.check_xray)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
