"""Writers read back with nibabel, pydicom and SimpleITK; atomicity under a failure mid-write."""

from __future__ import annotations

import json
import math
import os

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk  # noqa: N813 - the library's own convention
import torch
from PIL import Image

from xray2mri_bundle.data import dicom_utils
from xray2mri_bundle.inference import writers
from xray2mri_bundle.inference.writers import (
    coronal_affine,
    write_dicom_series,
    write_montage_png,
    write_nifti,
    write_sidecar_json,
)

H, W, S = 12, 10, 5
SPACING = (0.8, 0.6)  # (row, column) mm
SLICE_MM = 1.5 * 50 / S


@pytest.fixture()
def volume() -> np.ndarray:
    """(H, W, S) in [-1, 1]; the top half ('femur') is bright, so 'up' can be checked after reorientation."""
    v = np.random.default_rng(0).uniform(-1.0, 0.0, (H, W, S)).astype(np.float32)
    v[: H // 2] += 1.0
    return v


def _lps_point(affine_ras: np.ndarray, ijk: tuple[float, float, float]) -> np.ndarray:
    return np.diag([-1.0, -1.0, 1.0]) @ (affine_ras @ np.array([*ijk, 1.0]))[:3]


def _leftovers(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------------------------------- NIfTI


@pytest.mark.parametrize("name", ["pseudo_mri.nii.gz", "pseudo_mri.nii"])
def test_nifti_geometry_values_and_header(tmp_path, volume, name):
    path = write_nifti(torch.from_numpy(volume), SPACING, SLICE_MM, tmp_path / name, description="seed 3")
    img = nib.load(path)
    assert img.shape == (H, W, S) and img.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(img.dataobj), volume)
    np.testing.assert_allclose(img.affine, coronal_affine(volume.shape, SPACING, SLICE_MM), atol=1e-5)
    assert nib.aff2axcodes(img.affine) == ("I", "L", "P")  # rows inferior, columns to the left, slices posterior
    np.testing.assert_allclose(img.header.get_zooms(), (*SPACING, SLICE_MM), rtol=1e-6)
    _, q_code = img.get_qform(coded=True)
    _, s_code = img.get_sform(coded=True)
    assert int(q_code) == 1 and int(s_code) == 1
    np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-4)
    descrip = img.header["descrip"].item().decode()
    assert descrip.startswith("SYNTHETIC pseudo-MRI - not for diagnosis") and "seed 3" in descrip
    assert img.header.get_xyzt_units()[0] == "mm"
    centre = img.affine[:3, :3] @ ((np.array(volume.shape) - 1) / 2) + img.affine[:3, 3]
    np.testing.assert_allclose(centre, 0, atol=1e-5)  # the volume centre is the world origin
    assert _leftovers(tmp_path) == []


def test_nifti_opens_femur_up_in_a_ras_viewer(tmp_path, volume):
    canonical = nib.as_closest_canonical(nib.load(write_nifti(volume, SPACING, SLICE_MM, tmp_path / "v.nii.gz")))
    assert nib.aff2axcodes(canonical.affine) == ("R", "A", "S")
    data = canonical.get_fdata()
    # RAS: the last axis points superior; the bright 'femur' half must be there
    assert data[:, :, H // 2 :].mean() > 0.3 and data[:, :, : H // 2].mean() < -0.3
    # the first stored slice (most anterior) is the last along A; its patient-right column is R's first index
    np.testing.assert_allclose(data[::-1, -1, ::-1].T, volume[:, :, 0])


def test_nifti_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="H, W, S"):
        write_nifti(np.zeros((3, 4)), SPACING, 1.0, tmp_path / "a.nii.gz")
    with pytest.raises(ValueError, match="NaN"):
        write_nifti(np.full((3, 4, 2), np.nan), SPACING, 1.0, tmp_path / "a.nii.gz")
    with pytest.raises(ValueError, match=".nii"):
        write_nifti(np.zeros((3, 4, 2)), SPACING, 1.0, tmp_path / "a.mha")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------- DICOM


def _read_series(folder) -> list[pydicom.Dataset]:
    return sorted((pydicom.dcmread(p) for p in folder.iterdir()), key=lambda d: int(d.InstanceNumber))


