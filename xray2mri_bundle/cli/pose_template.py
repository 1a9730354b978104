"""``xray2mri pose-template``: build the canonical-pose template of the MRI frame from training knees
(``data.pose.template_from_records``; used by ``AlignMRIPosed`` in ``configs/pose_frame.json``).

Argument parsing only. Only training knees should go in: the template is part of the learned frame.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from xray2mri_bundle.engines.datalist import load_datalist

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``pose-template`` subcommand."""
    from xray2mri_bundle.data.pose import write_pose_template

    p = argparse.ArgumentParser(prog="xray2mri pose-template",
                                description="Build the canonical-pose MRI template from the training knees.")
    p.add_argument("--dataset-dir", required=True, help="cohort / OAI-style tree")
    p.add_argument("--datalist", help="datalist JSON (its training knees are used); default: the tree's split")
    p.add_argument("--knees", type=int, default=40, help="training knees averaged (default 40)")
    p.add_argument("--rounds", type=int, default=3, help="register-and-average rounds (default 3)")
    p.add_argument("--out", required=True, help="template file to write (.pt)")
    args = p.parse_args(argv)
    if args.knees < 1 or args.rounds < 0:
        p.error(f"--knees must be >= 1 and --rounds >= 0, got {args.knees} and {args.rounds}")
    if not args.out.endswith(".pt"):
        p.error(f"--out must name a .pt file (the report goes beside it as .json), got {args.out}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    records = load_datalist(args.dataset_dir, args.datalist)["training"]
    report = write_pose_template(records, args.out, count=args.knees, rounds=args.rounds,
                                 source=str(args.dataset_dir))
    print(f"pose template: {args.out} ({report['knees']} knees, {len(report['skipped'])} skipped; median rotation per "
          f"round {', '.join(f'{v:.2f}' for v in report['median_rotation_deg'])} deg)")
    return 0
