"""``xray2mri demo``: runs ``tools/demo.py`` of the bundle checkout (``--bundle-root``, default: the
current folder).

The tool is not part of the installed package: ``--help`` works anywhere; running needs the checkout (outside
one: one error line naming what is missing, exit code 2).
"""

from __future__ import annotations

from collections.abc import Sequence

from ._common import tool_command

__all__ = ["main"]

SUMMARY = ("The main job on the embedded default: synthetic cohort -> shipped (or retrained) weights -> generate "
           "-> evaluate.")


def main(argv: Sequence[str] | None = None) -> int:
    return tool_command("demo", "tools.demo", SUMMARY, argv)
