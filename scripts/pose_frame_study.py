"""Does a canonical-pose MRI frame widen what a model can win over the no-diffusion references? (issue 13)

In the joint-centred frame (slices 13-63 of the coil's series, 140 mm around the localised joint) a perfect sampler
scores only 1.16-1.27x the best reference's RSSIM, because the knee's rotation in the coil is drawn afresh
(``scripts/rescan_ceiling.py``). This study scores, in two frames, on the same knees and slices:

- ``coil``: the shipped frame (``data.mri_transforms.mri_transforms``);
- ``pose``: every MRI registered rigidly to a template knee built from the training MRIs
  (``data.pose``, :class:`~xray2mri_bundle.data.mri_transforms.AlignMRIPosed`), then the same slices 13-63 and
  140 mm crop: slice k cuts every knee at the same anatomical depth;

for each evaluation knee: the references that need no diffusion (mean training volume, the training knee with the
nearest X-ray, the mean of the 5 nearest; the evaluator's X-ray feature) and second true MRIs of the same knee from
the cohort generator (``shifted``: own rotation, new position; ``repositioned``: new rotation too: what a perfect
sampler draws). The ratio of the perfect sampler's RSSIM to the best reference's bounds what any model can reach in
that frame. Writes ``<out>/pose_frame_study.json`` (resumable per frame and knee) and prints the medians.

    python scripts/pose_frame_study.py --dataset-dir data/cohort_train --out outputs/pose_study
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose
from rescan_ceiling import METRICS, metric_triple, score_twins, stored_knee, subject_index

from xray2mri_bundle.cohort.generate import CohortConfig
from xray2mri_bundle.data import pose as pose_module
from xray2mri_bundle.data.mri_transforms import (
    mri_transforms,
)
from xray2mri_bundle.data.xray_transforms import xray_transforms
from xray2mri_bundle.engines.datalist import load_datalist
from xray2mri_bundle.evaluation.baselines import NearestXray, crop_feature
from xray2mri_bundle.evaluation.evaluator import select_knees, slice_indices
from xray2mri_bundle.evaluation.records import bootstrap_differences

FRAMES = ("coil", "pose")
TWINS = ("shifted", "repositioned")
REFERENCES = ("mean_volume", "nearest_xray", "knn5_xray")


def mri_chain(frame: str, size: int, template: pose_module.PoseTemplate | None) -> Compose:
    """The MRI preprocessing of ``frame`` -> (1, size, size, 50) in [-1, 1] (the bundle's chains)."""
    return Compose(mri_transforms(size=size, pose_template=template if frame == "pose" else None))


def template_for(records: list[dict], count: int, path: Path) -> pose_module.PoseTemplate:
    """The pose template of the first ``count`` readable training knees (built once, then read from ``path``; the
    stored copy is used from the start, so a resumed run scores with the same float16 template)."""
    if not path.is_file():
        template, report = pose_module.template_from_records(records, count=count)
        print(f"template from {report['knees']} knees ({len(report['skipped'])} skipped): median rotation per "
              f"round {report['median_rotation_deg']} deg", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(template.state_dict(), path)
    return pose_module.load_pose_template(path)


def read_mri(chain: Compose, keep: list[int], folder: str, side: str, _joint: float | None = None) -> torch.Tensor:
    """The kept slices (1, size, size, n) of one MRI series through ``chain``."""
    return chain({"mri": folder, "side": side})["mri"].as_tensor()[..., keep]


def score(prediction: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    return dict(zip(METRICS, metric_triple(prediction, truth), strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset-dir", required=True, help="synthetic cohort (xray2mri make-cohort)")
    parser.add_argument("--datalist", help="datalist JSON (training + validation); default: the cohort's split")
    parser.add_argument("--max-knees", type=int, default=30)
    parser.add_argument("--slices", type=int, default=25)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--draws", type=int, default=2, help="twins of each kind per knee")
    parser.add_argument("--template", help="pose template (.pt); default: <out>/pose_template.pt, built once")
    parser.add_argument("--template-knees", type=int, default=60, help="training knees the template is built from")
    parser.add_argument("--frames", default=",".join(FRAMES))
    parser.add_argument("--max-training", type=int, default=0, help="training knees for the references (0: all)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    root, out = Path(args.dataset_dir), Path(args.out)
    info = json.loads((root / "cohort.json").read_text())
    spacing = info["xray_spacing_mm"]
    cfg = CohortConfig(seed=int(info["seed"]), mri_matrix=int(info["mri_matrix"]),
                       xray_spacing_mm=tuple(spacing) if isinstance(spacing, list) else float(spacing),
                       xray_grid_mm=float(info["xray_grid_mm"]))
    split = load_datalist(root, args.datalist)
    training, knees = split["training"], select_knees(split["validation"], args.max_knees)
    training = training[: args.max_training] if args.max_training > 0 else training
    keep = slice_indices(50, args.slices)
    template = template_for(training, args.template_knees, Path(args.template or out / "pose_template.pt"))
    xray_chain = Compose(xray_transforms(size=args.size, intensity=False))
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / "pose_frame_study.json"
    result = json.loads(result_path.read_text()) if result_path.is_file() else {"frames": {}}

    for frame in args.frames.split(","):
        chain = mri_chain(frame, args.size, template)
        cache = out / f"training_{frame}.pt"
        if cache.is_file():
            stored = torch.load(cache, weights_only=True)
        else:
            start, volumes, features = time.time(), [], []
            for n, record in enumerate(training, 1):
                volumes.append(chain({"mri": record["mri"], "side": record["side"]})["mri"].as_tensor()[..., keep])
                features.append(crop_feature(xray_chain(dict(record))["xray"].as_tensor()).flatten())
                if n % 20 == 0:
                    print(f"[{frame}] training knee {n}/{len(training)} ({time.time() - start:.0f} s)", flush=True)
            stored = {"volumes": torch.stack(volumes).half(), "features": torch.stack(features)}
            torch.save(stored, cache)
        volumes = stored["volumes"].float()
        names = [f"{r['subject']}_{r['side']}" for r in training]
        mean_volume = volumes.mean(0)
        knn = NearestXray(stored["features"], volumes.__getitem__, names, k=5)
        rows = result["frames"].setdefault(frame, {"per_knee": []})["per_knee"]
        done = {(r["subject"], r["side"]) for r in rows}
        for n, record in enumerate(knees, 1):
            pid, side = str(record["subject"]), str(record["side"]).upper()
            if (pid, side) in done:
                continue
            truth = read_mri(chain, keep, record["mri"], side)
            xray = xray_chain(dict(record))["xray"].as_tensor()
            order = knn.neighbours(xray)
            row = {"subject": pid, "side": side, "kl": record.get("kl"),
                   "mean_volume": score(mean_volume, truth), "nearest_xray": score(volumes[order[0]], truth),
                   "knn5_xray": score(volumes[list(order)].mean(0), truth)}
            index = subject_index(cfg.seed, pid)
            knee = stored_knee(cfg, index, side)
            for twin in TWINS:
                draws = [dict(zip(METRICS, d, strict=True)) for d in score_twins(
                    cfg, index, side, knee, twin, args.draws, out / "twins" / f"{pid}_{side}_{twin}",
                    functools.partial(read_mri, chain, keep), truth, keep_first=False)]
                row[twin] = {m: float(np.mean([d[m] for d in draws])) for m in METRICS}
                row[twin]["draws"] = draws
            rows.append(row)
            out.mkdir(parents=True, exist_ok=True)
            result_path.write_text(json.dumps(result, indent=1))
            print(f"[{frame} {n}/{len(knees)}] {pid} {side}: " + "; ".join(
                f"{k} RSSIM {row[k]['rssim']:.3f}" for k in REFERENCES + TWINS), flush=True)
        summary = {k: {m: statistics.median(r[k][m] for r in rows) for m in METRICS} for k in REFERENCES + TWINS}
        best = max(REFERENCES, key=lambda k: summary[k]["rssim"])
        long = [{"subject": r["subject"], "side": r["side"], "method": k, **{m: r[k][m] for m in METRICS}}
                for r in rows for k in REFERENCES + TWINS]
        pairs = bootstrap_differences(long, ["repositioned"])["repositioned"]
        result["frames"][frame].update(medians=summary, best_reference=best,
                                       ratio_rssim=summary["repositioned"]["rssim"] / summary[best]["rssim"],
                                       repositioned_minus_reference=pairs)
        result_path.write_text(json.dumps(result, indent=1))
        print(f"== {frame} frame, {len(rows)} knees (medians): " + "; ".join(
            f"{k} " + "/".join(f"{summary[k][m]:.3f}" for m in METRICS) for k in REFERENCES + TWINS), flush=True)
        print(f"   perfect sampler (repositioned) RSSIM / best reference ({best}): "
              f"{result['frames'][frame]['ratio_rssim']:.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
