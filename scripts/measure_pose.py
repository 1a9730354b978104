"""Measure the canonical-pose registration (data.pose, AlignMRIPose) against the synthetic cohort's true rotations.

For knees of a cohort made by ``xray2mri make-cohort``, the generator's own placement gives the rotation of the knee
in the MRI (``cohort.mri.place_mri``, replayed from the subject's random stream). The registration estimates the
rotation that maps the template onto the knee; the template sits in the training knees' mean pose, so estimate and
truth differ by one rotation common to all knees (the template's own pose), which is removed (chordal mean over
the knees) before the per-knee error is taken. Left knees are compared in the right-knee frame (image mirrored
along the columns), where the template's offset is the same for both sides. Reports the median, 95th percentile
and maximum error in degrees, before and after removing that offset, and the median true rotation (what the
frame removes).

    python scripts/measure_pose.py --cohort data/cohort_train --template <model_dir>/mri_pose_template.pt \
        --knees 60 --out outputs/pose_accuracy.json

Synthetic data; the figures say nothing about real MRIs.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from rescan_ceiling import subject_index

from xray2mri_bundle.cohort import mri
from xray2mri_bundle.cohort.generate import subject_streams
from xray2mri_bundle.data.localiser import MRIJointLocaliser
from xray2mri_bundle.data.mri_io import load_mri_volume
from xray2mri_bundle.data.pose import load_pose_template, register, rotation_matrix, template_axes
from xray2mri_bundle.evaluation.evaluator import read_ground_truth

#: world (x: patient left, y: posterior, z: superior) -> image mm (depth = y, row = -z, col = x)
WORLD_TO_IMAGE = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
MIRROR_COLUMNS = np.diag([1.0, 1.0, -1.0])


def true_rotation(seed: int, matrix: int, pid: str, side: str) -> np.ndarray:
    """The knee's rotation in the MRI, in image axes of a right knee (a left knee's image mirrored along columns;
    the generator draws both sides' rotations from one distribution in that frame)."""
    _, pose = mri.place_mri(side, matrix, subject_streams(seed, subject_index(seed, pid))[f"mri_{side.lower()}"])
    mirror = np.diag([1.0, 1.0, 1.0]) if side == "RIGHT" else np.diag([-1.0, 1.0, 1.0])
    R = (pose.M @ mirror).T  # pose.M = R.T @ F
    return WORLD_TO_IMAGE @ R @ WORLD_TO_IMAGE.T


def angle_deg(R: np.ndarray) -> float:
    return math.degrees(math.acos(float(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0))))


def chordal_mean(rotations: list[np.ndarray]) -> np.ndarray:
    u, _, vt = np.linalg.svd(np.mean(rotations, axis=0))
    return u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohort", required=True, help="cohort made by xray2mri make-cohort")
    parser.add_argument("--template", required=True, help="pose template (xray2mri pose-template)")
    parser.add_argument("--knees", type=int, default=60, help="first knees of ground_truth.csv")
    parser.add_argument("--iterations", type=int, default=80, help="registration steps (AlignMRIPose's default 80)")
    parser.add_argument("--scale", action="store_true", help="fit an isotropic size factor too (register scale=True)")
    parser.add_argument("--subjects", help="comma-separated participant IDs to measure (default: the first --knees)")
    parser.add_argument("--out", help="JSON with the per-knee errors")
    args = parser.parse_args(argv)
    root = Path(args.cohort)
    info = json.loads((root / "cohort.json").read_text())
    seed, matrix = int(info["seed"]), int(info["mri_matrix"])
    template = load_pose_template(args.template)
    localiser = MRIJointLocaliser()
    rows = []
    table = read_ground_truth(root)
    chosen = [k for k in table if k[0] in args.subjects.split(",")] if args.subjects else list(table)[: args.knees]
    for pid, side in chosen:
        gt = table[(pid, side)]
        volume, _, meta = load_mri_volume(root / gt["mri_folder"])
        dhw, spacing, anchor = template_axes(volume, meta["spacing"], side, localiser, template.depth_anchor)
        found, ncc = register(dhw, spacing, anchor, template.for_side(side), args.iterations, scale=args.scale)
        estimate = rotation_matrix(torch.tensor(found.omega, dtype=torch.float64)).numpy()
        if side == "LEFT":  # registered to the mirrored template: the same rotation in the right-knee frame
            estimate = MIRROR_COLUMNS @ estimate @ MIRROR_COLUMNS
        rows.append({"subject": pid, "side": side, "ncc": ncc, "truth": true_rotation(seed, matrix, pid, side),
                     "estimate": estimate})
        print(f"[{len(rows)}] {pid} {side}: true rotation {angle_deg(rows[-1]['truth']):.2f} deg, "
              f"estimated {angle_deg(estimate):.2f} deg, NCC {ncc:.3f}", flush=True)
    offset = chordal_mean([r["truth"].T @ r["estimate"] for r in rows])
    raw = np.array([angle_deg(r["truth"].T @ r["estimate"]) for r in rows])
    error = np.array([angle_deg((r["truth"] @ offset).T @ r["estimate"]) for r in rows])
    true = np.array([angle_deg(r["truth"]) for r in rows])
    summary = {
        "cohort": str(root), "seed": seed, "knees": len(rows), "template_offset_deg": angle_deg(offset),
        "true_rotation_deg": {"median": float(np.median(true)), "p95": float(np.percentile(true, 95))},
        "error_deg": {"median": float(np.median(error)), "p95": float(np.percentile(error, 95)),
                      "max": float(error.max())},
        "error_without_offset_removal_deg": {"median": float(np.median(raw)), "max": float(raw.max())},
        "per_knee": [{"subject": r["subject"], "side": r["side"], "ncc": r["ncc"], "true_deg": float(t),
                      "error_deg": float(e)} for r, t, e in zip(rows, true, error, strict=True)],
    }
    print(f"{len(rows)} knees: true rotation median {summary['true_rotation_deg']['median']:.2f} deg; registration "
          f"error median {summary['error_deg']['median']:.2f}, p95 {summary['error_deg']['p95']:.2f}, max "
          f"{summary['error_deg']['max']:.2f} deg (template offset {summary['template_offset_deg']:.2f} deg removed)")
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
