"""MRI series I/O: validate a DICOM series cheaply, read it as a volume ordered by slice position, read NIfTI,
and reorient any volume to the project's coronal convention.

Coronal convention (array axes, nibabel axis codes ``("I", "L", "P")``):
axis 0 = rows, superior -> inferior; axis 1 = columns, patient right -> left (radiological display, the same
as a PA radiograph); axis 2 = depth, anterior -> posterior. For OAI's COR_T1_3D_FLASH
(ImageOrientationPatient [1,0,0, 0,0,-1]) this is the stored pixel grid with slices sorted by
ImagePositionPatient projected on the slice normal (ascending), i.e. no flip at all.
Affines are 4x4 RAS (MONAI / nibabel convention) mapping (row, col, slice) indices to millimetres.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from nibabel import orientations as nio

from .dicom_utils import DataFileError, list_series_files, read_header

__all__ = [
    "CORONAL_AXCODES", "SeriesInfo", "header_side", "inspect_nifti_mri", "inspect_series", "load_mri_volume",
    "read_series_volume", "reorient", "series_geometry",
]

CORONAL_AXCODES: tuple[str, str, str] = ("I", "L", "P")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class SeriesInfo:
    """Geometry of a validated DICOM series. ``files`` are ordered by position along ``normal`` (ascending)."""

    folder: Path
    files: list[Path]
    positions_mm: np.ndarray  # (n,) projection of ImagePositionPatient on the normal
    row_cosine: np.ndarray  # (3,) LPS direction of increasing column index (IOP[:3])
    col_cosine: np.ndarray  # (3,) LPS direction of increasing row index (IOP[3:])
    pixel_spacing: tuple[float, float]  # (between rows, between columns) in mm
    slice_step_mm: float
    shape: tuple[int, int, int]  # (rows, cols, slices)
    origin_lps: np.ndarray  # (3,) ImagePositionPatient of the first ordered slice
    description: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_cosine, self.col_cosine)

    def affine_ras(self) -> np.ndarray:
        """4x4 RAS affine of the (row, col, slice) array read by :func:`read_series_volume`."""
        aff = np.eye(4)
        aff[:3, 0] = self.col_cosine * self.pixel_spacing[0]
        aff[:3, 1] = self.row_cosine * self.pixel_spacing[1]
        aff[:3, 2] = self.normal * self.slice_step_mm
        aff[:3, 3] = self.origin_lps
        return _LPS_TO_RAS @ aff


def header_side(ds: pydicom.Dataset) -> str | None:
    """'RIGHT' / 'LEFT' from (Image)Laterality or a side word in SeriesDescription, else None."""
    for key in ("ImageLaterality", "Laterality"):
        value = str(getattr(ds, key, "") or "").strip().upper()
        if value in ("R", "L"):
            return "RIGHT" if value == "R" else "LEFT"
    desc = str(getattr(ds, "SeriesDescription", "") or "").upper()
    has_right, has_left = "RIGHT" in desc, "LEFT" in desc
    if has_right != has_left:
        return "RIGHT" if has_right else "LEFT"
    return None


def _floats(ds: pydicom.Dataset, key: str, n: int, path: Path) -> np.ndarray:
    value = getattr(ds, key, None)
    try:
        arr = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError) as exc:
        raise DataFileError(path, f"{key} missing or not numeric", "inconsistent_geometry") from exc
    if arr.shape != (n,):
        raise DataFileError(path, f"{key} has {arr.size} values, expected {n}", "inconsistent_geometry")
    return arr


def inspect_series(
    folder: str | os.PathLike,
    expected_slices: int | None = 80,
    modality: str | None = "MR",
    expected_side: str | None = None,
    check_pixels: bool = True,
    tol_mm: float = 0.05,
) -> SeriesInfo:
    """Validate a DICOM series from headers only (plus a pixel-length check per file) and return its geometry.

    Raises ``DataFileError`` with ``reason`` one of: ``missing_mri`` (folder absent or empty),
    ``unreadable_dicom``, ``wrong_modality``, ``slice_count``, ``inconsistent_geometry``, ``side_mismatch``.
    ``tol_mm``: tolerance for equal orientation / spacing and for uniform slice steps.
    """
    folder = Path(folder)
    files = _series_files(folder)
    headers = [read_header(f, check_pixels=check_pixels) for f in files]
    return series_geometry(folder, files, headers, expected_slices, modality, expected_side, tol_mm)


def _series_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataFileError(folder, "series folder not found", "missing_mri")
    files = list_series_files(folder)
    if not files:
        raise DataFileError(folder, "series folder holds no files", "missing_mri")
    return files


def series_geometry(
    folder: Path, files: list[Path], headers: list[pydicom.Dataset], expected_slices: int | None = 80,
    modality: str | None = "MR", expected_side: str | None = None, tol_mm: float = 0.05,
) -> SeriesInfo:
    """Check and describe the geometry of already-read ``headers`` (one per file); see :func:`inspect_series`."""
    first = headers[0]
    found_modality = str(getattr(first, "Modality", "") or "").upper()
    if modality is not None and found_modality and found_modality != modality.upper():
        raise DataFileError(files[0], f"modality {found_modality}, expected {modality}", "wrong_modality")
    if expected_side is not None:
        sides = {header_side(ds) for ds in headers[:1] + headers[-1:]} - {None}
        if sides and sides != {expected_side.upper()}:
            raise DataFileError(
                folder, f"DICOM header says {'/'.join(sorted(sides))}, index expects {expected_side.upper()}",
                "side_mismatch",
            )
    if expected_slices is not None and len(files) != expected_slices:
        raise DataFileError(folder, f"{len(files)} slices, expected {expected_slices}", "slice_count")

    iop0 = _floats(first, "ImageOrientationPatient", 6, files[0])
    ps0 = _floats(first, "PixelSpacing", 2, files[0])
    size0 = (int(first.Rows), int(first.Columns))
    positions = []
    for path, ds in zip(files, headers, strict=True):
        iop = _floats(ds, "ImageOrientationPatient", 6, path)
        ps = _floats(ds, "PixelSpacing", 2, path)
        if np.abs(iop - iop0).max() > 1e-3:
            raise DataFileError(path, "ImageOrientationPatient differs within the series", "inconsistent_geometry")
        if np.abs(ps - ps0).max() > tol_mm * 0.1 or (int(ds.Rows), int(ds.Columns)) != size0:
            raise DataFileError(path, "pixel spacing or matrix differs within the series", "inconsistent_geometry")
        positions.append(_floats(ds, "ImagePositionPatient", 3, path))
    row_cos, col_cos = iop0[:3], iop0[3:]
    normal = np.cross(row_cos, col_cos)
    if np.linalg.norm(normal) < 0.5:
        raise DataFileError(files[0], "ImageOrientationPatient is degenerate", "inconsistent_geometry")
    pos = np.stack(positions)
    proj = pos @ normal
    order = np.argsort(proj, kind="stable")
    proj = proj[order]
    info = SeriesInfo(
        folder=folder, files=[files[i] for i in order], positions_mm=proj, row_cosine=row_cos, col_cosine=col_cos,
        pixel_spacing=(float(ps0[0]), float(ps0[1])), slice_step_mm=0.0, shape=(*size0, len(files)),
        origin_lps=pos[order[0]], description=str(getattr(first, "SeriesDescription", "") or ""),
    )
    if len(files) > 1:
        steps = np.diff(proj)
        if steps.min() < tol_mm:
            raise DataFileError(folder, "two slices share one position", "inconsistent_geometry")
        step = float(np.median(steps))
        if np.abs(steps - step).max() > max(tol_mm, 0.01 * step):
            raise DataFileError(
                folder, f"slice steps vary from {steps.min():.3f} to {steps.max():.3f} mm", "inconsistent_geometry"
            )
        # in-plane offset between slices must be ~0 (no shear, no mixed stacks)
        inplane = (pos[order] - pos[order[0]]) - np.outer(proj - proj[0], normal)
        if np.abs(inplane).max() > max(0.5, 0.1 * step):
            raise DataFileError(folder, "slice origins are not on one line along the normal", "inconsistent_geometry")
        info.slice_step_mm = step
        declared = getattr(first, "SpacingBetweenSlices", None) or getattr(first, "SliceThickness", None)
        if declared is not None and abs(float(declared) - step) > 0.1 * step:
            info.warnings.append(f"slice step {step:.3f} mm differs from header {float(declared):.3f} mm")
    else:
        info.slice_step_mm = float(getattr(first, "SliceThickness", 1.0) or 1.0)
    return info


def inspect_nifti_mri(path: str | os.PathLike, expected_slices: int | None = 80) -> tuple[int, int, int]:
    """Header-only check of a NIfTI MRI: 3-D, complete (uncompressed .nii: file size), slice count along the
    anterior-posterior axis. Returns the coronal shape (H, W, D); raises ``DataFileError``."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(path, "file not found", "missing_file")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for damaged headers
        raise DataFileError(path, f"NIfTI unreadable ({type(exc).__name__}: {exc})", "unreadable_dicom") from exc
    shape = tuple(int(n) for n in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise DataFileError(path, f"expected a 3-D MRI volume, got shape {shape}", "inconsistent_geometry")
    if path.suffix.lower() == ".nii":
        header = img.header
        needed = int(header.get_data_offset()) + int(np.prod(shape)) * header.get_data_dtype().itemsize
        if path.stat().st_size < needed:
            raise DataFileError(path, f"NIfTI truncated: {path.stat().st_size} of {needed} bytes", "unreadable_dicom")
    ornt = nio.io_orientation(np.asarray(img.affine, dtype=float))
    depth_axis = int(np.flatnonzero(ornt[:, 0] == 1)[0])  # the array axis that maps to anterior-posterior
    rows_axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])
    cols_axis = int(np.flatnonzero(ornt[:, 0] == 0)[0])
    coronal = (shape[rows_axis], shape[cols_axis], shape[depth_axis])
    if expected_slices is not None and coronal[2] != expected_slices:
        raise DataFileError(path, f"{coronal[2]} slices, expected {expected_slices}", "slice_count")
    return coronal


