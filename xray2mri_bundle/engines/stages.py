"""Run the three training stages in order (paper Algorithm 1): autoencoder -> KOA classifier -> diffusion.

``configs/train.json`` (run ids ``training`` and ``run``) runs ``train#trainer``, a :class:`StagePipeline`,
whose ``run()`` calls :func:`run_training`. Each stage is its own MONAI bundle
config (``configs/common.json`` + ``configs/train_<stage>.json``) run by its own ``ConfigWorkflow``, so a stage
can also be run alone, and MONAI's ``--tracking mlflow`` patch finds the usual ``train#trainer`` /
``validate#evaluator``. Every top-level key of the ``train.json`` run (its own, those merged from other config
files such as ``configs/profiles/small.json``, and command-line overrides such as ``--dataset_dir``) is passed
on to every stage and wins over the stage files' defaults.

Per stage the decision is (``decide``):
- ``skip``: the final checkpoint ``<model_dir>/<stage>.pt`` exists and loads (and no stage it depends on is
  newer). A final checkpoint that does not load (truncated, not a checkpoint) never counts as finished: it is
  moved aside to ``<stage>.pt.corrupt`` (kept, the log names it) and the stage resumes or trains again;
- ``resume``: no final checkpoint, but interval checkpoints exist (a killed run) -> continue from the newest;
- ``train``: nothing yet;
- ``retrain``: ``force_retrain`` is set, or a stage it depends on (diffusion needs E1 and C) was retrained
  after it, or its final checkpoint was trained in another MRI frame than the run's (``settings.mri_frame`` of
  the MRI stages, autoencoder and diffusion; e.g. ``configs/pose_frame.json`` over joint-centred weights): the
  stage's checkpoints are cleared and it starts from scratch.
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser, ConfigWorkflow
from monai.bundle.reference_resolver import ReferenceResolver

from xray2mri_bundle.checkpoint import read_checkpoint
from xray2mri_bundle.data.frame import JOINT_CENTRED
from xray2mri_bundle.data.mri_transforms import check_frame
from xray2mri_bundle.engines import distributed as dist_utils
from xray2mri_bundle.engines.checkpoints import interval_checkpoints
from xray2mri_bundle.engines.tracking import stage_tracking_settings, tracking_requested

__all__ = [
    "DEPENDENCIES",
    "STAGES",
    "StageDecision",
    "StagePipeline",
    "as_bool",
    "command_line_value",
    "decide",
    "final_checkpoint",
    "prepare_stage",
    "run_training",
    "stage_config_files",
]

logger = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("autoencoder", "classifier", "diffusion")
DEPENDENCIES: dict[str, tuple[str, ...]] = {
    "autoencoder": (), "classifier": (), "diffusion": ("autoencoder", "classifier"),
}

#: stages whose weights depend on the MRI frame (their final checkpoints record ``settings.mri_frame``)
MRI_FRAME_STAGES = frozenset({"autoencoder", "diffusion"})

#: keys of the pipeline config that are not settings for the stages
PIPELINE_KEYS = frozenset({
    "_meta_", "imports", "initialize", "run", "finalize", "training", "stages", "save_execute_config", "run_name",
    "train", "validate",
})


@dataclass(frozen=True)
class StageDecision:
    """What the pipeline does with one stage, and why (logged and returned by ``run_training``)."""

    stage: str
    action: str  # "skip" | "resume" | "train" | "retrain"
    reason: str

    def __str__(self) -> str:
        return f"{self.stage}: {self.action} ({self.reason})"


def as_bool(value: Any) -> bool:
    """A flag from a config or the command line (``--force_retrain true`` arrives as the string "true")."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y", "on")
    return bool(value)


def final_checkpoint(model_dir: str | os.PathLike, stage: str) -> Path:
    """``<model_dir>/<stage>.pt``, the file inference reads and whose presence marks a finished stage."""
    return Path(model_dir) / f"{stage}.pt"


def _read_final(path: str | os.PathLike) -> tuple[dict | None, str | None]:
    """The final checkpoint ``path`` and None, or None and why it cannot be used."""
    try:
        checkpoint = read_checkpoint(path)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for truncated or foreign files
        return None, f"{type(exc).__name__}: {exc}"
    if not any(entry.get("model") or entry.get("ema") for entry in checkpoint["networks"].values()):
        return None, "no 'model' or 'ema' weights in it"
    return checkpoint, None


