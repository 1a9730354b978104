"""``xray2mri generate``: knee X-ray files -> pseudo-MRI volumes (NIfTI, DICOM MR series, montage PNG, JSON).

Argument parsing only: the work is ``inference.load_pipeline`` + ``inference.accelerate`` +
``inference.batch.run_batch``. A bad file is reported by name and the batch goes on; the exit code is 0 when every
input succeeded, 1 when any failed, 2 on setup errors. Outputs are SYNTHETIC research images, not for diagnosis.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from xray2mri_bundle.constants import DISCLAIMER, FRAME_MM, MRI_FOV_MM, RESEARCH_USE
from xray2mri_bundle.diffusion import DEFAULT_SAMPLING, SAMPLERS
from xray2mri_bundle.inference.acceleration import accelerate
from xray2mri_bundle.inference.batch import FORMATS, SIDES, expand_inputs, prepare_output_dir, run_batch
from xray2mri_bundle.inference.generator import REFERENCE_SLICES, load_pipeline
from xray2mri_bundle.inference.settings import check_formats, check_number, check_positive_mm, check_sampler

from ._common import resolve_device

__all__ = ["build_parser", "check_settings", "main"]

def check_settings(args: argparse.Namespace) -> None:
    """``ValueError`` (one line naming the option) for any out-of-range setting; ``args.formats`` becomes a list."""
    check_number("slices", args.slices, int)
    check_number("steps", args.steps, int)
    check_number("chunk_size", args.chunk_size, int)
    check_number("seed", args.seed, int)
    check_number("eta", args.eta, float)
    check_number("guidance_scale", args.guidance_scale, float)
    args.sampler = check_sampler(args.sampler, args.eta)
    check_positive_mm("--fov-mm", args.fov_mm)
    check_positive_mm("--png-spacing-mm", args.png_spacing_mm)
    args.formats = check_formats(args.formats)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xray2mri generate",
        description=f"Generate pseudo-MRI volumes from knee X-rays (DICOM DX/CR, PNG, NIfTI). {RESEARCH_USE}",
    )
    parser.add_argument("xrays", nargs="+", metavar="XRAY", help="X-ray files")
    parser.add_argument("-o", "--output-dir", required=True, help="output folder (one sub-folder per knee)")
    parser.add_argument("--slices", type=int, default=REFERENCE_SLICES,
                        help="depths to generate, evenly spaced over the 50 training slices (>50 interpolates)")
    parser.add_argument("--sampler", default=DEFAULT_SAMPLING.sampler,
                        help=f"solver: {'; '.join(f'{k}: {v}' for k, v in SAMPLERS.items())} "
                        f"(default {DEFAULT_SAMPLING.sampler})")
    parser.add_argument("--steps", type=int, default=DEFAULT_SAMPLING.steps,
                        help=f"solver steps (default {DEFAULT_SAMPLING.steps})")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic; ddim only)")
    parser.add_argument("--guidance-scale", type=float, default=1.0,
                        help="classifier-free guidance scale (1 = conditional model only; >1 doubles the batch)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--model-dir", default="models", help="folder of autoencoder.pt, classifier.pt, "
                        "diffusion.pt (or its <profile> sub-folder)")
    parser.add_argument("--profile", default="small", help="network profile of the checkpoints (default small)")
    parser.add_argument("--side", choices=sorted(SIDES), default="both",
                        help="knee of a bilateral film (default both: two volumes per bilateral film)")
    parser.add_argument("--chunk-size", type=int, default=16, help="depths denoised together (memory)")
    parser.add_argument("--independent-noise", action="store_true",
                        help="one initial noise per depth instead of one shared noise (Algorithm 2)")
    parser.add_argument("--per-slice-conditions", action="store_true",
                        help="recompute the conditions for every slice, batch 1 (the paper's Algorithm 2 as "
                        "written; slow, for comparison)")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated subset of "
                        f"{','.join(FORMATS)}")
    parser.add_argument("--fov-mm", type=float, default=MRI_FOV_MM,
                        help="in-plane field of view of the generated slices in mm (default: the model's "
                        f"joint-centred frame, {FRAME_MM:g})")
    parser.add_argument("--reference-mri", default=None, metavar="SERIES",
                        help="real MRI of the same knee (DICOM series folder or NIfTI): its joint is localised and "
                             "the generated volume is placed in its world frame, so the two overlay in a viewer "
                             "(one X-ray, --side left|right)")
    parser.add_argument("--png-spacing-mm", type=float, default=None,
                        help="pixel spacing of uncalibrated PNG inputs (default 140/299 mm)")
    parser.add_argument("--clip-folder", default=None, help="local CLIP vision model (CLIP-encoder models)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing knee folders")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                        help="UNet autocast during sampling (bf16/fp16: GPU speed-up; fp32 default, reproducible)")
    parser.add_argument("--fast-attention", action="store_true",
                        help="PyTorch scaled_dot_product_attention in MONAI's attention blocks (GPU speed-up)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (pays off over many volumes)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``xray2mri generate``; returns 0 when every input succeeded, 1 when any failed, 2 on setup errors."""
    args = build_parser().parse_args(argv)
    try:  # every setting, the inputs and the output folder are checked before any model is loaded
        check_settings(args)
        args.xrays = [str(p) for p in expand_inputs(args.xrays)]
        prepare_output_dir(args.output_dir)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.reference_mri and (len(args.xrays) != 1 or args.side == "both"):
        print("error: --reference-mri places ONE knee: give one X-ray and --side left|right", file=sys.stderr)
        return 2
    try:
        device = resolve_device(args.device)
        generator = load_pipeline(args.model_dir, args.profile, device, clip_folder=args.clip_folder)
        accelerate(generator, args.precision, args.fast_attention, args.compile)
    except (FileNotFoundError, KeyError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        report = run_batch(
            args.xrays, args.output_dir, generator, slices=args.slices, num_inference_steps=args.steps,
            eta=args.eta, guidance_scale=args.guidance_scale, seed=args.seed, side=args.side,
            chunk_size=args.chunk_size, shared_noise=not args.independent_noise,
            per_slice_conditions=args.per_slice_conditions, formats=args.formats,
            fov_mm=args.fov_mm, png_spacing_mm=args.png_spacing_mm, overwrite=args.overwrite,
            progress=not args.no_progress, reference_mri=args.reference_mri, sampler=args.sampler,
        )
    except ValueError as exc:  # settings, or an unusable --reference-mri (the message names the file)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(report.outputs)} volume(s) written to {args.output_dir} ({DISCLAIMER})")
    return 0 if report.ok else 1

