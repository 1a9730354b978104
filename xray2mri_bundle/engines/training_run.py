"""The bundle's training (all stages) for a profile, as one function call.

``training_arguments`` builds exactly the keyword arguments of ``monai.bundle.scripts.run`` that
``python -m monai.bundle run training --config_file "['configs/train.json', 'configs/profiles/<profile>.json']"
...`` would use, and ``run_training`` runs them in-process, so ``xray2mri train`` (``xray2mri_bundle.cli.train``)
and the bundle command behave the same (skip finished stages, resume killed ones, MLflow).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["literal", "run_training", "training_arguments"]

#: prefixes that MONAI's ConfigParser interprets: "$" expression (eval), "@" reference, "%" macro
_CONFIG_PREFIXES = ("$", "@", "%")


def literal(text: str) -> str:
    """``text`` as a bundle override that stays the literal string. A value starting with ``$``, ``@`` or ``%``
    would be evaluated, referenced or expanded by the config parser (which also substitutes ``@name`` inside
    expressions), so it becomes ``$bytes.fromhex('<hex of text>').decode()``: an expression of hex digits only,
    which evaluates to exactly ``text`` and runs nothing of it."""
    return f"$bytes.fromhex('{text.encode().hex()}').decode()" if text.startswith(_CONFIG_PREFIXES) else text


def training_arguments(
    bundle_root: str | os.PathLike,
    profile: str = "paper",
    *,
    dataset_dir: str | None = None,
    datalist_file: str | None = None,
    output_dir: str | None = None,
    model_dir: str | None = None,
    stages: Sequence[str] | None = None,
    force_retrain: bool = False,
    tracking: str | None = None,
    tracking_uri: str | None = None,
    multi_gpu: bool = False,
    overrides: Mapping[str, Any] | None = None,
    logging_file: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The keyword arguments of ``monai.bundle.scripts.run`` for a training of ``profile`` with the configs of the
    bundle checkout ``bundle_root`` (``configs/train.json`` + ``configs/profiles/<profile>.json``, plus
    ``configs/multi_gpu_train.json`` with ``multi_gpu``). Paths and URIs are passed as literal values, never config
    syntax; ``overrides`` are any other bundle overrides (values as given). ``logging_file`` defaults to
    ``configs/logging.conf`` when present."""
    root = Path(bundle_root)
    files = [root / "configs" / "train.json", root / "configs" / "profiles" / f"{profile}.json"]
    if multi_gpu:
        files.append(root / "configs" / "multi_gpu_train.json")
    kwargs: dict[str, Any] = {"run_id": "training", "config_file": [str(f) for f in files], "bundle_root": str(root)}
    logging_file = logging_file or (root / "configs" / "logging.conf")
    kwargs["logging_file"] = str(logging_file) if Path(logging_file).is_file() else False
    paths = {"dataset_dir": dataset_dir, "datalist_file": datalist_file, "output_dir": output_dir,
             "model_dir": model_dir, "tracking": tracking, "tracking_uri": tracking_uri}
    kwargs.update({key: literal(str(value)) for key, value in paths.items() if value is not None})
    if stages:
        kwargs["stages"] = list(stages)
    if force_retrain:
        kwargs["force_retrain"] = True
    kwargs.update(overrides or {})
    return kwargs


def run_training(kwargs: Mapping[str, Any]) -> None:
    """Run ``monai.bundle.scripts.run(**kwargs)`` (``training_arguments``); basic logging when no logging file."""
    from monai.bundle.scripts import run

    if kwargs.get("logging_file") is False:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    run(**kwargs)
