"""Postprocessing of one generated knee: the writers (NIfTI, DICOM MR series, montage PNG, JSON sidecar) as
components a config lists, and :class:`KneeWriters`, which runs them into one knee folder atomically.

Each writer calls its function in :mod:`.writers` with the knee's geometry (:class:`KneeVolume`) and returns
the name it wrote inside the folder. ``configs/inference.json``'s ``postprocessing`` is a ``KneeWriters`` of the
four; ``batch.write_knee_outputs`` (``xray2mri generate``) builds the same one.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xray2mri_bundle.constants import DISCLAIMER, MRI_FOV_MM
from xray2mri_bundle.data.atomic import replace_dir, temp_dir
from xray2mri_bundle.data.frame import CORONAL_AXES_RAS, FRAME_DESCRIPTIONS, JOINT_CENTRED, WorldFrame

from . import writers
from .generator import GenerationResult, slice_spacing_mm
from .knees import KneeInput
from .settings import FORMATS, check_formats

__all__ = [
    "KneeVolume",
    "KneeWriters",
    "WriteDicomSeries",
    "WriteMontagePng",
    "WriteNifti",
    "WriteSidecarJson",
    "default_writers",
]


@dataclass
class KneeVolume:
    """What a writer gets: the (H, W, S) volume in [-1, 1], (row, col) ``spacing`` and ``slice_spacing`` in mm,
    the knee it came from, a caption, where it lies in the world (``frame``; None: centred at the origin, coronal
    axes) and the sidecar."""

    volume: Any
    spacing: tuple[float, float]
    slice_spacing: float
    knee: KneeInput
    title: str
    frame: WorldFrame | None = None
    sidecar: dict[str, Any] = field(default_factory=dict)

    @property
    def side(self) -> str:
        return (self.knee.side or "unknown side").lower()


class WriteNifti:
    """``pseudo_mri.nii.gz`` (``writers.write_nifti``)."""

    format = "nifti"

    def __init__(self, filename: str = "pseudo_mri.nii.gz") -> None:
        self.filename = filename

    def __call__(self, out: KneeVolume, folder: Path) -> str:
        writers.write_nifti(out.volume, out.spacing, out.slice_spacing, folder / self.filename,
                            description=out.knee.path.name, frame=out.frame)
        return self.filename


class WriteDicomSeries:
    """``dicom/`` MR series carrying the X-ray's patient keywords (``writers.write_dicom_series``)."""

    format = "dicom"

    def __init__(self, folder: str = "dicom") -> None:
        self.filename = folder

    def __call__(self, out: KneeVolume, folder: Path) -> str:
        writers.write_dicom_series(out.volume, out.spacing, out.slice_spacing, folder / self.filename,
                                   source_info=out.knee.source_info,
                                   series_description=f"Pseudo-MRI COR T1 {out.side}", frame=out.frame)
        return self.filename


class WriteMontagePng:
    """``montage.png`` of evenly spaced slices (``writers.write_montage_png``)."""

    format = "png"

    def __init__(self, filename: str = "montage.png") -> None:
        self.filename = filename

    def __call__(self, out: KneeVolume, folder: Path) -> str:
        writers.write_montage_png(out.volume, folder / self.filename, slice_spacing_mm=out.slice_spacing,
                                  title=out.title)
        return self.filename


class WriteSidecarJson:
    """``generation.json``: the sidecar (``writers.write_sidecar_json``); runs after the other writers, so the
    sidecar lists every output and the writing time."""

    format = "json"
    needs_sidecar = True

    def __init__(self, filename: str = "generation.json") -> None:
        self.filename = filename

    def __call__(self, out: KneeVolume, folder: Path) -> str:
        writers.write_sidecar_json(folder / self.filename, out.sidecar)
        return self.filename


def default_writers() -> list:
    """NIfTI, DICOM, PNG montage, JSON sidecar: the writers of ``xray2mri generate`` and inference.json."""
    return [WriteNifti(), WriteDicomSeries(), WriteMontagePng(), WriteSidecarJson()]


def _replace_dir(tmp: Path, final: Path, overwrite: bool) -> None:
    """Move the finished temporary knee folder into place (``data.atomic.replace_dir``: the old one is removed
    only after success); an existing folder is replaced only with ``overwrite``."""
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists (pass --overwrite to replace it)")
    replace_dir(tmp, final)