def test_dicom_series_tags_uids_and_pixels(tmp_path, volume):
    info = {
        "PatientID": "9000099",
        "PatientName": "SYNTH^9000099",
        "Laterality": "R",
        "source_sop_instance_uid": "1.2.3.4",
    }
    series = write_dicom_series(volume, SPACING, SLICE_MM, tmp_path / "dcm", source_info=info)
    dss = _read_series(tmp_path / "dcm")
    assert len(dss) == S == len(series.files) and all(p.exists() for p in series.files)
    assert {d.StudyInstanceUID for d in dss} == {series.study_instance_uid}
    assert {d.SeriesInstanceUID for d in dss} == {series.series_instance_uid}
    assert len({d.SOPInstanceUID for d in dss}) == S
    assert len({series.study_instance_uid, series.series_instance_uid, *(d.SOPInstanceUID for d in dss)}) == S + 2
    affine = coronal_affine(volume.shape, SPACING, SLICE_MM)
    for k, d in enumerate(dss):
        assert d.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID
        assert d.SOPClassUID == pydicom.uid.MRImageStorage and d.Modality == "MR"
        assert list(d.ImageType) == ["DERIVED", "SECONDARY"]
        assert "synthetic - not for diagnosis" in d.SeriesDescription
        assert "not for diagnosis" in d.ImageComments and d.BurnedInAnnotation == "NO"
        assert [float(x) for x in d.ImageOrientationPatient] == [1, 0, 0, 0, 0, -1]
        assert [float(x) for x in d.PixelSpacing] == pytest.approx(list(SPACING))
        assert float(d.SliceThickness) == pytest.approx(SLICE_MM)
        assert d.InstanceNumber == k + 1 and (d.Rows, d.Columns) == (H, W)
        np.testing.assert_allclose([float(x) for x in d.ImagePositionPatient], _lps_point(affine, (0, 0, k)), atol=1e-4)
        assert d.PatientID == "9000099" and d.Laterality == "R"
        assert d.SourceImageSequence[0].ReferencedSOPInstanceUID == "1.2.3.4"
        assert d.pixel_array.dtype == np.uint16
        back = d.pixel_array.astype(np.float64) / 4095 * 2 - 1
        np.testing.assert_allclose(back, volume[:, :, k], atol=1.0 / 4095 + 1e-6)
    ipp_y = [float(d.ImagePositionPatient[1]) for d in dss]
    assert np.allclose(np.diff(ipp_y), SLICE_MM)  # anterior -> posterior is +y in LPS


