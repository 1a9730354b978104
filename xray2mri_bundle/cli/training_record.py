"""``xray2mri training-record``: record how shipped weights were trained (command, commit, cohort, wall time and
final validation per stage) in ``<models>/training_record.json`` and a loss-curve PNG.

Argument parsing only: the work is ``engines.training_record.write_training_record``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from xray2mri_bundle.engines.training_record import write_training_record

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="xray2mri training-record", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", required=True, type=Path, help="folder of the final checkpoints (models/small)")
    p.add_argument("--logs", required=True, type=Path, help="folder holding <stage>.log")
    p.add_argument("--cohort", required=True, type=Path, help="cohort the weights were trained on")
    p.add_argument("--wall", nargs="+", default=[], help="stage=seconds, one per stage")
    p.add_argument("--command", default="", help="the command that trained the weights")
    p.add_argument("--note", action="append", default=[], help="a remark on how the weights were trained")
    p.add_argument("--bundle-root", type=Path, default=None,
                   help="checkout whose git commit is recorded (default: the current folder)")
    p.add_argument("--loss-png", type=Path, default=Path("docs/images/loss_curves_small.png"))
    args = p.parse_args(argv)
    wall = {k: float(v) for k, v in (item.split("=", 1) for item in args.wall)}
    record = write_training_record(args.models, args.logs, args.cohort, wall, args.command, args.loss_png,
                                   args.note, bundle_root=args.bundle_root)
    print(json.dumps(record["stages"], indent=2))
    return 0

