"""Constants shared across the package, each defined once: research-use disclaimers, frame and MRI geometry.

Every module that labels an output or needs the frame / field of view / spacing imports it from here, so a
change (a wording, a default spacing) is made in one place. Plain Python values only: importing this module
costs nothing (no torch), so the command line can use it for its help text. ``disclaimers`` holds the
wordings, ``geometry`` the frame and field of view.
"""

from __future__ import annotations

from . import disclaimers, geometry
from .disclaimers import *  # noqa: F403 - the names are disclaimers.__all__
from .geometry import *  # noqa: F403 - the names are geometry.__all__

__all__ = [*disclaimers.__all__, *geometry.__all__]
