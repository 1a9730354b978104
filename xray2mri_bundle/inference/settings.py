"""Checked generation settings: one set of limits for ``xray2mri generate`` and the MONAI Label app.

Every check raises ``ValueError`` with one line that names the setting, its allowed range and the value
received, so a command line can stop with exit code 2 before any model is loaded and a server can answer 400.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from xray2mri_bundle.diffusion.solvers import check_sampler

__all__ = ["FORMATS", "LIMITS", "check_formats", "check_number", "check_positive_mm", "check_sampler"]

#: Output formats of a generated knee folder.
FORMATS: tuple[str, ...] = ("nifti", "dicom", "png", "json")
#: Inclusive bounds of the sampling settings (a DDIM step count above the 1000 training timesteps, or thousands
#: of depths, is a runaway request, not a setting).
LIMITS: dict[str, tuple[float, float]] = {
    "steps": (1, 1000),
    "slices": (1, 512),
    "seed": (0, 2**63 - 1),
    "guidance_scale": (0.0, 20.0),
    "eta": (0.0, 1.0),
    "chunk_size": (1, 4096),
}


def check_number(name: str, value: Any, kind: type = float) -> int | float:
    """``value`` as ``kind`` (int or float) within ``LIMITS[name]``; NaN, infinities and booleans are refused."""
    low, high = LIMITS[name]
    try:
        if isinstance(value, bool):
            raise TypeError
        number = kind(value)
        if kind is int and isinstance(value, float) and value != number:
            raise ValueError
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from exc
    if (isinstance(number, float) and not math.isfinite(number)) or not low <= number <= high:
        raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {value!r}")
    return number


def check_positive_mm(name: str, value: float | None) -> float | None:
    """A length in mm that must be finite and > 0 (None passes: the default is used)."""
    if value is None:
        return None
    if not (math.isfinite(float(value)) and float(value) > 0):
        raise ValueError(f"{name} must be a positive length in mm, got {value!r}")
    return float(value)


def check_formats(formats: str | Iterable[str]) -> list[str]:
    """Output formats from "nifti,png" (or a list): known names only, at least one, order kept."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    chosen = list(dict.fromkeys(f.strip().lower() for f in items if f.strip()))
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown output format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    if not chosen:
        raise ValueError(f"no output format given; choose one or more of {', '.join(FORMATS)}")
    return chosen
