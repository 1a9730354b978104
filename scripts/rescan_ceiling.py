"""How well can ANY single sample score? A second true MRI of the same knee, scored against the first.

The synthetic cohort draws parts of each MRI that the X-ray cannot tell: the scanner placement (field-of-view
centre, which slice holds the joint, small rotations), the coil's bias field, the gain and the Rician noise. A
generator that samples the true conditional distribution perfectly still draws these afresh, so its single sample
differs from the truth at least as much as a second acquisition of the same knee does. This script makes that
second acquisition for the evaluation knees of a synthetic cohort (same subject, anatomy, findings and X-ray; the
cohort generator's own functions with fresh random streams), runs it through the same MRI preprocessing as the
truth (slices 13-63, joint localiser, 140 mm joint-centred frame, percentiles) and scores it with the evaluator's
metrics on the evaluator's slices. Two twins per knee:

- ``rescan``: same placement, new bias field, gain and noise (the knee scanned again without moving);
- ``repositioned``: new placement too (the knee taken out and put back, as between two visits).

Only for cohorts made by ``xray2mri make-cohort`` (it needs ``cohort.json``). Writes ``<out>/rescan_ceiling.json``
(per knee and medians) and prints the medians; the twins' DICOM series stay in ``<out>/twins`` for a viewer.

    python scripts/rescan_ceiling.py --dataset-dir data/cohort_train --max-knees 30 --slices 25 --size 128 \
        --out outputs/rescan
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
from monai.transforms import Compose

from xray2mri_bundle.cohort import anatomy, dicom_writer, mri
from xray2mri_bundle.cohort.generate import CohortConfig, participant_id, simulate_subject, subject_streams
from xray2mri_bundle.constants import MRI_SLICE_MM
from xray2mri_bundle.data.mri_transforms import mri_transforms
from xray2mri_bundle.engines.datalist import load_datalist
from xray2mri_bundle.evaluation.evaluator import select_knees, slice_indices
from xray2mri_bundle.evaluation.records import bootstrap_differences, read_rows
from xray2mri_bundle.metrics.image_quality import volume_psnr, volume_ssim
from xray2mri_bundle.metrics.rssim import volume_rssim

TWINS = ("rescan", "repositioned")


def subject_index(seed: int, pid: str, limit: int = 100_000) -> int:
    """The generator index of participant ``pid`` in a cohort of generator seed ``seed``."""
    for index in range(limit):
        if participant_id(seed, index) == pid:
            return index
    raise ValueError(f"participant {pid} is not a subject of a cohort with generator seed {seed}")


def twin_volume(cfg: CohortConfig, index: int, side: str, twin: str) -> tuple[np.ndarray, mri.MriGeometry]:
    """A second MRI (SLICES, N, N) uint16 of knee (``index``, ``side``) and its geometry; see the module doc."""
    subject = simulate_subject(cfg, index)
    knee = subject.knees[side]
    layers = anatomy.build_layers(knee.params)
    fresh = np.random.default_rng([cfg.seed, index, TWINS.index(twin) + 1, 20261207])
    if twin == "rescan":  # replay the knee's own MRI stream up to its placement, then new draws
        geom, pose = mri.place_mri(side, cfg.mri_matrix, subject_streams(cfg.seed, index)[f"mri_{side.lower()}"])
    else:
        geom, pose = mri.place_mri(side, cfg.mri_matrix, fresh)
    volume, _ = mri.simulate_mri(layers, pose, geom, fresh)
    return volume, geom


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
    paired = [{"subject": str(r["subject"]), "side": str(r["side"]), "method": twin, **r[twin]}
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
    parser.add_argument("--per-knee", help="per_knee.csv of an `xray2mri evaluate` run on the same knees and "
                        "slices: each twin is paired against its methods (median difference, 95 %% bootstrap interval)")
    args = parser.parse_args(argv)

    root = Path(args.dataset_dir)
    info = json.loads((root / "cohort.json").read_text())
    spacing = info["xray_spacing_mm"]
    cfg = CohortConfig(seed=int(info["seed"]), mri_matrix=int(info["mri_matrix"]),
                       xray_spacing_mm=tuple(spacing) if isinstance(spacing, list) else float(spacing),
                       xray_grid_mm=float(info["xray_grid_mm"]))
    knees = select_knees(load_datalist(root, args.datalist)["validation"], args.max_knees)
    chain = Compose(mri_transforms("mri", size=args.size, channels=1))
    keep = slice_indices(50, args.slices)
    out = Path(args.out)
    result = out / "rescan_ceiling.json"
    done = {}
    if result.is_file():  # a finished or killed run: keep the knees it scored with the same settings
        previous = json.loads(result.read_text())
        if previous.get("slices") == keep and previous.get("size") == args.size:
            done = {(r["subject"], r["side"]): r for r in previous["per_knee"]}
    rows = []
    for n, record in enumerate(knees, 1):
        pid, side = str(record["subject"]), str(record["side"]).upper()
        if (pid, side) in done:
            rows.append(done[(pid, side)])
            continue
        truth = chain({"mri": record["mri"], "side": side})["mri"][..., keep]
        row = {"subject": pid, "side": side, "kl": record.get("kl")}
        for twin in TWINS:
            volume, geom = twin_volume(cfg, subject_index(cfg.seed, pid), side, twin)
            folder = write_twin(out / "twins" / f"{pid}_{side}_{twin}", volume, geom, cfg.seed, side)
            other = chain({"mri": str(folder), "side": side})["mri"][..., keep]
            row[twin] = {"psnr": volume_psnr(other, truth), "ssim": volume_ssim(other, truth),
                         "rssim": volume_rssim(other, truth)}
        rows.append(row)
        out.mkdir(parents=True, exist_ok=True)
        result.write_text(json.dumps({"slices": keep, "size": args.size, "per_knee": rows}, indent=1))
        print(f"[{n}/{len(knees)}] {pid} {side}: " + "; ".join(
            f"{t} " + " ".join(f"{k} {v:.3f}" for k, v in row[t].items()) for t in TWINS), flush=True)
    medians = {t: {m: statistics.median(r[t][m] for r in rows) for m in ("psnr", "ssim", "rssim")} for t in TWINS}
    result.write_text(json.dumps({"dataset_dir": str(root), "knees": len(rows),
                                                         "slices": keep, "size": args.size, "medians": medians,
                                                         "per_knee": rows}, indent=1))
    for twin, values in medians.items():
        print(f"median over {len(rows)} knees, {twin}: PSNR {values['psnr']:.2f} dB, SSIM {values['ssim']:.3f}, "
              f"RSSIM {values['rssim']:.3f}")
    if args.per_knee:
        pair_with_evaluation(rows, args.per_knee, out / "rescan_paired.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
