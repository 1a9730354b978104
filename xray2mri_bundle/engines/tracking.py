"""MLflow experiment tracking for the training stages, on top of MONAI's bundle tracking (``--tracking mlflow``).

MONAI's tracking patch adds an ``MLFlowHandler`` to ``train#handlers`` / ``validate#handlers`` and logs the
executed config. The store defaults to SQLite at ``<output_dir>/mlruns.db`` (mlflow 3.x refuses the plain
file store) with artifacts in ``<output_dir>/mlruns``; ``--tracking_uri http://host:port`` sends everything to
a tracking server instead (``MLFLOW_TRACKING_URI`` wins over both, as in MONAI).

When ``configs/train.json`` runs the stages one after another, ``stage_tracking_settings`` gives MONAI's
``MLFlowHandler`` of each stage the options MONAI's default leaves unset: one MLflow run per stage, named after
the stage, in one experiment (a resumed stage continues its unfinished run); ``experiment_param`` = the shared
``tracking_params`` of ``configs/common.json`` (stage, profile, data, seed, ...) with the stage's
``train#tracking_params`` (learning rate, batch, ...); ``artifacts`` = the executed config plus
``train#tracking_artifacts`` (the final checkpoint, the validation samples), logged at completion. The latent
scale factor, known only once training has started, reaches MLflow as the trainer metric ``scale_factor``
(``handlers.ComputeScaleFactor`` puts it in ``engine.state.metrics``; the handler logs metrics per epoch).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS
from monai.utils import path_to_sqlite_uri

__all__ = [
    "TRACKING_KEYS",
    "default_tracking_uri",
    "stage_tracking_settings",
    "tracking_requested",
]

logger = logging.getLogger(__name__)

#: Top-level keys MONAI's tracking patch adds to a config (used to recognise a tracked pipeline run).
TRACKING_KEYS: tuple[str, ...] = ("tracking_uri", "experiment_name", "run_name", "save_execute_config", "is_not_rank0")


def default_tracking_uri(output_dir: str | os.PathLike) -> str:
    """``sqlite:///<output_dir>/mlruns.db`` (absolute), MLflow's recommended local store."""
    return path_to_sqlite_uri(Path(output_dir) / "mlruns.db")


def tracking_requested(config: Mapping[str, Any]) -> bool:
    """True when MONAI's tracking patch was applied to ``config`` (``--tracking mlflow`` on the command)."""
    return "save_execute_config" in config and "tracking_uri" in config


def stage_tracking_settings(
    stage: str, tracking_uri: str, experiment_name: str, executed_config: str | os.PathLike
) -> dict[str, Any]:
    """MONAI tracking settings for one stage run from the pipeline (``ConfigWorkflow(tracking=...)``).

    Same handlers as MONAI's ``DEFAULT_MLFLOW_SETTINGS``, with a run per stage (``run_name=stage``), the
    stage's executed config written to ``executed_config``, and the trainer's handler given the stage config's
    ``tracking_params`` + ``train#tracking_params`` and ``train#tracking_artifacts`` (module docstring).
    """
    settings = copy.deepcopy(DEFAULT_MLFLOW_SETTINGS)
    configs = settings["configs"]
    configs["tracking_uri"] = tracking_uri
    configs["experiment_name"] = experiment_name
    configs["run_name"] = stage
    configs["save_execute_config"] = str(executed_config)
    configs["trainer"].update(
        experiment_param="$dict(@tracking_params, **@train#tracking_params)",
        artifacts="$[@save_execute_config] + @train#tracking_artifacts",
    )
    return settings
