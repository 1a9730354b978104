"""Equal-quality step count of each sampler: PSNR / SSIM / RSSIM / adjacent-slice r against steps.

On the validation knees of a cohort, through the evaluator users run (``SupervisedEvaluator`` + ``KneeRecorder``,
the ``full`` model, one sample per knee, the knee's own seed): DDIM at 50 steps twice (seeds 0 and 1: two runs
that differ only in their noise, the run-to-run noise of the reference), and each multistep solver at 5, 8, 10,
15, 20 and 25 steps (seed 0, paired with the DDIM-50 run of seed 0).

Equal quality is decided per metric with paired bootstraps over knees (``records.bootstrap_differences``: the
median over knees of the per-knee difference, 95 % percentile interval over 2000 resamples):
- the noise band b of a metric is the larger end, in absolute value, of the interval of DDIM-50 seed 1 minus
  DDIM-50 seed 0 (how far apart two equally good runs can plausibly be);
- a (sampler, steps) setting matches DDIM-50 on that metric when its median difference to DDIM-50 (seed 0) is
  >= -b (not worse by more than the noise; better passes);
- the recommended default is the fewest steps that match on all four metrics (ties: fewer UNet calls, then
  the order of ``SAMPLERS``).
Writes ``<out>/sampler_steps.json`` (all figures, per-knee rows), the figure ``docs/images/sampler_steps.png``
and the marked block of docs/performance.md. A killed run resumes: finished settings are read back from
``<out>/rows_<label>.json``.

    python scripts/sampler_steps.py --model-dir models/small --dataset-dir data/cohort_train --knees 24 \\
        --slices 25 --out outputs/sampler_steps

Synthetic data; the figures say nothing about real radiographs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from doc_blocks import replace_block  # scripts/doc_blocks.py (scripts/ is on sys.path)

from xray2mri_bundle.data import build_knee_dataset
from xray2mri_bundle.data.atomic import write_bytes_atomic
from xray2mri_bundle.diffusion import SAMPLERS
from xray2mri_bundle.engines.datalist import load_datalist
from xray2mri_bundle.evaluation.evaluator import KneeRecorder, build_evaluator, select_knees
from xray2mri_bundle.evaluation.methods import DiffusionMethod
from xray2mri_bundle.evaluation.records import bootstrap_differences
from xray2mri_bundle.inference.generator import load_pipeline

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "performance.md"
FIGURE = ROOT / "docs" / "images" / "sampler_steps.png"
START, END = "<!-- sampler-steps:start -->", "<!-- sampler-steps:end -->"
METRICS = ("psnr", "ssim", "rssim", "adjacent_corr")
REFERENCE, REPEAT = "ddim_50", "ddim_50_seed1"


def settings_to_run(steps: Sequence[int]) -> list[tuple[str, str, int, int]]:
    """(label, sampler, steps, evaluator seed) of every run, the two DDIM-50 references first."""
    runs = [(REFERENCE, "ddim", 50, 0), (REPEAT, "ddim", 50, 1)]
    runs += [(f"{name}_{n}", name, n, 0) for name in SAMPLERS if name != "ddim" for n in steps]
    return runs


def run_setting(generator, knees, label: str, sampler: str, steps: int, seed: int, slices: int,
                out: Path) -> list[dict]:
    """Per-knee rows of one setting (read back when a previous run finished it)."""
    path = out / f"rows_{label}.json"
    if path.is_file():
        return json.loads(path.read_text())
    method = DiffusionMethod(label, generator, steps=steps, sampler=sampler)
    recorder = KneeRecorder(label, {}, steps=steps, measure_jsw=False)
    start = time.perf_counter()
    build_evaluator(method, knees, recorder, slices=slices, device=generator.device, seed=seed).run()
    rows = [{k: v for k, v in row.items() if k in ("subject", "side", "method", *METRICS)} for row in recorder.rows]
    for row in rows:
        row["seconds"] = (time.perf_counter() - start) / max(len(rows), 1)
    write_bytes_atomic(path, json.dumps(rows).encode())
    return rows


def decide(rows: list[dict], labels: Sequence[str], seed: int = 0) -> dict:
    """Noise bands, per-setting paired differences to DDIM-50 and the recommended default (module docstring)."""
    boot = bootstrap_differences(rows, [REPEAT, *labels], metrics=METRICS, seed=seed)
    bands = {m: max(abs(boot[REPEAT][REFERENCE][m]["low"]), abs(boot[REPEAT][REFERENCE][m]["high"]))
             for m in METRICS}
    verdicts = {}
    for label in labels:
        diffs = boot[label][REFERENCE]
        verdicts[label] = {m: {**diffs[m], "matches": diffs[m]["median"] >= -bands[m]} for m in METRICS}
    matching = [label for label in labels if all(v["matches"] for v in verdicts[label].values())]
    order = list(SAMPLERS)

    def cost(label: str) -> tuple[int, int]:
        name, _, steps = label.rpartition("_")
        return int(steps), order.index(name)

    return {"noise_band": bands, "versus_ddim_50": verdicts, "matching": matching,
            "recommended": min(matching, key=cost) if matching else None}


def medians(rows: list[dict], label: str) -> dict[str, float]:
    mine = [r for r in rows if r["method"] == label]
    return {m: float(np.nanmedian([np.nan if r[m] is None else float(r[m]) for r in mine])) for m in METRICS}


def plot(rows: list[dict], steps: Sequence[int], bands: dict, path: Path) -> Path:
    """Median of each metric against steps per sampler; DDIM-50 as a line with its noise band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reference = medians(rows, REFERENCE)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.4))
    for axis, metric in zip(axes, METRICS, strict=True):
        for name in (s for s in SAMPLERS if s != "ddim"):
            axis.plot(steps, [medians(rows, f"{name}_{n}")[metric] for n in steps], marker="o", label=name)
        axis.axhline(reference[metric], color="k", lw=1, label="ddim 50 steps")
        axis.axhspan(reference[metric] - bands[metric], reference[metric] + bands[metric], color="k", alpha=0.1,
                     label="run-to-run noise")
        axis.set_xlabel("steps")
        axis.set_title(f"median {metric}")
    axes[0].legend(fontsize=7)
    fig.suptitle("Synthetic cohort, full model: quality against solver steps (research output, not for diagnosis)",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render(report: dict) -> str:
    """The docs/performance.md block: setup, the table and the decision."""
    rows, decision = report["rows"], report["decision"]
    labels = [REFERENCE, REPEAT, *report["labels"]]
    lines = [START, "", "### Equal-quality step count (`scripts/sampler_steps.py`)", "",
             f"{report['knees']} validation knees of `{report['dataset_dir']}`, {report['slices']} compared slices "
             f"each, model `{report['model_dir']}` (`full`, {report['weights']} weights), one sample per knee, "
             f"{report['device']}, {report['threads']} thread(s). Medians over knees; `d` is the median paired "
             "difference to DDIM-50 (seed 0) with its 95 % bootstrap interval; the noise band is the larger end of "
             "the same interval for DDIM-50 seed 1 minus seed 0. A setting matches when d >= -band on all four "
             "metrics.", "",
             "| setting | UNet calls / slice | PSNR | SSIM | RSSIM | adjacent r | d PSNR | d SSIM | d RSSIM | "
             "d adjacent r | matches |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label in labels:
        med = medians(rows, label)
        steps = int(label.split("_")[1]) if label.startswith("ddim") else int(label.rpartition("_")[2])
        verdict = decision["versus_ddim_50"].get(label)
        cells = [f"{med[m]:.4g}" for m in METRICS]
        if verdict:
            cells += [f"{verdict[m]['median']:+.3f} [{verdict[m]['low']:+.3f}, {verdict[m]['high']:+.3f}]"
                      for m in METRICS]
            cells.append("yes" if label in decision["matching"] else "no")
        else:
            cells += ["(reference)"] * 4 + [""] if label == REFERENCE else ["(noise)"] * 4 + [""]
        lines.append(f"| `{label}` | {steps} | " + " | ".join(cells) + " |")
    bands = ", ".join(f"{m} {b:.4f}" for m, b in decision["noise_band"].items())
    lines += ["", f"Noise bands: {bands}.", "",
              f"**Recommended default: `{decision['recommended']}`**" if decision["recommended"] else
              "**No solver setting matched DDIM-50: the default stays DDIM-50.**", "",
              f"![quality against steps](images/{FIGURE.name})", "", END]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default="models/small")
    parser.add_argument("--dataset-dir", required=True)
    parser.add_argument("--datalist", default=None)
    parser.add_argument("--knees", type=int, default=24)
    parser.add_argument("--slices", type=int, default=25)
    parser.add_argument("--steps", default="5,8,10,15,20,25")
    parser.add_argument("--out", default="outputs/sampler_steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/")
    args = parser.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",") if s.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    generator = load_pipeline(args.model_dir, None, args.device)
    size = int(generator.image_size)
    datalist = load_datalist(args.dataset_dir, args.datalist, seed=0, val_fraction=0.3)
    records = select_knees(datalist["validation"], args.knees)
    knees = build_knee_dataset(records, cache="persistent", cache_dir=out / f"knees_{size}", mri_size=size,
                               xray_size=size)
    rows: list[dict] = []
    runs = settings_to_run(steps)
    for number, (label, sampler, n, seed) in enumerate(runs, 1):
        start = time.perf_counter()
        rows += run_setting(generator, knees, label, sampler, n, seed, args.slices, out)
        print(f"[{number}/{len(runs)}] {label}: {medians(rows, label)} ({time.perf_counter() - start:.0f} s)",
              flush=True)
    labels = [label for label, *_ in runs[2:]]
    report = {"knees": len(records), "slices": args.slices, "dataset_dir": args.dataset_dir,
              "model_dir": args.model_dir, "weights": generator.weights, "device": args.device,
              "threads": torch.get_num_threads(), "steps": steps, "labels": labels, "rows": rows,
              "decision": decide(rows, labels)}
    write_bytes_atomic(out / "sampler_steps.json", json.dumps(report, indent=1).encode())
    print(json.dumps({k: report["decision"][k] for k in ("recommended", "matching", "noise_band")}, indent=1))
    if not args.no_docs:
        plot(rows, steps, report["decision"]["noise_band"], FIGURE)
        replace_block(DOC, render(report))
        write_bytes_atomic(ROOT / "docs" / "sampler_steps.json",
                           json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
