"""Does a trained diffusion model use the X-ray? The training-time conditioning check on exported weights.

Runs ``engines.validation.ConditioningCheck`` (the training loss, epsilon- or v-MSE, with the knee's own X-ray,
another knee's, none; same noise and timesteps) with the exported EMA weights on evenly spaced slices of the
validation knees (``--split training``: of training knees), for each diffusion checkpoint in ``--model-dir``, and
replaces the marked block of docs/training.md (validation knees only).

    python scripts/conditioning_check.py --model-dir models/small --dataset-dir data/cohort_train --knees 30

Synthetic data; the figures say nothing about real radiographs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from doc_blocks import replace_block  # scripts/doc_blocks.py (scripts/ is on sys.path)
from monai.networks.schedulers import DDPMScheduler

from xray2mri_bundle.checkpoint import read_checkpoint
from xray2mri_bundle.data import KneeSliceDataset, build_knee_dataset
from xray2mri_bundle.diffusion import ConditionalDiffusionInferer
from xray2mri_bundle.engines.datalist import load_datalist
from xray2mri_bundle.engines.denoiser import XrayDenoiser
from xray2mri_bundle.engines.prepare_batch import LatentDiffusionPrepareBatch
from xray2mri_bundle.engines.validation import ConditioningCheck, evenly_spaced
from xray2mri_bundle.evaluation.evaluator import select_knees
from xray2mri_bundle.inference.generator import load_pipeline

DOC = Path(__file__).resolve().parents[1] / "docs" / "training.md"
START, END = "<!-- conditioning:start -->", "<!-- conditioning:end -->"
CHECKPOINTS = {"full": "diffusion.pt", "xray_no_guidance": "diffusion_xray_no_guidance.pt",
               "ldm_depth_only": "diffusion_ldm_depth_only.pt"}


def measure(model_dir: Path, dataset_dir: Path, knees: int, slices_per_knee: int, cache_dir: Path,
            datalist_file: Path | None = None, split: str = "validation",
            pose_template: Path | None = None) -> dict[str, dict[str, float]]:
    datalist = load_datalist(dataset_dir, datalist_file, seed=0, val_fraction=0.3)
    records = select_knees(datalist[split], knees)
    results: dict[str, dict[str, float]] = {}
    for name, filename in CHECKPOINTS.items():
        if not (model_dir / filename).is_file():
            continue
        gen = load_pipeline(model_dir, "small", "cpu", diffusion_checkpoint=filename)
        size = int(gen.image_size)
        knee_set = build_knee_dataset(records, cache="persistent", cache_dir=cache_dir / f"knees_{size}",
                                      mri_size=size, xray_size=size, pose_template=pose_template)
        slices = KneeSliceDataset(knee_set, depths="all")
        subset = torch.utils.data.Subset(slices, evenly_spaced(len(slices), knees * slices_per_knee))
        encoder = gen.condition_encoder
        checkpoint = read_checkpoint(model_dir / filename)  # the noise schedule and flags it was trained with
        settings, unet = checkpoint["settings"], checkpoint["networks"]["unet"]["config"]
        scheduler = DDPMScheduler(int(settings.get("num_train_timesteps", 1000)), **dict(settings["noise_schedule"]))
        prepare = LatentDiffusionPrepareBatch(gen.autoencoder, gen.scale_factor,
                                              encoder.classifier if unet["use_guidance"] else None, p_uncond=0.0,
                                              use_intensity=bool(settings.get("use_intensity", True)), seed=0,
                                              prediction_type=gen.prediction_type,
                                              scheduler=scheduler,
                                              latent_target=str(settings.get("latent_target", "sample")))
        network = XrayDenoiser(gen.unet, encoder.xray_encoder if unet["use_context"] else None)
        inferer = ConditionalDiffusionInferer(scheduler)
        mse = ConditioningCheck(subset, prepare, inferer, network, batch_size=16).measure("cpu")
        mse["gap_other"] = mse["other"] / mse["real"] - 1.0
        mse["gap_null"] = mse["null"] / mse["real"] - 1.0
        mse["slices"] = len(subset)
        results[name] = mse
        print(name, json.dumps(mse), flush=True)
    return results


def markdown(results: dict[str, dict[str, float]], knees: int, dataset_dir: Path) -> str:
    lines = [START, f"Measured by `scripts/conditioning_check.py` with the shipped weights on {knees} validation "
             f"knees of `{dataset_dir}` (evenly spaced slices; same noise and timesteps in every column):", "",
             "| model | slices | loss (eps- or v-MSE) own X-ray | another knee's X-ray | no X-ray | gap other "
             "| gap none |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        lines.append(f"| `{name}` | {int(r['slices'])} | {r['real']:.4f} | {r['other']:.4f} | {r['null']:.4f} | "
                     f"{100 * r['gap_other']:+.1f} % | {100 * r['gap_null']:+.1f} % |")
    lines.append(END)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=Path("models/small"))
    p.add_argument("--dataset-dir", type=Path, required=True)
    p.add_argument("--datalist", type=Path, help="datalist JSON (default: index --dataset-dir, split seed 0)")
    p.add_argument("--split", choices=("validation", "training"), default="validation",
                   help="whose knees: validation (the docs table) or training (a loss well below the validation "
                        "one means the model memorises its training knees)")
    p.add_argument("--knees", type=int, default=30)
    p.add_argument("--slices-per-knee", type=int, default=10)
    p.add_argument("--cache-dir", type=Path, default=Path("outputs/cache/conditioning"))
    p.add_argument("--pose-template", type=Path, help="models trained in the canonical-pose MRI frame: its template")
    p.add_argument("--no-doc", action="store_true")
    args = p.parse_args(argv)
    results = measure(args.model_dir, args.dataset_dir, args.knees, args.slices_per_knee, args.cache_dir,
                      args.datalist, args.split, args.pose_template)
    if not args.no_doc and args.split == "validation":
        replace_block(DOC, markdown(results, args.knees, args.dataset_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
