"""``xray2mri make-cohort``: write a synthetic OAI-like knee cohort (``cohort.generate.make_cohort``).

Argument parsing only. Synthetic phantom data, not for diagnosis.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from xray2mri_bundle.cohort.generate import make_cohort
from xray2mri_bundle.constants import DISCLAIMER, RESEARCH_USE

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``xray2mri make-cohort --out DIR --knees N --seed S --mri-matrix 256``."""
    parser = argparse.ArgumentParser(prog="xray2mri make-cohort", description=(
        "Write a synthetic OAI-like knee cohort (DICOM MRI series + bilateral films + OAI-style tables). "
        + RESEARCH_USE))
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--knees", type=int, default=100, help="number of knees (rounded up to whole subjects)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mri-matrix", type=int, default=256, help="MRI matrix (512 as OAI; 256 default)")
    parser.add_argument("--xray-spacing", type=float, nargs="+", default=[0.4, 0.6], metavar="MM",
                        help="film pixel spacing in mm: one value, or a low and high value spread over sites")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if len(args.xray_spacing) not in (1, 2):
        parser.error("--xray-spacing takes one or two values")
    spacing = args.xray_spacing[0] if len(args.xray_spacing) == 1 else (args.xray_spacing[0], args.xray_spacing[1])
    start = time.perf_counter()
    root = make_cohort(args.out, knees=args.knees, seed=args.seed, mri_matrix=args.mri_matrix,
                       xray_spacing_mm=spacing, progress=not args.no_progress, workers=args.workers)
    print(f"wrote {2 * ((args.knees + 1) // 2)} knees to {root} in {time.perf_counter() - start:.1f} s "
          f"({DISCLAIMER})")
    return 0
