"""The cohort's tables: OAI-style ``contents.csv`` and ``kXR_SQ_BU00.txt``, ``ground_truth.csv``, ``cohort.json``.

Column names and value conventions are part of the team interface (read by ``xray2mri_bundle.data``):

- ``contents.csv``: one row per series, columns :data:`CONTENTS_COLUMNS`; ``Folder`` is relative to the
  cohort root with ``/`` separators.
- ``kXR_SQ_BU00.txt``: pipe-delimited, header ``ID|SIDE|V00XRKL|READPRJ``; SIDE 1 = right, 2 = left;
  READPRJ 15 for every knee plus a few READPRJ 37 rows.
- ``ground_truth.csv``: one row per knee, columns :data:`GROUND_TRUTH_COLUMNS`; pixel coordinates are
  integers (rounded), millimetres have two decimals, flags are 0/1.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

CONTENTS_COLUMNS = ("Folder", "ParticipantID", "StudyDate", "SeriesDescription", "Modality")
KL_COLUMNS = ("ID", "SIDE", "V00XRKL", "READPRJ")
GROUND_TRUTH_COLUMNS = (
    "ParticipantID", "side", "visit", "kl", "xray_folder", "mri_folder", "joint_row", "joint_col",
    "xray_pixel_spacing_mm", "xray_magnification", "jsw_medial_mm", "jsw_lateral_mm", "effusion",
    "cartilage_defect", "osteophytes",
    "mri_joint_row", "mri_joint_col", "mri_joint_slice", "mri_pixel_spacing_mm", "mri_matrix",
    "bone_marrow_lesion", "sclerosis", "jsn_compartment", "varus_deg", "meniscal_extrusion_mm",
    "site", "xray_modality", "xray_photometric", "xray_bits_stored", "xray_rows", "xray_cols",
    "mri_acquisition_order", "kl_readprj37",
)


def _write_csv(path: Path, columns: Iterable[str], rows: Iterable[Mapping[str, object]], delimiter: str = ",") -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), delimiter=delimiter, lineterminator="\n",
                                extrasaction="raise")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def write_contents(root: Path, rows: Iterable[Mapping[str, object]]) -> Path:
    path = root / "contents.csv"
    _write_csv(path, CONTENTS_COLUMNS, rows)
    return path


def write_kl_table(root: Path, rows: Iterable[Mapping[str, object]]) -> Path:
    path = root / "kXR_SQ_BU00.txt"
    _write_csv(path, KL_COLUMNS, rows, delimiter="|")
    return path


def write_ground_truth(root: Path, rows: Iterable[Mapping[str, object]]) -> Path:
    path = root / "ground_truth.csv"
    _write_csv(path, GROUND_TRUTH_COLUMNS, rows)
    return path


def write_cohort_json(root: Path, info: Mapping[str, object]) -> Path:
    path = root / "cohort.json"
    path.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
