"""MRI / X-ray transforms, localiser and intensity map on the synthetic cohort: shapes, ranges, orientation,
MONOCHROME1, crops around the ground-truth joint, readable errors."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from conftest import DATA_KNEES as KNEES  # noqa: E402
from conftest import DATA_MATRIX as MATRIX  # noqa: E402
from conftest import DATA_SEED as SEED  # noqa: E402
from conftest import film_path
from monai.transforms import Compose
from PIL import Image

from xray2mri_bundle.data.dicom_utils import DataFileError
from xray2mri_bundle.data.intensity import IntensityDistribution, IntensityDistributiond, intensity_distribution
from xray2mri_bundle.data.localiser import ClassicalJointLocaliser, JointLocaliser
from xray2mri_bundle.data.mri_transforms import LoadMRISeries, SelectSlices, SelectSlicesd, mri_transforms
from xray2mri_bundle.data.xray_io import InvalidXrayError, read_xray
from xray2mri_bundle.data.xray_transforms import (
    CropJoint,
    InvertMonochrome1,
    LoadXray,
    LocaliseJoint,
    SelectKnee,
    SelectKneed,
    xray_transforms,
)


def _record(cohort: Path, row: dict) -> dict:
    return {"subject": row["ParticipantID"], "side": row["side"], "xray": str(film_path(cohort, row)),
            "mri": str(cohort / row["mri_folder"]), "kl": int(row["kl"])}


# ------------------------------------------------------------------------------------------------ MRI
def test_mri_chain_shapes_range_meta(cohort: Path, truth: list[dict]) -> None:
    out = Compose(mri_transforms(size=32))({"mri": str(cohort / truth[0]["mri_folder"])})["mri"]
    assert out.shape == (1, 32, 32, 50) and out.dtype == torch.float32  # one channel: the slice dataset repeats it
    assert float(out.min()) == -1.0 and float(out.max()) == 1.0
    np.testing.assert_allclose(out.meta["spacing"], (140.0 / 32, 140.0 / 32, 1.5))  # the joint-centred frame
    assert out.meta["slice_start"] == 13 and out.meta["slice_count"] == 50


def test_mri_orientation_and_order_match_the_phantom(cohort: Path, truth: list[dict]) -> None:
    """Rows run superior -> inferior, columns right -> left, depth anterior -> posterior (position order,
    not file names: half of the cohort's series are written posterior-first)."""
    from xray2mri_bundle.cohort import simulate_subject
    from xray2mri_bundle.cohort.generate import CohortConfig, participant_id

    row = next(r for r in truth if r["mri_acquisition_order"] == "PA")
    index = next(i for i in range(KNEES) if participant_id(SEED, i) == row["ParticipantID"])
    subject = simulate_subject(CohortConfig(seed=SEED, mri_matrix=MATRIX), index)
    expected = subject.knees[row["side"]].mri.transpose(1, 2, 0)  # (slice, -z, +x) -> (rows, cols, depth)
    vol = LoadMRISeries(expected_slices=80)(str(cohort / row["mri_folder"]))
    np.testing.assert_array_equal(vol[0].numpy(), expected.astype(np.float32))
    affine = vol.affine.numpy()  # RAS
    assert affine[2, 0] < 0 and affine[0, 1] < 0 and affine[1, 2] < 0  # rows inferior, cols left, depth posterior


def test_mri_nifti_equals_dicom(cohort: Path, truth: list[dict], tmp_path: Path) -> None:
    vol = LoadMRISeries()(str(cohort / truth[1]["mri_folder"]))
    data = vol[0].numpy()
    # store it with a different axis order (RAS canonical) to exercise the reorientation
    img = nib.as_closest_canonical(nib.Nifti1Image(data, vol.affine.numpy()))
    nib.save(img, tmp_path / "mri.nii.gz")
    again = LoadMRISeries()(str(tmp_path / "mri.nii.gz"))
    np.testing.assert_allclose(again[0].numpy(), data)
    np.testing.assert_allclose(again.affine.numpy(), vol.affine.numpy(), atol=1e-4)


def test_select_slices_errors_name_the_file(cohort: Path, truth: list[dict]) -> None:
    vol = LoadMRISeries()(str(cohort / truth[0]["mri_folder"]))
    with pytest.raises(DataFileError, match=truth[0]["mri_folder"].split("/")[-1]):
        SelectSlices(start=13, count=70)(vol)
    out = SelectSlicesd("mri", start=0, count=5, allow_missing_keys=True)({"other": 1, "mri": vol})
    assert out["mri"].shape[-1] == 5 and out["other"] == 1
    kept = SelectSlices(start=13, count=50)(vol)  # slices 13..62, and the affine moves to slice 13
    np.testing.assert_array_equal(kept.numpy(), vol.numpy()[..., 13:63])
    np.testing.assert_allclose(kept.affine.numpy(), vol.affine.numpy() @ np.array(
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 13], [0, 0, 0, 1]]), atol=1e-6)
    assert (kept.meta["slice_start"], kept.meta["slice_count"]) == (13, 50)
    with pytest.raises(DataFileError, match="neither a DICOM series folder"):
        LoadMRISeries()(str(cohort / "contents.csv"))


