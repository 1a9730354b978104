"""Writers of a generated pseudo-MRI volume: NIfTI, DICOM MR series, montage PNG, JSON sidecar.

Every output is SYNTHETIC and says so (NIfTI ``descrip``, DICOM SeriesDescription / ImageComments, PNG caption).

Volume layout: (H, W, S) float in [-1, 1], as ``VolumeGenerator`` returns it (torch or numpy):
- rows (H) run superior -> inferior (femur at the top),
- columns (W) run towards the patient's LEFT (the X-ray crop's direction: on a PA film the patient's right is
  on the image left; the OAI COR_T1 series has ImageOrientationPatient [1, 0, 0, 0, 0, -1], the same),
- slices (S) step anterior -> posterior.
``spacing_mm`` is (row spacing, column spacing) in mm, ``slice_spacing_mm`` the distance between slice centres
(the caller computes it from the number of generated depths).

World geometry (shared by the NIfTI and the DICOM series; ``frame``, a :class:`~xray2mri_bundle.data.frame.
WorldFrame`: by default the volume centre at the world origin with the coronal axes, or the frame found in a
reference MRI, ``xray2mri generate --reference-mri``, whose axes turn with the knee in the canonical-pose frame):
NIfTI is RAS+; with the default axes voxel (i=row, j=col, k=slice) maps with the columns of the affine
i -> (0, 0, -row mm) (inferior), j -> (-col mm, 0, 0) (left), k -> (0, -slice mm, 0) (posterior):
``nibabel.aff2axcodes`` gives ("I", "L", "P"). DICOM is LPS+: ImageOrientationPatient the LPS directions of a
row and a column ([1, 0, 0, 0, 0, -1] by default) and ImagePositionPatient of slice k = the LPS position of voxel
(0, 0, k), stepping along the slice normal (+y, posterior, by default).

Atomic writes: a file is written to a hidden temporary name in its destination folder and moved into place
with ``os.replace``; the DICOM series is written to a hidden temporary folder that is then renamed. A failure
(or a crash) before that last step leaves no output (and an existing one untouched).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gzip
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from xray2mri_bundle.constants import DISCLAIMER as SERIES_DISCLAIMER
from xray2mri_bundle.constants import MONTAGE_CAPTION
from xray2mri_bundle.constants import VOLUME_CAPTION as DISCLAIMER
from xray2mri_bundle.data.atomic import atomic_dir, write_bytes_atomic
from xray2mri_bundle.data.dicom_utils import grey_pixel_module, save_dataset
from xray2mri_bundle.data.frame import WorldFrame
from xray2mri_bundle.data.plain import to_plain

__all__ = [
    "DISCLAIMER",
    "DicomSeries",
    "coronal_affine",
    "write_dicom_series",
    "write_montage_png",
    "write_nifti",
    "write_sidecar_json",
]

_PIXEL_MAX = 4095
#: what every generated series says about itself: derived (no acquisition, "research mode"), by whom, no identity
_SYNTHETIC_MR_TAGS = {
    "ImageType": ["DERIVED", "SECONDARY"], "BurnedInAnnotation": "NO", "Manufacturer": "xray2mri_bundle (synthetic)",
    "DerivationDescription": "Pseudo-MRI synthesised by a latent diffusion model from a radiograph",
    "PatientName": "", "PatientID": "", "PatientBirthDate": "", "PatientSex": "",
    "ScanningSequence": "RM", "SequenceVariant": "NONE", "ScanOptions": "", "MRAcquisitionType": "", "EchoTime": "",
    "EchoTrainLength": "",
}
"""Stored DICOM value of +1.0 (12 bits used of 16): stored = round((v + 1) / 2 * 4095), v clipped to [-1, 1]."""
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
_RESERVED_KEYWORDS = frozenset(
    {
        "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
        "ImageType", "SeriesDescription", "ImageComments", "BurnedInAnnotation", "Modality",
        "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
        "SpacingBetweenSlices", "InstanceNumber", "Rows", "Columns", "PixelData", "BitsAllocated",
        "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation",
    }
)  # fmt: skip


# --------------------------------------------------------------------------------------------------- geometry
def _as_volume(volume: Any) -> np.ndarray:
    """(H, W, S) float32 numpy from a tensor or array; rejects other layouts."""
    if isinstance(volume, torch.Tensor):
        volume = volume.detach().cpu().numpy()
    v = np.asarray(volume, dtype=np.float32)
    if v.ndim != 3:
        raise ValueError(f"volume must be (H, W, S), got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("volume has NaN or infinite values")
    return v


def coronal_affine(
    shape: Sequence[int],
    spacing_mm: Sequence[float],
    slice_spacing_mm: float,
    frame: WorldFrame | None = None,
) -> np.ndarray:
    """RAS+ voxel-to-world affine (4, 4) of an (H, W, S) coronal stack placed in ``frame`` (default: centred at
    the world origin, coronal axes; a reference MRI's frame makes the two overlay).

    spacing_mm: (row, column) in mm; slice_spacing_mm: between slice centres. See the module docstring.
    """
    return (frame or WorldFrame()).affine(shape, spacing_mm, slice_spacing_mm)


# ------------------------------------------------------------------------------------------------ atomic I/O

def _atomic_dir(out_dir: Path, overwrite: bool) -> contextlib.AbstractContextManager[Path]:
    """A temporary folder beside ``out_dir`` that becomes ``out_dir`` on success (``data.atomic.atomic_dir``);
    a non-empty ``out_dir`` is replaced only with ``overwrite``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty (pass overwrite=True to replace it)")
    return atomic_dir(out_dir)


# ----------------------------------------------------------------------------------------------------- NIfTI
def write_nifti(
    volume: Any,
    spacing_mm: Sequence[float],
    slice_spacing_mm: float,
    path: str | os.PathLike,
    description: str | None = None,
    frame: WorldFrame | None = None,
) -> Path:
    """Write an (H, W, S) volume as float32 NIfTI-1 (``.nii`` or ``.nii.gz``) with the coronal affine.

    Values are stored unchanged (the bundle's [-1, 1]; cal_min/cal_max = -1/1 for display). qform and sform
    both carry the affine (code 1, scanner anatomical). ``descrip`` is the disclaimer, then ``description``
    (80 bytes at most).
    """
    v = _as_volume(volume)
    path = Path(path)
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise ValueError(f"NIfTI path must end with .nii or .nii.gz, got {path.name}")
    affine = coronal_affine(v.shape, spacing_mm, slice_spacing_mm, frame)
    img = nib.Nifti1Image(v, affine)
    header = img.header
    header.set_data_dtype(np.float32)
    header.set_xyzt_units(xyz="mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    header["cal_min"], header["cal_max"] = -1.0, 1.0
    text = DISCLAIMER if not description else f"{DISCLAIMER}; {description}"
    header["descrip"] = text.encode("ascii", "replace")[:80]
    data = img.to_bytes()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    return write_bytes_atomic(path, data)


# ----------------------------------------------------------------------------------------------------- DICOM
@dataclass(frozen=True)
class DicomSeries:
    """Where a series was written and its identifiers (files in InstanceNumber order)."""

    out_dir: Path
    study_instance_uid: str
    series_instance_uid: str
    files: tuple[Path, ...]


def _ds_number(value: float) -> str:
    """A DICOM decimal string (DS, at most 16 characters) for ``value``."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    return text if len(text) <= 16 else f"{value:.8g}"


def _source_items(source_info: Mapping[str, Any] | None) -> tuple[dict[str, Any], Dataset | None]:
    """Split ``source_info`` into DICOM keyword values and an optional SourceImageSequence item."""
    info = dict(source_info or {})
    src_uid = info.pop("source_sop_instance_uid", None)
    src_class = info.pop("source_sop_class_uid", None)
    for key in info:
        if tag_for_keyword(key) is None:
            raise ValueError(
                f"source_info key {key!r} is not a DICOM keyword (or source_sop_instance_uid / source_sop_class_uid)"
            )
        if key in _RESERVED_KEYWORDS:
            raise ValueError(f"source_info may not set {key!r}: the writer owns it")
    item = None
    if src_uid:
        item = Dataset()
        item.ReferencedSOPClassUID = str(src_class or "1.2.840.10008.5.1.4.1.1.1.1")  # DX image storage
        item.ReferencedSOPInstanceUID = str(src_uid)
    return info, item


#: maximum characters of the text VRs the writer copies from the source X-ray (DICOM PS3.5 table 6.2-1)
_TEXT_MAX = {"LO": 64, "SH": 16, "PN": 64}


def _fit_text_values(info: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], str]:
    """Source values made writable without losing the link to the patient: a multi-valued entry of a
    single-valued text element is joined with '_', a value longer than its VR allows is truncated, and
    returns (values, notes for ImageComments, SpecificCharacterSet: Latin-1, or UTF-8 when a value needs it)."""
    from pydicom.datadict import dictionary_VR

    out: dict[str, Any] = {}
    notes: list[str] = []
    for key, value in info.items():
        vr = dictionary_VR(key)
        if vr in _TEXT_MAX:
            if isinstance(value, (list, tuple, MultiValue)):
                value = "_".join(str(v) for v in value)
                notes.append(f"{key} had several values, joined with '_'")
            value = str(value)
            if len(value) > _TEXT_MAX[vr]:
                notes.append(f"{key} truncated from {len(value)} to {_TEXT_MAX[vr]} characters (source: {value})")
                value = value[: _TEXT_MAX[vr]]
        out[key] = value
    texts = [v for v in out.values() if isinstance(v, str)]
    try:
        for text in texts:
            text.encode("latin-1")
        charset = "ISO_IR 100"
    except UnicodeEncodeError:
        charset = "ISO_IR 192"  # UTF-8: holds any name or ID the source had
    return out, notes, charset


def write_dicom_series(
    volume: Any,
    spacing_mm: Sequence[float],
    slice_spacing_mm: float,
    out_dir: str | os.PathLike,
    source_info: Mapping[str, Any] | None = None,
    series_description: str = "Pseudo-MRI COR T1",
    series_number: int = 9001,
    study_instance_uid: str | None = None,
    overwrite: bool = False,
    frame: WorldFrame | None = None,
) -> DicomSeries:
    """Write an (H, W, S) volume in [-1, 1] as an MR series, one file per slice (``0001.dcm`` ...).

    New UIDs: one StudyInstanceUID (unless ``study_instance_uid`` is given), one SeriesInstanceUID and
    FrameOfReferenceUID, a SOPInstanceUID per slice. ImageType DERIVED/SECONDARY, BurnedInAnnotation NO,
    SeriesDescription and ImageComments say "synthetic - not for diagnosis". Pixels are uint16,
    stored = round((v + 1) / 2 * 4095) (window centre 2047.5, width 4096); geometry as the NIfTI writer.

    source_info: DICOM keywords copied to every slice (PatientID, PatientName, StudyDate, Laterality, ...);
    ``source_sop_instance_uid`` / ``source_sop_class_uid`` fill SourceImageSequence (the input X-ray).
    """
    v = _as_volume(volume)
    height, width, n_slices = v.shape
    info, source_item = _source_items(source_info)
    info, notes, charset = _fit_text_values(info)
    affine = coronal_affine(v.shape, spacing_mm, slice_spacing_mm, frame)
    row_mm, col_mm = (float(s) for s in spacing_mm)
    # LPS directions: along a row (increasing column index), down a column (increasing row index), slice normal
    along_row, along_column, normal = (_LPS_FROM_RAS @ (affine[:3, i] / np.linalg.norm(affine[:3, i]))
                                       for i in (1, 0, 2))
    pixels = np.rint((np.clip(v, -1.0, 1.0) + 1.0) * (_PIXEL_MAX / 2.0)).astype(np.uint16)

    study_uid = study_instance_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    suffix = f" ({SERIES_DISCLAIMER})"
    description = series_description[: 64 - len(suffix)] + suffix  # LO: 64 characters, disclaimer kept
    comments = f"{DISCLAIMER}. Generated from a knee X-ray by xray2mri_bundle (research use only)."
    if notes:
        comments += " " + "; ".join(notes) + "."

    # the same in every slice: identity blanked (source_info refills what the input film had), what the series is
    series_tags = {
        "SpecificCharacterSet": charset, "SOPClassUID": MRImageStorage, "Modality": "MR",
        "StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid, "FrameOfReferenceUID": frame_uid,
        "StudyDate": date, "SeriesDate": date, "ContentDate": date, "StudyTime": time, "SeriesTime": time,
        "ContentTime": time, "StudyID": "", "AccessionNumber": "", "ReferringPhysicianName": "",
        "SeriesNumber": int(series_number), "SeriesDescription": description, "ImageComments": comments,
        **_SYNTHETIC_MR_TAGS,
        "ImageOrientationPatient": [_ds_number(float(x)) for x in (*along_row, *along_column)],
        "PositionReferenceIndicator": "",
        "PixelSpacing": [_ds_number(row_mm), _ds_number(col_mm)], "SliceThickness": _ds_number(float(slice_spacing_mm)),
        "SpacingBetweenSlices": _ds_number(float(slice_spacing_mm)),
        **grey_pixel_module(height, width), "WindowCenter": _ds_number(_PIXEL_MAX / 2.0),
        "WindowWidth": _ds_number(_PIXEL_MAX + 1.0),
    }
    files = []
    with _atomic_dir(Path(out_dir), overwrite) as tmp:
        for k in range(n_slices):
            position_lps = _LPS_FROM_RAS @ (affine @ np.array([0.0, 0.0, k, 1.0]))[:3]
            sop_uid = generate_uid()
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.update({"MediaStorageSOPClassUID": MRImageStorage, "MediaStorageSOPInstanceUID": sop_uid,
                                 "TransferSyntaxUID": ExplicitVRLittleEndian,
                                 "ImplementationClassUID": PYDICOM_IMPLEMENTATION_UID})
            ds.update(series_tags)
            ds.update({"SOPInstanceUID": sop_uid, "InstanceNumber": k + 1,
                       "ImagePositionPatient": [_ds_number(x) for x in position_lps],
                       "SliceLocation": _ds_number(float(position_lps @ normal))})
            if source_item is not None:
                ds.SourceImageSequence = DicomSequence([source_item])
            for key, value in info.items():
                setattr(ds, key, value)
            ds.PixelData = np.ascontiguousarray(pixels[:, :, k]).tobytes()
            name = f"{k + 1:04d}.dcm"
            save_dataset(ds, tmp / name)
            files.append(Path(out_dir) / name)
    return DicomSeries(Path(out_dir), study_uid, series_uid, tuple(files))


# ------------------------------------------------------------------------------------------------ montage PNG
def write_montage_png(
    volume: Any,
    path: str | os.PathLike,
    n: int = 12,
    slice_spacing_mm: float | None = None,
    title: str | None = None,
) -> Path:
    """A grid of ``n`` evenly spaced slices of an (H, W, S) volume, each labelled with its index and depth.

    Depth d = k / (S - 1) in [0, 1] (the model's depth code) and, with ``slice_spacing_mm``, the distance from
    the first slice in mm. Slices are shown as stored (femur up, patient right on the image left), grey
    window [-1, 1]. The caption is ``MONTAGE_CAPTION``.
    """
    from PIL import Image, ImageDraw, ImageFont  # drawn directly: matplotlib took ~0.5 s of a 2 s volume

    v = _as_volume(volume)
    height, width, n_slices = v.shape
    picks = np.unique(np.rint(np.linspace(0, n_slices - 1, max(1, min(n, n_slices)))).astype(int))
    cols = math.ceil(math.sqrt(len(picks)))
    rows = math.ceil(len(picks) / cols)
    scale = max(1, round(200 / max(height, width)))  # tiles of about 200 px, whole pixels (nearest)
    tile_h, tile_w, label_h, pad = height * scale, width * scale, 30, 6
    font = ImageFont.load_default(size=12)
    title_font = ImageFont.load_default(size=15)
    top, bottom = 28, 26
    canvas = Image.new("RGB", (cols * (tile_w + pad) + pad, top + rows * (tile_h + label_h + pad) + bottom), "white")
    draw = ImageDraw.Draw(canvas)
    grey = np.clip(np.rint((v + 1.0) * 127.5), 0, 255).astype(np.uint8)  # window [-1, 1]
    for index, k in enumerate(picks):
        row, col = divmod(index, cols)
        x0, y0 = pad + col * (tile_w + pad), top + row * (tile_h + label_h + pad)
        depth = k / (n_slices - 1) if n_slices > 1 else 0.5
        label = f"slice {k}  d={depth:.2f}"
        if slice_spacing_mm is not None:
            label += f"  {k * float(slice_spacing_mm):.1f} mm"
        draw.text((x0, y0 + 4), label, fill="black", font=font)
        tile = Image.fromarray(grey[:, :, k]).resize((tile_w, tile_h), Image.NEAREST)
        canvas.paste(tile, (x0, y0 + label_h))
    draw.text((canvas.width // 2, 6), title or "Pseudo-MRI (coronal)", fill="black", font=title_font, anchor="ma")
    draw.text((canvas.width // 2, canvas.height - 6), MONTAGE_CAPTION, fill=(220, 0, 0),
              font=title_font, anchor="md")
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return write_bytes_atomic(Path(path), buffer.getvalue())


# ------------------------------------------------------------------------------------------------ JSON sidecar
def write_sidecar_json(path: str | os.PathLike, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as indented strict JSON, atomically.

    numpy / torch values and paths are converted; NaN and infinities become null.
    """
    text = json.dumps(to_plain(dict(data)), indent=2, allow_nan=False)
    return write_bytes_atomic(Path(path), (text + "\n").encode("utf-8"))
