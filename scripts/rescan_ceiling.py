"""How well can ANY single sample score? A second true MRI of the same knee, scored against the first.

The synthetic cohort draws parts of each MRI that the X-ray cannot tell: the scanner placement (field-of-view
centre, which slice holds the joint, small rotations), the coil's bias field, the gain and the Rician noise. A
generator that samples the true conditional distribution perfectly still draws these afresh, so its single sample
differs from the truth at least as much as a second acquisition of the same knee does. This script makes that
second acquisition for the evaluation knees of a synthetic cohort (same subject, anatomy, findings and X-ray; the
cohort generator's own functions with fresh random streams), runs it through the same MRI preprocessing as the
truth (slices 13-63, joint localiser, 140 mm joint-centred frame, percentiles) and scores it with the evaluator's
metrics on the evaluator's slices. Three twins per knee:

- ``rescan``: same placement, new bias field, gain and noise (the knee scanned again without moving);
- ``shifted``: the knee's own rotation in the scanner, a new position (field-of-view centre, joint slice), new noise;
- ``repositioned``: new position and rotation too (the knee taken out and put back, as between two visits).

``--frame slices`` (default) keeps the paper's slices 13-63 of every volume; ``--frame joint`` keeps 50 slices
centred in depth on each volume's TRUE joint slice (ground truth for the cohort knee, the generator's placement
for the twin): an oracle frame that shows how much of the ceiling a depth-centred frame would win.

Only for cohorts made by ``xray2mri make-cohort`` (it needs ``cohort.json``). Writes ``<out>/rescan_ceiling.json``
(per knee and medians) and prints the medians; the first twin of each kind stays in ``<out>/twins`` (DICOM) for
a viewer.

    python scripts/rescan_ceiling.py --dataset-dir data/cohort_train --max-knees 30 --slices 25 --size 128 \
        --out outputs/rescan
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import Compose

from xray2mri_bundle.cohort import anatomy, dicom_writer, mri
from xray2mri_bundle.cohort.generate import CohortConfig, participant_id, simulate_subject, subject_streams
from xray2mri_bundle.cohort.render import Pose
from xray2mri_bundle.constants import MRI_KEPT_SLICES, MRI_SLICE_MM, MRI_SLICES
from xray2mri_bundle.data.mri_transforms import mri_transforms
from xray2mri_bundle.engines.datalist import load_datalist
from xray2mri_bundle.evaluation.evaluator import read_ground_truth, select_knees, slice_indices
from xray2mri_bundle.evaluation.records import bootstrap_differences, read_rows
from xray2mri_bundle.metrics.image_quality import volume_psnr, volume_ssim
from xray2mri_bundle.metrics.rssim import volume_rssim

TWINS = ("rescan", "shifted", "repositioned")
METRICS = ("psnr", "ssim", "rssim")
KEPT = MRI_KEPT_SLICES[1] - MRI_KEPT_SLICES[0]  # 50 slices, the paper's 13-63
JOINT_INDEX = 23  # kept index of the joint in the paper's slices 13-63 (joint slice 34-38 of 80)


def subject_index(seed: int, pid: str, limit: int = 100_000) -> int:
    """The generator index of participant ``pid`` in a cohort of generator seed ``seed``."""
    for index in range(limit):
        if participant_id(seed, index) == pid:
            return index
    raise ValueError(f"participant {pid} is not a subject of a cohort with generator seed {seed}")


def stored_knee(cfg: CohortConfig, index: int, side: str) -> tuple[list, mri.MriGeometry, Pose]:
    """The anatomy layers of knee (``index``, ``side``) and the placement of its stored series (its own MRI stream
    replayed up to the placement); simulated once per knee, shared by all its twins."""
    layers = anatomy.build_layers(simulate_subject(cfg, index).knees[side].params)
    geom, pose = mri.place_mri(side, cfg.mri_matrix, subject_streams(cfg.seed, index)[f"mri_{side.lower()}"])
    return layers, geom, pose


def twin_volume(cfg: CohortConfig, index: int, side: str, knee: tuple[list, mri.MriGeometry, Pose], twin: str,
                draw: int = 0) -> tuple[np.ndarray, mri.MriGeometry, float]:
    """Draw ``draw`` of a second MRI (SLICES, N, N) uint16 of the ``stored_knee`` ``knee``, its geometry and joint
    slice (see the module doc)."""
    layers, geom, pose = knee
    fresh = np.random.default_rng([cfg.seed, index, TWINS.index(twin) + 1, draw, 20261207])
    if twin != "rescan":
        new_geom, new_pose = mri.place_mri(side, cfg.mri_matrix, fresh)
        geom, pose = new_geom, (Pose(M=pose.M, t=new_pose.t) if twin == "shifted" else new_pose)
    volume, _ = mri.simulate_mri(layers, pose, geom, fresh)
    return volume, geom, float(geom.to_pixel(pose.t)[0])


def metric_triple(prediction: Any, truth: Any) -> tuple[float, float, float]:
    """(PSNR, SSIM, RSSIM) of ``prediction`` against ``truth`` with the evaluator's metrics (``METRICS`` order)."""
    return (float(volume_psnr(prediction, truth)), float(volume_ssim(prediction, truth)),
            float(volume_rssim(prediction, truth)))


