"""Write the synthetic MRI series and films as DICOM Part 10 files (pydicom 2.4 and 3.x).

Every file says it is synthetic: PatientName ``SYNTHETIC^KNEE``, ImageComments, Manufacturer and
InstitutionName. UIDs are derived from the cohort seed (``generate_uid`` with entropy sources), so a cohort
is byte-for-byte reproducible. Decimal strings are written with fixed precision to stay within the DS
length limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from xray2mri_bundle.constants.geometry import CORONAL_ORIENTATION_LPS
from xray2mri_bundle.data.dicom_utils import grey_pixel_module, save_dataset

SYNTHETIC_COMMENT = "SYNTHETIC phantom - not patient data"
PATIENT_NAME = "SYNTHETIC^KNEE"
MANUFACTURER = "SYNTHETIC (xray2mri_bundle cohort generator)"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
_IMPLEMENTATION_UID = generate_uid(entropy_srcs=["xray2mri_bundle", "cohort", "implementation"])


def cohort_uid(seed: int, *parts: object) -> str:
    """Deterministic UID for one object of the cohort (seed + a path of names/numbers)."""
    return str(generate_uid(entropy_srcs=["xray2mri_bundle-cohort", str(seed), *map(str, parts)]))


def ds_str(value: float, decimals: int = 4) -> str:
    """A DS (decimal string) value with fixed precision (at most 16 characters)."""
    text = f"{value:.{decimals}f}"
    return "0." + "0" * decimals if text.lstrip("-") == "0." + "0" * decimals else text


def _file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _IMPLEMENTATION_UID
    meta.ImplementationVersionName = "XRAY2MRI_COHORT"
    return meta


def _file_dataset(path: Path, sop_class: str, sop_instance: str) -> FileDataset:
    ds = FileDataset(str(path), Dataset(), file_meta=_file_meta(sop_class, sop_instance), preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    return ds



def _buffer() -> DicomBytesIO:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    return fp


def _encode_elements(ds: Dataset) -> list[tuple[int, bytes]]:
    """Each element of ``ds`` encoded alone (explicit VR little endian), with its tag, in tag order."""
    out = []
    for elem in ds:
        fp = _buffer()
        write_data_element(fp, elem)
        out.append((int(elem.tag), fp.getvalue()))
    return out


def _part10_bytes(meta: FileMetaDataset, common: list[tuple[int, bytes]], own: Dataset) -> bytes:
    """A Part 10 file: preamble, file meta, then the pre-encoded ``common`` and this file's ``own`` elements
    merged in tag order (a slice of a series differs from its neighbours only in a few elements)."""
    fp = _buffer()
    write_file_meta_info(fp, meta, enforce_standard=True)
    merged = sorted(common + _encode_elements(own), key=lambda item: item[0])
    return b"".join([b"\0" * 128, b"DICM", fp.getvalue(), *(data for _, data in merged)])


@dataclass(frozen=True)
class Patient:
    """Study-level identity shared by a subject's series (all synthetic)."""

    participant_id: str
    sex: str
    age: int


@dataclass(frozen=True)
class SeriesInfo:
    """One series: where and when, and the UIDs (derived from the seed)."""

    study_uid: str
    series_uid: str
    frame_uid: str
    series_number: int
    date: str  # YYYYMMDD
    time: str  # HHMMSS
    description: str
    institution: str


def _common(ds: Dataset, patient: Patient, series: SeriesInfo, modality: str) -> None:
    """Patient, study and series tags every file of the cohort carries (all synthetic, says ImageComments)."""
    ds.update({"SpecificCharacterSet": "ISO_IR 100", "Modality": modality, "Manufacturer": MANUFACTURER,
               "InstitutionName": series.institution, "BurnedInAnnotation": "NO", "ImageComments": SYNTHETIC_COMMENT})
    for tag in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        setattr(ds, tag, series.date)
    for tag in ("StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime"):
        setattr(ds, tag, series.time)
    ds.update({"PatientName": PATIENT_NAME, "PatientID": patient.participant_id, "PatientBirthDate": "",
               "PatientSex": patient.sex, "PatientAge": f"{patient.age:03d}Y", "BodyPartExamined": "KNEE"})
    ds.update({"StudyInstanceUID": series.study_uid, "StudyID": "1", "AccessionNumber": "",
               "ReferringPhysicianName": "", "StudyDescription": "OAI-like baseline knee (synthetic)"})
    ds.update({"SeriesInstanceUID": series.series_uid, "SeriesNumber": series.series_number,
               "SeriesDescription": series.description, "ProtocolName": series.description})


def _pixel_data(ds: Dataset, image: np.ndarray) -> None:
    """PixelData (OW) of one uint16 frame."""
    ds.add_new(0x7FE00010, "OW", np.ascontiguousarray(image, dtype="<u2").tobytes())


