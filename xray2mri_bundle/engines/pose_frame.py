"""The training side of the opt-in canonical-pose MRI frame (``configs/pose_frame.json``): the template the frame
is defined by is part of the model, so a training run in that frame makes it from its own training knees when
the model folder has none yet (then every stage, and later inference, reads the same file)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from xray2mri_bundle.data.pose import write_pose_template
from xray2mri_bundle.engines import distributed as dist_utils

__all__ = ["ensure_pose_template"]

logger = logging.getLogger(__name__)


def ensure_pose_template(path: str | os.PathLike, records: Sequence[dict], knees: int = 40, rounds: int = 3,
                         source: str | None = None) -> str:
    """``path`` (returned as a string), first built from the training ``records`` (datalist entries) when it does
    not exist: rank 0 builds it (``data.pose.write_pose_template``: the first ``knees`` readable knees,
    ``rounds`` register-and-average rounds), the other ranks wait. An existing file is used as it is, so a
    resumed or later stage run keeps the frame its first stage defined; remove the file to build it again. On
    several GPUs the other ranks wait for rank 0 (40 knees take minutes); for large data build it beforehand with
    ``xray2mri pose-template``."""
    path = Path(path)
    # one decision for all ranks (a rank that looked after rank 0 wrote the file would skip the barrier)
    if dist_utils.broadcast_object(not path.is_file()):
        error = None
        if dist_utils.is_rank0():
            logger.info("pose frame: building the template %s from %d of %d training knees (%d rounds)",
                        path, min(knees, len(records)), len(records), rounds)
            try:
                report = write_pose_template(records, path, count=knees, rounds=rounds, source=source)
                logger.info("pose frame: template written (%d knees, %d skipped); median rotation per round %s deg",
                            report["knees"], len(report["skipped"]),
                            ", ".join(f"{v:.2f}" for v in report["median_rotation_deg"]))
            except Exception as exc:  # noqa: BLE001 - every rank must learn of it, not wait for the timeout
                error = exc
        failure = dist_utils.broadcast_object(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        if failure is not None:
            raise RuntimeError(f"pose frame: building the template {path} failed on rank 0 ({failure})")
    return str(path)
