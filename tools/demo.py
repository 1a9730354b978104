"""The main job on the embedded default: synthetic cohort -> weights -> generate -> evaluate.

``xray2mri demo`` (the README's first command) makes the default synthetic cohort (100 knees, seed 0; the
shipped demo weights were trained on another cohort, 400 knees of seed 1, so every knee here is held out),
uses the shipped small-profile weights in ``models/small``
(or trains them from scratch with ``--retrain``), generates pseudo-MRI volumes from held-out validation X-rays
and evaluates the model against the baselines on validation knees. Every step is a command a user can run
alone; this module only chains them and says where the results are. All outputs are synthetic.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from xray2mri_bundle.cli import evaluate as evaluate_command
from xray2mri_bundle.cli import generate as generate_command
from xray2mri_bundle.cohort.generate import make_cohort
from xray2mri_bundle.diffusion import DEFAULT_SAMPLING
from xray2mri_bundle.engines.datalist import load_datalist

ROOT = Path(__file__).resolve().parents[1]
COHORT_SEED, COHORT_KNEES, COHORT_MATRIX = 0, 100, 256
CHECKPOINTS = ("autoencoder.pt", "classifier.pt", "diffusion.pt")
#: what the demo compares (docs/results.md adds the xray_no_guidance ablation): the model, the depth-only LDM,
#: the no-diffusion references and the oracle ceiling, on 25 of the 50 slices to keep it to minutes on a CPU
DEMO_METHODS = "full,ldm_depth_only,mean_volume,nearest_xray,knn_xray,oracle_knee"


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def ensure_cohort(cohort: Path) -> Path:
    """Make the default cohort unless it is already there (deterministic: same seed, same knees)."""
    if (cohort / "cohort.json").is_file():
        _say(f"cohort: reusing {cohort}")
        return cohort
    _say(f"cohort: writing {COHORT_KNEES} synthetic knees (seed {COHORT_SEED}) to {cohort}")
    return make_cohort(cohort, knees=COHORT_KNEES, seed=COHORT_SEED, mri_matrix=COHORT_MATRIX)


def ensure_weights(model_dir: Path, cohort: Path, retrain: bool, out: Path) -> Path:
    """The small-profile checkpoints: shipped ones, or trained from scratch with the bundle's recipe."""
    if not retrain and all((model_dir / name).is_file() for name in CHECKPOINTS):
        _say(f"weights: shipped demo weights in {model_dir} (trained on synthetic knees only)")
        return model_dir
    if not retrain:
        missing = [name for name in CHECKPOINTS if not (model_dir / name).is_file()]
        _say(f"weights: {model_dir} lacks {', '.join(missing)}; training the small profile "
             "(about 2 hours on 2 cores)")
        target = model_dir
    else:
        target = out / "models" / "small"
        _say(f"weights: --retrain: training the small profile from scratch into {target} (about 2 hours on 2 cores)")
    # the recipe makes and trains on its own training cohort (seed 1); the demo's cohort stays held out
    env_recipe = {"COHORT": str(out / "cohort_train"), "OUT": str(out / "train_small"), "MODELS": str(target),
                  "PY": sys.executable, "ABLATIONS": "0"}  # the demo evaluates the full model and the references
    recipe = ROOT / "scripts" / "train_small_demo.sh"
    subprocess.run([str(recipe)], check=True, cwd=ROOT, env={**os.environ, **env_recipe})
    return target


def held_out_xrays(cohort: Path, count: int) -> list[dict]:
    """``count`` validation knees of the demo cohort (never seen in training: the shipped weights were trained on
    a seed-1 cohort, and the baselines use this cohort's training split only)."""
    validation = load_datalist(cohort)["validation"]
    if not validation:
        raise RuntimeError(f"{cohort}: the validation split is empty; make a larger cohort")
    return validation[:count]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="xray2mri demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cohort", type=Path, default=ROOT / "data" / "cohort", help="cohort folder (made if absent)")
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "small", help="small-profile checkpoints")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "demo", help="where results go")
    p.add_argument("--retrain", action="store_true", help="train all three stages from scratch first (~2 h on CPU)")
    p.add_argument("--generate", type=int, default=2, help="held-out X-rays to generate volumes from (default 2)")
    p.add_argument("--sampler", default=DEFAULT_SAMPLING.sampler, help="solver for generation and evaluation "
                   f"(default {DEFAULT_SAMPLING.sampler}; ddim is the paper's)")
    p.add_argument("--steps", type=int, default=DEFAULT_SAMPLING.steps,
                   help=f"solver steps for generation (default {DEFAULT_SAMPLING.steps})")
    p.add_argument("--eval-knees", type=int, default=8, help="validation knees to evaluate (default 8; 0 = all)")
    p.add_argument("--eval-steps", type=int, default=DEFAULT_SAMPLING.steps,
                   help=f"solver steps in the evaluation (default {DEFAULT_SAMPLING.steps})")
    p.add_argument("--eval-samples", type=int, default=2,
                   help="diffusion methods are also scored as the mean of this many samples (default 2; the "
                        "results page uses 4)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    args = p.parse_args(argv)
    started = time.time()
    args.out.mkdir(parents=True, exist_ok=True)

    cohort = ensure_cohort(args.cohort)
    model_dir = ensure_weights(args.model_dir, cohort, args.retrain, args.out)

    knees = held_out_xrays(cohort, args.generate)
    generated = args.out / "generated"
    _say(f"generate: {len(knees)} held-out X-ray(s) -> {generated}")
    failed = 0
    for knee in knees:
        failed += generate_command.main([
            knee["xray"], "-o", str(generated), "--model-dir", str(model_dir), "--profile", "small",
            "--side", knee["side"].lower(), "--sampler", args.sampler, "--steps", str(args.steps),
            "--device", args.device, "--overwrite",
        ]) != 0

    evaluation = args.out / "eval"
    _say(f"evaluate: {args.eval_knees or 'all'} validation knees, {args.sampler} at {args.eval_steps} steps "
         f"-> {evaluation}")
    eval_rc = evaluate_command.main([
        "--model-dir", str(model_dir), "--dataset-dir", str(cohort), "--out", str(evaluation),
        "--max-knees", str(args.eval_knees), "--sampler", args.sampler, "--steps", str(args.eval_steps),
        "--device", args.device,
        "--sweep-depths", "30,50,100,200", "--sweep-steps", "10", "--samples", str(args.eval_samples),
        "--methods", DEMO_METHODS, "--slices", "25",
    ])
    summary_file = evaluation / "summary.json"
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        _print_headline(summary)
    _say(f"done in {time.time() - started:.0f} s. Volumes: {generated}  Report: {evaluation / 'report.md'}")
    _say("All outputs are SYNTHETIC research images from demo weights trained on synthetic knees: not for diagnosis.")
    return 1 if failed or eval_rc else 0


def _print_headline(summary: dict) -> None:
    """One line per method: median PSNR / SSIM / RSSIM (IQR in the report)."""
    methods = summary.get("methods", summary)
    for name, stats in methods.items():
        if not isinstance(stats, dict) or "overall" not in stats:
            continue
        overall = stats["overall"]
        cells = []
        for metric in ("psnr", "ssim", "rssim"):
            value = overall.get(metric, {}).get("median") if isinstance(overall.get(metric), dict) else None
            cells.append(f"{metric} {value:.3f}" if isinstance(value, (int, float)) else f"{metric} n/a")
        _say(f"  {name:24s} " + "  ".join(cells))


if __name__ == "__main__":
    raise SystemExit(main())
