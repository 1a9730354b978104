"""``xray2mri export``: the trained UNet as a ``torch.export`` program (``.pt2``), checked against eager.

Argument parsing only: the work is ``inference.export.export_checkpoint`` (see that module for what the program
holds and how to load it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xray2mri export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default="models", help="trained bundle (or its <profile> sub-folder)")
    parser.add_argument("--profile", default="small")
    parser.add_argument("--diffusion-checkpoint", default=None, help="another diffusion file (an ablation)")
    parser.add_argument("-o", "--out", default="unet.pt2", help="exported program (default unet.pt2)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from xray2mri_bundle.inference.export import export_checkpoint

    try:
        result = export_checkpoint(args.model_dir, args.profile, args.out, args.diffusion_checkpoint)
    except (FileNotFoundError, KeyError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {result['path']} (max |exported - eager| = {result['max_abs_diff']:.2e} at batch "
          f"{result['batch_checked']}); load with torch.export.load(path).module()")
    return 0
