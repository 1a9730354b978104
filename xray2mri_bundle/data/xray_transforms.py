"""MONAI transforms for the X-ray side: load, invert MONOCHROME1, pick the knee, locate the joint, crop, scale.

Images are ``MetaTensor`` (1, H, W): H = film rows (superior -> inferior), W = film columns. In a PA film the
patient's RIGHT knee is on the image LEFT half. Steps keep their bookkeeping in ``meta`` (film pixels):
``spacing`` (row, col) mm of the current array in the knee's plane (the film's detector spacing divided by its
magnification, see :mod:`.xray_io`), ``film_spacing`` (the same for the whole film), ``detector_spacing``,
``magnification``, ``photometric``, ``laterality``,
``knee_region`` [c0, c1), ``joint_rc`` (row, col), ``crop_box`` [r0, c0, r1, c1).

:func:`xray_transforms` builds the bundle's chain, ``xray_preprocessing`` (and ``xray_intensity_code``) of
``configs/common.json``: load -> invert MONOCHROME1 -> select knee -> locate joint -> 140 mm square of the
patient (:data:`~.frame.FRAME_MM`, the film's magnification removed) around the joint, the frame the MRI is
cropped to as well (:mod:`.mri_transforms`), resized to 256 -> percentiles (0.5, 99.5) to [-1, 1] (clipped) ->
intensity distribution ``intensity`` (16, 8, 8).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from .bundle_configs import given, parse_config
from .frame import FRAME_MM, crop_frame, frame_box
from .localiser import ClassicalJointLocaliser, JointLocaliser
from .xray_io import DEFAULT_PNG_SPACING_MM, InvalidXrayError, read_xray

__all__ = [
    "CROP_MM",
    "CropJoint",
    "CropJointd",
    "InvertMonochrome1",
    "InvertMonochrome1d",
    "LoadXray",
    "LoadXrayd",
    "LocaliseJoint",
    "LocaliseJointd",
    "SelectKnee",
    "SelectKneed",
    "xray_transforms",
]

#: Side of the square knee crop in the patient's plane (mm): the joint-centred frame shared with the MRI.
CROP_MM: float = FRAME_MM
_BILATERAL_ASPECT = 1.0  # an unlabelled landscape film (width > height) is taken as bilateral


def _with_meta(data: torch.Tensor, like: torch.Tensor | None, **updates) -> MetaTensor:
    meta = dict(like.meta) if isinstance(like, MetaTensor) else {}
    meta.update(updates)
    return MetaTensor(data, meta=meta)


def _meta(img: torch.Tensor) -> dict:
    return img.meta if isinstance(img, MetaTensor) else {}


def _plain(img: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(img)
    return t.as_subclass(torch.Tensor) if isinstance(t, MetaTensor) else t


class LoadXray(Transform):
    """Path -> MetaTensor (1, H, W) float32 film as stored (rescale applied, not inverted).

    DICOM (DX / CR), PNG (or another Pillow raster) and 2-D NIfTI. ``png_spacing_mm``: spacing assumed for
    uncalibrated files (None or default: 140/299 mm). Raises :class:`~.xray_io.InvalidXrayError` naming the file.
    """

    def __init__(self, png_spacing_mm: float | None = DEFAULT_PNG_SPACING_MM, nifti_axes: str = "xy") -> None:
        spacing = DEFAULT_PNG_SPACING_MM if png_spacing_mm is None else float(png_spacing_mm)
        self.png_spacing_mm, self.nifti_axes = spacing, nifti_axes

    def __call__(self, path: str) -> MetaTensor:
        film = read_xray(path, self.png_spacing_mm, self.nifti_axes)
        return _with_meta(
            torch.from_numpy(film.pixels)[None], None, filename_or_obj=film.source, spacing=film.spacing_mm,
            film_spacing=film.spacing_mm, detector_spacing=film.detector_spacing_mm,
            spacing_source=film.spacing_source, magnification=film.magnification,
            magnification_source=film.magnification_source, photometric=film.photometric,
            modality=film.modality, description=film.description, laterality=film.laterality or "",
            film_shape=tuple(film.pixels.shape),
        )


class InvertMonochrome1(Transform):
    """Invert a MONOCHROME1 film (high value = dark) so that bone is bright: ``x -> max + min - x``;
    meta ``photometric`` becomes MONOCHROME2 (``inverted`` True). Other films pass unchanged."""

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if str(_meta(img).get("photometric", "")).upper() != "MONOCHROME1":
            return img
        x = _plain(img)
        return _with_meta(x.max() + x.min() - x, img, photometric="MONOCHROME2", inverted=True)


class SelectKnee(Transform):
    """Record which film columns hold the requested knee: meta ``knee_region`` = [c0, c1), ``side``.

    Bilateral PA film: the patient's RIGHT knee is on the image LEFT half. ``film``: 'auto' (DICOM
    description / laterality, else bilateral when the film is landscape, width > height), 'bilateral' or
    'unilateral'.
    Pixels are not cut, so a crop near the midline still sees real film.
    """

    def __init__(self, film: str = "auto") -> None:
        if film not in ("auto", "bilateral", "unilateral"):
            raise ValueError(f"film must be 'auto', 'bilateral' or 'unilateral', got {film!r}")
        self.film = film

    def __call__(self, img: torch.Tensor, side: str, film: str | None = None) -> torch.Tensor:
        side = str(side).upper()
        if side not in ("RIGHT", "LEFT"):
            raise ValueError(f"side must be RIGHT or LEFT, got {side!r}")
        h, w = img.shape[-2:]
        laterality = str(_meta(img).get("laterality", "") or "").upper()
        mode = (film or self.film).lower()
        if mode == "auto":
            if laterality == "BILATERAL":
                mode = "bilateral"
            elif laterality in ("RIGHT", "LEFT"):
                mode = "unilateral"
            else:
                mode = "bilateral" if w > _BILATERAL_ASPECT * h else "unilateral"
        if mode == "unilateral":
            if laterality in ("RIGHT", "LEFT") and laterality != side:
                raise InvalidXrayError(_meta(img).get("filename_or_obj", "<array>"),
                                       f"film shows the {laterality} knee, {side} requested", "side_mismatch")
            region = (0, w)
        else:
            region = (0, w // 2) if side == "RIGHT" else (w // 2, w)
        return _with_meta(_plain(img), img, knee_region=region, side=side, film=mode)


class LocaliseJoint(Transform):
    """Find the knee-joint centre inside meta ``knee_region`` with a :class:`~.localiser.JointLocaliser`
    (default: the classical, weight-free one); sets meta ``joint_rc`` (row, col) in film pixels."""

    def __init__(self, localiser: JointLocaliser | None = None) -> None:
        self.localiser = localiser if localiser is not None else ClassicalJointLocaliser()

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        meta = _meta(img)
        c0, c1 = meta.get("knee_region", (0, img.shape[-1]))
        half = _plain(img)[0, :, c0:c1].numpy()
        row, col = self.localiser(half, tuple(meta.get("spacing", (1.0, 1.0))))
        return _with_meta(_plain(img), img, joint_rc=(float(row), float(col) + c0))


class CropJoint(Transform):
    """Crop a ``size_mm`` square (physical, default 140 mm) centred on meta ``joint_rc`` and resample it to
    ``spatial_size`` (default 256): (1, H, W) film -> (1, N, N). Beyond the film edge the film minimum is used.
    Meta: ``crop_box`` [r0, c0, r1, c1) film pixels, ``spacing`` = size_mm / N per output pixel, ``frame_padded``
    (the box left the film)."""

    def __init__(self, size_mm: float = CROP_MM, spatial_size: int = 256, antialias: bool = True) -> None:
        self.size_mm, self.spatial_size, self.antialias = float(size_mm), int(spatial_size), antialias

    def box(self, joint_rc: tuple[float, float], spacing: tuple[float, float]) -> tuple[int, int, int, int]:
        """Integer film box [r0, c0, r1, c1) of the crop around ``joint_rc`` for (row, col) ``spacing`` mm."""
        return frame_box(joint_rc, spacing, self.size_mm)

    def __call__(self, img: torch.Tensor, joint_rc: tuple[float, float] | None = None) -> torch.Tensor:
        meta = _meta(img)
        joint_rc = joint_rc if joint_rc is not None else meta.get("joint_rc")
        if joint_rc is None:
            raise ValueError("CropJoint needs a joint centre: run LocaliseJoint first or pass joint_rc")
        box = self.box(joint_rc, tuple(meta.get("spacing", (1.0, 1.0))))
        out, padded = crop_frame(_plain(img), box, self.spatial_size, self.antialias)
        step = self.size_mm / self.spatial_size
        return _with_meta(out, img, crop_box=box, spacing=(step, step), frame_mm=self.size_mm,
                          frame_padded=padded, joint_rc=tuple(float(v) for v in joint_rc))


class LoadXrayd(MapTransform):
    """Dictionary wrapper of :class:`LoadXray` (default key ``xray``)."""

    def __init__(self, keys: KeysCollection = "xray", png_spacing_mm: float | None = DEFAULT_PNG_SPACING_MM,
                 nifti_axes: str = "xy", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadXray(png_spacing_mm, nifti_axes)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


class InvertMonochrome1d(MapTransform):
    """Dictionary wrapper of :class:`InvertMonochrome1`."""

    def __init__(self, keys: KeysCollection = "xray", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.invert = InvertMonochrome1()

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.invert(d[key])
        return d


class SelectKneed(MapTransform):
    """Dictionary wrapper of :class:`SelectKnee`; the side comes from ``d[side_key]`` (RIGHT / LEFT) and an
    optional film type from ``d[film_key]`` (manifest column ``film``)."""

    def __init__(self, keys: KeysCollection = "xray", side_key: str = "side", film_key: str = "film",
                 film: str = "auto", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.side_key, self.film_key = side_key, film_key
        self.select = SelectKnee(film)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        film = d.get(self.film_key)
        film = {"BILATERAL": "bilateral", "RIGHT": "unilateral", "LEFT": "unilateral"}.get(str(film).upper())
        for key in self.key_iterator(d):
            d[key] = self.select(d[key], d[self.side_key], film)
        return d


class LocaliseJointd(MapTransform):
    """Dictionary wrapper of :class:`LocaliseJoint`."""

    def __init__(self, keys: KeysCollection = "xray", localiser: JointLocaliser | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.locate = LocaliseJoint(localiser)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.locate(d[key])
        return d


class CropJointd(MapTransform):
    """Dictionary wrapper of :class:`CropJoint`."""

    def __init__(self, keys: KeysCollection = "xray", size_mm: float = CROP_MM, spatial_size: int = 256,
                 antialias: bool = True, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.crop = CropJoint(size_mm, spatial_size, antialias)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.crop(d[key])
        return d


def xray_transforms(
    size: int | None = None, crop_mm: float | None = None, percentiles: tuple[float, float] | None = None,
    intensity: bool = True, localiser: JointLocaliser | None = None, png_spacing_mm: float | None = None,
) -> list:
    """The X-ray chain (key ``xray``, the knee named by ``side``) as a list of dictionary transforms (wrap in
    ``monai.transforms.Compose``): ``xray_preprocessing`` of ``configs/common.json``, then its
    ``xray_intensity_code`` unless ``intensity`` is False, built from the packaged config so that the chain is
    written once. Arguments left None keep the config's settings; the others replace them: ``size``
    (``xray_size``), ``crop_mm`` (``frame_mm``), ``percentiles`` (``intensity_percentiles``), ``localiser``
    (``xray_localiser``), ``png_spacing_mm``.

    Output: ``xray`` (1, size, size) float32 in [-1, 1]; ``intensity`` (16, 8, 8) with ``intensity``.
    Inference runs the same steps with the knees split first (``configs/inference.json``, ``inference.knees``).
    """
    overrides = given(xray_size=size, frame_mm=crop_mm, intensity_percentiles=percentiles, xray_localiser=localiser,
                      png_spacing_mm=png_spacing_mm)
    chain = list(parse_config("common.json", "xray_preprocessing", overrides))
    if intensity:
        chain.append(parse_config("common.json", "xray_intensity_code"))
    return chain
