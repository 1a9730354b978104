"""``xray2mri preview``: PNG of one datalist knee (film, crop box, crop, MRI slices; ``data.preview.preview_knee``).

Argument parsing only. Synthetic research images only, not for diagnosis.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from xray2mri_bundle.data.datasets import read_datalist
from xray2mri_bundle.data.preview import find_record, preview_knee

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``preview`` subcommand."""
    p = argparse.ArgumentParser(prog="xray2mri preview",
                                description="PNG of one datalist entry: film, crop box, crop, MRI slices.")
    p.add_argument("--datalist", required=True)
    p.add_argument("--split", default="all", choices=["training", "validation", "all"])
    p.add_argument("--index", type=int, help="position in the split (training first when --split all)")
    p.add_argument("--subject")
    p.add_argument("--side", choices=["RIGHT", "LEFT", "right", "left"])
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--slices", type=int, default=8, help="MRI slices shown (default 8)")
    p.add_argument("--size", type=int, default=256, help="crop / MRI size (default 256)")
    args = p.parse_args(argv)
    if args.index is None and args.subject is None:
        p.error("give --index or --subject")
    record = find_record(read_datalist(args.datalist, args.split), args.index, args.subject, args.side)
    out = preview_knee(record, args.out, n_slices=args.slices, size=args.size)
    print(f"preview: {out}")
    return 0
