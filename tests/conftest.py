"""Shared fixtures: the small synthetic cohort that the test_data_* modules index and transform."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

#: the data tests' cohort: 12 knees (6 subjects), cohort seed 3, MRI matrix 64
DATA_KNEES, DATA_SEED, DATA_MATRIX = 12, 3, 64


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's data cohort, generated once (test modules with their own ``cohort`` fixture override it)."""
    from xray2mri_bundle.cohort import make_cohort

    root = tmp_path_factory.getbasetemp() / f"data_cohort_{DATA_KNEES}_{DATA_SEED}_{DATA_MATRIX}"
    if not (root / "cohort.json").exists():
        make_cohort(root, knees=DATA_KNEES, seed=DATA_SEED, mri_matrix=DATA_MATRIX, progress=False)
    return root


@pytest.fixture(scope="session")
def truth(cohort: Path) -> list[dict]:
    """The cohort's ``ground_truth.csv`` rows (one per knee)."""
    with open(cohort / "ground_truth.csv", newline="") as f:
        return list(csv.DictReader(f))


def film_path(cohort: Path, row: dict) -> Path:
    """The film file of a ground-truth row."""
    return next((cohort / row["xray_folder"]).iterdir())
