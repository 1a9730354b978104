"""The settings of one evaluation run: what ``xray2mri evaluate`` parses and ``run.run_evaluation`` takes.

Defined once: the command-line parser (``cli.evaluate``) takes its defaults from :class:`EvaluationOptions`, and
Python callers build the dataclass directly::

    from xray2mri_bundle.evaluation import EvaluationOptions, run_evaluation
    run = run_evaluation(EvaluationOptions(model_dir="models/small", dataset_dir="data/cohort", max_knees=12))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xray2mri_bundle.diffusion import DEFAULT_SAMPLING

from .studies import DEPTH_COUNTS

__all__ = ["DEFAULTS", "DEFAULT_METHODS", "EvaluationOptions"]

DEFAULT_METHODS = (
    "full,xray_no_guidance,ldm_depth_only,mean_volume,nearest_xray,knn_xray,oracle_knee,autoencoder_ceiling"
)


@dataclass
class EvaluationOptions:
    """Every setting of an evaluation; the field help is ``xray2mri evaluate --help``.

    Paths may be ``str`` or ``Path``; counts of 0 mean "all" where the help says so.
    """

    model_dir: str = "models/small"
    dataset_dir: str | None = None
    datalist: str | None = None
    split_seed: int = 0
    val_fraction: float = 0.3
    out: str = "outputs/eval"
    methods: str = DEFAULT_METHODS
    max_knees: int = 0
    max_train_knees: int = 0
    sampler: str = DEFAULT_SAMPLING.sampler
    steps: int = DEFAULT_SAMPLING.steps
    slices: int = 0
    guidance_scale: float = DEFAULT_SAMPLING.guidance_scale
    eta: float = DEFAULT_SAMPLING.eta
    chunk_size: int = 16
    seed: int = 0
    profile: str | None = None
    image_size: int | None = None
    cache_dir: str | None = None
    pose_template: str | None = None
    device: str = "auto"
    nearest_metric: str = "l2"
    knn: int = 5
    samples: int = 4
    sweep_method: str | None = None
    sweep_depths: str = ",".join(map(str, DEPTH_COUNTS))
    sweep_knees: int = 1
    sweep_steps: int | None = None
    interp_frames: int = 4
    no_jsw: bool = False
    strict: bool = False
    write_docs: bool = False
    docs_dir: str = "docs"
    docs_page: str = "results.md"
    title: str = "Evaluation results"
    preface: Path | None = None
    train_command: list[str] | None = None
    report_only: bool = False

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> EvaluationOptions:
        """Options from a mapping (e.g. ``vars(argparse_namespace)``); an unknown key is an error that names it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TypeError(f"unknown evaluation option(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(values))

    def command_line(self) -> list[str]:
        """The ``xray2mri evaluate`` arguments that give these options (only those that differ from the defaults)."""
        argv: list[str] = []
        for item in dataclasses.fields(self):
            value, default = getattr(self, item.name), item.default
            if value == default:
                continue
            flag = "--" + item.name.replace("_", "-")
            if isinstance(default, bool):
                argv.append(flag)
            elif item.name == "train_command":
                for command in value or []:
                    argv += [flag, str(command)]
            else:
                argv += [flag, str(value)]
        return argv


DEFAULTS = EvaluationOptions()
"""The documented defaults (the command-line parser reads them from here)."""