def _read_full(path: Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, force=True)
    except Exception as exc:  # pydicom raises many types for damaged files
        raise DataFileError(path, f"DICOM unreadable ({type(exc).__name__}: {exc})") from exc


def read_series_volume(info: SeriesInfo, datasets: dict[Path, pydicom.Dataset] | None = None) -> np.ndarray:
    """Pixels of a validated series as float32 (rows, cols, slices), slices in ``info.files`` order,
    with RescaleSlope / RescaleIntercept applied. ``datasets``: files already read in full. Errors name the file."""
    vol = np.empty(info.shape, dtype=np.float32)
    for k, path in enumerate(info.files):
        ds = datasets[path] if datasets and path in datasets else _read_full(path)
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # decoder / truncation errors of any type
            raise DataFileError(path, f"pixel data cannot be decoded ({type(exc).__name__}: {exc})") from exc
        if pixels.shape != info.shape[:2]:
            raise DataFileError(path, f"pixel array {pixels.shape}, expected {info.shape[:2]}", "inconsistent_geometry")
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        vol[:, :, k] = pixels.astype(np.float32) * slope + intercept
    return vol


def reorient(
    data: np.ndarray, affine_ras: np.ndarray, axcodes: tuple[str, str, str] = CORONAL_AXCODES
) -> tuple[np.ndarray, np.ndarray]:
    """Permute / flip a 3-D ``data`` (no resampling) so its axes point to ``axcodes``; returns (data, affine)."""
    current = nio.io_orientation(affine_ras)
    transform = nio.ornt_transform(current, nio.axcodes2ornt(axcodes))
    out = nio.apply_orientation(data, transform)
    new_affine = affine_ras @ nio.inv_ornt_aff(transform, data.shape)
    return np.ascontiguousarray(out), new_affine