def score_twins(cfg: CohortConfig, index: int, side: str, knee: tuple[list, mri.MriGeometry, Pose], twin: str,
                draws: int, prefix: Path, preprocess: Callable[[str, str, float], Any], truth: Any,
                keep_first: bool = True) -> list[tuple[float, float, float]]:
    """(PSNR, SSIM, RSSIM) against ``truth`` of ``draws`` twins of kind ``twin``, each written as a DICOM series
    ``<prefix>_<draw>`` and read back through ``preprocess(folder, side, twin joint slice)``; the first stays on disk
    for a viewer (80 slices of 256 x 256: 10 MB a series) unless ``keep_first`` is False."""
    scores = []
    for draw in range(draws):
        volume, geom, twin_joint = twin_volume(cfg, index, side, knee, twin, draw)
        folder = write_twin(Path(f"{prefix}_{draw}"), volume, geom, cfg.seed, side)
        other = preprocess(str(folder), side, twin_joint)
        if draw or not keep_first:
            shutil.rmtree(folder)
        scores.append(metric_triple(other, truth))
    return scores


def slab_start(frame: str, joint_slice: float | None) -> int:
    """First kept slice: 13 (the paper's) or, with ``frame="joint"``, the joint at kept index ``JOINT_INDEX``."""
    if frame == "slices":
        return MRI_KEPT_SLICES[0]
    if joint_slice is None:
        raise ValueError("--frame joint needs the joint slice of every knee (the cohort's ground_truth.csv)")
    return int(np.clip(round(joint_slice) - JOINT_INDEX, 0, MRI_SLICES - KEPT))


def write_twin(folder: Path, volume: np.ndarray, geom: mri.MriGeometry, seed: int, side: str) -> Path:
    """The twin as a DICOM series (what the MRI transforms read), position order = instance order."""
    info = dicom_writer.SeriesInfo(
        study_uid=dicom_writer.cohort_uid(seed, folder.name, "study"), series_uid=dicom_writer.cohort_uid(
            seed, folder.name, "series"), frame_uid=dicom_writer.cohort_uid(seed, folder.name, "frame"),
        series_number=1, date="20261207", time="120000", description=f"TWIN_{side}", institution="Synthetic twin")
    patient = dicom_writer.Patient(participant_id=folder.name, sex="F", age=60)
    dicom_writer.write_mr_series(folder, volume, patient, info, seed=seed, laterality=side[0], pixel_mm=geom.pixel_mm,
                                 x0=geom.x0, y0=geom.y0, z0=geom.z0, slice_mm=MRI_SLICE_MM,
                                 acquisition_order=list(range(volume.shape[0])))
    return folder


