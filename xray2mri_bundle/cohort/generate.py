"""Generate the synthetic OAI-like cohort: ``make_cohort`` and the ``make-cohort`` command.

Each subject (two knees) is simulated from its own random streams, seeded by ``(seed, subject index)``,
so knee k is the same whatever the cohort size or number of workers. A subject gets: KL grades (OAI prior,
knees correlated), one shape (each knee a small perturbation of it, the left one mirrored), findings,
two coronal T1 MRI series and one bilateral PA fixed-flexion film projected from the same phantoms.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from xray2mri_bundle.constants import COHORT_DISCLAIMER, MRI_KEPT_SLICES, MRI_SLICE_MM, MRI_SLICES, OAI_MRI_FOV_MM

from . import anatomy, dicom_writer, grading, mri, tables, xray

GENERATOR_VERSION = "1.1"  # 1.1: film magnification (SID / SOD per site, DICOM tags)
VISIT = "V00"
VISIT_PREFIX = "0"  # OAI folder prefix of the baseline visit
DISCLAIMER = COHORT_DISCLAIMER
SIDES = ("RIGHT", "LEFT")
_STREAMS = ("kl", "shape", "findings_right", "findings_left", "mri_findings_right", "mri_findings_left",
            "knee_right", "knee_left", "mri_right", "mri_left", "film", "meta")


@dataclass(frozen=True)
class CohortConfig:
    """Generator parameters. ``xray_spacing_mm``: one detector pixel size or a (low, high) range over sites."""

    seed: int = 0
    mri_matrix: int = 256
    xray_spacing_mm: float | tuple[float, float] = (0.4, 0.6)
    xray_grid_mm: float = 1.0


@dataclass
class KneeData:
    """One simulated knee: parameters, measured JSW, MRI volume and placement."""

    side: str
    params: anatomy.KneeParams
    jsw_mm: tuple[float, float]  # (medial, lateral), measured on the phantom
    mri: np.ndarray  # (80, N, N) uint16, position order (index 0 = most anterior)
    mri_geometry: mri.MriGeometry
    mri_joint: tuple[float, float, float]  # (slice, row, col) of the joint centre
    acquisition_order: list[int]
    film_joint: tuple[float, float] = (0.0, 0.0)  # (row, col) in the film


@dataclass
class SubjectData:
    """One simulated subject: identity, dates, the film and both knees."""

    index: int
    participant_id: str
    patient: dicom_writer.Patient
    mri_date: str
    xray_date: str
    site: xray.Site
    photometric: str
    film: xray.Film
    film_image: np.ndarray
    series_numbers: dict[str, int]
    kl_readprj37: dict[str, int]
    knees: dict[str, KneeData] = field(default_factory=dict)


def participant_id(seed: int, index: int) -> str:
    """Seven digits starting with 9 (OAI style); distinct for distinct indices of one seed."""
    return f"9{(index * 7919 + seed * 104729 + 99) % 1_000_000:06d}"


def subject_streams(seed: int, index: int) -> dict[str, np.random.Generator]:
    """Independent generators per purpose for subject ``index`` (depends only on seed and index)."""
    children = np.random.SeedSequence(entropy=seed, spawn_key=(index,)).spawn(len(_STREAMS))
    return {name: np.random.default_rng(child) for name, child in zip(_STREAMS, children, strict=True)}


def _date(start: dt.date, days: int) -> str:
    return (start + dt.timedelta(days=int(days))).strftime("%Y%m%d")


def simulate_subject(cfg: CohortConfig, index: int, kl: tuple[int, int] | None = None) -> SubjectData:
    """Simulate subject ``index`` in memory (no I/O); ``kl`` = (right, left) overrides the drawn grades."""
    rs = subject_streams(cfg.seed, index)
    grades = tuple(int(g) for g in grading.sample_kl_grades(rs["kl"], 1)[0])
    if kl is not None:
        grades = (int(kl[0]), int(kl[1]))
    base = anatomy.sample_shape(rs["shape"])
    meta = rs["meta"]
    mri_day = int(meta.integers(0, 900))
    start = dt.date(2004, 2, 1)
    series = [int(v) for v in meta.choice(90_000_000, size=3, replace=False) + 10_000_000]
    extra = {}
    if meta.random() < 0.06:
        side = SIDES[int(meta.integers(0, 2))]
        extra[side] = int(np.clip(grades[SIDES.index(side)] + meta.choice([-1, 0, 0, 1]), 0, 4))
    site = xray.make_sites(cfg.xray_spacing_mm)[index % 5]
    photometric = "MONOCHROME1" if index % 2 else "MONOCHROME2"
    pid = participant_id(cfg.seed, index)
    patient = dicom_writer.Patient(participant_id=pid, sex=str(meta.choice(["F", "M"], p=[0.58, 0.42])),
                                   age=int(meta.integers(45, 80)))
    film, poses = xray.place_film(site, base.tib_ax / anatomy.Shape().tib_ax, rs["film"])
    line = np.zeros((film.rows, film.cols), dtype=np.float32)
    marrow = np.zeros_like(line)
    # Acquisition (= instance number = file name) order: anterior or posterior slice first, opposite for the
    # two knees of a subject, so a reader must sort the slices by position.
    right_first = bool(meta.random() < 0.5)
    posterior_first = {"RIGHT": right_first, "LEFT": not right_first}
    knees = {}
    for side, grade in zip(SIDES, grades, strict=True):
        low = side.lower()
        findings = grading.sample_findings(grade, rs[f"findings_{low}"], rs[f"mri_findings_{low}"])
        shape = anatomy.perturb_shape(base, rs[f"knee_{low}"])
        params = anatomy.knee_params(shape, side, findings, rs[f"knee_{low}"])
        layers = anatomy.build_layers(params)
        rng_mri = rs[f"mri_{low}"]
        geom, pose = mri.place_mri(side, cfg.mri_matrix, rng_mri)
        order = list(range(MRI_SLICES))[::-1] if posterior_first[side] else list(range(MRI_SLICES))
        volume, _ = mri.simulate_mri(layers, pose, geom, rng_mri)
        l_side, m_side = xray.project(layers, poses[side], film, grid_mm=cfg.xray_grid_mm)
        line += l_side
        marrow += m_side
        knees[side] = KneeData(side=side, params=params, jsw_mm=anatomy.measure_jsw(params), mri=volume,
                               mri_geometry=geom, mri_joint=geom.to_pixel(pose.t), acquisition_order=order,
                               film_joint=film.to_pixel(poses[side].t))
    image = xray.expose(line, marrow, film, site.bits_stored, photometric == "MONOCHROME1", rs["film"])
    return SubjectData(index=index, participant_id=pid, patient=patient, mri_date=_date(start, mri_day),
                       xray_date=_date(start, mri_day - int(meta.integers(0, 15))), site=site,
                       photometric=photometric, film=film, film_image=image,
                       series_numbers={"RIGHT": series[0], "LEFT": series[1], "XRAY": series[2]},
                       kl_readprj37=extra, knees=knees)


def _folders(s: SubjectData) -> dict[str, str]:
    out = {side: f"{VISIT_PREFIX}.C.2/{s.participant_id}/{s.mri_date}/{s.series_numbers[side]:08d}" for side in SIDES}
    out["XRAY"] = f"{VISIT_PREFIX}.E.1/{s.participant_id}/{s.xray_date}/{s.series_numbers['XRAY']:08d}"
    return out


def write_subject(s: SubjectData, root: Path, cfg: CohortConfig) -> dict[str, list[dict[str, object]]]:
    """Write a subject's DICOM files under ``root``; return its rows for the cohort tables."""
    folders = _folders(s)
    pid = s.participant_id
    rows: dict[str, list[dict[str, object]]] = {"contents": [], "kl": [], "ground_truth": []}
    for side in SIDES:
        k = s.knees[side]
        g = k.mri_geometry
        desc = f"COR_T1_3D_FLASH_{side}"
        number = s.series_numbers[side]
        info = dicom_writer.SeriesInfo(
            study_uid=dicom_writer.cohort_uid(cfg.seed, pid, VISIT, "study", "MR"),
            series_uid=dicom_writer.cohort_uid(cfg.seed, pid, VISIT, "series", number),
            frame_uid=dicom_writer.cohort_uid(cfg.seed, pid, VISIT, "frame", number), series_number=number,
            date=s.mri_date, time=f"{10 + s.index % 8:02d}{(s.index * 7) % 60:02d}{30 if side == 'LEFT' else 0:02d}",
            description=desc, institution=f"Synthetic {s.site.name.replace('_', ' ').title()}")
        dicom_writer.write_mr_series(root / folders[side], k.mri, s.patient, info, seed=cfg.seed,
                                     laterality=side[0], pixel_mm=g.pixel_mm, x0=g.x0, y0=g.y0, z0=g.z0,
                                     slice_mm=MRI_SLICE_MM, acquisition_order=k.acquisition_order)
        rows["contents"].append({"Folder": folders[side], "ParticipantID": pid, "StudyDate": s.mri_date,
                                 "SeriesDescription": desc, "Modality": "MR"})
    number = s.series_numbers["XRAY"]
    info = dicom_writer.SeriesInfo(
        study_uid=dicom_writer.cohort_uid(cfg.seed, pid, VISIT, "study", "XR"),
        series_uid=dicom_writer.cohort_uid(cfg.seed, pid, VISIT, "series", number),
        frame_uid=dicom_writer.cohort_uid(cfg.seed, pid, VISIT, "frame", number), series_number=number,
        date=s.xray_date, time=f"{9 + s.index % 8:02d}{(s.index * 11) % 60:02d}00",
        description="Bilateral PA Fixed Flexion Knee", institution=f"Synthetic {s.site.name.replace('_', ' ').title()}")
    dicom_writer.write_film(root / folders["XRAY"] / "001", s.film_image, s.patient, info, seed=cfg.seed,
                            modality=s.site.modality, photometric=s.photometric, bits_stored=s.site.bits_stored,
                            spacing_mm=s.site.spacing_mm, model=s.site.manufacturer_model,
                            source_detector_mm=s.site.source_detector_mm, source_patient_mm=s.site.source_patient_mm)
    rows["contents"].append({"Folder": folders["XRAY"], "ParticipantID": pid, "StudyDate": s.xray_date,
                             "SeriesDescription": "Bilateral PA Fixed Flexion Knee", "Modality": s.site.modality})
    for side_code, side in ((1, "RIGHT"), (2, "LEFT")):
        k = s.knees[side]
        f = k.params.findings
        rows["kl"].append({"ID": pid, "SIDE": side_code, "V00XRKL": f.kl, "READPRJ": 15})
        if side in s.kl_readprj37:
            rows["kl"].append({"ID": pid, "SIDE": side_code, "V00XRKL": s.kl_readprj37[side], "READPRJ": 37})
        sl, mr, mc = k.mri_joint
        rows["ground_truth"].append({
            "ParticipantID": pid, "side": side, "visit": VISIT, "kl": f.kl, "xray_folder": folders["XRAY"],
            "mri_folder": folders[side], "joint_row": round(k.film_joint[0]), "joint_col": round(k.film_joint[1]),
            "xray_pixel_spacing_mm": s.site.spacing_mm,
            "xray_magnification": round(s.site.magnification, 6), "jsw_medial_mm": f"{k.jsw_mm[0]:.2f}",
            "jsw_lateral_mm": f"{k.jsw_mm[1]:.2f}", "effusion": f.effusion, "cartilage_defect": f.cartilage_defect,
            "osteophytes": f.osteophyte_grade, "mri_joint_row": round(mr, 2), "mri_joint_col": round(mc, 2),
            "mri_joint_slice": round(sl, 2), "mri_pixel_spacing_mm": k.mri_geometry.pixel_mm,
            "mri_matrix": k.mri_geometry.matrix, "bone_marrow_lesion": f.bone_marrow_lesion, "sclerosis": f.sclerosis,
            "jsn_compartment": f.jsn_compartment, "varus_deg": f"{k.params.varus_deg:.2f}",
            "meniscal_extrusion_mm": f"{f.meniscal_extrusion_mm:.2f}", "site": s.site.name,
            "xray_modality": s.site.modality, "xray_photometric": s.photometric,
            "xray_bits_stored": s.site.bits_stored, "xray_rows": s.film.rows, "xray_cols": s.film.cols,
            "mri_acquisition_order": "AP" if k.acquisition_order[0] == 0 else "PA",
            "kl_readprj37": s.kl_readprj37.get(side, ""),
        })
    return rows