def _load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj).astype(np.float32)
    except Exception as exc:  # nibabel raises several types for damaged files
        raise DataFileError(path, f"NIfTI unreadable ({type(exc).__name__}: {exc})") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataFileError(path, f"expected a 3-D MRI volume, got shape {data.shape}")
    return data, np.asarray(img.affine, dtype=float)


def load_mri_volume(
    path: str | os.PathLike, expected_slices: int | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Load an MRI series folder (DICOM) or a NIfTI file, oriented coronal (rows S->I, cols R->L, depth A->P).

    Returns ``(volume (H, W, D) float32, affine (4, 4) RAS, info)``; ``info`` has ``spacing`` (H, W, D) in mm,
    ``source`` and ``description``. ``expected_slices`` (e.g. 80) is checked when given.
    """
    path = Path(path)
    if path.is_file() and path.name.lower().endswith(_NIFTI_SUFFIXES):
        data, affine = _load_nifti(path)
        description = ""
    elif path.is_dir():  # each file is read once: geometry from the full datasets, then their pixels
        files = _series_files(path)
        datasets = {f: _read_full(f) for f in files}
        series = series_geometry(path, files, [datasets[f] for f in files], expected_slices=None, modality=None)
        data, affine = read_series_volume(series, datasets), series.affine_ras()
        description = series.description
    else:
        raise DataFileError(path, "MRI path is neither a DICOM series folder nor a .nii/.nii.gz file", "missing_mri")
    data, affine = reorient(data, affine)
    if expected_slices is not None and data.shape[2] != expected_slices:
        raise DataFileError(path, f"{data.shape[2]} slices, expected {expected_slices}", "slice_count")
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    return data, affine, {"spacing": spacing, "source": str(path), "description": description}
