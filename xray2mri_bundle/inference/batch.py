"""Batch generation: knee X-ray files -> pseudo-MRI volumes (NIfTI, DICOM MR series, montage PNG, JSON).

The library behind ``xray2mri generate`` (``xray2mri_bundle.cli.generate`` parses the options and calls
``run_batch``) and the bundle's ``configs/inference.json``.

Each input (DICOM DX/CR, PNG, 2-D NIfTI) is validated, the knee is cropped the way training data were
(``xray2mri_bundle.data.xray_transforms``), a volume is generated (``VolumeGenerator``) and written by
``xray2mri_bundle.inference.writers``. A bilateral film gives both knees unless ``--side`` picks one. A bad
file is reported by name and the batch goes on; the exit code is 1 when any input failed. Every knee's
outputs are written to a hidden temporary folder that is renamed into place, so a knee folder is complete or
absent. Outputs are SYNTHETIC research images, not for diagnosis.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from xray2mri_bundle.constants import DISCLAIMER, MRI_FOV_MM
from xray2mri_bundle.data.atomic import temp_dir
from xray2mri_bundle.diffusion import DEFAULT_SAMPLING

from .generator import (
    REFERENCE_SLICES,
    GenerationResult,
    VolumeGenerator,
    slice_spacing_mm,
)
from .knees import SIDES, KneeInput, prepare_knees
from .naming import knee_label, output_names, unused_name
from .settings import FORMATS, check_formats, check_sampler

__all__ = [
    "FORMATS",
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

@dataclass
class BatchReport:
    """What a batch produced: one entry per written knee, and ``(input, error message)`` per failure."""

    outputs: list[dict[str, Any]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


# ---------------------------------------------------------------------------------------------------- writing
def _replace_dir(tmp: Path, final: Path, overwrite: bool) -> None:
    """Move the finished temporary knee folder into place (the old one is removed only after success)."""
    if final.exists():
        if not overwrite:
            raise FileExistsError(f"{final} exists (pass --overwrite to replace it)")
        old = temp_dir(final.parent, prefix=f".{final.name}.", suffix=".old")
        os.replace(final, old / "previous")
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def write_knee_outputs(
    result: GenerationResult,
    knee: KneeInput,
    folder: str | os.PathLike,
    generator: VolumeGenerator,
    fov_mm: float = MRI_FOV_MM,
    formats: Iterable[str] = FORMATS,
    overwrite: bool = False,
    settings: dict[str, Any] | None = None,
    centre_ras: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Write one knee's volume to ``folder`` (NIfTI, DICOM series, montage PNG, JSON sidecar), atomically.

    Geometry: in-plane spacing ``fov_mm / H`` (the MRI field of view the model was trained on), slice spacing
    ``slice_spacing_mm(S)`` (1.5 mm at 50 slices). Returns the sidecar dictionary.
    """
    from xray2mri_bundle.inference import writers

    formats = check_formats(formats)
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} exists (pass --overwrite to replace it)")
    volume = result.volume
    height, width, slices = volume.shape
    spacing = (float(fov_mm) / height, float(fov_mm) / width)
    thickness = slice_spacing_mm(slices)
    side = (knee.side or "unknown side").lower()
    title = f"Pseudo-MRI from {knee.path.name} ({side}) - {DISCLAIMER}"
    start = time.perf_counter()
    outputs: dict[str, str] = {}
    tmp = temp_dir(folder.parent, prefix=f".{folder.name}.")
    try:
        if "nifti" in formats:
            writers.write_nifti(volume, spacing, thickness, tmp / "pseudo_mri.nii.gz", description=knee.path.name,
                                centre_ras=centre_ras)
            outputs["nifti"] = "pseudo_mri.nii.gz"
        if "dicom" in formats:
            writers.write_dicom_series(volume, spacing, thickness, tmp / "dicom", source_info=knee.source_info,
                                       series_description=f"Pseudo-MRI COR T1 {side}", centre_ras=centre_ras)
            outputs["dicom"] = "dicom"
        if "png" in formats:
            writers.write_montage_png(volume, tmp / "montage.png", slice_spacing_mm=thickness, title=title)
            outputs["png"] = "montage.png"
        sidecar = {
            "disclaimer": DISCLAIMER,
            "input": str(knee.path.resolve()),
            "side": knee.side,
            **knee.info,
            "profile": generator.profile,
            "weights": generator.weights,
            "checkpoints_sha256": dict(generator.checkpoints),
            "seed": result.seed,
            "sampler": result.sampler,
            "steps": result.num_inference_steps,
            "eta": result.eta,
            "guidance_scale": result.guidance_scale,
            "slices": slices,
            "depths": [round(float(d), 6) for d in result.depths],
            "shared_noise": result.shared_noise,
            "per_slice_conditions": result.per_slice_conditions,
            "pixel_spacing_mm": list(spacing),
            "slice_spacing_mm": thickness,
            "field_of_view_mm": float(fov_mm),
            "frame": "joint-centred: the in-plane centre of every slice is the knee joint found on the X-ray",
            "frame_centre_ras_mm": [0.0, 0.0, 0.0] if centre_ras is None else [float(v) for v in centre_ras],
            "volume_layout": "(H, W, S): rows superior->inferior, columns to patient left, slices anterior->posterior",
            "classifier_kl_probabilities": result.kl_probs,  # the KOA classifier's output (not a grading)
            "timings_s": {**result.timings, "writing": time.perf_counter() - start},
            "device": str(generator.device),
            "versions": _versions(),
            "settings": dict(settings or {}),
            "outputs": outputs,
        }
        if "json" in formats:
            outputs["json"] = "generation.json"
            writers.write_sidecar_json(tmp / "generation.json", sidecar)
        _replace_dir(tmp, folder, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return sidecar


def _versions() -> dict[str, str]:
    import monai

    import xray2mri_bundle

    return {"xray2mri_bundle": xray2mri_bundle.__version__, "torch": torch.__version__, "monai": monai.__version__}


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
    from tqdm.auto import tqdm

    side_key = str(side).lower()
    if side_key not in SIDES:
        raise ValueError(f"side must be left, right or both, got {side!r}")
    formats = check_formats(formats)
    sampler = check_sampler(sampler, eta)
    paths = require_inputs(xrays)
    names = output_names(paths)
    used_labels: set[str] = set()  # knee folders written in this run: two knees never share one
    centre = None
    if reference_mri is not None:
        from xray2mri_bundle.data.mri_transforms import frame_centre_ras

        if len(paths) != 1 or side_key == "both":
            raise ValueError("--reference-mri places ONE knee: give one X-ray and --side left|right")
        centre = frame_centre_ras(str(reference_mri), SIDES[side_key])
        (log or (lambda _m: None))(f"placing the volume in the frame of {reference_mri} (joint centre at RAS "
                                   f"{centre.round(1).tolist()} mm)")
    output_dir = Path(output_dir)
    report = BatchReport()
    settings = {"chunk_size": chunk_size, "formats": list(formats), "requested_side": side_key,
                **getattr(generator, "acceleration", {})}
    say = log or (lambda _msg: None)
    for path in paths:
        try:
            start = time.perf_counter()
            knees = prepare_knees(path, SIDES[side_key], generator.image_size or 256, png_spacing_mm)
            preprocessing = time.perf_counter() - start
            if len(knees) > 1:
                note = f"{path}: bilateral film, generating both knees (use --side left|right for one)"
                report.notes.append(note)
                say(note)
            chunks = slices if per_slice_conditions else math.ceil(slices / max(1, chunk_size))
            for knee in knees:
                label = unused_name(knee_label(names[str(path)], knee), used_labels)
                used_labels.add(label)
                bar = tqdm(total=chunks * num_inference_steps, desc=label, unit="step", disable=not progress,
                           leave=False)

                def update(done: int, total: int, bar: Any = bar) -> None:
                    bar.total, bar.n = total, done
                    bar.refresh()

                try:
                    result = generator(
                        knee.crop, slices=slices, num_inference_steps=num_inference_steps, eta=eta,
                        guidance_scale=guidance_scale, seed=seed, chunk_size=chunk_size, shared_noise=shared_noise,
                        per_slice_conditions=per_slice_conditions, progress=update, sampler=sampler,
                    )
                finally:
                    bar.close()
                result.timings["preprocessing"] = preprocessing
                sidecar = write_knee_outputs(result, knee, output_dir / label, generator, fov_mm, formats,
                                             overwrite, {**settings, "reference_mri": None if reference_mri is None
                                                         else str(reference_mri)}, centre)
                report.outputs.append({"input": str(path), "side": knee.side, "folder": str(output_dir / label),
                                       "sidecar": sidecar})
                say(f"{path} ({(knee.side or 'knee').lower()}): wrote {output_dir / label} "
                    f"({result.slices} slices, {result.timings['total']:.1f} s)")
        except Exception as exc:  # noqa: BLE001 - a batch reports every failure by file name and goes on
            message = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
            report.failures.append((str(path), message))
            print(f"error: {message}", file=sys.stderr)
    if report.failures:
        print(f"{len(report.failures)} of {len(paths)} input(s) failed:", file=sys.stderr)
        for _, message in report.failures:
            print(f"  - {message}", file=sys.stderr)
        if raise_on_failure:
            raise RuntimeError(f"{len(report.failures)} input(s) failed: " +
                               "; ".join(message for _, message in report.failures))
    return report


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