# ------------------------------------------------------------------------------------------------ X-ray
def test_every_crop_contains_its_joint(cohort: Path, truth: list[dict]) -> None:
    chain = Compose(xray_transforms(size=64))
    for row in truth:
        out = chain({"xray": str(film_path(cohort, row)), "side": row["side"]})
        x = out["xray"]
        assert x.shape == (1, 64, 64) and x.dtype == torch.float32
        assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0 and float(x.max()) - float(x.min()) > 1.5
        assert out["intensity"].shape == (16, 8, 8)
        torch.testing.assert_close(out["intensity"].sum(0), torch.ones(8, 8))
        r0, c0, r1, c1 = x.meta["crop_box"]
        jr, jc = float(row["joint_row"]), float(row["joint_col"])
        assert r0 <= jr < r1 and c0 <= jc < c1, (row["ParticipantID"], row["side"])
        spacing = float(row["xray_pixel_spacing_mm"]) / float(row["xray_magnification"])  # at the patient
        assert abs((c1 - c0) * spacing - 140.0) < spacing + 1e-6
        assert x.meta["magnification"] == pytest.approx(float(row["xray_magnification"]), rel=1e-5)
        width = int(row["xray_cols"])
        assert (jc < width / 2) == (row["side"] == "RIGHT")  # PA: the right knee is on the image left


def test_mri_stored_upside_down_is_reoriented(cohort: Path, truth: list[dict], tmp_path: Path) -> None:
    """A series stored with rows running superior (IOP [1,0,0, 0,0,1]) loads exactly like the original:
    superior rows first (the femur on top), whatever the storage."""
    src = cohort / truth[2]["mri_folder"]
    for path in sorted(src.iterdir()):
        ds = pydicom.dcmread(path)
        n, ps = int(ds.Rows), float(ds.PixelSpacing[0])
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[::-1]).astype("<u2").tobytes()
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, 1]
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z - (n - 1) * ps]
        ds.save_as(tmp_path / path.name)
    original = LoadMRISeries()(str(src))
    flipped = LoadMRISeries()(str(tmp_path))
    torch.testing.assert_close(flipped.as_tensor(), original.as_tensor())
    np.testing.assert_allclose(flipped.affine.numpy(), original.affine.numpy(), atol=1e-4)


def test_film_patient_orientation_is_honoured(cohort: Path, truth: list[dict], tmp_path: Path) -> None:
    """A film stored mirrored (PatientOrientation R\\F or L\\H) is returned in the PA display convention."""
    film = film_path(cohort, truth[0])
    original = read_xray(film).pixels
    for orientation, flip in ((["R", "F"], np.fliplr), (["L", "H"], np.flipud)):
        ds = pydicom.dcmread(film)
        ds.PixelData = np.ascontiguousarray(flip(ds.pixel_array)).astype("<u2").tobytes()
        ds.PatientOrientation = orientation
        ds.save_as(tmp_path / "film")
        np.testing.assert_array_equal(read_xray(tmp_path / "film").pixels, original)


def test_monochrome1_is_inverted(cohort: Path, truth: list[dict], tmp_path: Path) -> None:
    row = next(r for r in truth if r["xray_photometric"] == "MONOCHROME2")
    ds = pydicom.dcmread(film_path(cohort, row))
    top = (1 << int(ds.BitsStored)) - 1
    ds.PixelData = (top - ds.pixel_array.astype(np.uint16)).astype("<u2").tobytes()
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "mono1")
    original = InvertMonochrome1()(LoadXray()(str(film_path(cohort, row))))
    inverted = InvertMonochrome1()(LoadXray()(str(tmp_path / "mono1")))
    assert inverted.meta["photometric"] == "MONOCHROME2" and inverted.meta["inverted"]
    diff = (inverted - original).numpy()
    assert np.ptp(diff) == 0  # identical up to a constant offset: bone bright again