def _versions() -> dict[str, str]:
    import monai

    import xray2mri_bundle

    return {"xray2mri_bundle": xray2mri_bundle.__version__, "torch": torch.__version__, "monai": monai.__version__}


class KneeWriters:
    """Write one knee's volume into its folder with the ``writers`` whose ``format`` is in ``formats``.

    Geometry: in-plane spacing ``fov_mm / H`` (the MRI field of view the model was trained on), slice spacing
    ``slice_spacing_mm(S)`` (1.5 mm at 50 slices). Everything goes to a hidden temporary folder renamed into
    place, so a knee folder is complete or absent; an existing one is replaced only with ``overwrite``.
    """

    def __init__(self, writers: Iterable | None = None, formats: Iterable[str] = FORMATS,
                 fov_mm: float = MRI_FOV_MM, overwrite: bool = False) -> None:
        self.formats = check_formats(formats)
        self.writers = list(default_writers() if writers is None else writers)
        self.fov_mm, self.overwrite = float(fov_mm), bool(overwrite)

    def __call__(self, result: GenerationResult, knee: KneeInput, folder: str | os.PathLike, generator: Any,
                 settings: dict[str, Any] | None = None, frame: WorldFrame | None = None) -> dict[str, Any]:
        """Write ``result`` for ``knee`` to ``folder``; returns the sidecar dictionary."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        if folder.exists() and not self.overwrite:
            raise FileExistsError(f"{folder} exists (pass --overwrite to replace it)")
        height, width, slices = result.volume.shape
        spacing = (self.fov_mm / height, self.fov_mm / width)
        side = (knee.side or "unknown side").lower()
        out = KneeVolume(result.volume, spacing, slice_spacing_mm(slices), knee,
                         f"Pseudo-MRI from {knee.path.name} ({side}) - {DISCLAIMER}", frame)
        active = [w for w in self.writers if w.format in self.formats]
        start = time.perf_counter()
        outputs: dict[str, str] = {}
        tmp = temp_dir(folder.parent, prefix=f".{folder.name}.")
        try:
            for writer in (w for w in active if not getattr(w, "needs_sidecar", False)):
                outputs[writer.format] = writer(out, tmp)
            out.sidecar = self.sidecar(result, knee, generator, out, outputs, settings, time.perf_counter() - start)
            for writer in (w for w in active if getattr(w, "needs_sidecar", False)):
                outputs[writer.format] = writer.filename
                writer(out, tmp)
            _replace_dir(tmp, folder, self.overwrite)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return out.sidecar

    def sidecar(self, result: GenerationResult, knee: KneeInput, generator: Any, out: KneeVolume,
                outputs: dict[str, str], settings: dict[str, Any] | None, writing_s: float) -> dict[str, Any]:
        """The JSON sidecar of one knee (``outputs`` is the dictionary the writers fill)."""
        frame = out.frame or WorldFrame()
        return {
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
            "slices": result.volume.shape[2],
            "depths": [round(float(d), 6) for d in result.depths],
            "shared_noise": result.shared_noise,
            "per_slice_conditions": result.per_slice_conditions,
            "pixel_spacing_mm": list(out.spacing),
            "slice_spacing_mm": out.slice_spacing,
            "field_of_view_mm": self.fov_mm,
            "frame": FRAME_DESCRIPTIONS.get(getattr(generator, "mri_frame", None), FRAME_DESCRIPTIONS[JOINT_CENTRED]),
            **{f"frame_{key}": value for key, value in frame.as_dict().items()},  # frame_centre_ras_mm, _axes_ras
            "volume_layout": "(H, W, S): rows superior->inferior, columns to patient left, slices anterior->posterior"
                             + ("" if np.allclose(frame.axes_ras, CORONAL_AXES_RAS)
                                else " of the knee (frame_axes_ras: their directions in the world)"),
            "classifier_kl_probabilities": result.kl_probs,  # the KOA classifier's output (not a grading)
            "timings_s": {**result.timings, "writing": writing_s},
            "device": str(generator.device),
            "versions": _versions(),
            "settings": dict(settings or {}),
            "outputs": outputs,
        }