def test_simpleitk_reads_one_series_matching_the_nifti(tmp_path, volume):
    write_dicom_series(volume, SPACING, SLICE_MM, tmp_path / "dcm")
    nii = write_nifti(volume, SPACING, SLICE_MM, tmp_path / "v.nii.gz")
    reader = sitk.ImageSeriesReader()
    ids = reader.GetGDCMSeriesIDs(str(tmp_path / "dcm"))
    assert len(ids) == 1
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "dcm"), ids[0]))
    dcm = reader.Execute()
    assert dcm.GetSize() == (W, H, S)  # ITK index order (column, row, slice)
    np.testing.assert_allclose(dcm.GetSpacing(), (SPACING[1], SPACING[0], SLICE_MM), rtol=1e-6)
    np.testing.assert_allclose(np.array(dcm.GetDirection()).reshape(3, 3), [[1, 0, 0], [0, 0, 1], [0, -1, 0]])
    ref = sitk.ReadImage(str(nii))  # NIfTI index order (row, column, slice), LPS in ITK
    assert ref.GetSize() == (H, W, S)
    for r, c, k in [(0, 0, 0), (H - 1, 0, 2), (3, W - 1, S - 1), (7, 4, 1)]:
        np.testing.assert_allclose(
            dcm.TransformIndexToPhysicalPoint((c, r, k)), ref.TransformIndexToPhysicalPoint((r, c, k)), atol=1e-3
        )
    # each physical axis has the same direction in both files
    d_dcm = np.array(dcm.GetDirection()).reshape(3, 3)
    d_nii = np.array(ref.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(d_dcm[:, [1, 0, 2]], d_nii, atol=1e-6)
    values = sitk.GetArrayFromImage(dcm).astype(np.float64) / 4095 * 2 - 1  # (S, H, W)
    np.testing.assert_allclose(values.transpose(1, 2, 0), volume, atol=1.0 / 4095 + 1e-6)


def test_dicom_source_info_is_validated(tmp_path, volume):
    with pytest.raises(ValueError, match="not a DICOM keyword"):
        write_dicom_series(volume, SPACING, SLICE_MM, tmp_path / "a", source_info={"subject": "9000099"})
    with pytest.raises(ValueError, match="writer owns"):
        write_dicom_series(volume, SPACING, SLICE_MM, tmp_path / "b", source_info={"SeriesInstanceUID": "1.2"})
    assert list(tmp_path.iterdir()) == []


def test_dicom_existing_folder_needs_overwrite(tmp_path, volume):
    first = write_dicom_series(volume, SPACING, SLICE_MM, tmp_path / "dcm")
    with pytest.raises(FileExistsError):
        write_dicom_series(volume, SPACING, SLICE_MM, tmp_path / "dcm")
    second = write_dicom_series(volume[:, :, :2], SPACING, SLICE_MM, tmp_path / "dcm", overwrite=True)
    assert second.series_instance_uid != first.series_instance_uid
    assert {d.SeriesInstanceUID for d in _read_series(tmp_path / "dcm")} == {second.series_instance_uid}
    assert len(list((tmp_path / "dcm").iterdir())) == 2 and _leftovers(tmp_path) == []


def test_dicom_failure_mid_series_leaves_nothing(tmp_path, volume, monkeypatch):
    real_save = writers.save_dataset
    calls = []

    def save_then_fail(ds, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        real_save(ds, path)

    monkeypatch.setattr(writers, "save_dataset", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_dicom_series(volume, SPACING, SLICE_MM, tmp_path / "dcm")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "major, kwargs", [("3.0.1", {"enforce_file_format": True}), ("2.4.4", {"write_like_original": False})]
)
def test_save_helper_uses_the_pydicom_version_api(monkeypatch, major, kwargs):
    class FakeDataset:
        def save_as(self, path, **kw):
            self.saved = (path, kw)

    monkeypatch.setattr(pydicom, "__version__", major)
    ds = FakeDataset()
    dicom_utils.save_dataset(ds, "x.dcm")  # type: ignore[arg-type]
    assert ds.saved == ("x.dcm", kwargs)
    if major.startswith("2"):
        assert ds.is_little_endian is True and ds.is_implicit_VR is False  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------------- atomic single files


def _write_each(kind: str, volume: np.ndarray, path):
    if kind == "nifti":
        return write_nifti(volume, SPACING, SLICE_MM, path)
    if kind == "png":
        return write_montage_png(volume, path, n=4)
    return write_sidecar_json(path, {"seed": 1})


@pytest.mark.parametrize("kind, name", [("nifti", "v.nii.gz"), ("png", "m.png"), ("json", "s.json")])
@pytest.mark.parametrize("fail_in", ["fsync", "replace"])
def test_failure_mid_write_leaves_no_file_and_keeps_the_old_one(tmp_path, volume, monkeypatch, kind, name, fail_in):
    def boom(*_args, **_kwargs):
        raise OSError("crash")

    monkeypatch.setattr(writers.os, fail_in, boom)
    with pytest.raises(OSError, match="crash"):
        _write_each(kind, volume, tmp_path / name)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    (tmp_path / name).write_bytes(b"previous")
    monkeypatch.setattr(writers.os, fail_in, boom)
    with pytest.raises(OSError, match="crash"):
        _write_each(kind, volume, tmp_path / name)
    assert (tmp_path / name).read_bytes() == b"previous" and _leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------- montage and JSON


def test_montage_png(tmp_path, volume):
    path = write_montage_png(volume, tmp_path / "preview" / "montage.png", n=12, slice_spacing_mm=SLICE_MM)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 100 and im.height > 100
        pixels = np.asarray(im.convert("RGB")).astype(int)
    red = (pixels[..., 0] > 150) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert red[int(0.85 * pixels.shape[0]) :].any()  # the red SYNTHETIC caption sits at the bottom
    assert write_montage_png(volume[:, :, :1], tmp_path / "one.png").exists()


def test_sidecar_json_types(tmp_path):
    data = {
        "seed": np.int64(3),
        "psnr": float("inf"),
        "rssim": np.float32(0.5),
        "depths": torch.tensor([0.0, 1.0]),
        "nan": math.nan,
        "path": tmp_path,
        "nested": {"v": np.array([1.5, np.nan])},
    }
    path = write_sidecar_json(tmp_path / "sidecar.json", data)
    back = json.loads(path.read_text())
    assert back == {
        "seed": 3,
        "psnr": None,
        "rssim": 0.5,
        "depths": [0.0, 1.0],
        "nan": None,
        "path": os.fspath(tmp_path),
        "nested": {"v": [1.5, None]},
    }


@pytest.mark.parametrize(("patient_id", "expected", "charset", "note"), [
    (["\u674e\u56db", "x"], "\u674e\u56db_x", "ISO_IR 192", "several values"),
    ("P" * 70, "P" * 64, "ISO_IR 100", "truncated from 70 to 64"),
    ("M\u00fcller-7", "M\u00fcller-7", "ISO_IR 100", None),
])
def test_patient_id_keeps_its_link_to_the_patient(tmp_path, patient_id, expected, charset, note) -> None:
    volume = np.zeros((8, 8, 2), dtype=np.float32)
    series = write_dicom_series(volume, SPACING, SLICE_MM, tmp_path / "dcm", source_info={"PatientID": patient_id})
    ds = pydicom.dcmread(series.files[0])  # an independent reader decodes it with the declared character set
    assert ds.PatientID == expected and ds.SpecificCharacterSet == charset
    assert "?" not in ds.PatientID and "[" not in ds.PatientID
    if note:
        assert note in ds.ImageComments