def decide(
    stage: str, model_dir: str | os.PathLike, checkpoint_dir: str | os.PathLike, force: bool = False,
    mri_frame: str | None = None,
) -> StageDecision:
    """Skip, resume, train or retrain ``stage`` from the files on disk (see the module docstring); ``mri_frame``:
    the run's MRI frame, checked against a finished MRI stage's (None: not checked)."""
    final = final_checkpoint(model_dir, stage)
    if force:
        return StageDecision(stage, "retrain", "force_retrain is set")
    moved, checkpoint, problem = "", None, None
    if final.is_file():
        checkpoint, problem = _read_final(final)
    if problem is not None:
        aside = final.with_name(final.name + ".corrupt")
        if dist_utils.is_rank0():
            os.replace(final, aside)
        logger.warning("%s cannot be loaded (%s): moved to %s; the stage is not finished", final, problem, aside)
        moved = f"{final} could not be loaded and was moved to {aside.name}; "
    if final.is_file():
        newer = [
            dep for dep in DEPENDENCIES.get(stage, ())
            if final_checkpoint(model_dir, dep).is_file()
            and final_checkpoint(model_dir, dep).stat().st_mtime > final.stat().st_mtime
        ]
        if newer:
            return StageDecision(stage, "retrain", f"{', '.join(newer)} changed after {final.name} was trained")
        if mri_frame is not None and stage in MRI_FRAME_STAGES and checkpoint is not None:
            trained = (checkpoint.get("settings") or {}).get("mri_frame") or JOINT_CENTRED
            if trained != mri_frame:
                return StageDecision(stage, "retrain", f"{final.name} was trained in the {trained} MRI frame, this "
                                                       f"run's is {mri_frame}")
        return StageDecision(stage, "skip", f"{final} exists (use --force_retrain true to train again)")
    saved = interval_checkpoints(checkpoint_dir)
    empty = [path.name for _, path in saved if path.stat().st_size == 0]
    usable = [path for _, path in saved if path.stat().st_size > 0]
    if empty:
        logger.warning("%s: empty (0-byte) interval checkpoint(s) %s, not used", checkpoint_dir, ", ".join(empty))
    if usable:
        return StageDecision(stage, "resume", f"{moved}continuing from the newest readable of {usable[0].name}"
                             + (f" and older ({len(usable) - 1} more)" if len(usable) > 1 else "")
                             + (f"; {', '.join(empty)} empty, not used" if empty else ""))
    return StageDecision(stage, "train", f"{moved}no checkpoint yet" if moved else "no checkpoint yet")


def prepare_stage(checkpoint_dir: str | os.PathLike, final_path: str | os.PathLike, force: Any = False) -> None:
    """Create the stage folder; with ``force`` remove its checkpoints and its final export first (rank 0).

    Called from every stage config's ``initialize``, so ``--force_retrain true`` also works for a stage run
    alone. Without this a later resume could pick up an old, longer run's checkpoint.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if dist_utils.is_rank0():
        if as_bool(force):
            for _, path in interval_checkpoints(checkpoint_dir):
                path.unlink(missing_ok=True)
            for path in (checkpoint_dir / "best.pt", Path(final_path)):
                path.unlink(missing_ok=True)
            logger.info("force_retrain: cleared the checkpoints in %s and %s", checkpoint_dir, final_path)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    dist_utils.barrier()


def stage_config_files(config_dir: str | os.PathLike, stage: str) -> list[str]:
    """``[<config_dir>/common.json, <config_dir>/train_<stage>.json]``."""
    config_dir = Path(config_dir)
    files = [config_dir / "common.json", config_dir / f"train_{stage}.json"]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"stage config {path} not found")
    return [str(p) for p in files]


def _active_workflow() -> ConfigWorkflow | None:
    """The ``ConfigWorkflow`` whose expression is calling us (``monai.bundle run training ...``), if any.

    MONAI evaluates config expressions without access to the parser; the stages need the merged, overridden
    pipeline config to pass it on, so it is taken from the running workflow object on the call stack.
    """
    frame = inspect.currentframe()
    try:
        while frame is not None:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, ConfigWorkflow):
                return candidate
            frame = frame.f_back
    finally:
        del frame
    return None


def _ensure_console_logging() -> None:
    """Show this package's INFO messages (stage decisions, resume, scale factor) when the bundle run has no
    logging configuration (no ``configs/logging.conf``): MONAI's own handlers print, ours would be silent."""
    package = logging.getLogger("xray2mri_bundle")
    if logging.getLogger().handlers or package.handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
    package.addHandler(handler)
    package.setLevel(logging.INFO)


