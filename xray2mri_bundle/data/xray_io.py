"""X-ray file I/O: DICOM (DX / CR), PNG (or another Pillow raster) and 2-D NIfTI, with clear errors.

Every problem raises :class:`InvalidXrayError` (a ``ValueError``) naming the file and the problem: a file that
is not an image, an MR / CT (or other non-radiograph) DICOM, an empty or truncated DICOM, an unusable bit
depth, a colour or multi-frame image, a blank image. The generation CLI relies on this.

DICOM films are returned in the PA display convention (patient's right on the image left, feet down); a
film whose PatientOrientation says otherwise (e.g. 'R\\F') is mirrored accordingly.
Pixel spacing (mm, (between rows, between columns)) is returned twice: ``detector_spacing_mm`` as stored
(DICOM ImagerPixelSpacing, else PixelSpacing, else the default below) and ``spacing_mm`` in the plane of the
knee, i.e. divided by the film's geometric magnification (:func:`film_magnification`): DICOM
EstimatedRadiographicMagnificationFactor, else DistanceSourceToDetector / DistanceSourceToPatient, else
:data:`DEFAULT_MAGNIFICATION`. A PixelSpacing that the file declares calibrated (PixelSpacingCalibrationType
present, no ImagerPixelSpacing) is already in the patient plane. PNG and NIfTI have no calibration:
``png_spacing_mm`` (default 140/299 mm, so that the 140 mm knee crop is the paper's 299 px crop) or the NIfTI
zooms are taken as patient-plane spacing (magnification 1).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError

from xray2mri_bundle.constants import DEFAULT_PNG_SPACING_MM  # 140 mm / 299 px for PNG files

from .dicom_utils import DataFileError, is_dicom_file, read_header

__all__ = [
    "DEFAULT_MAGNIFICATION",
    "DEFAULT_PNG_SPACING_MM",
    "RADIOGRAPH_MODALITIES",
    "InvalidXrayError",
    "XrayFilm",
    "film_laterality",
    "film_magnification",
    "inspect_xray",
    "inspect_xray_dicom",
    "read_xray",
]

#: Magnification assumed for a DICOM film without geometry tags: none (1.0), so the crop is as stated on the film.
#: A knee PA film at SID 1 m is typically magnified 5-10 %; films without tags are reported (meta
#: ``magnification_source`` 'default').
DEFAULT_MAGNIFICATION: float = 1.0
#: DICOM modalities accepted as a plain radiograph.
RADIOGRAPH_MODALITIES = frozenset({"DX", "CR", "RG", "OT"})
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


class InvalidXrayError(DataFileError):
    """The file cannot be used as a knee radiograph; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str, reason: str = "invalid_xray") -> None:
        super().__init__(path, problem, reason)


@dataclass
class XrayFilm:
    """A decoded radiograph: ``pixels`` (H, W) float32 as stored (rescale applied, NOT yet inverted)."""

    pixels: np.ndarray
    spacing_mm: tuple[float, float]
    photometric: str = "MONOCHROME2"
    modality: str = ""
    description: str = ""
    laterality: str | None = None  # "BILATERAL", "RIGHT", "LEFT" or None (unknown)
    source: str = ""
    spacing_source: str = ""
    magnification: float = 1.0  # detector size / patient-plane size; spacing_mm = detector_spacing_mm / this
    magnification_source: str = "none"

    @property
    def detector_spacing_mm(self) -> tuple[float, float]:
        """Pixel spacing as stored on the film (mm at the detector)."""
        return self.spacing_mm[0] * self.magnification, self.spacing_mm[1] * self.magnification


def film_laterality(description: str, image_laterality: str = "") -> str | None:
    """'BILATERAL' / 'RIGHT' / 'LEFT' from a SeriesDescription (OAI: 'Bilateral PA Fixed Flexion Knee',
    'PA Fixed Flexion Left Knee') or ImageLaterality (B / R / L); None when neither says."""
    desc = description.upper()
    if "BILATERAL" in desc:
        return "BILATERAL"
    if "LEFT" in desc and "RIGHT" not in desc:
        return "LEFT"
    if "RIGHT" in desc and "LEFT" not in desc:
        return "RIGHT"
    return {"B": "BILATERAL", "R": "RIGHT", "L": "LEFT"}.get(image_laterality.strip().upper())


