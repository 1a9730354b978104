"""Output folder names of a batch: one distinct, filesystem-safe folder per knee (``9000099_001_left``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .knees import KneeInput

__all__ = ["knee_label", "output_names", "unique_names", "unused_name"]


def _safe_name(text: str) -> str:
    """``text`` with every character other than letters, digits, '.', '_' and '-' replaced by '_'."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


def _folder_name(text: str, fallback: str = "xray") -> str:
    """A knee folder name: safe characters, never empty, '.', '..' or hidden (leading dots dropped)."""
    return _safe_name(text).lstrip(".") or fallback


def output_names(paths: Sequence[str | os.PathLike]) -> dict[str, str]:
    """A distinct, filesystem-safe name per input path (the file stem, plus parent folders when stems clash,
    e.g. OAI files are all called ``001``)."""

    def stem(p: Path) -> str:
        name = p.name
        for suffix in (".nii.gz", ".nii", ".dcm", ".png", ".jpg", ".tif", ".tiff"):
            if name.lower().endswith(suffix):
                return name[: -len(suffix)]
        return name

    resolved = [Path(p) for p in paths]
    depth = {str(p): 1 for p in resolved}
    while True:
        names = {}
        for p in resolved:
            parts = [*p.parent.parts, stem(p)][-depth[str(p)]:]
            names[str(p)] = _folder_name("_".join(x for x in parts if x not in ("/", "")).replace(os.sep, "_"))
        clashes = {n for n in names.values() if list(names.values()).count(n) > 1}
        grow = [k for k, n in names.items() if n in clashes and depth[k] <= len(Path(k).parts)]
        if not grow:
            break
        for k in grow:
            depth[k] += 1
    # still equal (same folder, same stem: knee.png and knee.nii.gz): keep the file type in the name
    clashing = {key for key, name in names.items() if list(names.values()).count(name) > 1}
    for key in clashing:
        names[key] = _folder_name(f"{names[key]}_{Path(key).name[len(stem(Path(key))):].lstrip('.')}")
    return unique_names(list(names.values()), list(names))


def unused_name(name: str, used: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``... : the first that is not in ``used``."""
    candidate, k = name, 2
    while candidate in used:
        candidate, k = f"{name}_{k}", k + 1
    return candidate


def unique_names(names: Sequence[str], keys: Sequence[str]) -> dict[str, str]:
    """``keys`` -> ``names`` made unique in order (the first of equal names unchanged, then ``_2``, ...)."""
    used: set[str] = set()
    out = {}
    for key, name in zip(keys, names, strict=True):
        out[key] = unused_name(name, used)
        used.add(out[key])
    return out


def knee_label(name: str, knee: KneeInput) -> str:
    """Output folder of one knee: the input's name, prefixed by the DICOM PatientID when the name is only
    numbers (OAI files are called ``001``), plus the side: ``9000099_001_left``."""
    patient_id = knee.source_info.get("PatientID", "")
    patient = _folder_name("_".join(patient_id) if isinstance(patient_id, list) else str(patient_id), fallback="")
    if patient and name.replace("_", "").isdigit() and not name.startswith(patient):
        name = f"{patient}_{name}"
    return name + (f"_{knee.side.lower()}" if knee.side else "")