def command_line_value(value: Any) -> Any:
    """``"true"``/``"false"``/``"null"`` as the bundle command line delivers them (python-fire keeps them as
    strings, where a config needs a bool or None); other values unchanged."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("true", "false"):
            return word == "true"
        if word in ("null", "none"):
            return None
    return value


def _stage_overrides(pipeline: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline's settings to pass on to every stage (top-level keys, minus the pipeline's own), with
    command-line spellings of booleans and null turned into values."""
    return {k: command_line_value(copy.deepcopy(v)) for k, v in pipeline.items() if k not in PIPELINE_KEYS}


def _stage_parser(files: Sequence[str], overrides: Mapping[str, Any]) -> ConfigParser:
    """A stage config (``files`` with the pipeline's ``overrides``) read, not built: its plain settings (paths,
    the frame) are resolved one by one, nothing else is instantiated."""
    parser = ConfigParser()
    parser.read_config(list(files))
    parser.update(dict(overrides))
    return parser


def _resolve(parser: ConfigParser, *ids: str) -> list[Any]:
    """Evaluate a few plain settings of a stage config without building anything else."""
    return [parser.get_parsed_content(i) for i in ids]


def _check_frame(parser: ConfigParser) -> None:
    """:func:`~xray2mri_bundle.data.mri_transforms.check_frame` on the raw stage config, building nothing: a
    ``mri_frame`` that the MRI chain does not build is refused before :func:`decide` may clear a finished stage
    (a frame change means "retrain") and before a pose template is built."""
    refs = ReferenceResolver.find_refs_in_config(parser.get("mri_preprocessing"), id="mri_preprocessing")
    check_frame(parser.get_parsed_content("mri_frame"), "mri_pose_alignment" in refs)


def run_training(
    stages: Sequence[str] | None = None,
    force_retrain: Any = False,
    config: Mapping[str, Any] | None = None,
    config_dir: str | os.PathLike | None = None,
    meta_file: str | Sequence[str] | None = None,
) -> list[StageDecision]:
    """Run ``stages`` (default all three, in order) with the settings of the calling bundle run.

    Args:
        stages: subset of ``STAGES`` to consider (always run in the canonical order).
        force_retrain: retrain every selected stage from scratch.
        config: the pipeline settings; default: the merged config of the running ``monai.bundle`` workflow.
        config_dir: folder of ``common.json`` / ``train_<stage>.json``; default: the running workflow's.
        meta_file: bundle metadata for the stage workflows; default: the running workflow's.

    Returns the decision taken for each stage.
    """
    _ensure_console_logging()
    workflow = _active_workflow()
    if config is None:
        if workflow is None:
            raise RuntimeError("run_training needs `config` when it is not called from a monai.bundle workflow")
        config = workflow.parser.get()
    if config_dir is None:
        config_dir = workflow.config_root_path if workflow is not None else Path("configs")
    if meta_file is None and workflow is not None:
        meta_file = workflow.meta_file
    selected = list(STAGES) if stages is None else [s for s in STAGES if s in set(stages)]
    unknown = set(stages or ()) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; choose from {STAGES}")
    force = as_bool(force_retrain)
    overrides = _stage_overrides(config)
    track = tracking_requested(config)

    decisions = []
    for stage in selected:
        files = stage_config_files(config_dir, stage)
        parser = _stage_parser(files, overrides)
        _check_frame(parser)
        model_dir, checkpoint_dir, final_path, mri_frame = _resolve(parser, "model_dir", "checkpoint_dir",
                                                                    "final_path", "mri_frame")
        decision = dist_utils.broadcast_object(decide(stage, model_dir, checkpoint_dir, force, mri_frame))
        decisions.append(decision)
        logger.info("stage %s", decision)
        if decision.action == "skip":
            continue
        stage_overrides = dict(overrides, force_retrain=decision.action == "retrain")
        tracking = None
        if track:
            executed = Path(checkpoint_dir) / "executed_config.json"
            tracking_uri, experiment = _resolve(parser, "tracking_uri", "experiment_name")
            tracking = stage_tracking_settings(stage, tracking_uri, experiment, executed)
        stage_workflow = ConfigWorkflow(
            config_file=files, meta_file=meta_file, logging_file=False, tracking=tracking, workflow_type=None,
            **stage_overrides,
        )
        stage_workflow.initialize()
        stage_workflow.run()
        stage_workflow.finalize()
        dist_utils.barrier()
        if not final_checkpoint(model_dir, stage).is_file() and dist_utils.is_rank0():
            raise RuntimeError(f"stage {stage} ended without writing {final_path}")
    return decisions



