"""MLflow experiment tracking for the training stages, on top of MONAI's bundle tracking (``--tracking mlflow``).

MONAI's tracking patch adds an ``MLFlowHandler`` to ``train#handlers`` / ``validate#handlers`` and logs the
executed config. The store defaults to SQLite at ``<output_dir>/mlruns.db`` (mlflow 3.x refuses the plain
file store) with artifacts in ``<output_dir>/mlruns``; ``--tracking_uri http://host:port`` sends everything to
a tracking server instead (``MLFLOW_TRACKING_URI`` wins over both, as in MONAI).

This module adds what MONAI's default does not log: the stage's parameters (profile, learning rate, batch,
...) and the final checkpoint as an artifact (``MLflowStageLogger``), and the settings used when
``configs/train.json`` runs the stages one after another (``stage_tracking_settings``): one MLflow run per
stage, named after the stage, in one experiment; a resumed stage continues its unfinished run.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS
from monai.handlers import MLFlowHandler
from monai.utils import path_to_sqlite_uri

from xray2mri_bundle.engines import distributed as dist_utils

__all__ = [
    "TRACKING_KEYS",
    "MLflowStageLogger",
    "default_tracking_uri",
    "find_mlflow_handler",
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

    Same handlers as MONAI's ``DEFAULT_MLFLOW_SETTINGS``, with a run per stage (``run_name=stage``) and the
    stage's executed config written to ``executed_config`` and logged as an artifact.
    """
    settings = copy.deepcopy(DEFAULT_MLFLOW_SETTINGS)
    configs = settings["configs"]
    configs["tracking_uri"] = tracking_uri
    configs["experiment_name"] = experiment_name
    configs["run_name"] = stage
    configs["save_execute_config"] = str(executed_config)
    return settings


def find_mlflow_handler(engine: Engine) -> MLFlowHandler | None:
    """The ``MLFlowHandler`` attached to ``engine`` (by MONAI's tracking patch), or None without tracking."""
    for handler, *_ in engine._event_handlers.get(Events.STARTED, []):
        owner = getattr(handler, "__self__", None)
        if isinstance(owner, MLFlowHandler):
            return owner
    return None


class MLflowStageLogger:
    """Log a stage's parameters and final artifacts to the MLflow run of the engine's ``MLFlowHandler``.

    A no-op when tracking is off (no MLFlowHandler on the engine) and on ranks other than 0. Parameters are
    logged once, after the first iteration (MONAI's handler starts its run at ``STARTED``, after this handler
    was attached); artifacts (e.g. the final checkpoint) at ``COMPLETED``, before MONAI's handler closes the run,
    so attach this handler before the tracking patch adds its own (any position in ``train#handlers``).

    Args:
        params: parameters to log (nested dicts are flattened: ``{"optim": {"lr": 1e-4}}`` -> ``optim.lr``); a
            callable value is called when logging (values known only at start, e.g. the computed scale factor).
        artifacts: files (logged under ``artifact_path``) and folders (logged under their own name) to log at
            completion; missing ones are skipped with a warning.
        artifact_path: folder inside the run's artifacts for the files.
    """

    def __init__(
        self, params: Mapping[str, Any] | None = None, artifacts: list[str] | str | None = None,
        artifact_path: str | None = "checkpoints",
    ) -> None:
        self.params = dict(params or {})
        self.artifacts = [artifacts] if isinstance(artifacts, (str, os.PathLike)) else list(artifacts or [])
        self.artifact_path = artifact_path
        self._params_logged = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.log_params)
        engine.add_event_handler(Events.COMPLETED, self.log_params)
        engine.add_event_handler(Events.COMPLETED, self.log_artifacts)

    def log_params(self, engine: Engine) -> None:
        if self._params_logged or not dist_utils.is_rank0():
            return
        handler = find_mlflow_handler(engine)
        if handler is None or handler.cur_run is None:
            return
        logged = handler.client.get_run(handler.cur_run.info.run_id).data.params
        params = {k: v for k, v in _flatten(self.params).items() if k not in logged}
        if params:
            handler._log_params(params)
        self._params_logged = True

    def log_artifacts(self, engine: Engine) -> None:
        if not dist_utils.is_rank0():
            return
        handler = find_mlflow_handler(engine)
        if handler is None or handler.cur_run is None:
            return
        run_id = handler.cur_run.info.run_id
        for path in map(Path, self.artifacts):
            if path.is_file():
                handler.client.log_artifact(run_id, str(path), self.artifact_path)
            elif path.is_dir():
                handler.client.log_artifacts(run_id, str(path), path.name)
            else:
                logger.warning("MLflow: artifact %s not found, not logged", path)
                continue
            logger.info("MLflow: logged artifact %s", path)


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """One flat ``{name: str(value)}`` dict (MLflow params are strings, at most 6000 characters)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if callable(value):
            value = value()
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)[:6000]
    return flat
