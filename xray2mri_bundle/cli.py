"""The ``xray2mri`` command: one entry point, each subcommand delegating to the module that does the work.

Subcommands are imported lazily so that ``xray2mri --help`` stays fast and a missing optional dependency
of one workflow never breaks another.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

#: subcommand -> (module with a ``main(argv)`` function, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "make-cohort": ("xray2mri_bundle.cohort.generate", "write a synthetic OAI-like knee cohort (DICOM tree)"),
    "index": ("xray2mri_bundle.data.index", "index an OAI-style tree or CSV manifest into a MONAI datalist"),
    "preview": ("xray2mri_bundle.data.preview", "PNG of one datalist entry: film, crop box, crop, MRI slices"),
    "train": ("xray2mri_bundle.engines.train_cli", "run the bundle's training (all stages) for a profile"),
    "generate": ("xray2mri_bundle.inference.generate_cli", "generate pseudo-MRI volumes from X-rays"),
    "export": ("xray2mri_bundle.inference.export", "export the trained UNet with torch.export (.pt2), checked"),
    "evaluate": ("xray2mri_bundle.evaluation.evaluate_cli", "evaluate methods on the validation split"),
    "benchmark": ("xray2mri_bundle.benchmark", "measure speed and memory (writes docs/performance.md)"),
    "demo": ("xray2mri_bundle.demo", "the main job: cohort -> train or shipped weights -> generate -> evaluate"),
}


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: xray2mri <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run `xray2mri <command> --help` for a command's options.",
              "Outputs are synthetic research images, not for diagnosis."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to the subcommand's ``main``; return its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"xray2mri: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