def inspect_xray_dicom(path: str | os.PathLike, check_pixels: bool = True) -> pydicom.Dataset:
    """Header-only validation of a DICOM radiograph (no pixel decoding); returns the header.

    Raises ``InvalidXrayError`` with reason ``unreadable_dicom`` (not DICOM, truncated, no pixels),
    ``wrong_modality`` (e.g. MR, CT) or ``invalid_xray`` (bit depth, colour, multi-frame, photometric).
    """
    try:
        ds = read_header(path, check_pixels=check_pixels)
    except DataFileError as exc:
        raise InvalidXrayError(path, exc.problem, exc.reason) from exc
    modality = str(getattr(ds, "Modality", "") or "").upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        raise InvalidXrayError(path, f"modality {modality} is not a radiograph (expected DX or CR)", "wrong_modality")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        allocated, stored = int(ds.BitsAllocated), int(getattr(ds, "BitsStored", ds.BitsAllocated))
    except (AttributeError, TypeError, ValueError) as exc:
        raise InvalidXrayError(path, "image size / bit depth tags are missing", "unreadable_dicom") from exc
    if rows < 16 or cols < 16:
        raise InvalidXrayError(path, f"image is only {rows}x{cols} pixels")
    if allocated not in (8, 16, 32) or not 8 <= stored <= allocated:
        raise InvalidXrayError(
            path, f"unusable bit depth (BitsAllocated {allocated}, BitsStored {stored}; need 8..{allocated} stored)"
        )
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").upper()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InvalidXrayError(path, f"not a greyscale radiograph ({photometric}, {samples} samples per pixel)")
    if int(getattr(ds, "NumberOfFrames", 1) or 1) != 1:
        raise InvalidXrayError(path, "multi-frame DICOM; expected a single radiograph")
    return ds


def inspect_xray(path: str | os.PathLike) -> str | None:
    """Cheap validation of any supported X-ray file (DICOM header + pixel length, PNG chunks, NIfTI header).

    Returns the film laterality ('BILATERAL' / 'RIGHT' / 'LEFT' / None); raises ``InvalidXrayError``.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidXrayError(path, "file not found", "missing_file")
    name = path.name.lower()
    if name.endswith(_NIFTI_SUFFIXES):
        try:
            shape = [n for n in nib.load(str(path)).shape if n != 1]
        except Exception as exc:  # nibabel raises several types for damaged headers
            raise InvalidXrayError(path, f"NIfTI unreadable ({type(exc).__name__}: {exc})") from exc
        if len(shape) != 2:
            raise InvalidXrayError(path, f"expected a 2-D radiograph, NIfTI has shape {shape}")
        return None
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(_PNG_MAGIC) or path.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
        try:
            with Image.open(path) as img:
                mode = img.mode
                img.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise InvalidXrayError(path, f"image cannot be decoded ({exc})") from exc
        if mode == "1":
            raise InvalidXrayError(path, "unusable bit depth (1-bit black-and-white image)")
        return None
    ds = inspect_xray_dicom(path)
    description = str(getattr(ds, "SeriesDescription", "") or "")
    return film_laterality(description, str(getattr(ds, "ImageLaterality", "") or ""))


def _display_orientation(pixels: np.ndarray, orientation: object) -> np.ndarray:
    """Flip a film stored against the PA display convention (PatientOrientation 'L\\F': columns run to the
    patient's left, rows to the feet): 'R' first -> mirror columns, 'H' second -> mirror rows."""
    try:
        row_dir, col_dir = (str(v).upper() for v in orientation)
    except (TypeError, ValueError):
        return pixels
    if row_dir.startswith("R"):
        pixels = pixels[:, ::-1]
    if col_dir.startswith("H"):
        pixels = pixels[::-1, :]
    return np.ascontiguousarray(pixels)


def _dicom_spacing(ds: pydicom.Dataset, default: float) -> tuple[tuple[float, float], str]:
    for key in ("ImagerPixelSpacing", "PixelSpacing"):
        value = getattr(ds, key, None)
        try:
            spacing = (float(value[0]), float(value[1]))
        except (TypeError, ValueError, IndexError):
            continue
        if spacing[0] > 0 and spacing[1] > 0:
            return spacing, key
    return (default, default), "default"


def _positive(value: object) -> float | None:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


def film_magnification(ds: pydicom.Dataset) -> tuple[float, str]:
    """(magnification, DICOM source) of a film: EstimatedRadiographicMagnificationFactor, else
    DistanceSourceToDetector / DistanceSourceToPatient, else (:data:`DEFAULT_MAGNIFICATION`, 'default').

    Values outside [1, 2] (a magnification below 1 or implausibly large) are ignored as corrupt tags."""
    factor = _positive(getattr(ds, "EstimatedRadiographicMagnificationFactor", None))
    if factor is not None and 1.0 <= factor <= 2.0:
        return factor, "EstimatedRadiographicMagnificationFactor"
    sid = _positive(getattr(ds, "DistanceSourceToDetector", None))
    sod = _positive(getattr(ds, "DistanceSourceToPatient", None))
    if sid is not None and sod is not None and 1.0 <= sid / sod <= 2.0:
        return sid / sod, "DistanceSourceToDetector/DistanceSourceToPatient"
    return DEFAULT_MAGNIFICATION, "default"


def _read_dicom(path: Path, default_spacing: float) -> XrayFilm:
    header = inspect_xray_dicom(path)
    try:
        ds = pydicom.dcmread(path, force=True)
        pixels = ds.pixel_array
    except Exception as exc:  # decoders raise many types for corrupt data
        raise InvalidXrayError(path, f"pixel data cannot be decoded ({type(exc).__name__}: {exc})") from exc
    if pixels.ndim != 2:
        raise InvalidXrayError(path, f"expected a 2-D greyscale image, pixel array has shape {pixels.shape}")
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    spacing, source = _dicom_spacing(ds, default_spacing)
    if source == "default":
        warnings.warn(f"{path}: no ImagerPixelSpacing / PixelSpacing; assuming {default_spacing:.3f} mm", stacklevel=3)
    if source == "PixelSpacing" and getattr(ds, "PixelSpacingCalibrationType", None):
        magnification, mag_source = 1.0, "PixelSpacingCalibrationType"
    else:
        magnification, mag_source = film_magnification(ds)
        if mag_source == "default":
            warnings.warn(f"{path}: no magnification tags (EstimatedRadiographicMagnificationFactor, "
                          f"DistanceSourceToDetector / DistanceSourceToPatient); assuming {DEFAULT_MAGNIFICATION}",
                          stacklevel=3)
    description = str(getattr(header, "SeriesDescription", "") or "")
    pixels = _display_orientation(pixels, getattr(header, "PatientOrientation", None))
    return XrayFilm(
        pixels=pixels.astype(np.float32) * slope + intercept,
        spacing_mm=(spacing[0] / magnification, spacing[1] / magnification),
        magnification=magnification,
        magnification_source=mag_source,
        photometric=str(header.PhotometricInterpretation).upper(),
        modality=str(getattr(header, "Modality", "") or "").upper(),
        description=description,
        laterality=film_laterality(description, str(getattr(header, "ImageLaterality", "") or "")),
        source=str(path),
        spacing_source=source,
    )


def _read_raster(path: Path, spacing: float) -> XrayFilm:
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode == "1":
                raise InvalidXrayError(path, "unusable bit depth (1-bit black-and-white image)")
            if mode in ("I;16", "I;16B", "I;16L", "I", "F", "L"):
                pixels = np.asarray(img)
            else:  # colour / palette / alpha: take the luminance
                pixels = np.asarray(img.convert("L"))
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise InvalidXrayError(path, f"image cannot be decoded ({exc})") from exc
    return XrayFilm(
        pixels=pixels.astype(np.float32), spacing_mm=(spacing, spacing), modality="", description="",
        source=str(path), spacing_source="default",
    )


def _read_nifti(path: Path, nifti_axes: str) -> XrayFilm:
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj).astype(np.float32)
        zooms = [float(z) for z in img.header.get_zooms()[:2]]
    except Exception as exc:  # nibabel raises several types for damaged files
        raise InvalidXrayError(path, f"NIfTI unreadable ({type(exc).__name__}: {exc})") from exc
    data = np.squeeze(data)
    if data.ndim != 2:
        raise InvalidXrayError(path, f"expected a 2-D radiograph, NIfTI has shape {data.shape}")
    if nifti_axes == "xy":  # axis 0 = x (columns), axis 1 = y (rows), as ITK / MONAI write 2-D images
        data, zooms = data.T, zooms[::-1]
    elif nifti_axes != "rc":
        raise ValueError(f"nifti_axes must be 'xy' or 'rc', got {nifti_axes!r}")
    return XrayFilm(pixels=np.ascontiguousarray(data), spacing_mm=(zooms[0], zooms[1]), source=str(path),
                    spacing_source="nifti")


