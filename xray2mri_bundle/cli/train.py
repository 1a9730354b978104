"""``xray2mri train``: the bundle's training (all stages) for a profile, as a plain command.

Argument parsing only: the options become the bundle overrides of ``engines.training_run.training_arguments``
and ``run_training`` runs ``python -m monai.bundle run training`` in-process. The configs come from the bundle
checkout (``--bundle-root``, default the current folder).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from xray2mri_bundle.engines.training_run import run_training, training_arguments

from ._common import find_bundle_root

__all__ = ["bundle_arguments", "main"]


def _value(text: str) -> Any:
    """A ``--set`` value: JSON when it parses (numbers, true/false, null, lists), else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xray2mri train", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="paper", choices=["paper", "small", "tiny"], help="network/training profile")
    p.add_argument("--dataset-dir", help="OAI-style tree or CSV manifest (default: <bundle>/data/cohort)")
    p.add_argument("--datalist-file", help="use this datalist JSON instead of indexing --dataset-dir")
    p.add_argument("--output-dir", help="logs, interval/best checkpoints, cache, mlruns.db (default <bundle>/outputs)")
    p.add_argument("--model-dir", help="final checkpoints (default <bundle>/models/<profile>)")
    p.add_argument("--stages", nargs="+", choices=["autoencoder", "classifier", "diffusion"],
                   help="stages to consider (default: all three, in order)")
    p.add_argument("--force-retrain", action="store_true", help="train the stages again from scratch")
    p.add_argument("--tracking", choices=["mlflow"], help="log to MLflow (SQLite store in the output dir)")
    p.add_argument("--tracking-uri", help="MLflow tracking server URI, e.g. http://127.0.0.1:5000")
    p.add_argument("--multi-gpu", action="store_true",
                   help="merge configs/multi_gpu_train.json (start this command with torchrun)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other bundle override, e.g. --set diffusion_max_epochs=10 (repeatable)")
    p.add_argument("--bundle-root", help="bundle checkout holding configs/ (default: the current folder)")
    p.add_argument("--logging-file", help="logging.conf for the run (default: configs/logging.conf if present)")
    return p


def bundle_arguments(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The keyword arguments of ``monai.bundle.scripts.run`` for a command line (``SystemExit`` on a bad one)."""
    args = build_parser().parse_args(argv)
    root = find_bundle_root(args.bundle_root, needs="configs/train.json")  # BundleRootError: exit 2, one line
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = _value(text)
    return training_arguments(
        root, args.profile, dataset_dir=args.dataset_dir, datalist_file=args.datalist_file,
        output_dir=args.output_dir, model_dir=args.model_dir, stages=args.stages, force_retrain=args.force_retrain,
        tracking=args.tracking, tracking_uri=args.tracking_uri, multi_gpu=args.multi_gpu, overrides=overrides,
        logging_file=args.logging_file)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the training pipeline; returns 0 (errors raise with their message)."""
    run_training(bundle_arguments(argv))
    return 0
