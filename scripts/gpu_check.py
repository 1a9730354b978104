"""The GPU figures of docs/performance.md in one short run (for a GPU machine lent for minutes).

Measures, for the paper profile (random initialisation when no trained paper weights are in --model-dir; the
timing is the same) on one GPU:
1. one 50-slice volume at the default sampler and steps (``diffusion.DEFAULT_SAMPLING``) with bf16 autocast +
   torch SDPA attention + ``torch.compile`` (``inference.acceleration.accelerate``, what `xray2mri generate
   --precision bf16 --fast-attention --compile` applies); compile time (the warm-up, ``warmup_s``) reported
   apart; target <= 1.0 s;
2. the 500-depth volume (slice interpolation, the paper's s = 500) at the same settings, chunk 500;
3. training throughput of the diffusion stage at batch 64 bf16 with cached latents (``benchmark.measure_training``:
   the full iteration), target >= 300 slices/s, with the share of the chip's dense bf16 peak it achieves;
4. with 2+ GPUs: a 2-process ``torchrun`` NCCL all-reduce (the DDP path of ``engines.distributed``).
Writes one JSON (``--out``). ``--device cpu --profile tiny`` runs the same code in seconds (the test).

    scripts/gpu_check.sh            # on the GPU machine: writes gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: tools/ is not installed

from tools.benchmark import build_generator, measure_training, measure_volume, unet_flops  # noqa: E402
from tools.benchmark_tools import H100_BF16_DENSE_TFLOPS, machine_description  # noqa: E402
from xray2mri_bundle.diffusion import DEFAULT_SAMPLING  # noqa: E402
from xray2mri_bundle.inference.acceleration import accelerate  # noqa: E402

ALLREDUCE = """
import os, torch, torch.distributed as dist
dist.init_process_group("nccl")
rank = dist.get_rank(); torch.cuda.set_device(rank)
x = torch.full((1 << 20,), float(rank + 1), device="cuda")
dist.all_reduce(x)
assert float(x[0]) == sum(range(1, dist.get_world_size() + 1))
if rank == 0: print("allreduce ok", dist.get_world_size())
dist.destroy_process_group()
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--batch", type=int, default=64, help="training batch (slices)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--interpolation-slices", type=int, default=500)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    report: dict = {"machine": machine_description(device), "profile": args.profile,
                    "sampling": {"sampler": DEFAULT_SAMPLING.sampler, "steps": DEFAULT_SAMPLING.steps},
                    "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}

    def save() -> None:
        args.out.write_text(json.dumps(report, indent=1))

    generator, weights = build_generator(args.profile, args.model_dir, device)
    report["weights"] = weights
    size = int(generator.image_size)
    xray = torch.rand(1, size, size, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    precision = "bf16" if device.type == "cuda" else "fp32"
    accelerate(generator, precision, fast_attention=True, compile=not args.no_compile)
    report["acceleration"] = dict(generator.acceleration)
    try:
        report["volume_50"] = measure_volume(generator, xray, 50, DEFAULT_SAMPLING.steps, args.repeats,
                                             sampler=DEFAULT_SAMPLING.sampler)
        report["volume_50"]["target_s"], report["volume_50"]["pass"] = 1.0, report["volume_50"]["seconds"] <= 1.0
        save()
        n = args.interpolation_slices
        report[f"volume_{n}"] = measure_volume(generator, xray, n, DEFAULT_SAMPLING.steps, max(1, args.repeats - 1),
                                               sampler=DEFAULT_SAMPLING.sampler)
    except Exception as exc:  # noqa: BLE001 - record and go on to the next figure
        report["volume_error"] = f"{type(exc).__name__}: {exc}"
    save()
    try:
        train = measure_training(generator, args.batch, args.repeats, torch.bfloat16 if device.type == "cuda" else None)
        flops = 3 * unet_flops(args.profile) * args.batch  # forward + backward ~ 3x forward, UNet only
        train["achieved_tflops"] = flops / train["step_s"] / 1e12
        train["share_of_bf16_peak"] = train["achieved_tflops"] / H100_BF16_DENSE_TFLOPS
        train["target_slices_per_s"], train["pass"] = 300.0, train["slices_per_s"] >= 300.0
        report["training"] = train
    except Exception as exc:  # noqa: BLE001
        report["training_error"] = f"{type(exc).__name__}: {exc}"
    save()
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if gpus >= 2:
        script = args.out.with_suffix(".allreduce.py")
        script.write_text(ALLREDUCE)
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script)],
                              capture_output=True, text=True, env=dict(os.environ), check=False)
        script.unlink()
        report["nccl_allreduce_2proc"] = {"rc": done.returncode, "stdout": done.stdout[-500:],
                                          "stderr": done.stderr[-500:]}
    else:
        report["nccl_allreduce_2proc"] = f"skipped: {gpus} GPU(s)"
    save()
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
