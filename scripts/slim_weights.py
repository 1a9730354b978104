"""Turn final exports into inference-only checkpoints (EMA weights, half precision) and measure the effect.

    python scripts/slim_weights.py --models /work/runs/models_small --out models/small \
        --check-xray data/cohort/<an X-ray> [--dtype float16]

For every ``*.pt`` of ``--models`` writes ``--out/<name>.pt`` through
``xray2mri_bundle.checkpoint.inference_checkpoint`` (training checkpoints never go there). With ``--check-xray`` it
generates the same volume (same seed, 50 slices) from the full and from the slimmed weights and prints the
largest absolute difference and the PSNR between them, the tolerance recorded in docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from xray2mri_bundle.checkpoint import atomic_save, inference_checkpoint, read_checkpoint


def slim(models: Path, out: Path, dtype: torch.dtype) -> dict[str, dict[str, int]]:
    """Write the inference-only copy of each checkpoint; returns bytes before / after per file."""
    sizes = {}
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(models.glob("*.pt")):
        target = out / path.name
        atomic_save(inference_checkpoint(read_checkpoint(path), dtype), target)
        sizes[path.name] = {"bytes_before": path.stat().st_size, "bytes_after": target.stat().st_size}
    return sizes


def compare(models: Path, out: Path, xray: Path, steps: int = 20) -> dict[str, float]:
    """Same X-ray, seed and settings through both folders: max |difference| and PSNR (data range 2)."""
    from xray2mri_bundle.inference.generator import load_pipeline
    from xray2mri_bundle.inference.knees import prepare_knees

    volumes = []
    for folder in (models, out):
        generator = load_pipeline(folder, "small", "cpu")
        knee = prepare_knees(xray, image_size=generator.image_size)[0]
        volumes.append(generator(knee.crop, slices=50, num_inference_steps=steps, seed=0).volume.float())
    diff = (volumes[0] - volumes[1]).abs()
    mse = float((diff**2).mean())
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "psnr_db": float("inf") if mse == 0 else float(10 * torch.log10(torch.tensor(4.0 / mse))),
            "steps": steps}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, required=True, help="folder of final exports (training output)")
    p.add_argument("--out", type=Path, required=True, help="folder of the inference-only copies")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    p.add_argument("--check-xray", type=Path, help="X-ray to generate from with both folders")
    args = p.parse_args(argv)
    if args.models.resolve() == args.out.resolve():
        p.error("--out must differ from --models (the full exports are the reference of --check-xray)")
    report: dict[str, object] = {"sizes": slim(args.models, args.out, getattr(torch, args.dtype)),
                                 "dtype": args.dtype}
    if args.check_xray:
        report["check"] = compare(args.models, args.out, args.check_xray)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
