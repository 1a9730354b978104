"""Ingestion report: what the index found, paired and skipped, one reason per skipped knee.

Nothing is dropped silently: every knee seen in the image tree (or manifest row) is either in the datalist or
listed here with a reason code from :data:`REASONS` and a detail naming the file / folder at fault.
Written as JSON (machine) and as a short text summary (human), side by side.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["REASONS", "IngestionReport", "SkippedKnee"]

#: reason code -> human description (the codes are stable; tests and tools match on them)
REASONS: dict[str, str] = {
    "missing_mri": "no usable COR_T1_3D_FLASH series for this knee (absent or folder missing)",
    "missing_xray": "no PA fixed-flexion X-ray for this knee",
    "no_kl_grade": "no KL grade for this knee (after the READPRJ filter)",
    "unreadable_dicom": "a DICOM file is unreadable, empty or truncated",
    "slice_count": "MRI slice count differs from the expected number",
    "inconsistent_geometry": "inconsistent slice geometry (orientation, spacing, positions)",
    "side_mismatch": "the side in the DICOM header contradicts the index",
    "wrong_modality": "wrong modality (MRI series not MR, or X-ray not DX / CR)",
    "invalid_xray": "X-ray unusable (bit depth, colour, multi-frame, blank, not an image)",
    "missing_file": "a file named in the manifest does not exist",
    "invalid_row": "manifest row cannot be parsed (side, KL grade)",
    "unknown_visit": "folder prefix is not an OAI visit code",
    "subject_in_validation": "an extra training source holds a subject of the validation split (kept out of "
                             "training so that no subject is on both sides)",
    "duplicate_knee": "the same knee (subject, visit, side) or its MRI file is already in the datalist",
}


@dataclass
class SkippedKnee:
    """One knee left out of the datalist: who, why (``reason`` code) and where (``detail``, ``path``)."""

    subject: str
    visit: str
    side: str
    reason: str
    detail: str = ""
    path: str = ""

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown skip reason {self.reason!r}; known: {sorted(REASONS)}")


@dataclass
class IngestionReport:
    """Counts and per-knee skip reasons of one index run."""

    source: str
    mode: str  # "oai" or "manifest"
    knees_found: int = 0
    paired: int = 0
    training: int = 0
    validation: int = 0
    subjects_training: int = 0
    subjects_validation: int = 0
    skipped: list[SkippedKnee] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def skip(self, subject: str, visit: str, side: str, reason: str, detail: str = "", path: str = "") -> None:
        self.skipped.append(SkippedKnee(subject, visit, side, reason, detail, path))

    def reason_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(s.reason for s in self.skipped).items()))

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "mode": self.mode,
            "settings": self.settings,
            "counts": {
                "knees_found": self.knees_found,
                "paired": self.paired,
                "skipped": len(self.skipped),
                "training": self.training,
                "validation": self.validation,
                "subjects_training": self.subjects_training,
                "subjects_validation": self.subjects_validation,
            },
            "skip_reasons": self.reason_counts(),
            "skipped": [asdict(s) for s in self.skipped],
            "warnings": self.warnings,
            "reason_codes": REASONS,
        }

    def summary(self, max_lines: int = 20) -> str:
        """A few lines for people: totals, reasons with counts, the first skipped knees."""
        lines = [
            f"Ingestion report ({self.mode}): {self.source}",
            f"  knees found {self.knees_found}, paired {self.paired}, skipped {len(self.skipped)}",
            f"  split by subject: training {self.training} knees ({self.subjects_training} subjects), "
            f"validation {self.validation} knees ({self.subjects_validation} subjects)",
        ]
        for reason, n in self.reason_counts().items():
            lines.append(f"  skipped {n:4d} x {reason}: {REASONS[reason]}")
        for s in self.skipped[:max_lines]:
            lines.append(f"    - {s.subject} {s.visit} {s.side}: {s.reason} ({s.detail})")
        if len(self.skipped) > max_lines:
            lines.append(f"    ... {len(self.skipped) - max_lines} more in the JSON report")
        if self.warnings:
            lines.append(f"  warnings: {len(self.warnings)} (see the JSON report)")
        return "\n".join(lines)

    def write(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``path`` (JSON) and the same stem with ``.txt`` (summary); returns both paths."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        txt = path.with_suffix(".txt")
        txt.write_text(self.summary(max_lines=10_000) + "\n")
        return path, txt
