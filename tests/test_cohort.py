"""Synthetic cohort generator: tree and tables, DICOM read back (pydicom and SimpleITK), determinism,
left/right similarity, the KL prior and the KL effect on joint-space width (model and film)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy.stats import chisquare

from xray2mri_bundle.cli import make_cohort as make_cohort_command
from xray2mri_bundle.cohort import anatomy, generate, grading, make_cohort, mri

SimpleITK = pytest.importorskip("SimpleITK")

MATRIX = 64
SEED = 7


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("cohort"), knees=4, seed=SEED, mri_matrix=MATRIX, progress=False,
                       workers=1)


def _csv(path: Path, delimiter: str = ",") -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter=delimiter))


def _ground_truth(root: Path) -> list[dict[str, str]]:
    return _csv(root / "ground_truth.csv")


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_tree_and_tables(cohort: Path) -> None:
    contents = _csv(cohort / "contents.csv")
    assert list(contents[0]) == ["Folder", "ParticipantID", "StudyDate", "SeriesDescription", "Modality"]
    assert len(contents) == 6  # 2 subjects x (2 MRI + 1 film)
    for row in contents:
        assert re.fullmatch(r"9\d{6}", row["ParticipantID"])
        prefix = "0.C.2" if row["Modality"] == "MR" else "0.E.1"
        assert re.fullmatch(rf"{re.escape(prefix)}/{row['ParticipantID']}/{row['StudyDate']}/\d{{8}}", row["Folder"])
        assert (cohort / row["Folder"]).is_dir()
    descriptions = {row["SeriesDescription"] for row in contents}
    assert descriptions == {"COR_T1_3D_FLASH_RIGHT", "COR_T1_3D_FLASH_LEFT", "Bilateral PA Fixed Flexion Knee"}

    lines = (cohort / "kXR_SQ_BU00.txt").read_text().splitlines()
    assert lines[0] == "ID|SIDE|V00XRKL|READPRJ"
    kl_rows = _csv(cohort / "kXR_SQ_BU00.txt", delimiter="|")
    central = {(r["ID"], r["SIDE"]): int(r["V00XRKL"]) for r in kl_rows if r["READPRJ"] == "15"}
    assert len(central) == 4 and {s for _, s in central} == {"1", "2"}
    assert set(central.values()) <= {0, 1, 2, 3, 4}

    truth = _ground_truth(cohort)
    required = ["ParticipantID", "side", "visit", "kl", "xray_folder", "mri_folder", "joint_row", "joint_col",
                "xray_pixel_spacing_mm", "xray_magnification", "jsw_medial_mm", "jsw_lateral_mm", "effusion",
                "cartilage_defect", "osteophytes", "mri_joint_row", "mri_joint_col"]
    assert list(truth[0])[: len(required)] == required
    assert len(truth) == 4
    folders = {row["Folder"] for row in contents}
    for row in truth:
        side_code = "1" if row["side"] == "RIGHT" else "2"
        assert central[(row["ParticipantID"], side_code)] == int(row["kl"])
        assert row["visit"] == "V00" and row["xray_folder"] in folders and row["mri_folder"] in folders
        assert 13 <= float(row["mri_joint_slice"]) <= 63
        assert 0 <= float(row["mri_joint_row"]) < MATRIX and 0 <= float(row["mri_joint_col"]) < MATRIX
        assert 1.0 < float(row["xray_magnification"]) < 1.2
        assert row["effusion"] in ("0", "1") and row["cartilage_defect"] in ("0", "1")
        assert 0 <= int(row["osteophytes"]) <= 3
        assert float(row["jsw_medial_mm"]) >= 0 and float(row["jsw_lateral_mm"]) > 0

    info = json.loads((cohort / "cohort.json").read_text())
    assert info["synthetic"] is True and "not patient data" in info["disclaimer"]
    assert (info["seed"], info["knees"], info["mri_matrix"]) == (SEED, 4, MATRIX)


def _read_series(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.iterdir())]


def test_mri_series_with_pydicom(cohort: Path) -> None:
    orders = set()
    for row in _ground_truth(cohort):
        folder = cohort / row["mri_folder"]
        names = sorted(p.name for p in folder.iterdir())
        assert names == [f"{i:03d}" for i in range(1, 81)]
        slices = _read_series(folder)
        first = slices[0]
        assert first.Modality == "MR" and first.SeriesDescription == f"COR_T1_3D_FLASH_{row['side']}"
        assert first.Laterality == row["side"][0] and first.BodyPartExamined == "KNEE"
        assert first.PatientID == row["ParticipantID"] and str(first.PatientName) == "SYNTHETIC^KNEE"
        assert "SYNTHETIC" in first.ImageComments and "not patient data" in first.ImageComments
        assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 0, -1]
        assert [float(v) for v in first.PixelSpacing] == pytest.approx([160 / MATRIX] * 2)
        assert float(first.SliceThickness) == 1.5 and float(first.SpacingBetweenSlices) == 1.5
        assert (first.Rows, first.Columns) == (MATRIX, MATRIX)
        assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert len({ds.SOPInstanceUID for ds in slices}) == 80
        assert len({ds.SeriesInstanceUID for ds in slices}) == 1
        assert [int(ds.InstanceNumber) for ds in slices] == list(range(1, 81))
        ys = np.array([float(ds.ImagePositionPatient[1]) for ds in slices])
        assert np.allclose(np.abs(np.diff(ys)), 1.5)
        orders.add("AP" if ys[1] > ys[0] else "PA")
        assert orders and row["mri_acquisition_order"] in orders
        assert all(ds.pixel_array.dtype == np.uint16 for ds in slices[:3])
    assert orders == {"AP", "PA"}  # some series are stored posterior-first: sort by position


def test_mri_series_with_simpleitk(cohort: Path) -> None:
    for row in _ground_truth(cohort):
        folder = str(cohort / row["mri_folder"])
        reader = SimpleITK.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder))
        image = reader.Execute()
        assert image.GetSize() == (MATRIX, MATRIX, 80)
        assert image.GetSpacing() == pytest.approx((160 / MATRIX, 160 / MATRIX, 1.5))
        assert image.GetDirection() == pytest.approx((1, 0, 0, 0, 0, 1, 0, -1, 0))
        volume = SimpleITK.GetArrayFromImage(image)  # (slice, row, col), slices ascending y (anterior first)
        slices = sorted(_read_series(Path(folder)), key=lambda ds: float(ds.ImagePositionPatient[1]))
        assert np.array_equal(volume, np.stack([ds.pixel_array for ds in slices]))
        # The joint centre (ground truth) sits in bone-rich, T1-bright tissue within the kept slices 13..63.
        k, r, c = (round(float(row[f"mri_joint_{a}"])) for a in ("slice", "row", "col"))
        half = round(25 / (160 / MATRIX))
        box = volume[k, r - half:r + half, c - half:c + half].astype(float)
        bright = box > 0.5 * np.percentile(volume, 99)
        assert 0.3 < bright.mean() < 0.95
        assert volume[13:64].mean() > volume[:5].mean()


def test_film_tags_orientation_and_content(cohort: Path) -> None:
    truth = _ground_truth(cohort)
    photometrics = set()
    for pid in sorted({row["ParticipantID"] for row in truth}):
        knees = {row["side"]: row for row in truth if row["ParticipantID"] == pid}
        folder = cohort / knees["RIGHT"]["xray_folder"]
        assert [p.name for p in folder.iterdir()] == ["001"]
        ds = pydicom.dcmread(folder / "001")
        assert ds.Modality in ("DX", "CR") and ds.SeriesDescription == "Bilateral PA Fixed Flexion Knee"
        assert ds.PatientID == pid and "SYNTHETIC" in ds.ImageComments
        assert [float(v) for v in ds.ImagerPixelSpacing] == pytest.approx(
            [float(knees["RIGHT"]["xray_pixel_spacing_mm"])] * 2)
        assert 12 <= ds.BitsStored <= 16 and ds.HighBit == ds.BitsStored - 1
        assert list(ds.PatientOrientation) == ["L", "F"]
        image = ds.pixel_array.astype(float)
        assert image.max() < 2 ** ds.BitsStored
        photometrics.add(ds.PhotometricInterpretation)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            image = (2 ** ds.BitsStored - 1) - image
        # PA view: the patient's right knee is on the image left.
        assert int(knees["RIGHT"]["joint_col"]) < int(knees["LEFT"]["joint_col"])
        spacing = float(knees["RIGHT"]["xray_pixel_spacing_mm"])
        for row in knees.values():
            jr, jc = int(row["joint_row"]), int(row["joint_col"])
            assert 0 <= jr < ds.Rows and 0 <= jc < ds.Columns
            femur = image[jr - round(30 / spacing), jc - round(5 / spacing):jc + round(5 / spacing)].mean()
            assert femur > np.percentile(image, 60)  # bone is bright after MONOCHROME1 inversion
        assert image[:, :5].mean() < 0.15 * image.max()  # direct exposure at the film edge is dark
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"}


def test_deterministic_and_worker_independent(cohort: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    assert make_cohort_command.main(["--out", str(again), "--knees", "4", "--seed", str(SEED),
                                     "--mri-matrix", str(MATRIX), "--workers", "2", "--no-progress"]) == 0
    assert _digest(again) == _digest(cohort)


def test_knee_is_independent_of_cohort_size(cohort: Path) -> None:
    # Subject 1 simulated on its own equals subject 1 of the cohort: content depends on (seed, index) only.
    alone = generate.simulate_subject(generate.CohortConfig(seed=SEED, mri_matrix=MATRIX), 1)
    assert alone.participant_id != generate.participant_id(SEED, 0)
    row = next(r for r in _ground_truth(cohort) if r["ParticipantID"] == alone.participant_id and r["side"] == "LEFT")
    slices = sorted(_read_series(cohort / row["mri_folder"]), key=lambda ds: float(ds.ImagePositionPatient[1]))
    assert np.array_equal(np.stack([ds.pixel_array for ds in slices]), alone.knees["LEFT"].mri)
    assert np.array_equal(pydicom.dcmread(cohort / row["xray_folder"] / "001").pixel_array, alone.film_image)


def test_left_and_right_are_similar_not_equal() -> None:
    rs = generate.subject_streams(3, 0)
    base = anatomy.sample_shape(rs["shape"])
    right = anatomy.perturb_shape(base, rs["knee_right"])
    left = anatomy.perturb_shape(base, rs["knee_left"])
    a = np.array(dataclasses.astuple(right))
    b = np.array(dataclasses.astuple(left))
    rel = np.abs(a - b) / np.abs(a)
    assert 0 < rel.max() < 0.1 and rel.mean() < 0.03
    # Rendered bone in each knee's own (canonical) frame: mostly overlapping, not identical.
    healthy = grading.sample_findings(0, np.random.default_rng(0), np.random.default_rng(1))
    masks = []
    for shape in (right, left):
        params = anatomy.knee_params(shape, "RIGHT", healthy, np.random.default_rng(2))
        g = anatomy.KneeGeometry(params)
        x, y, z = np.meshgrid(np.arange(-45, 45, 1.0), np.arange(-30, 35, 2.0), np.arange(-40, 50, 1.0),
                              indexing="ij")
        masks.append((g.femur(x, y, z) < 0) | (g.tibia(x, y, z) < 0))
    dice = 2 * (masks[0] & masks[1]).sum() / (masks[0].sum() + masks[1].sum())
    assert 0.85 < dice < 0.999
    # The left knee is the mirror image in the world: its fibula (lateral) is on the patient's left (+x).
    _, pose_r = mri.place_mri("RIGHT", MATRIX, np.random.default_rng(0))
    _, pose_l = mri.place_mri("LEFT", MATRIX, np.random.default_rng(0))
    fib = np.array([right.fib_x, right.fib_y, right.fib_z])
    assert pose_r.to_world(fib)[0] < pose_r.t[0] and pose_l.to_world(fib)[0] > pose_l.t[0]


def test_kl_prior_of_the_generator() -> None:
    grades = grading.sample_kl_grades(np.random.default_rng(2024), 10_000)  # 20,000 knees
    counts = np.bincount(grades.ravel(), minlength=5)
    assert np.allclose(counts / counts.sum(), grading.KL_PRIOR, atol=0.01)
    assert chisquare(counts, grading.KL_PRIOR * counts.sum()).pvalue > 1e-3
    assert np.corrcoef(grades[:, 0], grades[:, 1])[0, 1] > 0.3  # a subject's knees are concordant


def test_joint_space_narrows_with_kl() -> None:
    rng = np.random.default_rng(11)
    means = []
    for kl in range(5):
        widths = []
        for _ in range(12):
            shape = anatomy.sample_shape(rng)
            params = anatomy.knee_params(shape, "RIGHT", grading.sample_findings(kl, rng, rng), rng)
            medial, lateral = anatomy.measure_jsw(params)
            widths.append(min(medial, lateral))
        means.append(np.mean(widths))
    assert all(a > b for a, b in zip(means, means[1:], strict=False)), means


def _film_gap_px(image: np.ndarray, row: int, col: int, spacing: float) -> int:
    """Width (px) of the dark joint space in a vertical profile through one compartment."""
    half = round(2 / spacing)
    profile = np.median(image[row - round(15 / spacing):row + round(15 / spacing), col - half:col + half], axis=1)
    centre = profile[len(profile) // 2 - round(8 / spacing):len(profile) // 2 + round(8 / spacing)]
    threshold = 0.5 * (centre.min() + np.percentile(profile, 90))
    return int((centre < threshold).sum())


def test_joint_space_narrowing_is_visible_on_the_film() -> None:
    cfg = generate.CohortConfig(seed=5, mri_matrix=MATRIX, xray_spacing_mm=0.4)
    subject = generate.simulate_subject(cfg, 0, kl=(0, 4))
    image = subject.film_image.astype(float)
    if subject.photometric == "MONOCHROME1":
        image = (2 ** subject.site.bits_stored - 1) - image
    gaps, widths = {}, {}
    for side, sign in (("RIGHT", 1), ("LEFT", -1)):  # local +x is world +x (image right) for a right knee
        knee = subject.knees[side]
        medial = knee.params.findings.jsn_compartment == "medial"
        shape = knee.params.shape
        row, col = (round(v) for v in knee.film_joint)
        col += sign * round((shape.cond_x_m if medial else shape.cond_x_l) / subject.film.spacing_mm)
        gaps[side] = _film_gap_px(image, row, col, subject.film.spacing_mm)
        widths[side] = knee.jsw_mm[0 if medial else 1]
    assert widths["LEFT"] < 1.5 < widths["RIGHT"]
    assert gaps["LEFT"] < gaps["RIGHT"], gaps
