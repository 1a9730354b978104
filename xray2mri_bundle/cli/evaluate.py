"""``xray2mri evaluate``: compare methods on the validation split and write tables, figures and a report.

Example (small profile, 2 CPU cores)::

    xray2mri evaluate --model-dir models/small --dataset-dir cohort --datalist cohort/datalist.json \\
        --out outputs/eval --methods full,xray_no_guidance,ldm_depth_only,mean_volume,nearest_xray \\
        --max-knees 12 --steps 20 --slices 50 --write-docs

Argument parsing only: the settings and their defaults are ``evaluation.options.EvaluationOptions``, the work is
``evaluation.run.run_evaluation`` (see there for the outputs).
Outputs are synthetic research images, not for diagnosis.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from xray2mri_bundle.diffusion import SAMPLERS
from xray2mri_bundle.evaluation.options import DEFAULTS, EvaluationOptions
from xray2mri_bundle.evaluation.run import report_only, run_evaluation
from xray2mri_bundle.networks.profiles import PROFILE_NAMES

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xray2mri evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", default=DEFAULTS.model_dir, help=f"checkpoints folder (default {DEFAULTS.model_dir})")
    p.add_argument("--dataset-dir", help="cohort folder (OAI-style tree; ground_truth.csv gives the JSW truth)")
    p.add_argument("--datalist", help="MONAI datalist JSON (default <dataset-dir>/datalist.json, else indexed)")
    p.add_argument("--split-seed", type=int, default=DEFAULTS.split_seed,
                   help=f"split seed when indexing (as training; default {DEFAULTS.split_seed})")
    p.add_argument("--val-fraction", type=float, default=DEFAULTS.val_fraction,
                   help=f"validation share when indexing (default {DEFAULTS.val_fraction})")
    p.add_argument("--out", default=DEFAULTS.out, help=f"output folder (default {DEFAULTS.out})")
    p.add_argument("--methods", default=DEFAULTS.methods, help=f"comma-separated (default {DEFAULTS.methods})")
    p.add_argument("--max-knees", type=int, default=DEFAULTS.max_knees,
                   help="validation knees, spread over KL grades (0 = all)")
    p.add_argument("--max-train-knees", type=int, default=DEFAULTS.max_train_knees,
                   help="training knees for the baselines (0 = all)")
    p.add_argument("--sampler", default=DEFAULTS.sampler, choices=sorted(SAMPLERS),
                   help=f"solver of the diffusion methods (default {DEFAULTS.sampler})")
    p.add_argument("--steps", type=int, default=DEFAULTS.steps,
                   help=f"solver steps (default {DEFAULTS.steps})")
    p.add_argument("--slices", type=int, default=DEFAULTS.slices,
                   help="compare this many evenly spaced real slices of the 50 (0 = all 50)")
    p.add_argument("--guidance-scale", type=float, default=DEFAULTS.guidance_scale,
                   help="classifier-free guidance (1 = none)")
    p.add_argument("--eta", type=float, default=DEFAULTS.eta, help="DDIM eta (0 = deterministic)")
    p.add_argument("--chunk-size", type=int, default=DEFAULTS.chunk_size, help="depths denoised together")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="base seed (each knee: CRC32 of its key + seed)")
    p.add_argument("--profile", choices=sorted(PROFILE_NAMES), help="network profile (default: from --model-dir name)")
    p.add_argument("--image-size", type=int,
                   help="slice / crop size (default: the model's autoencoder.pt size, else the profile's)")
    p.add_argument("--cache-dir", help="knee cache (default <out>/cache)")
    p.add_argument("--pose-template", help="score in the canonical-pose MRI frame of this template (xray2mri "
                   "pose-template; configs/pose_frame.json): for models trained in that frame")
    p.add_argument("--device", default=DEFAULTS.device, help="cpu, cuda, cuda:1 or auto (default)")
    p.add_argument("--nearest-metric", choices=("l2", "cosine"), default=DEFAULTS.nearest_metric,
                   help="nearest_xray / knn_xray distance on the 32 x 32 crop (default l2)")
    p.add_argument("--knn", type=int, default=DEFAULTS.knn,
                   help=f"neighbours averaged by knn_xray (default {DEFAULTS.knn})")
    p.add_argument("--samples", type=int, default=DEFAULTS.samples,
                   help="diffusion methods are scored on one sample AND on the mean of this many (default 4; "
                        "1 = single sample only)")
    p.add_argument("--sweep-method", help="method of the depth sweep and interpolation (default: first diffusion)")
    p.add_argument("--sweep-depths", default=DEFAULTS.sweep_depths,
                   help=f"numbers of depths for Fig. 6 ('' = skip; default {DEFAULTS.sweep_depths})")
    p.add_argument("--sweep-knees", type=int, default=DEFAULTS.sweep_knees,
                   help=f"knees in the depth sweep (default {DEFAULTS.sweep_knees})")
    p.add_argument("--sweep-steps", type=int, help="DDIM steps in the sweep and interpolation (default --steps)")
    p.add_argument("--interp-frames", type=int, default=DEFAULTS.interp_frames,
                   help="generated frames between two real slices (0 = skip)")
    p.add_argument("--no-jsw", action="store_true", help="skip joint-space width measurements")
    p.add_argument("--strict", action="store_true", help="fail when a method cannot be built (default: skip it)")
    p.add_argument("--write-docs", action="store_true",
                   help="also write docs/results.md (+ docs/results/*.png and per_knee.csv)")
    p.add_argument("--docs-dir", default=DEFAULTS.docs_dir,
                   help="docs folder for --write-docs (default docs, in the current folder)")
    p.add_argument("--docs-page", default=DEFAULTS.docs_page,
                   help="page --write-docs writes in --docs-dir (default results.md; figures go to <stem>/)")
    p.add_argument("--title", default=DEFAULTS.title, help="report title")
    p.add_argument("--preface", type=Path, help="Markdown file placed after the disclaimer (e.g. what changed "
                                                "since the previous report and why)")
    p.add_argument("--report-only", action="store_true",
                   help="render the report of the finished run in --out again (new --preface / --title / "
                        "--write-docs), without evaluating: reads its per_knee.csv and report_inputs.json")
    p.add_argument("--train-command", action="append", default=DEFAULTS.train_command,
                   help="training command to show in the report's Reproduce block (repeatable; default: the "
                        "standard recipe for the evaluated diffusion methods)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``xray2mri evaluate``; returns 0 when at least one method was evaluated."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    options = EvaluationOptions.from_mapping(vars(args))
    run = report_only(options) if options.report_only else run_evaluation(options, argv)
    print(f"per-knee table: {run.out / 'per_knee.csv'}\nsummary:        {run.out / 'summary.json'}\n"
          f"report:         {run.report}" + (f"\ndocs:           {run.docs}" if run.docs else ""))
    for name, reason in run.skipped.items():
        print(f"skipped {name}: {reason}")
    return 0 if run.metrics or (options.report_only and run.rows) else 1

