"""``xray2mri train``: the bundle's training (all stages) for a profile, as a plain command.

It runs exactly ``python -m monai.bundle run training --config_file "['configs/train.json',
'configs/profiles/<profile>.json']" ...`` in-process, translating the options below into bundle overrides, so
both ways of starting training behave the same (skip finished stages, resume killed ones, MLflow).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["bundle_arguments", "literal", "main"]

#: prefixes that MONAI's ConfigParser interprets: "$" expression (eval), "@" reference, "%" macro
_CONFIG_PREFIXES = ("$", "@", "%")


def literal(text: str) -> str:
    """``text`` as a bundle override that stays the literal string. A value starting with ``$``, ``@`` or ``%``
    would be evaluated, referenced or expanded by the config parser (which also substitutes ``@name`` inside
    expressions), so it becomes ``$bytes.fromhex('<hex of text>').decode()``: an expression of hex digits only,
    which evaluates to exactly ``text`` and runs nothing of it."""
    return f"$bytes.fromhex('{text.encode().hex()}').decode()" if text.startswith(_CONFIG_PREFIXES) else text


def _find_bundle_root(given: str | None) -> Path:
    """``given``, else the current folder if it holds configs/train.json, else the checkout of this package."""
    candidates = [Path(given)] if given else [Path.cwd(), Path(__file__).resolve().parents[2]]
    for root in candidates:
        if (root / "configs" / "train.json").is_file():
            return root.resolve()
    raise SystemExit(f"configs/train.json not found under {', '.join(map(str, candidates))}; pass --bundle-root")


def _value(text: str) -> Any:
    """A ``--set`` value: JSON when it parses (numbers, true/false, null, lists), else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _parser() -> argparse.ArgumentParser:
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
    p.add_argument("--bundle-root", help="bundle folder holding configs/ (default: found automatically)")
    p.add_argument("--logging-file", help="logging.conf for the run (default: configs/logging.conf if present)")
    return p


def bundle_arguments(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The keyword arguments of ``monai.bundle.scripts.run`` for a command line."""
    args = _parser().parse_args(argv)
    root = _find_bundle_root(args.bundle_root)
    files = [root / "configs" / "train.json", root / "configs" / "profiles" / f"{args.profile}.json"]
    if args.multi_gpu:
        files.append(root / "configs" / "multi_gpu_train.json")
    kwargs: dict[str, Any] = {"run_id": "training", "config_file": [str(f) for f in files], "bundle_root": str(root)}
    logging_file = args.logging_file or (root / "configs" / "logging.conf")
    kwargs["logging_file"] = str(logging_file) if Path(logging_file).is_file() else False
    for key in ("dataset_dir", "datalist_file", "output_dir", "model_dir", "tracking", "tracking_uri"):
        if getattr(args, key) is not None:  # paths and URIs are literal values, never config syntax
            kwargs[key] = literal(getattr(args, key))
    if args.stages:
        kwargs["stages"] = list(args.stages)
    if args.force_retrain:
        kwargs["force_retrain"] = True
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        kwargs[key.strip()] = _value(text)
    return kwargs


def main(argv: Sequence[str] | None = None) -> int:
    """Run the training pipeline; returns 0 (errors raise with their message)."""
    kwargs = bundle_arguments(argv)
    from monai.bundle.scripts import run

    if kwargs["logging_file"] is False:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    run(**kwargs)
    return 0
