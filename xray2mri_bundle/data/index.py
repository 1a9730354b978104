"""Index an OAI-style tree (or a CSV manifest) into a MONAI datalist JSON, with an ingestion report.

OAI conventions honoured: ``contents.csv`` (Folder, ParticipantID, StudyDate, SeriesDescription), visit folder
prefixes (0 = V00, 1 = V01, 3 = V03, 5 = V05, 6 = V06, 8 = V08, 10 = V10), MRI series
``COR_T1_3D_FLASH_RIGHT`` / ``_LEFT``, X-ray descriptions ``Bilateral PA Fixed Flexion Knee`` and
``PA Fixed Flexion Left Knee``, KL tables ``kXR_SQ_BU##.txt`` (pipe-delimited ID|SIDE|V##XRKL|READPRJ, SIDE
1 = right, 2 = left) filtered on READPRJ (default 15, the central reading).

Datalist: ``{"training": [rec], "validation": [rec]}``, rec = {subject, visit, side, xray (abs DICOM file),
mri (abs series folder), kl}; split 7:3 by subject with a seed, no subject in both.

CLI: ``xray2mri index --root DIR --out datalist.json [--seed S] [--report report.json]`` or
``xray2mri index --manifest CSV --out datalist.json`` (CSV columns xray, mri, kl, side; optional subject,
visit, film).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dicom_utils import DataFileError, list_series_files
from .mri_io import inspect_nifti_mri, inspect_series
from .report import IngestionReport
from .xray_io import inspect_xray

__all__ = [
    "SIDE_CODES",
    "VISIT_PREFIXES",
    "KneeKey",
    "add_training",
    "index_manifest",
    "index_oai",
    "parse_side",
    "read_contents",
    "read_kl_tables",
    "split_by_subject",
    "visit_of_folder",
    "write_datalist",
]

VISIT_PREFIXES: dict[str, str] = {"0": "V00", "1": "V01", "3": "V03", "5": "V05", "6": "V06", "8": "V08", "10": "V10"}
SIDE_CODES: dict[str, str] = {"1": "RIGHT", "2": "LEFT"}
MRI_DESCRIPTION = re.compile(r"^\s*COR_T1_3D_FLASH_(RIGHT|LEFT)\s*$", re.IGNORECASE)
XRAY_DESCRIPTION = re.compile(r"PA\s+FIXED\s+FLEXION", re.IGNORECASE)
KL_TABLE_GLOB = "kXR_SQ_BU*.txt"
KL_COLUMN = re.compile(r"^V(\d\d)XRKL$", re.IGNORECASE)


@dataclass(frozen=True, order=True)
class KneeKey:
    """One knee at one visit: subject (ParticipantID), visit ('V00'), side ('RIGHT' / 'LEFT')."""

    subject: str
    visit: str
    side: str


def parse_side(value: object) -> str | None:
    """'RIGHT' / 'LEFT' from OAI codes (1 / 2) or words (right, R, left, L); None if unknown."""
    text = str(value).strip().upper()
    if text in SIDE_CODES:
        return SIDE_CODES[text]
    if text in ("R", "RIGHT"):
        return "RIGHT"
    if text in ("L", "LEFT"):
        return "LEFT"
    return None


def parse_kl(value: object) -> int | None:
    """KL grade 0..4 from a table cell; None for OAI missing codes ('.', '.: Missing Form', '') or junk."""
    try:
        grade = float(str(value).strip())
    except ValueError:
        return None
    if grade.is_integer() and 0 <= grade <= 4:
        return int(grade)
    return None


def visit_of_folder(folder: str) -> str | None:
    """Visit code of an OAI folder ('0.C.2/9000099/...' -> 'V00'; '10.E.1/...' -> 'V10'); None if unknown."""
    first = folder.replace("\\", "/").strip("/").split("/")[0]
    return VISIT_PREFIXES.get(first.split(".")[0])


def _norm_columns(row: dict) -> dict:
    return {str(k).strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}


#: encodings tried in order for OAI tables: UTF-8 (with or without BOM), Windows-1252, then Latin-1 (never fails)
TABLE_ENCODINGS = ("utf-8-sig", "cp1252", "latin-1")


def read_table_text(path: str | os.PathLike, notes: list[str] | None = None) -> str:
    """The text of a table file, decoded robustly (real OAI exports are not always UTF-8).

    Tries ``TABLE_ENCODINGS`` in order; when the first fails, ``notes`` gets one line naming the file, the
    encoding used and the first undecodable byte (line and value), so nothing is decoded silently.
    """
    data = Path(path).read_bytes()
    first_error: UnicodeDecodeError | None = None
    for encoding in TABLE_ENCODINGS:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError as exc:
            first_error = first_error or exc
            continue
        if first_error is not None and notes is not None:
            line = data[: first_error.start].count(b"\n") + 1
            notes.append(f"{Path(path).name}: not UTF-8 (byte 0x{data[first_error.start]:02x} on line {line}); "
                         f"decoded as {encoding}")
        return text
    raise AssertionError("latin-1 decodes any bytes")


def read_contents(root: str | os.PathLike, notes: list[str] | None = None) -> list[dict]:
    """Rows of ``root/contents.csv`` with lower-cased column names (folder, participantid, ...)."""
    path = Path(root) / "contents.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: contents.csv not found (is --root an OAI-style tree?)")
    rows = [_norm_columns(r) for r in csv.DictReader(io.StringIO(read_table_text(path, notes), newline=""))]
    missing = {"folder", "participantid", "seriesdescription"} - set(rows[0] if rows else {})
    if rows and missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    return rows


def read_kl_tables(root: str | os.PathLike, readprj: int | None = 15) -> tuple[dict[KneeKey, int | None], list[str]]:
    """KL grades from every ``kXR_SQ_BU*.txt`` in ``root``: {KneeKey: grade or None (missing code)}.

    Rows whose READPRJ differs from ``readprj`` are ignored (``None`` keeps all). A knee with two kept rows
    keeps the first; a disagreement is reported as a warning.
    """
    grades: dict[KneeKey, int | None] = {}
    warnings: list[str] = []
    for path in sorted(Path(root).glob(KL_TABLE_GLOB)):
        reader = csv.DictReader(io.StringIO(read_table_text(path, warnings), newline=""), delimiter="|")
        header = [str(c).strip().upper() for c in (reader.fieldnames or [])]
        if "ID" not in header or "SIDE" not in header or not any(KL_COLUMN.match(c) for c in header):
            raise ValueError(f"{path}: not a '|'-delimited KL table (needs ID, SIDE and V..XRKL columns; header "
                             f"{'|'.join(header)[:80]!r})")
        garbage = 0
        for line, raw in enumerate(reader, start=2):
            row = {k.upper(): v for k, v in _norm_columns(raw).items()}
            side = parse_side(row.get("SIDE", ""))
            subject = row.get("ID", "")
            if side is None or not subject:
                garbage += 1
                warnings.append(f"{path.name}:{line}: no ID or SIDE code, row ignored")
                continue
            if readprj is not None and str(row.get("READPRJ", "")).strip() != str(readprj):
                continue
            for column, value in row.items():
                match = KL_COLUMN.match(column)
                if not match:
                    continue
                key = KneeKey(subject, f"V{match.group(1)}", side)
                grade = parse_kl(value)
                if grade is None and value and not value.startswith("."):  # '.' codes are OAI's missing values
                    warnings.append(f"{path.name}:{line}: invalid KL value {value!r} for {key.subject} {key.side}")
                if key in grades:
                    if grades[key] != grade:
                        warnings.append(
                            f"{path.name}:{line}: second KL row for {key} ({grade}); kept {grades[key]}")
                    continue
                grades[key] = grade
        if garbage:
            warnings.append(f"{path.name}: {garbage} line(s) without an ID or SIDE ignored")
    return grades, warnings


def split_by_subject(
    subjects: Sequence[str], seed: int = 0, val_fraction: float = 0.3
) -> tuple[set[str], set[str]]:
    """Seeded split of unique subjects into (training, validation); validation gets round(fraction * n),
    at least one subject each when there are two or more."""
    unique = sorted(set(subjects))
    order = np.random.default_rng(seed).permutation(len(unique))
    n_val = int(round(val_fraction * len(unique)))
    if len(unique) >= 2:
        n_val = min(max(n_val, 1), len(unique) - 1)
    val = {unique[i] for i in order[:n_val]}
    return set(unique) - val, val


def _finish(records: list[dict], report: IngestionReport, seed: int, val_fraction: float) -> dict:
    train_subj, val_subj = split_by_subject([r["subject"] for r in records], seed, val_fraction)
    datalist = {
        "training": sorted((r for r in records if r["subject"] in train_subj), key=_record_key),
        "validation": sorted((r for r in records if r["subject"] in val_subj), key=_record_key),
    }
    report.paired = len(records)
    report.training, report.validation = len(datalist["training"]), len(datalist["validation"])
    report.subjects_training, report.subjects_validation = len(train_subj), len(val_subj)
    return datalist


def _record_key(rec: dict) -> tuple:
    return rec["subject"], rec.get("visit", ""), rec["side"]


def _first_file(folder: Path) -> Path:
    files = list_series_files(folder) if folder.is_dir() else []
    if not files:
        raise DataFileError(folder, "X-ray folder missing or empty", "missing_xray")
    return files[0]


def index_oai(
    root: str | os.PathLike,
    seed: int = 0,
    readprj: int | None = 15,
    expected_slices: int | None = 80,
    val_fraction: float = 0.3,
    check_pixels: bool = True,
) -> tuple[dict, IngestionReport]:
    """Walk an OAI-style tree and return ``(datalist, report)``. A bad file never stops the walk.

    A knee is found when contents.csv names an MRI series or a PA fixed-flexion film for it; it is paired when
    its MRI series and X-ray validate (headers + pixel lengths) and the KL table has a grade.
    """
    root = Path(root).resolve()
    report = IngestionReport(source=str(root), mode="oai", settings={
        "seed": seed, "readprj": readprj, "expected_slices": expected_slices, "val_fraction": val_fraction,
    })
    grades, kl_warnings = read_kl_tables(root, readprj)
    report.warnings += kl_warnings
    mri: dict[KneeKey, list[str]] = defaultdict(list)
    films: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)  # (subject, visit) -> (folder, lat)
    seen_folders: set[str] = set()
    for row in read_contents(root, report.warnings):
        folder, subject, desc = row["folder"], row["participantid"], row["seriesdescription"]
        target = (root / folder).resolve()
        if Path(folder).is_absolute() or (target != root and root not in target.parents):
            report.warnings.append(f"contents.csv: folder {folder!r} is outside --root {root}; row refused")
            continue
        is_mri, is_xray = MRI_DESCRIPTION.match(desc), XRAY_DESCRIPTION.search(desc)
        if not (is_mri or is_xray):
            continue  # other OAI series (SAG_IW_TSE, hand films, ...) are not used
        visit = visit_of_folder(folder)
        if visit is None:
            report.warnings.append(f"contents.csv: folder {folder!r} has an unknown visit prefix; row ignored")
            continue
        if folder in seen_folders:
            report.warnings.append(f"contents.csv: folder {folder!r} ({'MRI' if is_mri else 'X-ray'}) listed "
                                   "twice; the repeat is ignored")
            continue
        seen_folders.add(folder)
        if is_mri:
            mri[KneeKey(subject, visit, is_mri.group(1).upper())].append(folder)
        else:
            upper = desc.upper()
            lat = "BILATERAL" if "BILATERAL" in upper else "LEFT" if "LEFT" in upper else "RIGHT"
            films[(subject, visit)].append((folder, lat))
    knees = set(mri)
    for (subject, visit), entries in films.items():
        for _, lat in entries:
            knees |= {KneeKey(subject, visit, s) for s in (("RIGHT", "LEFT") if lat == "BILATERAL" else (lat,))}
    report.knees_found = len(knees)
    imaged = {(k.subject, k.visit) for k in knees}
    orphan_kl = sum(1 for k in grades if (k.subject, k.visit) not in imaged)
    if orphan_kl:
        report.warnings.append(f"{orphan_kl} KL-table knees have no images in contents.csv (not counted as found)")

    film_cache: dict[str, tuple[Path, str | None] | DataFileError] = {}
    records = []
    for key in sorted(knees):
        candidates = sorted(
            ((f, lat) for f, lat in films.get((key.subject, key.visit), []) if lat in (key.side, "BILATERAL")),
            key=lambda fl: fl[1] == "BILATERAL",  # a side-specific film first, then the bilateral one
        )
        if not mri.get(key):
            report.skip(*_who(key), "missing_mri", "no COR_T1_3D_FLASH series in contents.csv")
            continue
        if not candidates:
            report.skip(*_who(key), "missing_xray", "no PA fixed-flexion film in contents.csv")
            continue
        if grades.get(key) is None:
            detail = "KL cell empty or a missing code" if key in grades else f"no row with READPRJ={readprj}"
            report.skip(*_who(key), "no_kl_grade", detail)
            continue
        series, error = _pick_series(root, mri[key], key, expected_slices, check_pixels, report)
        if series is None:
            report.skip(*_who(key), error.reason, error.problem, error.path)
            continue
        xray, error = _pick_film(root, candidates, key, film_cache)
        if xray is None:
            report.skip(*_who(key), error.reason, error.problem, error.path)
            continue
        records.append({
            "subject": key.subject, "visit": key.visit, "side": key.side,
            "xray": str(xray), "mri": str(series), "kl": int(grades[key]),
        })
    return _finish(records, report, seed, val_fraction), report


def _who(key: KneeKey) -> tuple[str, str, str]:
    return key.subject, key.visit, key.side


def _pick_series(root, folders, key, expected_slices, check_pixels, report):
    """First series of ``folders`` that validates; else (None, first error)."""
    first_error = None
    for folder in folders:
        try:
            info = inspect_series(root / folder, expected_slices=expected_slices, modality="MR",
                                  expected_side=key.side, check_pixels=check_pixels)
        except DataFileError as exc:
            first_error = first_error or exc
            continue
        if first_error is not None or len(folders) > 1:
            report.warnings.append(f"{key}: {len(folders)} MRI series, using {folder}")
        report.warnings += [f"{folder}: {w}" for w in info.warnings]
        return info.folder, None
    return None, first_error


def _pick_film(root, candidates, key, cache):
    """First film of ``candidates`` whose first file validates (cached per folder); else (None, error)."""
    first_error = None
    for folder, _ in candidates:
        if folder not in cache:
            try:
                path = _first_file(root / folder)
                cache[folder] = (path, inspect_xray(path))
            except DataFileError as exc:
                cache[folder] = exc
        result = cache[folder]
        if isinstance(result, DataFileError):
            first_error = first_error or result
            continue
        path, header_lat = result
        if header_lat not in (None, "BILATERAL", key.side):
            first_error = first_error or DataFileError(
                path, f"film header says {header_lat}, contents.csv lists it for {key.side}", "side_mismatch")
            continue
        return path, None
    return None, first_error


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return (path if path.is_absolute() else base / path).resolve()


def index_manifest(
    manifest: str | os.PathLike,
    seed: int = 0,
    expected_slices: int | None = 80,
    val_fraction: float = 0.3,
) -> tuple[dict, IngestionReport]:
    """Index a CSV manifest (columns xray, mri, kl, side; optional subject, visit, film) of DICOM / NIfTI /
    PNG files; relative paths are relative to the CSV. Without a subject column the X-ray file stands for the
    subject (both knees of one bilateral film stay in one split). Returns ``(datalist, report)``."""
    manifest = Path(manifest).resolve()
    base = manifest.parent
    report = IngestionReport(source=str(manifest), mode="manifest", settings={
        "seed": seed, "expected_slices": expected_slices, "val_fraction": val_fraction,
    })
    rows = [_norm_columns(r) for r in csv.DictReader(io.StringIO(read_table_text(manifest), newline=""))]
    missing = {"xray", "mri", "kl", "side"} - set(rows[0] if rows else {})
    if rows and missing:
        raise ValueError(f"{manifest}: missing columns {sorted(missing)}")
    report.knees_found = len(rows)
    records = []
    for line, row in enumerate(rows, start=2):
        xray, mri = _resolve(base, row["xray"]), _resolve(base, row["mri"])
        subject = row.get("subject") or str(xray.relative_to(base) if xray.is_relative_to(base) else xray)
        visit = row.get("visit") or "V00"
        side = parse_side(row["side"])
        who = (subject, visit, side or row["side"])
        if side is None:
            report.skip(*who, "invalid_row", f"line {line}: side {row['side']!r} is not RIGHT/LEFT/R/L/1/2")
            continue
        kl = parse_kl(row["kl"])
        if kl is None:
            report.skip(*who, "no_kl_grade", f"line {line}: KL {row['kl']!r}")
            continue
        for path in (xray, mri):
            if not path.exists():
                report.skip(*who, "missing_file", f"line {line}: not found", str(path))
                break
        else:
            try:
                if mri.is_dir():
                    inspect_series(mri, expected_slices=expected_slices, modality="MR", expected_side=side)
                else:
                    inspect_nifti_mri(mri, expected_slices=expected_slices)
                lat = inspect_xray(xray)
                film = (row.get("film") or "").upper() or None
                if (film or lat) in ("RIGHT", "LEFT") and (film or lat) != side:
                    raise DataFileError(xray, f"film is of the {film or lat} knee, row says {side}", "side_mismatch")
            except DataFileError as exc:
                report.skip(*who, exc.reason, exc.problem, exc.path)
                continue
            rec = {"subject": subject, "visit": visit, "side": side, "xray": str(xray), "mri": str(mri), "kl": kl}
            if row.get("film"):
                rec["film"] = row["film"].upper()
            records.append(rec)
    return _finish(records, report, seed, val_fraction), report


def add_training(datalist: dict, report: IngestionReport, extra: dict, extra_report: IngestionReport) -> dict:
    """``datalist`` with every paired knee of another indexed source (``extra``, both of its splits) added to the
    training split; ``report`` takes over ``extra_report``'s counts, skipped knees and warnings.

    Training on more knees than one tree holds (another OAI release, a second synthetic cohort) without touching
    the validation split: a knee of ``extra`` whose subject is in ``datalist``'s validation split is left out
    (``subject_in_validation``: no subject on both sides, whatever the visit), one already in the datalist (same
    subject, visit and side, or the same MRI file) too (``duplicate_knee``); both are listed in the report,
    nothing is dropped silently. Subjects are compared by ID: a manifest without a ``subject`` column names each
    knee by its film path, which cannot match another source's IDs (give the column).
    """
    validation = {r["subject"] for r in datalist["validation"]}
    existing = datalist["training"] + datalist["validation"]
    present, mris = {_record_key(r) for r in existing}, {r["mri"] for r in existing}
    added = []
    for rec in extra["training"] + extra["validation"]:
        key = _record_key(rec)
        if rec["subject"] in validation:
            report.skip(*key, "subject_in_validation", f"from {extra_report.source}", rec["mri"])
        elif key in present or rec["mri"] in mris:
            report.skip(*key, "duplicate_knee", f"from {extra_report.source}", rec["mri"])
        else:
            present.add(key)
            mris.add(rec["mri"])
            added.append(rec)
    training = sorted(datalist["training"] + added, key=_record_key)
    report.source = f"{report.source} + {extra_report.source} (training only)"
    report.knees_found += extra_report.knees_found
    report.paired += len(added)
    report.skipped.extend(extra_report.skipped)
    report.warnings.extend(f"{extra_report.source}: {w}" for w in extra_report.warnings)
    if not added:
        report.warnings.append(f"{extra_report.source}: added no knee to training (see the skipped knees)")
    report.training, report.subjects_training = len(training), len({r["subject"] for r in training})
    return {"training": training, "validation": list(datalist["validation"])}


def write_datalist(datalist: dict, path: str | os.PathLike) -> Path:
    """Write the MONAI datalist JSON (creates parent folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(datalist, indent=2) + "\n")
    return path