def _one_subject(job: tuple[CohortConfig, int, str]) -> dict[str, list[dict[str, object]]]:
    cfg, index, root = job
    return write_subject(simulate_subject(cfg, index), Path(root), cfg)


def make_cohort(out_dir: str | os.PathLike[str], knees: int = 100, seed: int = 0, mri_matrix: int = 256,
                xray_spacing_mm: float | tuple[float, float] = (0.4, 0.6), progress: bool = True,
                workers: int | None = None) -> Path:
    """Write a cohort of ``knees`` knees (rounded up to whole subjects) under ``out_dir``; return its path.

    ``workers`` processes simulate subjects in parallel (default: up to 2); the output does not depend on it.
    """
    if knees < 1:
        raise ValueError("knees must be >= 1")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    cfg = CohortConfig(seed=int(seed), mri_matrix=int(mri_matrix),
                       xray_spacing_mm=xray_spacing_mm if isinstance(xray_spacing_mm, int | float)
                       else (float(xray_spacing_mm[0]), float(xray_spacing_mm[1])))
    n_subjects = (knees + 1) // 2
    workers = min(2, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    jobs = [(cfg, i, str(root)) for i in range(n_subjects)]
    bar = tqdm(total=n_subjects, unit="subject", desc="make-cohort", file=sys.stderr, disable=not progress)
    results: list[dict[str, list[dict[str, object]]]] = []
    if workers == 1 or n_subjects == 1:
        for job in jobs:
            results.append(_one_subject(job))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=min(workers, n_subjects)) as pool:
            for res in pool.map(_one_subject, jobs):
                results.append(res)
                bar.update()
    bar.close()
    tables.write_contents(root, [r for res in results for r in res["contents"]])
    tables.write_kl_table(root, [r for res in results for r in res["kl"]])
    tables.write_ground_truth(root, [r for res in results for r in res["ground_truth"]])
    spacing = cfg.xray_spacing_mm
    tables.write_cohort_json(root, {
        "generator": "xray2mri_bundle.cohort", "version": GENERATOR_VERSION, "seed": cfg.seed,
        "knees": 2 * n_subjects, "knees_requested": int(knees), "subjects": n_subjects, "visit": VISIT,
        "mri_matrix": cfg.mri_matrix, "mri_slices": MRI_SLICES, "mri_slice_thickness_mm": MRI_SLICE_MM,
        "mri_fov_mm": OAI_MRI_FOV_MM, "mri_kept_slices": list(MRI_KEPT_SLICES), "mri_slice_index_0": "most anterior",
        "xray_spacing_mm": list(spacing) if isinstance(spacing, tuple) else [spacing, spacing],
        "xray_grid_mm": cfg.xray_grid_mm, "kl_prior": [round(float(v), 6) for v in grading.KL_PRIOR],
        "sites": [s.__dict__ for s in xray.make_sites(spacing)], "synthetic": True, "disclaimer": DISCLAIMER,
    })
    return root
