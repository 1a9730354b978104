"""The training datalist: read a given datalist JSON, or index ``dataset_dir`` with the data package, with a
clear message when there is nothing to train on.

The index of an OAI tree validates every DICOM header, so it is cached in ``cache_file`` and reused while the
tree's tables are older than the cache. Under DDP rank 0 indexes and the others receive its datalist.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from xray2mri_bundle.data.atomic import write_bytes_atomic
from xray2mri_bundle.engines import distributed as dist_utils

__all__ = ["DatasetNotFoundError", "dataset_help", "load_datalist"]

logger = logging.getLogger(__name__)


class DatasetNotFoundError(SystemExit):
    """No usable training data. A ``SystemExit`` on purpose: the bundle CLI then prints just this message
    (MONAI wraps ordinary exceptions raised inside config expressions in a generic "Failed to evaluate")."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def dataset_help(dataset_dir: str | os.PathLike, problem: str) -> str:
    """The message for a missing/empty dataset: what is wrong and the two ways to fix it."""
    return (
        f"No training data: {problem} (dataset_dir={dataset_dir}).\n"
        "  - To train on OAI data, point the bundle at an OAI-style tree (contents.csv, the DICOM folders and the "
        "kXR_SQ_BU00.txt KL table) or a CSV manifest:\n"
        "      python -m monai.bundle run training --config_file configs/train.json --dataset_dir /path/to/OAI\n"
        "  - Or make the synthetic OAI-like cohort and train on it:\n"
        "      xray2mri make-cohort --out DIR\n"
        "      python -m monai.bundle run training --config_file configs/train.json --dataset_dir DIR\n"
        "  - Or pass a ready datalist JSON with --datalist_file FILE."
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DatasetNotFoundError(dataset_help(path, f"cannot read the datalist file ({error})")) from error


def _index(dataset_dir: Path, seed: int, val_fraction: float) -> tuple[dict, Any]:
    from xray2mri_bundle.data.index import index_manifest, index_oai  # the data package is only needed here

    if dataset_dir.is_file() and dataset_dir.suffix.lower() == ".csv":
        return index_manifest(dataset_dir, seed=seed, val_fraction=val_fraction)
    if not (dataset_dir / "contents.csv").is_file():
        raise DatasetNotFoundError(dataset_help(dataset_dir, "the folder has no contents.csv (not an OAI-style tree)"))
    return index_oai(dataset_dir, seed=seed, val_fraction=val_fraction)


def _fresh(cache: Path, dataset_dir: Path) -> bool:
    """True when ``cache`` is newer than every table of ``dataset_dir`` that the index reads."""
    if not cache.is_file():
        return False
    if dataset_dir.is_file():
        tables = [dataset_dir]
    else:
        tables = [dataset_dir / "contents.csv", *dataset_dir.glob("kXR_SQ_BU*.txt")]
    return all(cache.stat().st_mtime >= t.stat().st_mtime for t in tables if t.exists())


def load_datalist(
    dataset_dir: str | os.PathLike | None,
    datalist_file: str | os.PathLike | None = None,
    seed: int = 0,
    val_fraction: float = 0.3,
    cache_file: str | os.PathLike | None = None,
) -> dict[str, list[dict]]:
    """``{"training": [...], "validation": [...]}`` for ``dataset_dir`` (see ``xray2mri_bundle.data.index``).

    Args:
        dataset_dir: OAI-style tree or CSV manifest.
        datalist_file: a datalist JSON to use as is (then ``dataset_dir`` is not read).
        seed: split seed (7:3 by subject).
        val_fraction: validation share of subjects.
        cache_file: where to keep the index of ``dataset_dir`` (reused while up to date).

    Raises:
        DatasetNotFoundError: missing/empty dataset or datalist, or no training record.
    """
    if datalist_file:
        path = Path(datalist_file)
        if not path.is_file():
            raise DatasetNotFoundError(dataset_help(dataset_dir, f"the datalist file {path} does not exist"))
        datalist = _read_json(path)
        source = str(path)
    else:
        datalist = dist_utils.broadcast_object(_rank0_index(dataset_dir, seed, val_fraction, cache_file))
        source = str(dataset_dir)
    training = datalist.get("training") or []
    if not training:
        raise DatasetNotFoundError(dataset_help(source, "no paired X-ray/MRI knee for training was found"))
    if not datalist.get("validation"):
        logger.warning("the datalist has no validation records: validation metrics will be missing")
    logger.info("datalist from %s: %d training, %d validation knees", source, len(training),
                len(datalist.get("validation") or []))
    return datalist


def _rank0_index(
    dataset_dir: str | os.PathLike | None, seed: int, val_fraction: float, cache_file: str | os.PathLike | None
) -> dict:
    if not dist_utils.is_rank0():
        return {}
    if not dataset_dir or not Path(dataset_dir).exists():
        raise DatasetNotFoundError(dataset_help(dataset_dir, "the path does not exist"))
    dataset_dir = Path(dataset_dir).resolve()
    if dataset_dir.is_dir() and not any(dataset_dir.iterdir()):
        raise DatasetNotFoundError(dataset_help(dataset_dir, "the folder is empty"))
    cache = Path(cache_file) if cache_file else None
    if cache is not None and _fresh(cache, dataset_dir):
        cached = json.loads(cache.read_text())
        key = (cached.get("dataset_dir"), cached.get("seed"), cached.get("val_fraction"))
        if key == (str(dataset_dir), seed, val_fraction):
            logger.info("reusing the datalist index %s", cache)
            return cached["datalist"]
    datalist, report = _index(dataset_dir, seed, val_fraction)
    logger.info("indexed %s: %s", dataset_dir, getattr(report, "summary", lambda: "")())
    if cache is not None and datalist.get("training"):
        record = {"dataset_dir": str(dataset_dir), "seed": seed, "val_fraction": val_fraction, "datalist": datalist}
        write_bytes_atomic(cache, json.dumps(record, indent=1).encode())
    return datalist
