"""Record how shipped weights were trained: command, commit, cohort, wall time and final validation per stage.

``scripts/train_small_demo.sh`` calls it (``xray2mri training-record``) after the three stages. It reads the
stage logs that MONAI's ``StatsHandler`` wrote (``Epoch: e/E, Iter: i/n -- train_loss: x`` and
``Epoch[e] Metrics -- k: v ...``), writes ``<models>/training_record.json`` and a loss-curve PNG, so a
user can see what the demo weights are worth.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xray2mri_bundle.constants import DEMO_WEIGHTS_DISCLAIMER

__all__ = ["parse_stage_log", "write_training_record"]

DISCLAIMER = DEMO_WEIGHTS_DISCLAIMER
_ITER = re.compile(r"Epoch: (\d+)/(\d+), Iter: (\d+)/(\d+) -- train_loss: ([-+0-9.eE]+|nan|inf)")
_METRICS = re.compile(r"Epoch\[(\d+)\] Metrics -- (.*)$")
_PAIR = re.compile(r"(\w+): ([-+0-9.eE]+|nan|inf)")


def parse_stage_log(path: str | os.PathLike) -> dict[str, Any]:
    """Train losses (per iteration, in order) and validation metrics (per epoch) from one stage's log."""
    losses: list[float] = []
    validation: list[dict[str, float]] = []
    for line in Path(path).read_text(errors="replace").splitlines():
        if m := _ITER.search(line):
            losses.append(float(m.group(5)))
        elif m := _METRICS.search(line):
            row = {"epoch": float(m.group(1))}
            row.update({k: float(v) for k, v in _PAIR.findall(m.group(2))})
            validation.append(row)
    return {"train_loss": losses, "validation": validation}


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _plot_losses(curves: dict[str, list[float]], out_png: Path) -> None:
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.2), squeeze=False)
    for ax, (stage, values) in zip(axes[0], curves.items(), strict=True):
        steps = range(1, len(values) + 1)
        ax.plot(steps, values, lw=0.6, alpha=0.35, label="per iteration")
        window = max(1, len(values) // 50)
        if window > 1:  # the diffusion loss is noisy by nature (random timesteps): show its running mean too
            sums = np.cumsum([0.0, *values])
            starts = np.maximum(np.arange(1, len(values) + 1) - window, 0)
            smooth = (sums[1:] - sums[starts]) / (np.arange(1, len(values) + 1) - starts)  # trailing mean
            ax.plot(steps, smooth, lw=1.2, label=f"mean of {window}")
            ax.legend(fontsize=7)
        if stage != "classifier" and values and min(values) > 0:
            ax.set_yscale("log")
        ax.set_title(f"{stage} (train loss)")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.suptitle("small profile on the synthetic cohort (demo weights, synthetic data only)", fontsize=9)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def write_training_record(
    models: Path, logs: Path, cohort: Path, wall_s: dict[str, float], command: str, loss_png: Path | None,
    notes: Sequence[str] = (), bundle_root: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Write ``models/training_record.json`` (and the loss-curve PNG); return the record. The commit recorded is
    the one checked out in ``bundle_root`` (default: the current folder; None in the record outside a git tree)."""
    root = Path(bundle_root) if bundle_root is not None else Path.cwd()
    cohort_meta = json.loads((cohort / "cohort.json").read_text()) if (cohort / "cohort.json").is_file() else {}
    stages: dict[str, Any] = {}
    for stage, seconds in wall_s.items():
        log = logs / f"{stage}.log"
        parsed = parse_stage_log(log) if log.is_file() else {"train_loss": [], "validation": []}
        stages[stage] = {
            "wall_time_s": seconds,
            "iterations": len(parsed["train_loss"]),
            "final_train_loss": parsed["train_loss"][-1] if parsed["train_loss"] else None,
            "final_validation": parsed["validation"][-1] if parsed["validation"] else None,
            "checkpoint": str(models / f"{stage}.pt"),
        }
        stages[stage]["_curve"] = parsed["train_loss"]
    import torch

    record = {
        "disclaimer": DISCLAIMER,
        "profile": models.name,
        "command": command,
        "notes": list(notes),
        "commit": _git_commit(root),
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cohort": {k: cohort_meta.get(k) for k in ("seed", "knees", "mri_matrix", "version") if k in cohort_meta},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()},
        "stages": {s: {k: v for k, v in info.items() if k != "_curve"} for s, info in stages.items()},
        "total_wall_time_s": sum(wall_s.values()),
    }
    models.mkdir(parents=True, exist_ok=True)
    (models / "training_record.json").write_text(json.dumps(record, indent=2) + "\n")
    if loss_png is not None:
        _plot_losses({s: info["_curve"] for s, info in stages.items() if info["_curve"]}, loss_png)
    return record
