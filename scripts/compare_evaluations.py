"""Paired comparison of one method across two evaluation runs (two checkpoints on the same knees and seeds).

Reads ``per_knee.csv`` of each ``xray2mri evaluate`` output folder, renames the method of each run (``NAME=DIR``),
and reports the medians and the paired bootstrap interval of the per-knee difference (``records.
bootstrap_differences``: median over knees of B - A, 95 % percentile interval, 2000 resamples) for every
metric; the references of run B (mean volume, nearest knees, oracle) are listed beside them. With ``--doc`` the
table replaces a marked block of that page.

    python scripts/compare_evaluations.py --method full --a shipped_4050=outputs/eval_a --b longer_11250=outputs/eval_b

Synthetic data; the figures say nothing about real radiographs.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from doc_blocks import replace_block  # scripts/doc_blocks.py (scripts/ is on sys.path)

from xray2mri_bundle.evaluation.records import bootstrap_differences, read_rows

METRICS = ("psnr", "ssim", "rssim", "adjacent_corr")
START, END = "<!-- compare-runs:start -->", "<!-- compare-runs:end -->"


def _named(spec: str) -> tuple[str, Path]:
    name, _, folder = spec.partition("=")
    if not folder:
        raise SystemExit(f"expected NAME=DIR, got {spec!r}")
    return name, Path(folder)


def _median(rows: list[dict], method: str, metric: str) -> float:
    values = [float(r[metric]) for r in rows if r["method"] == method and r.get(metric) is not None
              and math.isfinite(float(r[metric]))]
    return float(np.median(values)) if values else float("nan")


def compare(a: tuple[str, Path], b: tuple[str, Path], methods: Sequence[str]) -> tuple[list[dict], dict]:
    """Rows of both runs with the compared methods renamed ``<method>@<run name>``, and the bootstrap of B - A."""
    rows = []
    for name, folder in (a, b):
        for row in read_rows(folder / "per_knee.csv"):
            if row["method"] in methods:
                row = {**row, "method": f"{row['method']}@{name}"}
            elif name != b[0]:
                continue  # references are taken from run B only
            rows.append(row)
    labels = [f"{m}@{b[0]}" for m in methods]
    return rows, bootstrap_differences(rows, labels, metrics=METRICS)


def render(rows: list[dict], boot: dict, a: tuple[str, Path], b: tuple[str, Path], methods: Sequence[str],
           title: str = "Comparison of two runs") -> str:
    names = list(dict.fromkeys(r["method"] for r in rows))
    knees = len({(r["subject"], r["side"]) for r in rows})
    lines = [START, "", f"## {title}", "",
             f"Paired over {knees} knees (same knees, seeds and settings): `{a[1]}` (`{a[0]}`) against `{b[1]}` "
             f"(`{b[0]}`); references from the second run. Medians over knees.", "",
             "| method | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for name in names:
        lines.append(f"| `{name}` | " + " | ".join(f"{_median(rows, name, m):.4g}" for m in METRICS) + " |")
    lines += ["", "Paired differences (median over knees, 95 % bootstrap interval):", "",
              "| difference | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for method in methods:
        mine = f"{method}@{b[0]}"
        for other, cells in boot.get(mine, {}).items():
            base = other.partition("@")[0]
            if "@" in other and base != method or other.startswith(f"{method}@{b[0]}"):
                continue  # the same method in the other run, and the references; not the other compared methods
            row = [f"{cells[m]['median']:+.4f} [{cells[m]['low']:+.4f}, {cells[m]['high']:+.4f}]" if m in cells
                   else "-" for m in METRICS]
            lines.append(f"| `{mine}` - `{other}` | " + " | ".join(row) + " |")
    lines += ["", END]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", required=True, help="NAME=DIR of the first evaluation (the baseline)")
    parser.add_argument("--b", required=True, help="NAME=DIR of the second evaluation")
    parser.add_argument("--method", default="full", help="comma-separated methods to compare (default full)")
    parser.add_argument("--doc", type=Path, default=None, help="replace the marked block of this page")
    parser.add_argument("--title", default="Comparison of two runs", help="heading of the block")
    args = parser.parse_args(argv)
    a, b = _named(args.a), _named(args.b)
    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    rows, boot = compare(a, b, methods)
    text = render(rows, boot, a, b, methods, args.title)
    print(text)
    if args.doc is not None:
        replace_block(args.doc, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
