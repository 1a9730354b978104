"""Helpers shared by the command modules: device names and the bundle checkout a command works in."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["BUNDLE_MARKER", "BundleRootError", "find_bundle_root", "load_tool", "resolve_device", "tool_command"]

#: A folder is a bundle checkout when it holds this file (the bundle's metadata).
BUNDLE_MARKER = Path("configs") / "metadata.json"


class BundleRootError(RuntimeError):
    """The folder given as the bundle root is not a checkout of this bundle (or lacks what a command needs)."""


def find_bundle_root(given: str | os.PathLike | None = None, needs: str | os.PathLike | None = None) -> Path:
    """The bundle checkout ``given`` (default: the current folder), resolved.

    It must hold ``configs/metadata.json``, and ``needs`` (a path inside it, e.g. ``tools/benchmark.py``) when
    given; otherwise :class:`BundleRootError` with one line naming the folder and what is missing."""
    root = Path(given) if given is not None else Path.cwd()
    for required in (BUNDLE_MARKER, *([Path(needs)] if needs is not None else [])):
        if not (root / required).exists():
            raise BundleRootError(f"{root.resolve()} is not an xray2mri bundle checkout: {required.as_posix()} is "
                                  "missing (run from the checkout, or pass --bundle-root PATH)")
    return root.resolve()


def resolve_device(name: str):
    """``torch.device`` for ``name`` (``auto``: CUDA when available); ``ValueError`` for CUDA without CUDA."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} requested but CUDA is not available")
    return device


def load_tool(bundle_root: Path, module: str):
    """Import ``module`` (e.g. ``tools.benchmark``) from the bundle checkout ``bundle_root``: the benchmark and the
    demo are tools of the checkout (``tools/``), not part of the installed package. ``BundleRootError`` when the
    checkout lacks the file or another folder's ``tools`` was imported already."""
    import importlib

    relative = Path(*module.split(".")).with_suffix(".py")
    root = find_bundle_root(bundle_root, needs=relative)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    loaded = importlib.import_module(module)
    origin = Path(getattr(loaded, "__file__", "") or "").resolve()
    if not origin.is_relative_to(root):
        raise BundleRootError(f"{module} was imported from {origin}, not from the bundle checkout {root}")
    return loaded


def tool_command(name: str, module: str, summary: str, argv: Sequence[str] | None) -> int:
    """``xray2mri <name>``: run ``<module>.main(argv)`` of the bundle checkout given by ``--bundle-root`` (default:
    the current folder; the option is taken out of ``argv``). ``--help`` works anywhere: with a checkout it shows
    the tool's options, without one this command's own. Outside a checkout: ``BundleRootError`` (exit 2)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog=f"xray2mri {name}", add_help=False, description=summary,
        epilog=f"The {name} is a tool of the bundle checkout ({Path(*module.split('.')).as_posix()}.py), not of "
               "the installed package: run it from the checkout or give --bundle-root. Its own options are listed "
               f"by `xray2mri {name} --help` there.")
    parser.add_argument("--bundle-root", default=None, help="bundle checkout (default: the current folder)")
    parser.add_argument("-h", "--help", action="store_true", help="show this help (and the tool's, in a checkout)")
    known, rest = parser.parse_known_args(list(argv or []))
    if known.help:
        try:
            tool = load_tool(Path(known.bundle_root or Path.cwd()), module)
        except BundleRootError as exc:
            parser.print_help()
            print(f"\n(no tool options shown: {exc})")
            return 0
        return int(tool.main([*rest, "--help"]) or 0)
    tool = load_tool(Path(known.bundle_root or Path.cwd()), module)
    return int(tool.main(rest) or 0)
