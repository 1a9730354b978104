"""Batch generation: knee X-ray files -> pseudo-MRI volumes (NIfTI, DICOM MR series, montage PNG, JSON).

The library behind ``xray2mri generate`` (``xray2mri_bundle.cli.generate`` parses the options and calls
``run_batch``) and the bundle's ``configs/inference.json``.

``run_batch`` wires the pieces ``configs/inference.json`` lists: a ``Dataset`` of the films with the
preprocessing (``knees.knee_preprocessing``: each input, DICOM DX/CR, PNG or 2-D NIfTI, is validated and the
knee cropped the way training data were), the inferer (``inferer.VolumeInferer`` around ``VolumeGenerator``),
the postprocessing (``postprocessing.KneeWriters``: the writers of ``xray2mri_bundle.inference.writers``) and
the loop over them (``evaluator.KneeBatchEvaluator``). A bilateral film gives both knees unless ``--side``
picks one. A bad
file is reported by name and the batch goes on; the exit code is 1 when any input failed. Every knee's
outputs are written to a hidden temporary folder that is renamed into place, so a knee folder is complete or
absent. Outputs are SYNTHETIC research images, not for diagnosis.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from xray2mri_bundle.constants import MRI_FOV_MM
from xray2mri_bundle.data.frame import WorldFrame
from xray2mri_bundle.diffusion import DEFAULT_SAMPLING

from .evaluator import BatchReport, KneeBatchEvaluator
from .generator import (
    REFERENCE_SLICES,
    GenerationResult,
    VolumeGenerator,
)
from .inferer import VolumeInferer
from .knees import SIDES, KneeInput, knee_preprocessing, prepare_knees
from .naming import knee_label, output_names
from .postprocessing import KneeWriters
from .settings import FORMATS, check_formats

__all__ = [
    "FORMATS",
    "KneeBatchEvaluator",
    "KneeWriters",
    "VolumeInferer",
    "MRI_FOV_MM",
    "BatchReport",
    "SIDES",
    "KneeInput",
    "expand_inputs",
    "knee_label",
    "output_names",
    "prepare_output_dir",
    "prepare_knees",
    "require_inputs",
    "run_batch",
    "write_knee_outputs",
]


# ---------------------------------------------------------------------------------------------------- writing
def write_knee_outputs(
    result: GenerationResult,
    knee: KneeInput,
    folder: str | os.PathLike,
    generator: VolumeGenerator,
    fov_mm: float = MRI_FOV_MM,
    formats: Iterable[str] = FORMATS,
    overwrite: bool = False,
    settings: dict[str, Any] | None = None,
    frame: WorldFrame | None = None,
) -> dict[str, Any]:
    """Write one knee's volume to ``folder`` (NIfTI, DICOM series, montage PNG, JSON sidecar), atomically, with
    the default :class:`~.postprocessing.KneeWriters`. Returns the sidecar dictionary."""
    return KneeWriters(formats=formats, fov_mm=fov_mm, overwrite=overwrite)(result, knee, folder, generator,
                                                                           settings, frame)


# ------------------------------------------------------------------------------------------------------ batch
def _as_paths(xrays: str | os.PathLike | Iterable[str | os.PathLike] | None) -> list[Path]:
    if xrays is None:
        return []
    if isinstance(xrays, str | os.PathLike):
        xrays = [xrays]
    return [Path(p) for p in xrays]


def require_inputs(xrays: str | os.PathLike | Iterable[str | os.PathLike] | None) -> list[Path]:
    """The X-ray paths of a run; ``ValueError`` when there are none (``--xray PATH`` missing)."""
    paths = _as_paths(xrays)
    if not paths:
        raise ValueError("no X-ray given: pass --xray PATH (or a list: --xray \"['a.dcm', 'b.png']\")")
    return paths


def run_batch(
    xrays: str | os.PathLike | Iterable[str | os.PathLike],
    output_dir: str | os.PathLike,
    generator: VolumeGenerator,
    slices: int = REFERENCE_SLICES,
    num_inference_steps: int = DEFAULT_SAMPLING.steps,
    eta: float = DEFAULT_SAMPLING.eta,
    guidance_scale: float = DEFAULT_SAMPLING.guidance_scale,
    seed: int = 0,
    side: str = "both",
    chunk_size: int = 16,
    shared_noise: bool = True,
    per_slice_conditions: bool = False,
    formats: Iterable[str] = FORMATS,
    fov_mm: float = MRI_FOV_MM,
    png_spacing_mm: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
    reference_mri: str | os.PathLike | None = None,
    raise_on_failure: bool = False,
    log: Callable[[str], None] | None = print,
    sampler: str = DEFAULT_SAMPLING.sampler,
) -> BatchReport:
    """Generate a volume per knee of every X-ray in ``xrays`` into ``output_dir/<name>[_<side>]/``.

    A failing input (unreadable, not a radiograph, ...) is recorded with its message and the batch continues;
    ``raise_on_failure`` raises ``RuntimeError`` listing the failures at the end (bundle runs). Every knee uses
    the same ``seed``, so its volume does not depend on the other inputs.
    """
    from monai.data import Dataset

    side_key = str(side).lower()
    if side_key not in SIDES:
        raise ValueError(f"side must be left, right or both, got {side!r}")
    formats = check_formats(formats)
    inferer = VolumeInferer(generator, slices=slices, sampler=sampler, num_inference_steps=num_inference_steps,
                            eta=eta, guidance_scale=guidance_scale, seed=seed, chunk_size=chunk_size,
                            shared_noise=shared_noise, per_slice_conditions=per_slice_conditions)
    paths = require_inputs(xrays)
    frame = None
    if reference_mri is not None:
        if len(paths) != 1 or side_key == "both":
            raise ValueError("--reference-mri places ONE knee: give one X-ray and --side left|right")
        frame = generator.reference_frame(reference_mri, SIDES[side_key])
        (log or (lambda _m: None))(f"placing the volume in the frame of {reference_mri} (joint centre at RAS "
                                   f"{frame.centre_ras.round(1).tolist()} mm)")
    preprocessing = knee_preprocessing(side_key, generator.image_size or 256, png_spacing_mm)
    dataset = Dataset([{"xray": str(path)} for path in paths], transform=preprocessing)
    postprocessing = KneeWriters(formats=formats, fov_mm=fov_mm, overwrite=overwrite)
    evaluator = KneeBatchEvaluator(dataset, inferer, postprocessing, output_dir, side=side_key,
                                   reference_mri=reference_mri, frame=frame, progress=progress,
                                   raise_on_failure=raise_on_failure, log=log)
    return evaluator.run()


# ------------------------------------------------------------------------------------------------- inputs
def expand_inputs(xrays: Sequence[str]) -> list[Path]:
    """Input paths with each folder replaced by its (non-hidden) files, sorted; ``ValueError`` for an empty
    folder. Missing files pass through: the batch reports them by name and goes on."""
    out: list[Path] = []
    for item in xrays:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            if not files:
                raise ValueError(f"{path} is a folder with no files in it: give X-ray files (DICOM, PNG, NIfTI)")
            print(f"{path} is a folder: generating from its {len(files)} file(s)", file=sys.stderr)
            out += files
        else:
            out.append(path)
    return out


def prepare_output_dir(folder: str | os.PathLike) -> Path:
    """Create the output folder and check that it is a writable folder (not a file), before any work."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"output folder {folder} is a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ValueError(f"output folder {folder} is not writable ({exc.strerror or exc})") from exc
    return folder
