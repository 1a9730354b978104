"""scripts/rescan_ceiling.py: a second true MRI of a cohort knee, from the generator, scored like the evaluator."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pydicom

from xray2mri_bundle.cohort.generate import CohortConfig, participant_id, simulate_subject
from xray2mri_bundle.engines.datalist import load_datalist
from xray2mri_bundle.evaluation.evaluator import select_knees

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "rescan_ceiling.py"


def _script():
    spec = importlib.util.spec_from_file_location("rescan_ceiling", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generator_gives_back_the_stored_mri_and_the_twins_differ_as_described(cohort: Path,
                                                                                   tmp_path: Path) -> None:
    """The twin starts from the very knee in the cohort (its stored series reproduced bit for bit), the rescan keeps
    the placement (much closer to the truth than the repositioned twin), and the run writes its per-knee JSON."""
    rc = _script()
    info = json.loads((cohort / "cohort.json").read_text())
    assert rc.subject_index(info["seed"], participant_id(info["seed"], 3)) == 3
    record = select_knees(load_datalist(cohort, None)["validation"], 1)[0]  # the knee the script scores
    index = rc.subject_index(info["seed"], str(record["subject"]))
    spacing = info["xray_spacing_mm"]
    cfg = CohortConfig(seed=info["seed"], mri_matrix=info["mri_matrix"], xray_grid_mm=info["xray_grid_mm"],
                       xray_spacing_mm=tuple(spacing) if isinstance(spacing, list) else spacing)
    slices = sorted((pydicom.dcmread(p) for p in Path(record["mri"]).iterdir()),
                    key=lambda ds: float(ds.ImagePositionPatient[1]))
    stored = np.stack([ds.pixel_array for ds in slices])
    assert np.array_equal(stored, simulate_subject(cfg, index).knees[record["side"]].mri)

    assert rc.main(["--dataset-dir", str(cohort), "--max-knees", "1", "--slices", "10", "--size", "64",
                    "--draws", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "rescan_ceiling.json").read_text())
    knee = result["per_knee"][0]
    assert result["knees"] == 1 and (knee["subject"], knee["side"]) == (str(record["subject"]), record["side"])
    assert knee["rescan"]["ssim"] > 0.6 and knee["rescan"]["ssim"] > knee["repositioned"]["ssim"] + 0.1
    assert knee["rescan"]["psnr"] > knee["repositioned"]["psnr"] and len(knee["shifted"]["draws"]) == 1
    twin = tmp_path / "twins" / f"{knee['subject']}_{knee['side']}_rescan_0"
    assert len(list(twin.iterdir())) == stored.shape[0]


def test_slab_start_keeps_the_paper_slices_or_centres_the_joint() -> None:
    """``--frame slices``: the paper's 13-63; ``--frame joint``: the joint at kept index 23, inside the 80 slices."""
    rc = _script()
    assert rc.slab_start("slices", None) == rc.slab_start("joint", 36.4) == 13
    assert rc.slab_start("joint", 38.0) == 15
    assert rc.slab_start("joint", 2.0) == 0 and rc.slab_start("joint", 79.0) == 30