class StagePipeline:
    """The three stages as one trainer-like object: ``train#trainer`` of ``configs/train.json``.

    ``run()`` is :func:`run_training`; the MONAI training properties of ``train.json`` (``train#dataset``,
    ``max_epochs``) come from the stage workflows (:meth:`stage_workflow`), so a program that reads a bundle's
    properties (``ConfigWorkflow(..., workflow_type="train")``) sees the real dataset of the pipeline.

    Args:
        stages: subset of ``STAGES`` to run (always in the canonical order); None = all three.
        force_retrain: retrain every selected stage from scratch.
        max_epochs: per-stage epoch limits (``{"diffusion": 10}``) that win over ``<stage>_max_epochs``; empty =
            each stage's own setting.
        config, config_dir, meta_file: as for :func:`run_training`.
    """

    def __init__(
        self,
        stages: Sequence[str] | None = None,
        force_retrain: Any = False,
        max_epochs: Mapping[str, int] | None = None,
        config: Mapping[str, Any] | None = None,
        config_dir: str | os.PathLike | None = None,
        meta_file: str | Sequence[str] | None = None,
    ) -> None:
        self.stages = None if stages is None else list(stages)
        self.force_retrain = force_retrain
        self.max_epochs = {str(k): int(v) for k, v in dict(max_epochs or {}).items()}
        unknown = set(self.max_epochs) - set(STAGES)
        if unknown:
            raise ValueError(f"max_epochs for unknown stage(s) {sorted(unknown)}; choose from {STAGES}")
        self.config, self.config_dir, self.meta_file = config, config_dir, meta_file
        self._workflows: dict[str, ConfigWorkflow] = {}

    def _settings(self) -> tuple[dict[str, Any], Path, Any]:
        workflow = _active_workflow() if self.config is None or self.config_dir is None else None
        config = self.config if self.config is not None else (workflow.parser.get() if workflow else None)
        if config is None:
            raise RuntimeError("StagePipeline needs `config` when it is not built by a monai.bundle workflow")
        config = dict(config, **{f"{stage}_max_epochs": n for stage, n in self.max_epochs.items()})
        config_dir = Path(self.config_dir if self.config_dir is not None else
                          (workflow.config_root_path if workflow is not None else "configs"))
        meta_file = self.meta_file if self.meta_file is not None or workflow is None else workflow.meta_file
        return config, config_dir, meta_file

    def stage_workflow(self, stage: str) -> ConfigWorkflow:
        """The initialised (not run) training workflow of ``stage`` with the pipeline's settings."""
        if stage not in self._workflows:
            config, config_dir, meta_file = self._settings()
            workflow = ConfigWorkflow(
                config_file=stage_config_files(config_dir, stage), meta_file=meta_file, logging_file=False,
                workflow_type="train", **_stage_overrides(config),
            )
            workflow.initialize()
            self._workflows[stage] = workflow
        return self._workflows[stage]

    def run(self) -> list[StageDecision]:
        """Skip, resume, train or retrain each stage (see the module docstring); the decisions, in order."""
        config, config_dir, meta_file = self._settings()
        return run_training(self.stages, self.force_retrain, config=config, config_dir=config_dir,
                            meta_file=meta_file)
