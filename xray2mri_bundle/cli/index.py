"""``xray2mri index``: index an OAI-style tree or a CSV manifest into a MONAI datalist and an ingestion report.

Argument parsing only: the work is ``data.index.index_oai`` / ``index_manifest`` and ``write_datalist``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from xray2mri_bundle.data.index import add_training, index_manifest, index_oai, write_datalist

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xray2mri index",
                                description="Index an OAI-style tree or a CSV manifest into a MONAI datalist.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--root", help="OAI-style tree (contents.csv, DICOM folders, kXR_SQ_BU*.txt)")
    src.add_argument("--manifest", help="CSV with columns xray, mri, kl, side (optional subject, visit, film)")
    p.add_argument("--out", required=True, help="datalist JSON to write")
    p.add_argument("--report", help="ingestion report JSON (a .txt summary is written beside it); "
                                    "default: <out stem>_report.json")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--val-fraction", type=float, default=0.3, help="validation share of subjects (default 0.3)")
    p.add_argument("--readprj", type=int, default=15, help="KL reading project to keep (default 15; -1 = all)")
    p.add_argument("--expected-slices", type=int, default=80, help="MRI slice count to require (0 = any)")
    p.add_argument("--add-training", action="append", default=[], metavar="ROOT_OR_CSV",
                   help="another OAI-style tree or CSV manifest whose knees all go to the training split (the "
                        "validation split stays the main source's; a subject of it is kept out); repeatable")
    return p


def _index(source: str, args: argparse.Namespace, manifest: bool) -> tuple:
    """One source indexed with the command's settings: (datalist, report)."""
    expected = args.expected_slices or None
    if manifest:
        return index_manifest(source, seed=args.seed, expected_slices=expected, val_fraction=args.val_fraction)
    return index_oai(source, seed=args.seed, readprj=None if args.readprj < 0 else args.readprj,
                     expected_slices=expected, val_fraction=args.val_fraction)


def main(argv: Sequence[str] | None = None) -> int:
    """``index`` subcommand: write the datalist and the report, print the summary; exit 0 (1 if the main source
    paired nothing)."""
    args = _parser().parse_args(argv)
    try:
        datalist, report = _index(args.root or args.manifest, args, manifest=not args.root)
        paired_main = report.paired
        for extra in args.add_training:
            extra_datalist, extra_report = _index(extra, args, manifest=Path(extra).suffix.lower() == ".csv")
            datalist = add_training(datalist, report, extra_datalist, extra_report)
    except (ValueError, FileNotFoundError) as exc:  # a table that cannot be used at all: one line naming it
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = write_datalist(datalist, args.out)
    report_path = Path(args.report) if args.report else out.with_name(out.stem + "_report.json")
    json_path, txt_path = report.write(report_path)
    print(report.summary())
    print(f"datalist: {out}\nreport:   {json_path} (+ {txt_path.name})")
    return 0 if paired_main else 1  # the main source must pair knees: it gives the validation split