def pair_with_evaluation(rows: list[dict], per_knee_csv: str | Path, path: Path) -> None:
    """Paired bootstrap of each twin minus each method of an evaluation run on the same knees; printed and
    written to ``path``."""
    keys = {(str(r["subject"]), str(r["side"])) for r in rows}
    paired = [{"subject": str(r["subject"]), "side": str(r["side"]), "method": twin,
               **{m: r[twin][m] for m in METRICS}}
              for r in rows for twin in TWINS]
    paired += [{**r, "subject": str(r["subject"]), "side": str(r["side"])} for r in read_rows(per_knee_csv)
               if (str(r["subject"]), str(r["side"])) in keys]
    boot = bootstrap_differences(paired, TWINS)
    path.write_text(json.dumps(boot, indent=1))
    for twin in TWINS:
        for other, by_metric in boot[twin].items():
            print(f"{twin} - {other}: " + ", ".join(
                f"{m} {v['median']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}] (n={v['n']})"
                for m, v in by_metric.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset-dir", required=True, help="synthetic cohort (xray2mri make-cohort)")
    parser.add_argument("--datalist", help="datalist JSON whose validation knees are evaluated (as xray2mri "
                        "evaluate --datalist); default: the cohort's own validation split")
    parser.add_argument("--max-knees", type=int, default=30, help="evaluation knees (the evaluator's choice)")
    parser.add_argument("--slices", type=int, default=25, help="compared slices, as xray2mri evaluate --slices")
    parser.add_argument("--size", type=int, default=128, help="slice size in pixels (the model's; small: 128)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--frame", choices=("slices", "joint"), default="slices",
                        help="slices: the paper's 13-63 (default); joint: 50 slices centred on each true joint slice "
                        "(no --per-knee: the evaluation runs score the paper's slices)")
    parser.add_argument("--draws", type=int, default=4,
                        help="twins of each kind per knee; a knee's score is their mean (the expected score of one "
                        "sample)")
    parser.add_argument("--per-knee", help="per_knee.csv of an `xray2mri evaluate` run on the same knees and "
                        "slices: each twin is paired against its methods (median difference, 95 %% bootstrap interval)")
    args = parser.parse_args(argv)
    if args.frame == "joint" and args.per_knee:
        parser.error("--per-knee pairs against an evaluation run, which scores the paper's slices 13-63: twins "
                     "scored in the joint frame would be compared with a different truth; drop --per-knee")

    root = Path(args.dataset_dir)
    info = json.loads((root / "cohort.json").read_text())
    spacing = info["xray_spacing_mm"]
    cfg = CohortConfig(seed=int(info["seed"]), mri_matrix=int(info["mri_matrix"]),
                       xray_spacing_mm=tuple(spacing) if isinstance(spacing, list) else float(spacing),
                       xray_grid_mm=float(info["xray_grid_mm"]))
    knees = select_knees(load_datalist(root, args.datalist)["validation"], args.max_knees)
    truth_table = read_ground_truth(root)

    def preprocess(folder: str, side: str, joint_slice: float | None) -> np.ndarray:
        start = slab_start(args.frame, joint_slice)
        chain = Compose(mri_transforms(size=args.size, start=start))
        return chain({"mri": folder, "side": side})["mri"][..., keep]

    keep = slice_indices(KEPT, args.slices)
    out = Path(args.out)
    result = out / "rescan_ceiling.json"
    done = {}
    if result.is_file():  # a finished or killed run: keep the knees it scored with the same settings
        previous = json.loads(result.read_text())
        if (previous.get("slices"), previous.get("size"), previous.get("frame"), previous.get("draws")) == (
                keep, args.size, args.frame, args.draws):
            done = {(r["subject"], r["side"]): r for r in previous["per_knee"]}
    rows = []
    for n, record in enumerate(knees, 1):
        pid, side = str(record["subject"]), str(record["side"]).upper()
        if (pid, side) in done:
            rows.append(done[(pid, side)])
            continue
        joint = truth_table.get((pid, side), {}).get("mri_joint_slice")
        truth = preprocess(record["mri"], side, None if joint in (None, "") else float(joint))
        row = {"subject": pid, "side": side, "kl": record.get("kl")}
        index = subject_index(cfg.seed, pid)
        knee = stored_knee(cfg, index, side)
        for twin in TWINS:
            scores = score_twins(cfg, index, side, knee, twin, args.draws, out / "twins" / f"{pid}_{side}_{twin}",
                                 preprocess, truth)
            row[twin] = dict(zip(METRICS, (float(v) for v in np.mean(scores, axis=0)), strict=True))
            row[twin]["draws"] = [[float(v) for v in score] for score in scores]
        rows.append(row)
        out.mkdir(parents=True, exist_ok=True)
        result.write_text(json.dumps({"slices": keep, "size": args.size, "frame": args.frame, "draws": args.draws,
                                      "per_knee": rows}, indent=1))
        print(f"[{n}/{len(knees)}] {pid} {side}: " + "; ".join(
            f"{t} " + " ".join(f"{m} {row[t][m]:.3f}" for m in METRICS) for t in TWINS), flush=True)
    medians = {t: {m: statistics.median(r[t][m] for r in rows) for m in METRICS} for t in TWINS}
    # what the evaluator's single-sample row measures: ONE twin per knee, the median over knees (averaged over the
    # draws); the per-knee mean above is the expected score of one sample, which a skewed spread lifts
    single = {t: {m: float(np.mean([statistics.median(r[t]["draws"][d][i] for r in rows) for d in range(args.draws)]))
                  for i, m in enumerate(METRICS)} for t in TWINS}
    result.write_text(json.dumps({"dataset_dir": str(root), "frame": args.frame, "draws": args.draws,
                                  "knees": len(rows), "slices": keep, "size": args.size, "medians": medians,
                                  "single_draw_medians": single,
                                  "per_knee": rows}, indent=1))
    for twin, values in medians.items():
        print(f"median over {len(rows)} knees of the mean of {args.draws} draws, {twin}: PSNR {values['psnr']:.2f} dB, "
              f"SSIM {values['ssim']:.3f}, RSSIM {values['rssim']:.3f}")
        one = single[twin]
        print(f"  one draw per knee, median over knees (mean of {args.draws}): PSNR {one['psnr']:.2f} dB, "
              f"SSIM {one['ssim']:.3f}, RSSIM {one['rssim']:.3f}")
    if args.per_knee:
        pair_with_evaluation(rows, args.per_knee, out / "rescan_paired.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
