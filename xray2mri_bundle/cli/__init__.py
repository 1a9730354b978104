"""The ``xray2mri`` command: one entry point, one module per subcommand in this package.

Each command module (``xray2mri_bundle.cli.generate``, ...) holds only argument parsing and a call into the
library functions of the subpackages (``cohort``, ``data``, ``engines``, ``inference``, ``evaluation``).
``benchmark`` and ``demo`` are tools of the bundle checkout (``tools/``, not installed): their commands load them
from ``--bundle-root`` (default the current folder). Subcommands are imported lazily so that ``xray2mri --help``
stays fast and a missing optional dependency of one workflow never breaks another.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from xray2mri_bundle.constants import RESEARCH_USE

__all__ = ["SUBCOMMANDS", "main"]

#: subcommand -> (module with a ``main(argv)`` function, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "make-cohort": ("xray2mri_bundle.cli.make_cohort", "write a synthetic OAI-like knee cohort (DICOM tree)"),
    "index": ("xray2mri_bundle.cli.index", "index an OAI-style tree or CSV manifest into a MONAI datalist"),
    "pose-template": ("xray2mri_bundle.cli.pose_template", "build the canonical-pose MRI template from training knees"),
    "preview": ("xray2mri_bundle.cli.preview", "PNG of one datalist entry: film, crop box, crop, MRI slices"),
    "train": ("xray2mri_bundle.cli.train", "run the bundle's training (all stages) for a profile"),
    "training-record": ("xray2mri_bundle.cli.training_record", "record how weights were trained (from stage logs)"),
    "generate": ("xray2mri_bundle.cli.generate", "generate pseudo-MRI volumes from X-rays"),
    "export": ("xray2mri_bundle.cli.export", "export the trained UNet with torch.export (.pt2), checked"),
    "evaluate": ("xray2mri_bundle.cli.evaluate", "evaluate methods on the validation split"),
    "benchmark": ("xray2mri_bundle.cli.benchmark", "measure speed and memory (bundle checkout; docs/performance.md)"),
    "demo": ("xray2mri_bundle.cli.demo", "the main job: cohort -> shipped or trained weights -> generate -> evaluate"),
}


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: xray2mri <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run `xray2mri <command> --help` for a command's options.", RESEARCH_USE]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to the subcommand's ``main``; return its exit code.

    A command run outside a bundle checkout when it needs one (``BundleRootError``) prints one line and exits 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"xray2mri: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    from ._common import BundleRootError

    module = importlib.import_module(SUBCOMMANDS[name][0])
    try:
        result = module.main(rest)
    except BundleRootError as exc:
        print(f"xray2mri {name}: error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)
