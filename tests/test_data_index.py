"""Index + ingestion report on a small synthetic cohort: pairing, split, planted faults, manifest, CLI."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import DATA_KNEES as KNEES  # noqa: E402
from conftest import DATA_MATRIX, DATA_SEED

from xray2mri_bundle.cli.index import main
from xray2mri_bundle.data.index import (
    index_manifest,
    index_oai,
    parse_kl,
    parse_side,
    read_kl_tables,
    split_by_subject,
    visit_of_folder,
)
from xray2mri_bundle.data.mri_io import inspect_series


def _truth(root: Path) -> list[dict]:
    with open(root / "ground_truth.csv", newline="") as f:
        return list(csv.DictReader(f))


def _write_kl(root: Path, rows: list[dict]) -> None:
    with open(root / "kXR_SQ_BU00.txt", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="|")
        writer.writeheader()
        writer.writerows(rows)


def _read_kl(root: Path) -> list[dict]:
    with open(root / "kXR_SQ_BU00.txt", newline="") as f:
        return list(csv.DictReader(f, delimiter="|"))


# ------------------------------------------------------------------------------------------ small parsers
def test_oai_conventions() -> None:
    assert [visit_of_folder(f"{p}.C.2/9000001/20040101/1") for p in (0, 1, 3, 5, 6, 8, 10)] == [
        "V00", "V01", "V03", "V05", "V06", "V08", "V10"]
    assert visit_of_folder("2.C.2/9000001/x") is None
    assert (parse_side(1), parse_side("2"), parse_side("right"), parse_side("L"), parse_side(3)) == (
        "RIGHT", "LEFT", "RIGHT", "LEFT", None)
    assert (parse_kl("3"), parse_kl("2.0"), parse_kl("."), parse_kl(".: Missing Form/Incomplete Workbook"),
            parse_kl("5"), parse_kl("")) == (3, 2, None, None, None, None)


def test_split_is_by_subject_seeded_and_7_to_3() -> None:
    subjects = [f"9{i:06d}" for i in range(20)]
    train, val = split_by_subject(subjects + subjects, seed=5)
    assert not train & val and train | val == set(subjects)
    assert len(val) == 6
    assert split_by_subject(subjects, seed=5) == (train, val)
    assert split_by_subject(subjects, seed=6) != (train, val)


def test_readprj_filter(tmp_path: Path) -> None:
    (tmp_path / "kXR_SQ_BU00.txt").write_text(
        "ID|SIDE|V00XRKL|READPRJ\n9000001|1|2|15\n9000001|1|4|37\n9000001|2|.|15\n9000002|2|1|37\n")
    grades, _ = read_kl_tables(tmp_path)
    assert {(k.subject, k.side): v for k, v in grades.items()} == {("9000001", "RIGHT"): 2, ("9000001", "LEFT"): None}
    grades37, _ = read_kl_tables(tmp_path, readprj=37)
    assert {(k.subject, k.side): v for k, v in grades37.items()} == {("9000001", "RIGHT"): 4, ("9000002", "LEFT"): 1}


# ------------------------------------------------------------------------------------------ clean cohort
def test_index_clean_cohort(cohort: Path) -> None:
    datalist, report = index_oai(cohort, seed=0)
    truth = {(r["ParticipantID"], r["side"]): r for r in _truth(cohort)}
    records = datalist["training"] + datalist["validation"]
    assert report.knees_found == KNEES and report.paired == KNEES and not report.skipped
    assert len(records) == KNEES
    for rec in records:
        assert set(rec) == {"subject", "visit", "side", "xray", "mri", "kl"}
        gt = truth[(rec["subject"], rec["side"])]
        assert rec["visit"] == "V00" and rec["kl"] == int(gt["kl"])
        assert Path(rec["mri"]) == (cohort / gt["mri_folder"]).resolve() and Path(rec["mri"]).is_dir()
        assert Path(rec["xray"]).parent == (cohort / gt["xray_folder"]).resolve() and Path(rec["xray"]).is_file()
    train = {r["subject"] for r in datalist["training"]}
    val = {r["subject"] for r in datalist["validation"]}
    assert not train & val
    n_subjects = KNEES // 2
    assert len(val) == round(0.3 * n_subjects) and len(train) == n_subjects - len(val)
    assert index_oai(cohort, seed=0)[0] == datalist  # deterministic


def test_cli_writes_datalist_and_report(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, rep = tmp_path / "dl.json", tmp_path / "rep.json"
    assert main(["--root", str(cohort), "--out", str(out), "--seed", "1", "--report", str(rep)]) == 0
    datalist = json.loads(out.read_text())
    assert len(datalist["training"]) + len(datalist["validation"]) == KNEES
    report = json.loads(rep.read_text())
    assert report["counts"]["paired"] == KNEES and report["counts"]["skipped"] == 0
    assert rep.with_suffix(".txt").read_text().startswith("Ingestion report")
    assert "paired 12" in capsys.readouterr().out


def test_cli_adds_the_knees_of_another_tree_to_training_only(cohort: Path, tmp_path: Path) -> None:
    """``--add-training``: every knee of a second cohort joins training, the validation split stays the main
    tree's; the main tree given again adds nothing: each of its knees is reported as a duplicate or as a
    validation subject, none silently dropped, none leaking into training."""
    from xray2mri_bundle.cohort import make_cohort

    second = tmp_path / "second"
    make_cohort(second, knees=4, seed=DATA_SEED + 100, mri_matrix=DATA_MATRIX, progress=False)
    base, out, rep = tmp_path / "base.json", tmp_path / "dl.json", tmp_path / "rep.json"
    assert main(["--root", str(cohort), "--out", str(base)]) == 0
    assert main(["--root", str(cohort), "--out", str(out), "--report", str(rep),
                 "--add-training", str(second), "--add-training", str(cohort)]) == 0
    before, after = json.loads(base.read_text()), json.loads(out.read_text())
    assert after["validation"] == before["validation"]
    added = [r for r in after["training"] if r["mri"].startswith(str(second.resolve()))]
    assert len(added) == 4 and len(after["training"]) == len(before["training"]) + 4
    assert not {r["subject"] for r in after["training"]} & {r["subject"] for r in after["validation"]}
    report = json.loads(rep.read_text())
    assert report["counts"]["paired"] == KNEES + 4 and report["counts"]["training"] == len(after["training"])
    assert report["skip_reasons"] == {"duplicate_knee": len(before["training"]),
                                      "subject_in_validation": len(before["validation"])}
    assert "(training only)" in report["source"]
    assert any("added no knee" in w for w in report["warnings"])  # the main tree again: nothing new


def test_a_validation_subject_seen_at_another_visit_stays_out_of_training(cohort: Path, tmp_path: Path) -> None:
    """The rule is by subject, not by knee: an extra manifest listing a validation subject at another visit is
    refused, a training subject's new visit (its own files) is added, a knee whose MRI file is listed already is
    a duplicate whatever its visit."""
    base, out = tmp_path / "base.json", tmp_path / "dl.json"
    assert main(["--root", str(cohort), "--out", str(base)]) == 0
    before = json.loads(base.read_text())
    val, train = before["validation"][0], before["training"][0]
    follow_up = tmp_path / "follow_up"  # the training knee's files again, as a new visit would bring them
    shutil.copytree(train["mri"], follow_up / "mri")
    shutil.copytree(Path(train["xray"]).parent, follow_up / "xray")
    film = str(follow_up / "xray" / Path(train["xray"]).name)
    rows = [dict(val, visit="V01"), dict(train, visit="V01", mri=str(follow_up / "mri"), xray=film),
            dict(train, visit="V03")]
    manifest = tmp_path / "more.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["xray", "mri", "kl", "side", "subject", "visit"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    assert main(["--root", str(cohort), "--out", str(out), "--add-training", str(manifest),
                 "--expected-slices", "0"]) == 0
    after = json.loads(out.read_text())
    assert after["validation"] == before["validation"]
    new = [r for r in after["training"] if r not in before["training"]]
    assert [(r["subject"], r["visit"], r["mri"]) for r in new] == [(train["subject"], "V01", str(follow_up / "mri"))]
    report = json.loads(out.with_name("dl_report.json").read_text())
    reasons = {(s["subject"], s["visit"]): s["reason"] for s in report["skipped"]}
    assert reasons == {(val["subject"], "V01"): "subject_in_validation", (train["subject"], "V03"): "duplicate_knee"}


# ------------------------------------------------------------------------------------------ planted faults
@pytest.fixture(scope="module")
def faulty(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A copy of the cohort with one planted fault per knee (subjects 0..4); subject 5 stays clean."""
    root = tmp_path_factory.mktemp("faulty") / "cohort"
    shutil.copytree(cohort, root)
    truth = _truth(root)
    by = {(r["ParticipantID"], r["side"]): r for r in truth}
    subjects = sorted({r["ParticipantID"] for r in truth})
    mri = {key: root / r["mri_folder"] for key, r in by.items()}
    expected = {}
    s = subjects
    # 0 RIGHT: one truncated MRI slice; 0 LEFT: 79 slices
    victim = sorted(mri[(s[0], "RIGHT")].iterdir())[40]
    victim.write_bytes(victim.read_bytes()[:-100])
    expected[(s[0], "RIGHT")] = "unreadable_dicom"
    sorted(mri[(s[0], "LEFT")].iterdir())[-1].unlink()
    expected[(s[0], "LEFT")] = "slice_count"
    # 1 RIGHT: KL missing code; 1 LEFT: series folder gone (still listed in contents.csv)
    kl = _read_kl(root)
    for row in kl:
        if row["ID"] == s[1] and row["SIDE"] == "1":
            row["V00XRKL"] = "."
    _write_kl(root, kl)
    expected[(s[1], "RIGHT")] = "no_kl_grade"
    shutil.rmtree(mri[(s[1], "LEFT")])
    expected[(s[1], "LEFT")] = "missing_mri"
    # 2 RIGHT: headers say LEFT; 2 LEFT: one slice moved off the stack axis
    for path in mri[(s[2], "RIGHT")].iterdir():
        ds = pydicom.dcmread(path)
        ds.Laterality = "L"
        ds.SeriesDescription = "COR_T1_3D_FLASH_LEFT"
        ds.save_as(path)
    expected[(s[2], "RIGHT")] = "side_mismatch"
    path = sorted(mri[(s[2], "LEFT")].iterdir())[10]
    ds = pydicom.dcmread(path)
    ds.ImagePositionPatient = [float(v) + (0.7 if i == 1 else 0.0) for i, v in enumerate(ds.ImagePositionPatient)]
    ds.save_as(path)
    expected[(s[2], "LEFT")] = "inconsistent_geometry"
    # 3 RIGHT: file names shuffled (must still index); 3 LEFT: untouched
    folder = mri[(s[3], "RIGHT")]
    files = sorted(folder.iterdir())
    rng = np.random.default_rng(0)
    for i, f in enumerate(files):
        f.rename(folder / f"tmp{i}")
    for i, j in enumerate(rng.permutation(len(files))):
        (folder / f"tmp{i}").rename(folder / f"{j + 1:03d}")
    # 4: the film is truncated -> both knees skipped
    film = next((root / by[(s[4], "RIGHT")]["xray_folder"]).iterdir())
    film.write_bytes(film.read_bytes()[: len(film.read_bytes()) // 2])
    expected[(s[4], "RIGHT")] = expected[(s[4], "LEFT")] = "unreadable_dicom"
    return root, expected


def test_planted_faults_are_reported_and_the_rest_indexed(faulty: tuple[Path, dict]) -> None:
    root, expected = faulty
    datalist, report = index_oai(root, seed=0)
    got = {(k.subject, k.side): k.reason for k in report.skipped}
    assert got == expected
    assert all(k.detail for k in report.skipped)
    paired = {(r["subject"], r["side"]) for r in datalist["training"] + datalist["validation"]}
    assert len(paired) == KNEES - len(expected) == report.paired
    assert report.knees_found == KNEES
    truncated = next(k for k in report.skipped if k.reason == "unreadable_dicom" and k.path.endswith("041"))
    assert "truncated" in truncated.detail
    summary = report.summary()
    assert "skipped    1 x slice_count" in summary and "skipped    3 x unreadable_dicom" in summary


def test_shuffled_names_are_ordered_by_position(faulty: tuple[Path, dict], cohort: Path) -> None:
    root, expected = faulty
    subject = sorted({k[0] for k in expected})[3]
    gt = next(r for r in _truth(root) if r["ParticipantID"] == subject and r["side"] == "RIGHT")
    shuffled = inspect_series(root / gt["mri_folder"])
    original = inspect_series(cohort / gt["mri_folder"])
    assert np.all(np.diff(shuffled.positions_mm) > 0)
    np.testing.assert_allclose(shuffled.positions_mm, original.positions_mm)
    for a, b in zip(shuffled.files, original.files, strict=True):
        assert a.read_bytes() == b.read_bytes()


# ------------------------------------------------------------------------------------------ manifest
def test_manifest_with_png_and_nifti(cohort: Path, tmp_path: Path) -> None:
    import nibabel as nib
    from PIL import Image

    truth = _truth(cohort)
    rows = []
    for r in truth[:4]:
        film = next((cohort / r["xray_folder"]).iterdir())
        rows.append({"xray": str(film), "mri": str(cohort / r["mri_folder"]), "kl": r["kl"], "side": r["side"],
                     "subject": r["ParticipantID"]})
    # one PNG film + NIfTI MRI, relative paths
    from xray2mri_bundle.data.mri_io import load_mri_volume

    vol, affine, _ = load_mri_volume(cohort / truth[4]["mri_folder"])
    nib.save(nib.Nifti1Image(vol.astype(np.int16), affine), tmp_path / "mri.nii.gz")
    pixels = pydicom.dcmread(next((cohort / truth[4]["xray_folder"]).iterdir())).pixel_array
    Image.fromarray(pixels.astype(np.uint16)).save(tmp_path / "film.png")
    rows.append({"xray": "film.png", "mri": "mri.nii.gz", "kl": truth[4]["kl"], "side": "R", "subject": ""})
    rows.append({"xray": "film.png", "mri": "missing.nii.gz", "kl": "1", "side": "L", "subject": ""})
    rows.append({"xray": "film.png", "mri": "mri.nii.gz", "kl": "9", "side": "L", "subject": ""})
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["xray", "mri", "kl", "side", "subject"])
        writer.writeheader()
        writer.writerows(rows)
    datalist, report = index_manifest(manifest, seed=0)
    records = datalist["training"] + datalist["validation"]
    assert report.knees_found == 7 and report.paired == 5
    assert sorted(s.reason for s in report.skipped) == ["missing_file", "no_kl_grade"]
    png = next(r for r in records if r["xray"].endswith("film.png"))
    assert png["subject"] == "film.png" and png["side"] == "RIGHT" and Path(png["mri"]).is_absolute()


# ------------------------------------------------------------------------------------------ messy tables
@pytest.fixture()
def copy(cohort: Path, tmp_path: Path) -> Path:
    root = tmp_path / "cohort"
    shutil.copytree(cohort, root)
    return root


def test_non_utf8_tables_are_decoded_and_the_encoding_reported(copy: Path) -> None:
    contents = copy / "contents.csv"
    contents.write_bytes(contents.read_bytes() + b"# caf\xe9\n")  # a Windows-1252 byte in a comment row
    table = copy / "kXR_SQ_BU00.txt"
    table.write_bytes(table.read_bytes() + b"M\xfcller|x|y|z\n")  # a garbage line with a Latin-1 byte
    datalist, report = index_oai(copy, check_pixels=False)
    notes = "\n".join(report.warnings)
    assert "contents.csv: not UTF-8 (byte 0xe9" in notes and "decoded as cp1252" in notes
    assert "kXR_SQ_BU00.txt: not UTF-8 (byte 0xfc" in notes
    assert "kXR_SQ_BU00.txt: 1 line(s) without an ID or SIDE ignored" in notes
    assert report.paired == KNEES


def test_a_kl_table_with_the_wrong_delimiter_is_one_clear_error(copy: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    table = copy / "kXR_SQ_BU00.txt"
    table.write_text(table.read_text().replace("|", ","))
    with pytest.raises(ValueError, match="kXR_SQ_BU00.txt: not a '\\|'-delimited KL table"):
        index_oai(copy, check_pixels=False)

    assert main(["--root", str(copy), "--out", str(copy / "dl.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "kXR_SQ_BU00.txt" in err[0]


def test_invalid_kl_duplicate_film_and_escaping_folder_are_reported(copy: Path) -> None:
    rows = _read_kl(copy)
    rows[0]["V00XRKL"] = "7"
    _write_kl(copy, rows)
    contents = copy / "contents.csv"
    lines = contents.read_text().splitlines()
    film_line = next(line for line in lines if "Bilateral" in line)
    lines += [film_line, film_line.replace(film_line.split(",")[0], "../../etc", 1)]
    contents.write_text("\n".join(lines) + "\n")
    _, report = index_oai(copy, check_pixels=False)
    notes = "\n".join(report.warnings)
    assert f"kXR_SQ_BU00.txt:2: invalid KL value '7' for {rows[0]['ID']}" in notes
    assert "(X-ray) listed twice" in notes
    assert "'../../etc' is outside --root" in notes
