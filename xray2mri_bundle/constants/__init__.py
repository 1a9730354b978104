"""Constants shared across the package, each defined once: research-use disclaimers, frame and MRI geometry.

Every module that labels an output or needs the frame / field of view / spacing imports it from here, so a
change (a wording, a default spacing) is made in one place. Plain Python values only: importing this module
costs nothing (no torch), so the command line can use it for its help text. ``disclaimers`` holds the
wordings, ``geometry`` the frame and field of view.
"""

from __future__ import annotations

from .disclaimers import (
    COHORT_DISCLAIMER,
    DEMO_WEIGHTS_DISCLAIMER,
    DISCLAIMER,
    FIGURE_DISCLAIMER,
    REPORT_DISCLAIMER,
    RESEARCH_USE,
    SUMMARY_DISCLAIMER,
    VOLUME_CAPTION,
)
from .geometry import (
    DEFAULT_PNG_SPACING_MM,
    FRAME_MM,
    MRI_FOV_MM,
    MRI_KEPT_SLICES,
    MRI_SLICE_MM,
    MRI_SLICES,
    OAI_MRI_FOV_MM,
    REFERENCE_SLICES,
    REFERENCE_SPACING_MM,
)

__all__ = [
    "COHORT_DISCLAIMER",
    "DEFAULT_PNG_SPACING_MM",
    "DEMO_WEIGHTS_DISCLAIMER",
    "DISCLAIMER",
    "FIGURE_DISCLAIMER",
    "FRAME_MM",
    "MRI_FOV_MM",
    "MRI_KEPT_SLICES",
    "MRI_SLICES",
    "MRI_SLICE_MM",
    "OAI_MRI_FOV_MM",
    "REFERENCE_SLICES",
    "REFERENCE_SPACING_MM",
    "REPORT_DISCLAIMER",
    "RESEARCH_USE",
    "SUMMARY_DISCLAIMER",
    "VOLUME_CAPTION",
]
