"""Kellgren-Lawrence grades and the findings they imply, for the synthetic cohort.

KL grades are drawn per knee from the OAI baseline prior (39/18/26/13/3 %, normalised) with the two knees
of a subject correlated through a Gaussian copula (the marginal per knee stays the prior exactly). A grade
sets the radiographic findings: joint-space narrowing (medial compartment first), marginal osteophytes,
subchondral sclerosis, varus drift. MRI-only findings (effusion, focal cartilage defect, bone-marrow lesion)
are drawn from their own random stream with a probability that only rises gently with KL, so the film
does not carry all the information in the MRI.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

#: OAI baseline KL distribution for grades 0..4 (per cent as published; normalised below, it sums to 99).
KL_PERCENT = (39.0, 18.0, 26.0, 13.0, 3.0)
KL_PRIOR = np.asarray(KL_PERCENT) / sum(KL_PERCENT)

#: Fraction of the healthy joint-space width lost in the narrowed compartment, (low, high) per KL grade.
NARROWING = ((0.0, 0.04), (0.04, 0.15), (0.12, 0.3), (0.42, 0.62), (0.8, 0.92))
#: Osteophyte size (mm) by OARSI-like grade 1..3 (index 0 unused).
OSTEOPHYTE_MM = ((0.0, 0.0), (1.8, 2.8), (3.2, 4.6), (5.0, 7.0))
SITES = ("femur_medial", "tibia_medial", "femur_lateral", "tibia_lateral")


def sample_kl_grades(rng: np.random.Generator, n_subjects: int, rho: float = 0.6) -> np.ndarray:
    """KL grades (n_subjects, 2) int, columns (right, left); each knee's marginal is :data:`KL_PRIOR`.

    ``rho`` is the latent correlation between a subject's knees (OAI knees are strongly concordant).
    """
    shared = rng.standard_normal((n_subjects, 1))
    own = rng.standard_normal((n_subjects, 2))
    u = ndtr(np.sqrt(rho) * shared + np.sqrt(1.0 - rho) * own)
    return np.searchsorted(np.cumsum(KL_PRIOR)[:-1], u, side="right").astype(np.int64)


@dataclass(frozen=True)
class Findings:
    """Disease state of one knee. Sizes in mm, angles in degrees; compartments are anatomical."""

    kl: int
    jsn_compartment: str  # "medial" or "lateral": the compartment that narrows
    narrowing_medial: float  # fraction of the healthy joint-space width lost, 0..1
    narrowing_lateral: float
    osteophyte_grade: int  # 0-3, the largest marginal osteophyte
    osteophytes: tuple[tuple[str, float, float], ...]  # (site in SITES, size mm, antero-posterior offset mm)
    sclerosis: int  # 0-2 subchondral sclerosis of the narrowed compartment
    varus_deg: float  # added varus (+) / valgus (-) from compartment collapse
    spine_mm: float  # tibial spine sharpening (extra height)
    effusion: int  # MRI-only
    cartilage_defect: int  # MRI-only: focal defect of the medial femoral cartilage
    defect_y_mm: float
    defect_radius_mm: float
    bone_marrow_lesion: int  # MRI-only: subchondral marrow oedema-like lesion
    bml_site: str  # "femur" or "tibia", narrowed compartment
    meniscal_extrusion_mm: float


def _osteophyte_grade(kl: int, rng: np.random.Generator) -> int:
    choices = {0: ((0,), (1.0,)), 1: ((0, 1), (0.5, 0.5)), 2: ((1, 2), (0.7, 0.3)),
               3: ((1, 2, 3), (0.15, 0.65, 0.2)), 4: ((2, 3), (0.35, 0.65))}[kl]
    return int(rng.choice(choices[0], p=choices[1]))


def sample_findings(kl: int, rng_xray: np.random.Generator, rng_mri: np.random.Generator) -> Findings:
    """Findings for one knee of grade ``kl``: radiographic ones from ``rng_xray``, MRI-only from ``rng_mri``."""
    kl = int(kl)
    lateral = kl >= 2 and rng_xray.random() < 0.12
    jsn = "lateral" if lateral else "medial"
    lo, hi = NARROWING[kl]
    main = float(rng_xray.uniform(lo, hi))
    other = float(rng_xray.uniform(0.0, 0.12 if kl >= 4 else 0.04))
    grade = _osteophyte_grade(kl, rng_xray)
    near = ("femur_medial", "tibia_medial") if jsn == "medial" else ("femur_lateral", "tibia_lateral")
    far = tuple(s for s in SITES if s not in near)
    osteophytes: list[tuple[str, float, float]] = []
    if grade > 0:
        sites = list(near) + [s for s in far if rng_xray.random() < 0.25 * grade]
        for site in sites:
            g = grade if site in near else max(1, grade - 1)
            size = float(rng_xray.uniform(*OSTEOPHYTE_MM[g]))
            osteophytes.append((site, size, float(rng_xray.uniform(-8.0, 8.0))))
    sclerosis = {0: 0, 1: 0, 2: int(rng_xray.random() < 0.3), 3: 1, 4: 2}[kl]
    sign = 1.0 if jsn == "medial" else -1.0
    varus = sign * 7.0 * main + float(rng_xray.normal(0.0, 0.4))
    spine = float(rng_xray.uniform(0.0, 1.0)) * max(0, kl - 1) * 0.8
    # MRI-only findings: own stream, weak dependence on KL.
    effusion = int(rng_mri.random() < 0.12 + 0.07 * kl)
    defect = int(rng_mri.random() < 0.08 + 0.12 * kl)
    bml = int(rng_mri.random() < 0.05 + 0.1 * kl)
    return Findings(
        kl=kl, jsn_compartment=jsn,
        narrowing_medial=main if jsn == "medial" else other,
        narrowing_lateral=main if jsn == "lateral" else other,
        osteophyte_grade=grade, osteophytes=tuple(osteophytes), sclerosis=sclerosis, varus_deg=varus,
        spine_mm=spine, effusion=effusion, cartilage_defect=defect,
        defect_y_mm=float(rng_mri.uniform(-12.0, 12.0)), defect_radius_mm=float(rng_mri.uniform(2.5, 4.5)),
        bone_marrow_lesion=bml, bml_site=str(rng_mri.choice(["femur", "tibia"])),
        meniscal_extrusion_mm=float(rng_mri.uniform(0.0, 1.0)) * max(0, kl - 1) * 1.2,
    )
