"""The joint-centred frame: film magnification, the MRI joint localiser, the MRI frame crop and its geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from conftest import film_path
from monai.data import MetaTensor
from monai.transforms import Compose

from xray2mri_bundle.data.frame import FRAME_MM, crop_frame, frame_box
from xray2mri_bundle.data.localiser import MRIJointLocaliser
from xray2mri_bundle.data.mri_transforms import CropMRIJoint, LoadMRISeries, SelectSlices, mri_transforms
from xray2mri_bundle.data.xray_io import DEFAULT_MAGNIFICATION, film_magnification, read_xray


def test_magnification_from_each_dicom_source() -> None:
    ds = pydicom.Dataset()
    assert film_magnification(ds) == (DEFAULT_MAGNIFICATION, "default")
    ds.DistanceSourceToDetector, ds.DistanceSourceToPatient = "1000", "920"
    assert film_magnification(ds) == (pytest.approx(1000 / 920), "DistanceSourceToDetector/DistanceSourceToPatient")
    ds.EstimatedRadiographicMagnificationFactor = "1.05"
    assert film_magnification(ds) == (pytest.approx(1.05), "EstimatedRadiographicMagnificationFactor")
    ds.EstimatedRadiographicMagnificationFactor = "0.5"  # corrupt: ignored, the distances are used
    assert film_magnification(ds)[1] == "DistanceSourceToDetector/DistanceSourceToPatient"


def test_cohort_films_carry_consistent_magnification(cohort: Path, truth: list[dict]) -> None:
    for row in truth[::2]:
        path = film_path(cohort, row)
        film = read_xray(path)
        magnification = float(row["xray_magnification"])
        assert film.magnification == pytest.approx(magnification, rel=1e-5)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert float(ds.DistanceSourceToDetector) / float(ds.DistanceSourceToPatient) == pytest.approx(
            magnification, rel=1e-4)
        detector = float(row["xray_pixel_spacing_mm"])
        assert film.detector_spacing_mm[0] == pytest.approx(detector, rel=1e-5)
        assert film.spacing_mm[0] == pytest.approx(detector / magnification, rel=1e-5)  # the patient's plane


def test_mri_localiser_finds_the_cohort_joint(cohort: Path, truth: list[dict]) -> None:
    locate, errors = MRIJointLocaliser(), []
    for row in truth:
        volume = SelectSlices(13, 50)(LoadMRISeries()(str(cohort / row["mri_folder"])))
        spacing = tuple(volume.meta["spacing"][:2])
        r, c = locate(volume[0].numpy(), spacing, row["side"])
        errors.append(np.hypot((r - float(row["mri_joint_row"])) * spacing[0],
                               (c - float(row["mri_joint_col"])) * spacing[1]))
    assert max(errors) < 5.0 and np.median(errors) < 2.5  # 2.5 mm pixels in this 64-matrix cohort


def test_mri_chain_centres_the_frame_on_the_joint(cohort: Path, truth: list[dict]) -> None:
    row = truth[0]
    out = Compose(mri_transforms(size=32))(
        {"mri": str(cohort / row["mri_folder"]), "side": row["side"]})["mri"]
    assert out.shape == (1, 32, 32, 50) and out.meta["frame_mm"] == FRAME_MM
    # the output's centre maps (affine) to the world position of the localised joint in the original volume
    original = SelectSlices(13, 50)(LoadMRISeries()(str(cohort / row["mri_folder"])))
    jr, jc = out.meta["joint_rc"]
    joint_world = original.affine.numpy() @ np.array([jr, jc, 0.0, 1.0])
    centre_world = out.affine.numpy() @ np.array([15.5, 15.5, 0.0, 1.0])
    np.testing.assert_allclose(centre_world[:3], joint_world[:3], atol=0.5 * 160 / 64 + 1e-6)  # half a pixel
    np.testing.assert_allclose(np.linalg.norm(out.affine.numpy()[:3, :2], axis=0), [FRAME_MM / 32] * 2, rtol=1e-6)


def test_a_joint_near_the_edge_is_padded_not_dropped(caplog: pytest.LogCaptureFixture) -> None:
    volume = MetaTensor(torch.rand(1, 40, 40, 3) + 1.0, meta={"spacing": (4.0, 4.0, 1.5), "filename_or_obj": "k.nii"})
    with caplog.at_level("WARNING"):
        out = CropMRIJoint(size=20, size_mm=FRAME_MM)(volume, joint_rc=(2.0, 38.0))
    assert "k.nii" in caplog.text and "leaves the field of view" in caplog.text
    assert out.shape == (1, 20, 20, 3) and out.meta["frame_padded"] is True
    assert float(out[0, 0, -1, 0]) == pytest.approx(float(volume.min()), abs=1e-6)  # filled with the minimum
    assert CropMRIJoint(size=20, size_mm=FRAME_MM)(volume, joint_rc=(19.5, 19.5)).meta["frame_padded"] is False


def test_frame_box_and_crop_hand_case() -> None:
    assert frame_box((10.0, 10.0), (1.0, 2.0), size_mm=8.0) == (6, 8, 14, 12)  # centre 9.5 / 9.5: within 0.5 px
    assert frame_box((10.5, 10.5), (1.0, 1.0), size_mm=8.0) == (7, 7, 15, 15)  # centre exactly 10.5
    image = torch.arange(400.0).reshape(1, 20, 20)
    crop, padded = crop_frame(image, (4, 6, 8, 10), size=4, antialias=False)
    assert not padded and torch.equal(crop, image[:, 4:8, 6:10])
