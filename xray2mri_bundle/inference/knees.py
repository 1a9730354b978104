"""One X-ray file -> the knee crop(s) the model is conditioned on, with the training preprocessing.

Shared by ``xray2mri generate`` and the MONAI Label app: the file is loaded and validated (a clear
``InvalidXrayError`` naming it otherwise), a bilateral film is split by side, the joint is located and the
140 mm crop is taken exactly as for training (``xray2mri_bundle.data.xray_transforms``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["KneeInput", "prepare_knees"]


@dataclass
class KneeInput:
    """One knee ready for generation: ``crop`` (1, N, N) float32 in [-1, 1] (140 mm square around the joint)."""

    path: Path
    side: str | None  # "RIGHT" / "LEFT"; None when a unilateral film does not say which knee it shows
    crop: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)
    source_info: dict[str, Any] = field(default_factory=dict)



def _film_sides(film: torch.Tensor, side: str | None) -> tuple[str, list[str | None]]:
    """(film kind, knees to generate) for a loaded film and the requested side (None = both / the film's)."""
    from xray2mri_bundle.data.xray_transforms import SelectKnee

    probe = SelectKnee("auto")(film, "RIGHT")
    kind = probe.meta["film"]
    laterality = str(film.meta.get("laterality") or "").upper()
    if kind == "bilateral":
        return kind, [side] if side else ["RIGHT", "LEFT"]
    if laterality in ("RIGHT", "LEFT"):
        return kind, [side or laterality]  # a mismatching --side is rejected by SelectKnee
    return kind, [side]


def _dicom_source_info(path: Path) -> dict[str, Any]:
    """DICOM keywords carried from the input X-ray to the generated series (patient ID, source image)."""
    import pydicom
    from pydicom.multival import MultiValue

    from xray2mri_bundle.data.dicom_utils import is_dicom_file

    if not is_dicom_file(path):
        return {}
    header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    info: dict[str, Any] = {}
    patient = getattr(header, "PatientID", "")
    if patient:  # kept as read (a multi-valued or over-long ID is made writable by the DICOM writer)
        info["PatientID"] = [str(v) for v in patient] if isinstance(patient, MultiValue) else str(patient)
    if getattr(header, "SOPInstanceUID", ""):
        info["source_sop_instance_uid"] = str(header.SOPInstanceUID)
        info["source_sop_class_uid"] = str(getattr(header, "SOPClassUID", "") or "") or None
    return info


def prepare_knees(
    path: str | os.PathLike, side: str | None = None, image_size: int = 256, png_spacing_mm: float | None = None
) -> list[KneeInput]:
    """Load, validate and crop the knee(s) of one X-ray file with the training preprocessing.

    side: "RIGHT", "LEFT" or None (a bilateral film gives both knees, a unilateral film its own knee).
    Raises ``InvalidXrayError`` (naming the file) for unusable input.
    """
    from monai.transforms import Compose

    from xray2mri_bundle.data.xray_io import DEFAULT_PNG_SPACING_MM
    from xray2mri_bundle.data.xray_transforms import CROP_MM, LoadXray, LoadXrayd, xray_transforms

    path = Path(path)
    spacing = DEFAULT_PNG_SPACING_MM if png_spacing_mm is None else float(png_spacing_mm)
    film = LoadXray(png_spacing_mm=spacing)(str(path))
    kind, sides = _film_sides(film, side)
    chain = xray_transforms("xray", size=int(image_size), intensity_key=None, png_spacing_mm=spacing)
    chain = [t for t in chain if not isinstance(t, LoadXrayd)]  # the film is already loaded (and validated)
    source_info = _dicom_source_info(path)
    knees = []
    for knee_side in sides:
        film_key = "BILATERAL" if kind == "bilateral" else (knee_side or "RIGHT")
        out = Compose(chain)({"xray": film.clone(), "side": knee_side or "RIGHT", "film": film_key})
        crop = out["xray"]
        meta = dict(crop.meta)
        info = {
            "film": kind,
            "film_laterality": film.meta.get("laterality") or None,
            "modality": film.meta.get("modality") or None,
            "photometric": film.meta.get("photometric"),
            "film_spacing_mm": list(film.meta.get("film_spacing", ())),
            "film_spacing_source": film.meta.get("spacing_source"),
            "film_magnification": film.meta.get("magnification"),
            "film_magnification_source": film.meta.get("magnification_source"),
            "joint_rc_px": list(meta.get("joint_rc", ())),
            "crop_box_px": list(meta.get("crop_box", ())),
            "crop_mm": CROP_MM,
            "crop_size_px": int(image_size),
        }
        extra = dict(source_info)
        if knee_side:
            extra["Laterality"] = knee_side[0]
        knees.append(KneeInput(path, knee_side, torch.as_tensor(crop).as_subclass(torch.Tensor).float(), info,
                               extra))
    return knees