def write_mr_series(folder: Path, volume: np.ndarray, patient: Patient, series: SeriesInfo, *, seed: int,
                    laterality: str, pixel_mm: float, x0: float, y0: float, z0: float, slice_mm: float,
                    acquisition_order: Sequence[int]) -> list[Path]:
    """Write a coronal series: ``volume`` (S, N, N) uint16 ordered by position (index k at y0 + k * slice_mm).

    ``acquisition_order[i]`` is the position index of instance ``i + 1``; files are named 001, 002, ...
    by instance number, so file order follows acquisition, not position.
    """
    folder.mkdir(parents=True, exist_ok=True)
    base = Dataset()
    _common(base, patient, series, "MR")
    # a 3 T 3-D gradient-echo (OAI's coronal T1 FLASH-like) acquisition, as the header of a real series states it
    base.update({"ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"], "Laterality": laterality, "ScanningSequence": "GR",
                 "SequenceVariant": ["SP", "OSP"], "ScanOptions": "", "MRAcquisitionType": "3D",
                 "SequenceName": "*fl3d1", "RepetitionTime": "20.00", "EchoTime": "7.57", "NumberOfAverages": "1",
                 "ImagingFrequency": "123.2", "ImagedNucleus": "1H", "MagneticFieldStrength": "3",
                 "EchoTrainLength": 1, "FlipAngle": "12", "PatientPosition": "FFS", "AcquisitionNumber": 1})
    base.update({"SliceThickness": ds_str(slice_mm, 2), "SpacingBetweenSlices": ds_str(slice_mm, 2),
                 "ImageOrientationPatient": list(CORONAL_ORIENTATION_LPS), "FrameOfReferenceUID": series.frame_uid,
                 "PositionReferenceIndicator": "", "PixelSpacing": [ds_str(pixel_mm, 6), ds_str(pixel_mm, 6)]})
    base.update({"WindowCenter": "1000", "WindowWidth": "2200", "SOPClassUID": MR_IMAGE_STORAGE,
                 **grey_pixel_module(volume.shape[1], volume.shape[2], bits_stored=12)})
    common = _encode_elements(base)
    paths = []
    for i, k in enumerate(acquisition_order):
        sop = cohort_uid(seed, series.series_uid, "sop", i + 1)
        path = folder / f"{i + 1:03d}"
        own = Dataset()
        own.SOPInstanceUID = sop
        own.InstanceNumber = i + 1
        y = y0 + k * slice_mm
        own.ImagePositionPatient = [ds_str(x0), ds_str(y), ds_str(z0)]
        own.SliceLocation = ds_str(y)
        _pixel_data(own, volume[k])
        path.write_bytes(_part10_bytes(_file_meta(MR_IMAGE_STORAGE, sop), common, own))
        paths.append(path)
    return paths


def write_film(path: Path, image: np.ndarray, patient: Patient, series: SeriesInfo, *, seed: int,
               modality: str, photometric: str, bits_stored: int, spacing_mm: float, model: str,
               source_detector_mm: float = 1016.0, source_patient_mm: float | None = None) -> Path:
    """Write one bilateral PA film (rows inferior, columns to the patient's left: PatientOrientation L\\F).

    ``spacing_mm``: detector pixel (ImagerPixelSpacing). Geometry tags: DistanceSourceToDetector and
    DistanceSourceToPatient always (when ``source_patient_mm`` is given), EstimatedRadiographicMagnificationFactor
    (their ratio) on DX films only, so that readers meet both ways of stating the magnification."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sop_class = DX_IMAGE_STORAGE if modality == "DX" else CR_IMAGE_STORAGE
    ds = _file_dataset(path, sop_class, cohort_uid(seed, series.series_uid, "sop", 1))
    _common(ds, patient, series, modality)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ManufacturerModelName = model
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageLaterality = "B"
    ds.KVP = "65"
    ds.DistanceSourceToDetector = ds_str(source_detector_mm, 1)
    if source_patient_mm is not None:
        ds.DistanceSourceToPatient = ds_str(source_patient_mm, 1)
        if modality == "DX":
            ds.EstimatedRadiographicMagnificationFactor = ds_str(source_detector_mm / source_patient_mm, 6)
    ds.ExposureTime = "25"
    ds.ImagerPixelSpacing = [ds_str(spacing_mm, 6), ds_str(spacing_mm, 6)]
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.DetectorType = "SCINTILLATOR"
    else:
        ds.PixelSpacing = [ds_str(spacing_mm, 6), ds_str(spacing_mm, 6)]
    ds.InstanceNumber = 1
    ds.FrameOfReferenceUID = series.frame_uid
    ds.update(grey_pixel_module(image.shape[0], image.shape[1], bits_stored, photometric))
    _pixel_data(ds, image)
    top = (1 << bits_stored) - 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.WindowCenter = ds_str(top / 2, 1)
    ds.WindowWidth = ds_str(float(top), 1)
    ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    save_dataset(ds, path)
    return path
