"""Cheap DICOM checks shared by the MRI and X-ray readers: header reading and pixel-data completeness.

Headers are read with ``stop_before_pixels`` so that validating a whole OAI tree never decodes an image.
Completeness is checked from the Pixel Data element header and the file size, which catches a truncated
file without reading its pixels. Works with pydicom 2.4 and 3.x (only public API is used).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

__all__ = [
    "DataFileError",
    "expected_pixel_bytes",
    "grey_pixel_module",
    "is_dicom_file",
    "list_series_files",
    "read_header",
]

#: Explicit-VR value representations whose length field is 4 bytes (after 2 reserved bytes).
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_PIXEL_DATA_TAG = (0x7FE0, 0x0010)
_UNDEFINED_LENGTH = 0xFFFFFFFF
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_NON_DICOM_SUFFIXES = {".txt", ".csv", ".json", ".xml", ".md", ".png", ".jpg", ".nii", ".gz"}


class DataFileError(ValueError):
    """A data file or series that cannot be used; ``reason`` is a short code (see ``report.REASONS``),
    ``path`` the offending file or folder, ``problem`` a human sentence."""

    def __init__(self, path: str | os.PathLike, problem: str, reason: str = "unreadable_dicom") -> None:
        self.path = str(path)
        self.problem = problem
        self.reason = reason
        super().__init__(f"{self.path}: {problem}")


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when ``path`` starts with the DICOM preamble + ``DICM`` magic (bytes 128..131)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def list_series_files(folder: str | os.PathLike) -> list[Path]:
    """Files of a DICOM series folder (OAI names them 001, 002, ...): regular, non-hidden, not obvious
    non-DICOM side-cars; sorted by name only for determinism (slice order comes from positions)."""
    root = Path(folder)
    files = [
        p for p in root.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"
        and p.suffix.lower() not in _NON_DICOM_SUFFIXES
    ]
    return sorted(files)


def grey_pixel_module(rows: int, columns: int, bits_stored: int = 16, photometric: str = "MONOCHROME2") -> dict:
    """The Image Pixel module of one unsigned 16-bit grey frame (``rows`` x ``columns``), as DICOM keywords for
    ``Dataset.update``; the caller adds PixelData. Shared by the cohort's series and films and the generated
    pseudo-MRI series."""
    return {"SamplesPerPixel": 1, "PhotometricInterpretation": photometric, "Rows": int(rows), "Columns": int(columns),
            "BitsAllocated": 16, "BitsStored": int(bits_stored), "HighBit": int(bits_stored) - 1,
            "PixelRepresentation": 0}


def expected_pixel_bytes(ds: Dataset) -> int:
    """Bytes of uncompressed Pixel Data implied by Rows x Columns x SamplesPerPixel x BitsAllocated x frames."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    bits = int(ds.BitsAllocated)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    n_bits = rows * cols * samples * frames * bits
    return (n_bits + 7) // 8


def _check_pixel_element(fp, path: Path, ds: Dataset, file_size: int) -> None:
    """Parse the Pixel Data element header at the current position of ``fp`` and compare lengths."""
    head = fp.read(8)
    if len(head) < 8:
        raise DataFileError(path, "no pixel data (file ends after the header)", "unreadable_dicom")
    group, elem = struct.unpack("<HH", head[:4])
    if (group, elem) != _PIXEL_DATA_TAG:
        raise DataFileError(path, f"no pixel data (found tag ({group:04X},{elem:04X}) instead)")
    vr = head[4:6]
    if vr in _LONG_VRS:  # explicit VR, long form: 2 reserved bytes then a 4-byte length
        extra = fp.read(4)
        if len(extra) < 4:
            raise DataFileError(path, "truncated inside the Pixel Data header")
        length = struct.unpack("<I", extra)[0]
    else:  # implicit VR: 4-byte length straight after the tag
        length = struct.unpack("<I", head[4:8])[0]
    start = fp.tell()
    available = file_size - start
    if length == _UNDEFINED_LENGTH:  # encapsulated (compressed): must end with a sequence delimiter
        fp.seek(max(file_size - 8, start))
        if fp.read(8) != _SEQUENCE_DELIMITER:
            raise DataFileError(path, "encapsulated pixel data is truncated (no sequence delimiter at the end)")
        return
    if length > available:
        raise DataFileError(path, f"pixel data truncated: {available} of {length} bytes present")
    try:
        expected = expected_pixel_bytes(ds)
    except (AttributeError, TypeError, ValueError) as exc:
        raise DataFileError(path, f"image size tags missing or invalid ({exc})") from exc
    if length < expected:
        raise DataFileError(path, f"pixel data too short: {length} bytes for {expected} expected")


def _read_without_preamble(fp, path: Path) -> Dataset:
    """Files written without the 128-byte preamble are still DICOM; accept them only if they parse to an image."""
    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
    except Exception as exc:  # any parser failure means "not DICOM"
        raise DataFileError(path, f"not a DICOM file ({exc})") from exc
    if "Rows" not in ds and "SOPClassUID" not in ds:
        raise DataFileError(path, "not a DICOM file (no DICM magic and no image attributes)")
    return ds


def read_header(path: str | os.PathLike, check_pixels: bool = True) -> Dataset:
    """Read a DICOM header without pixels and (optionally) verify that the pixel data is complete.

    Raises ``DataFileError`` (reason ``unreadable_dicom``) naming the file for a missing file, a non-DICOM
    file, a header pydicom cannot parse, no Pixel Data, or a truncated Pixel Data value.
    """
    path = Path(path)
    try:
        file_size = path.stat().st_size
    except OSError as exc:
        raise DataFileError(path, f"cannot open ({exc.strerror})") from exc
    if file_size == 0:
        raise DataFileError(path, "empty file (0 bytes)")
    with open(path, "rb") as fp:
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
        except InvalidDicomError:
            ds = _read_without_preamble(fp, path)
        except Exception as exc:  # pydicom raises many types for damaged headers
            raise DataFileError(path, f"DICOM header unreadable ({type(exc).__name__}: {exc})") from exc
        if check_pixels:
            _check_pixel_element(fp, path, ds, file_size)
    return ds


def save_dataset(ds: Dataset, path: str | os.PathLike) -> None:
    """Save ``ds`` as a DICOM Part 10 file (explicit VR little endian) on pydicom 2.4 and 3.x alike.

    pydicom 3 spells it ``enforce_file_format=True``; 2.4 needs the encoding set on the dataset and
    ``write_like_original=False``. MONAI Label 0.8.5 pins pydicom 2.4.4, so both must work.
    """
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:  # pragma: no cover - exercised with pydicom 2.4 only
        ds.is_little_endian = True
        ds.is_implicit_VR = False
        ds.save_as(path, write_like_original=False)
