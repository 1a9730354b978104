"""One X-ray file -> the knee crop(s) the model is conditioned on, with the training preprocessing.

Shared by ``xray2mri generate``, ``configs/inference.json`` and the MONAI Label app: the file is loaded and
validated (a clear ``InvalidXrayError`` naming it otherwise), a bilateral film is split into one item per knee
(:class:`SplitKneesd`), the joint is located and the 140 mm crop is taken exactly as for training (the
transforms of ``xray2mri_bundle.data.xray_transforms``). :func:`knee_preprocessing` builds that chain from
``configs/inference.json``'s ``preprocessing`` (packaged with the library, so it is written once);
:func:`knee_input` turns one of its output items into a :class:`KneeInput`.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import Compose, MapTransform

__all__ = ["SIDES", "KneeInput", "SplitKneesd", "knee_input", "knee_preprocessing", "prepare_knees", "root_cause"]

#: ``--side`` values -> the side handed to the transforms (None: both knees of a bilateral film / the film's own)
SIDES = {"left": "LEFT", "right": "RIGHT", "both": None}


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


def _requested_side(side: str | None) -> str | None:
    """"left" / "right" / "both" (the CLI's) or "LEFT" / "RIGHT" / None -> "LEFT", "RIGHT" or None."""
    if side is None:
        return None
    key = str(side).lower()
    if key not in SIDES:
        raise ValueError(f"side must be left, right or both, got {side!r}")
    return SIDES[key]


class SplitKneesd(MapTransform):
    """A loaded film (``LoadXrayd``) -> a list of items, one per knee to generate.

    ``side``: "left", "right", "both" (or "LEFT" / "RIGHT" / None): a bilateral film gives both knees unless
    one is asked for, a unilateral film its own knee. Each item holds the film under ``keys`` (a copy), ``side``
    (RIGHT / LEFT, RIGHT when a unilateral film does not say) and ``film`` (BILATERAL or the side) for
    ``SelectKneed``, ``knee_side`` (None when the film does not say), ``film_info`` (the film's reading, for
    the sidecar) and ``source_info`` (DICOM keywords carried to the generated series). The transforms after
    it in a ``Compose`` run on every item.
    """

    def __init__(self, keys: KeysCollection = "xray", side: str | None = "both",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"SplitKneesd splits one film, got keys {self.keys}")
        self.side = _requested_side(side)

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        d = dict(data)
        key = self.keys[0]
        film = d[key]
        kind, sides = _film_sides(film, self.side)
        meta = film.meta
        film_info = {
            "film": kind,
            "film_laterality": meta.get("laterality") or None,
            "modality": meta.get("modality") or None,
            "photometric": meta.get("photometric"),
            "film_spacing_mm": list(meta.get("film_spacing", ())),
            "film_spacing_source": meta.get("spacing_source"),
            "film_magnification": meta.get("magnification"),
            "film_magnification_source": meta.get("magnification_source"),
        }
        source_info = _dicom_source_info(Path(str(meta.get("filename_or_obj", ""))))
        items = []
        for knee_side in sides:
            extra = dict(source_info)
            if knee_side:
                extra["Laterality"] = knee_side[0]
            film_key = "BILATERAL" if kind == "bilateral" else (knee_side or "RIGHT")
            items.append({**d, key: film.clone(), "side": knee_side or "RIGHT", "film": film_key,
                          "knee_side": knee_side, "film_info": dict(film_info), "source_info": extra})
        return items


def knee_preprocessing(
    side: str | None = "both", image_size: int = 256, png_spacing_mm: float | None = None,
) -> Compose:
    """The inference X-ray chain, ``{"xray": path}`` -> one item per knee: ``preprocessing`` of
    ``configs/inference.json``, built from the packaged config with ``side``, ``image_size`` and
    ``png_spacing_mm`` as its settings. load -> split knees -> invert MONOCHROME1 -> select knee -> locate joint
    -> 140 mm crop resized to ``image_size`` -> percentiles (0.5, 99.5) to [-1, 1]: the training X-ray chain
    without the intensity code."""
    from xray2mri_bundle.data.bundle_configs import parse_config

    return parse_config("inference.json", "preprocessing",
                        {"side": side, "image_size": int(image_size), "png_spacing_mm": png_spacing_mm})


def knee_input(item: Mapping[Hashable, Any], key: str = "xray") -> KneeInput:
    """One output item of :func:`knee_preprocessing` -> :class:`KneeInput` (the crop as a plain float tensor)."""
    crop = item[key]
    meta = dict(getattr(crop, "meta", {}))
    info = {
        **item["film_info"],
        "joint_rc_px": list(meta.get("joint_rc", ())),
        "crop_box_px": list(meta.get("crop_box", ())),
        "crop_mm": meta.get("frame_mm"),
        "crop_size_px": int(crop.shape[-1]),
    }
    path = Path(str(meta.get("filename_or_obj", "")))
    return KneeInput(path, item["knee_side"], torch.as_tensor(crop).as_subclass(torch.Tensor).float(), info,
                     dict(item["source_info"]))


def root_cause(exc: BaseException) -> BaseException:
    """The exception a MONAI transform raised, without ``Compose``'s "applying transform ..." wrappers."""
    while isinstance(exc, RuntimeError) and str(exc).startswith("applying transform") and exc.__cause__:
        exc = exc.__cause__
    return exc


def prepare_knees(
    path: str | os.PathLike, side: str | None = None, image_size: int = 256, png_spacing_mm: float | None = None
) -> list[KneeInput]:
    """Load, validate and crop the knee(s) of one X-ray file with the training preprocessing
    (:func:`knee_preprocessing`).

    side: "RIGHT", "LEFT" or None (a bilateral film gives both knees, a unilateral film its own knee).
    Raises ``InvalidXrayError`` (naming the file) for unusable input.
    """
    chain = knee_preprocessing(side, image_size, png_spacing_mm)
    try:
        items = chain({"xray": str(Path(path))})
    except RuntimeError as exc:
        cause = root_cause(exc)
        if cause is exc:
            raise
        raise cause from None
    return [knee_input(item) for item in items]