def read_xray(
    path: str | os.PathLike, png_spacing_mm: float = DEFAULT_PNG_SPACING_MM, nifti_axes: str = "xy"
) -> XrayFilm:
    """Read a radiograph file. ``nifti_axes``: 'xy' (axis 0 = columns, ITK / MONAI writers) or 'rc'.

    Raises :class:`InvalidXrayError` naming the file for every unusable input.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidXrayError(path, "file not found", "missing_xray")
    with open(path, "rb") as f:
        head = f.read(132)
    if not head:
        raise InvalidXrayError(path, "empty file (0 bytes)", "unreadable_dicom")
    if path.name.lower().endswith(_NIFTI_SUFFIXES):
        film = _read_nifti(path, nifti_axes)
    elif head.startswith(_PNG_MAGIC) or path.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
        film = _read_raster(path, png_spacing_mm)
    elif is_dicom_file(path) or path.suffix.lower() in ("", ".dcm", ".dicom"):
        film = _read_dicom(path, png_spacing_mm)
    else:
        raise InvalidXrayError(path, "not a DICOM, PNG or NIfTI image", "invalid_xray")
    if film.pixels.shape[0] < 16 or film.pixels.shape[1] < 16:
        raise InvalidXrayError(path, f"image is only {film.pixels.shape[0]}x{film.pixels.shape[1]} pixels")
    if not np.isfinite(film.pixels).all():
        raise InvalidXrayError(path, "image contains NaN or infinite values")
    if float(film.pixels.max()) == float(film.pixels.min()):
        raise InvalidXrayError(path, "image is blank (all pixels have the same value)")
    return film