def test_png_and_nifti_films(cohort: Path, truth: list[dict], tmp_path: Path) -> None:
    row = next(r for r in truth if r["xray_photometric"] == "MONOCHROME2")
    sp = float(row["xray_pixel_spacing_mm"])
    pixels = pydicom.dcmread(film_path(cohort, row)).pixel_array.astype(np.uint16)
    Image.fromarray(pixels).save(tmp_path / "film.png")
    nib.save(nib.Nifti1Image(pixels.T.astype(np.float32), np.diag([sp, sp, 1.0, 1.0])), tmp_path / "film.nii.gz")
    png = read_xray(tmp_path / "film.png", png_spacing_mm=sp)
    nii = read_xray(tmp_path / "film.nii.gz")
    np.testing.assert_array_equal(png.pixels, pixels)
    np.testing.assert_array_equal(nii.pixels, pixels)
    assert nii.spacing_mm == pytest.approx((sp, sp)) and png.spacing_source == "default"
    assert read_xray(tmp_path / "film.png").spacing_mm == pytest.approx((140 / 299, 140 / 299))
    chain = Compose(xray_transforms(size=64, png_spacing_mm=sp))
    out = chain({"xray": str(tmp_path / "film.png"), "side": row["side"]})
    r0, c0, r1, c1 = out["xray"].meta["crop_box"]
    assert r0 <= int(row["joint_row"]) < r1 and c0 <= int(row["joint_col"]) < c1


def test_invalid_xray_files_raise_clear_errors(cohort: Path, truth: list[dict], tmp_path: Path) -> None:
    film = film_path(cohort, truth[0])
    cases = {}
    (tmp_path / "notes.txt").write_text("not an image")
    cases["notes.txt"] = "not a DICOM, PNG or NIfTI"
    (tmp_path / "textfile").write_text("plain text without an extension")
    cases["textfile"] = "not a DICOM file"
    (tmp_path / "empty.dcm").write_bytes(b"")
    cases["empty.dcm"] = "empty file"
    (tmp_path / "truncated").write_bytes(film.read_bytes()[:-5000])
    cases["truncated"] = "truncated"
    mr = sorted((cohort / truth[0]["mri_folder"]).iterdir())[0]
    (tmp_path / "mr_slice").write_bytes(mr.read_bytes())
    cases["mr_slice"] = "modality MR is not a radiograph"
    ds = pydicom.dcmread(film)
    ds.BitsStored = 4
    ds.save_as(tmp_path / "bits4")
    cases["bits4"] = "unusable bit depth"
    ds = pydicom.dcmread(film)
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels")
    cases["nopixels"] = "no pixel data"
    Image.fromarray(np.full((40, 40), 7, np.uint8)).save(tmp_path / "blank.png")
    cases["blank.png"] = "blank"
    cases["missing.dcm"] = "not found"
    for name, message in cases.items():
        with pytest.raises(InvalidXrayError, match=message) as info:
            LoadXray()(str(tmp_path / name))
        assert isinstance(info.value, ValueError) and name in str(info.value)


def test_select_knee_halves_and_dict_wrapper(cohort: Path, truth: list[dict]) -> None:
    film = LoadXray()(str(film_path(cohort, truth[0])))
    w = film.shape[-1]
    assert SelectKnee()(film, "RIGHT").meta["knee_region"] == (0, w // 2)
    assert SelectKnee()(film, "left").meta["knee_region"] == (w // 2, w)
    assert SelectKnee("unilateral")(film, "LEFT").meta["knee_region"] == (0, w)
    out = SelectKneed("xray")({"xray": film, "side": "LEFT"})
    assert out["xray"].meta["knee_region"] == (w // 2, w)
    with pytest.raises(ValueError, match="RIGHT or LEFT"):
        SelectKnee()(film, "both")


def test_localiser_is_pluggable(cohort: Path, truth: list[dict]) -> None:
    class Fixed:
        def __call__(self, image: np.ndarray, spacing_mm: tuple[float, float]) -> tuple[float, float]:
            return 100.0, 50.0

    assert isinstance(ClassicalJointLocaliser(), JointLocaliser) and isinstance(Fixed(), JointLocaliser)
    film = SelectKnee()(LoadXray()(str(film_path(cohort, truth[0]))), "LEFT")
    located = LocaliseJoint(Fixed())(film)
    assert located.meta["joint_rc"] == (100.0, 50.0 + film.shape[-1] // 2)
    crop = CropJoint(size_mm=140.0, spatial_size=32)(located)
    assert crop.shape == (1, 32, 32) and crop.meta["spacing"] == (140.0 / 32, 140.0 / 32)


# ------------------------------------------------------------------------------------------------ intensity
def test_intensity_distribution() -> None:
    x = torch.full((1, 64, 64), -1.0)
    x[:, :8, :8] = 1.0
    i = intensity_distribution(x)
    assert i.shape == (16, 8, 8)
    assert i[0, 1, 1] == 1.0 and i[15, 0, 0] == 1.0 and i[0, 0, 0] == 0.0
    ramp = torch.linspace(-1, 1, 16 * 20).reshape(1, 16, 20)
    j = IntensityDistribution()(ramp)
    torch.testing.assert_close(j.sum(0), torch.ones(8, 8))
    d = IntensityDistributiond("xray", output_keys="intensity")({"xray": ramp})
    torch.testing.assert_close(d["intensity"], j)
