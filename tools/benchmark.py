"""Performance benchmark: ``xray2mri benchmark`` (also ``python scripts/benchmark.py``), a tool of the checkout.

Everything is measured in ONE process, so every ratio compares figures taken on the same machine under the
same load. Per profile (``small`` on a CPU, ``paper`` on a GPU, ``tiny`` for ``--quick``):

- the path users run (first): ``inference.batch.run_batch`` on an X-ray FILE with the pipeline ``load_pipeline`` +
  ``accelerate()`` give, at the defaults (``diffusion.DEFAULT_SAMPLING``) and at DDIM-50, timed in turns, every
  output format written to disk, with the breakdown (preprocessing, conditions, sampling, decoding, writing); and
  ``xray2mri generate`` as its own process (interpreter start, imports, model load), as the README demo runs it;
- seconds per volume: 50 slices, 50 DDIM steps, the optimised path (conditions once per X-ray, all depths in
  one batch, ``torch.inference_mode``), and the paper's Algorithm 2 as written (conditions recomputed for
  every slice, batch 1); the latter on ``--alg2-slices`` slices and scaled linearly to the volume;
- depth batching: chunk sizes 1 / 8 / 16 / 50 on ``--sweep-steps`` steps, extrapolated to 50 steps;
- UNet forwards per second and speed-ups of one sampling step: ``inference_mode`` vs ``no_grad``,
  channels_last, MONAI's ``use_flash_attention`` (torch SDPA) vs its einsum attention, bf16 autocast, and
  ``torch.compile`` (compile time reported apart; a failure is recorded, not raised);
- training slices per second: UNet + X-ray encoder forward, backward and AdamW at the profile's batch, with
  the ``LatentDiffusionPrepareBatch`` reading cached E1/C latents (the default), encoding on the fly, and
  without it; plus the one-off cost of caching one knee;
- quality against steps (10 / 20 / 50): PSNR, SSIM and RSSIM of a validation knee against its real MRI, only
  with trained weights;
- ingestion knees per second, cold and warm (``data.measure_cache_speed`` on a fresh synthetic cohort);
- peak memory (process RSS; CUDA allocator peak) of each stage, and the cost model (FLOPs per UNet forward,
  the H100 bf16 lower bound of a volume).

Results go to ``<out-dir>/performance.json`` (runs of other labels already there are kept, ``--merge`` adds
runs from other files, e.g. a GPU run) and ``<out-dir>/performance.md``. The figures are written after each
stage, so an interrupted run leaves what it measured. Outputs of the model are synthetic, not for diagnosis.

    OMP_NUM_THREADS=2 xray2mri benchmark                       # small profile on the CPU -> docs/
    xray2mri benchmark --device cuda --profiles paper --label h100 --out-dir /tmp/gpu
    xray2mri benchmark --merge /tmp/gpu/performance.json --render-only
    xray2mri benchmark --quick --out-dir /tmp/bench            # tiny profile, seconds (the test)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from tools.benchmark_tools import (
    H100_BF16_DENSE_TFLOPS,
    amp_context,
    attention_sdpa,
    best_time,
    count_flops,
    cpu_snapshot,
    cpu_use_since,
    load_average,
    machine_description,
    peak_memory_mib,
    process_peak_rss_mib,
    random_conditions,
    reset_peak_memory,
    sync,
)
from xray2mri_bundle.data.plain import to_plain
from xray2mri_bundle.diffusion import DEFAULT_SAMPLING, SamplingSettings
from xray2mri_bundle.inference.acceleration import accelerate

__all__ = ["cost_model", "main", "run_benchmark"]

ROOT = Path(__file__).resolve().parents[1]
FORMAT_VERSION = 1
DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------------------------------------ cost model
def unet_flops(profile: str, batch: int = 1) -> int:
    """FLOPs of one UNet forward over ``batch`` latents (counted on the meta device)."""
    from xray2mri_bundle.networks import build_unet, get_profile

    latent = get_profile(profile)["latent_shape"]

    def call(unet: torch.nn.Module) -> object:
        x = torch.randn(batch, *latent)
        return unet(x, torch.full((batch,), 500), **random_conditions(batch, latent, "meta"))

    return count_flops(lambda: build_unet(profile), call)


def decoder_flops(profile: str) -> int:
    """FLOPs of decoding one latent into one slice with the profile's AutoencoderKL."""
    from xray2mri_bundle.networks import build_autoencoder, get_profile

    latent = get_profile(profile)["latent_shape"]
    return count_flops(lambda: build_autoencoder(profile), lambda ae: ae.decode(torch.randn(1, *latent)))


def cost_model(profiles: Sequence[str], slices: int = 50, steps: int = 50,
               peak_tflops: float = H100_BF16_DENSE_TFLOPS) -> dict[str, dict[str, float]]:
    """Per profile: GFLOP per UNet forward (one latent) and per decoded slice, TFLOP per volume
    (``slices x steps`` forwards; twice that with classifier-free guidance) and the time these take at
    ``peak_tflops`` (dense bf16 peak of an H100): a physical lower bound no implementation can beat."""
    model = {}
    for name in profiles:
        unet, decode = unet_flops(name), decoder_flops(name)
        volume = unet * slices * steps
        model[name] = {
            "unet_gflop_per_forward": unet / 1e9,
            "decoder_gflop_per_slice": decode / 1e9,
            "volume_unet_tflop": volume / 1e12,
            "volume_unet_tflop_cfg": 2 * volume / 1e12,
            "lower_bound_s": volume / (peak_tflops * 1e12),
            "lower_bound_cfg_s": 2 * volume / (peak_tflops * 1e12),
            "lower_bound_with_decode_s": (volume + decode * slices) / (peak_tflops * 1e12),
            "peak_tflops": peak_tflops,
            "slices": slices,
            "steps": steps,
        }
    return model


# ------------------------------------------------------------------------------------------------ pipeline
def build_generator(profile: str, model_dir: Path | None, device: torch.device) -> tuple[Any, str]:
    """The profile's ``VolumeGenerator``: trained weights from ``model_dir`` when its three checkpoints are
    there, else seeded random initialisation (scale factor 0.2); returns (generator, weights description)."""
    from xray2mri_bundle import networks
    from xray2mri_bundle.data.intensity import IntensityDistribution
    from xray2mri_bundle.diffusion import ConditionEncoder
    from xray2mri_bundle.inference.generator import (
        CHECKPOINT_FILES,
        VolumeGenerator,
        load_pipeline,
        resolve_model_dir,
    )

    if model_dir is not None:
        folder = resolve_model_dir(model_dir, profile)
        if all((folder / name).is_file() for name in CHECKPOINT_FILES):
            generator = load_pipeline(folder, profile=profile, device=device)
            return generator, f"trained ({folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder}, " \
                              f"{generator.weights} weights)"
    torch.manual_seed(0)
    with torch.device(device):
        autoencoder = networks.build_autoencoder(profile)
        classifier = networks.build_classifier(profile)
        encoder = networks.build_xray_encoder(profile)
        unet = networks.build_unet(profile)
    for module in (autoencoder, classifier, encoder, unet):
        _randomise_zero_parameters(module)
        module.eval().requires_grad_(False)
    conditions = ConditionEncoder(autoencoder, encoder, classifier, IntensityDistribution())
    generator = VolumeGenerator(unet, autoencoder, conditions, 0.2, device)
    generator.profile = profile
    generator.image_size = int(networks.get_profile(profile)["image_size"])
    return generator, ("random init (no trained checkpoints found; zero-initialised layers randomised; the timing "
                       "is the same)")


def _randomise_zero_parameters(module: torch.nn.Module, std: float = 0.05) -> None:
    """Give the zero-initialised layers (UNet output, depth and guidance projections) small random weights, so
    that an untrained network's output depends on every input and precision differences are visible."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in module.parameters():
            if param.ndim > 0 and not param.any():
                param.copy_(torch.randn(param.shape, generator=gen).to(param) * std)


def load_validation_knee(datalist: Path | None, dataset_dir: Path | None, size: int) -> dict | None:
    """First validation knee, preprocessed as in training: ``xray`` (1, H, W) crop, ``mri`` (H, W, 50) real MRI,
    both in [-1, 1]. ``datalist``: a MONAI datalist JSON (or the training's ``datalist_index.json``);
    else ``dataset_dir`` is indexed. None when neither is there (or the DICOM readers are not installed)."""
    try:
        from xray2mri_bundle.data import index_oai, knee_transforms
    except ImportError:
        return None
    records = None
    if datalist is not None and datalist.is_file():
        data = json.loads(datalist.read_text())
        data = data.get("datalist", data)
        records = data.get("validation") or data.get("training")
    elif dataset_dir is not None and (dataset_dir / "contents.csv").is_file():
        data, _ = index_oai(dataset_dir, check_pixels=False)
        records = data["validation"] or data["training"]
    if not records:
        return None
    knee = knee_transforms(mri_size=size, xray_size=size)(dict(records[0]))
    return {"xray": torch.as_tensor(knee["xray"]).float(), "mri": torch.as_tensor(knee["mri"]).float()[0],
            "subject": records[0].get("subject"), "side": records[0].get("side")}


# ------------------------------------------------------------------------------------------------ measurements
def _volume_once(generator: Any, xray: torch.Tensor, slices: int, steps: int, chunk: int,
                 per_slice: bool = False, dtype: torch.dtype | None = None, sampler: str = "ddim") -> Any:
    """One volume; the component figures are DDIM's (the paper's sampler, comparable across runs)."""
    with amp_context(generator.device, dtype):
        return generator(xray, slices=slices, num_inference_steps=steps, chunk_size=chunk,
                         per_slice_conditions=per_slice, sampler=sampler)


def _timings(result: Any) -> dict[str, float]:
    t = result.timings
    return {"seconds": t["total"], "conditions_s": t["conditions"], "sampling_s": t["sampling"],
            "decoding_s": t["decoding"]}


def find_xray_file(datalist: Path | None, dataset_dir: Path | None, scratch: Path) -> tuple[Path, str]:
    """An X-ray FILE for the user path: the first validation knee's film of the datalist / cohort, else the film
    of a one-subject synthetic cohort made in ``scratch`` (seconds). Returns (path, description)."""
    from xray2mri_bundle.engines.datalist import load_datalist

    with contextlib.suppress(Exception):
        if (datalist is not None and datalist.is_file()) or (dataset_dir is not None and
                                                              (dataset_dir / "contents.csv").is_file()):
            data = load_datalist(dataset_dir, datalist, seed=0, val_fraction=0.3)
            record = (data.get("validation") or data["training"])[0]
            return Path(record["xray"]), f"validation knee {record.get('subject')} {record.get('side')}"
    from xray2mri_bundle.cohort.generate import make_cohort

    make_cohort(scratch / "cohort", knees=2, seed=0, mri_matrix=64)
    film = sorted(p for p in (scratch / "cohort").rglob("*") if p.is_file() and p.parent.name.isdigit()
                  and "0.E.1" in p.parts)[0]
    return film, "film of a one-subject synthetic cohort (seed 0)"


def measure_user_path(generator: Any, xray_file: Path, slices: int, settings: dict[str, Any], repeats: int,
                      load_s: float | None, scratch: Path) -> dict:
    """What ``xray2mri generate`` runs, in this process: ``inference.batch.run_batch`` on an X-ray FILE with the
    loaded + ``accelerate()``-d pipeline (the CLI's defaults: fp32, no compile), every output format written to
    disk. One entry per named ``SamplingSettings``, timed in turns (A B A B ...) after a warm-up, best of
    ``repeats``; the breakdown comes from the sidecar's timings, ``writing_s`` is the rest of the wall time.
    ``load_s``: the time of ``load_pipeline`` + ``accelerate`` (None for a random-init pipeline)."""
    from xray2mri_bundle.inference.batch import run_batch

    def once(value: Any, folder: Path) -> dict:
        start = time.perf_counter()
        report = run_batch([xray_file], folder, generator, slices=slices, num_inference_steps=value.steps,
                           eta=value.eta, guidance_scale=value.guidance_scale, sampler=value.sampler,
                           side="right", overwrite=True, progress=False, log=None, raise_on_failure=True)
        wall = time.perf_counter() - start
        sidecar = report.outputs[0]["sidecar"]
        t = sidecar["timings_s"]
        parts = {k: float(t.get(k, 0.0)) for k in ("preprocessing", "conditions", "sampling", "decoding")}
        return {"seconds": wall, **{f"{k}_s": v for k, v in parts.items()},
                "writing_s": max(wall - float(t.get("total", 0.0)) - parts["preprocessing"], 0.0)}

    for value in settings.values():  # warm-up: first calls pay allocator and import costs
        once(type(value)(value.sampler, 1, value.eta, value.guidance_scale), scratch / "warm")
    runs: dict[str, list[dict]] = {name: [] for name in settings}
    for _ in range(max(1, repeats)):
        for name, value in settings.items():
            runs[name].append(once(value, scratch / name))
    out: dict[str, Any] = {"input": str(xray_file), "slices": slices, "load_pipeline_s": load_s,
                           "repeats": max(1, repeats), "threads": torch.get_num_threads()}
    for name, value in settings.items():
        best = min(runs[name], key=lambda r: r["seconds"])
        out[name] = {**best, "sampler": value.sampler, "steps": value.steps, "guidance_scale": value.guidance_scale,
                     "all_s": [r["seconds"] for r in runs[name]]}
    return out


def measure_cli_process(model_dir: Path, profile: str, xray_file: Path, slices: int, flags: Sequence[str],
                        scratch: Path) -> dict:
    """``xray2mri generate`` as its own process, as the README demo runs it: interpreter start, imports, model
    load and generation, wall time (s) of the whole command; plus what the command printed as its total."""
    import subprocess

    command = [sys.executable, "-m", "xray2mri_bundle.cli", "generate", str(xray_file), "-o", str(scratch / "cli"),
               "--model-dir", str(model_dir), "--profile", profile, "--slices", str(slices), "--side", "right",
               "--overwrite", "--no-progress", *flags]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    sidecar = json.loads(next((scratch / "cli").glob("*/generation.json")).read_text())
    return {"seconds": wall, "generation_s": float(sidecar["timings_s"]["total"]), "flags": list(flags),
            "threads_env": os.environ.get("OMP_NUM_THREADS")}


def measure_volume(generator: Any, xray: torch.Tensor, slices: int, steps: int, repeats: int,
                   dtype: torch.dtype | None = None, chunk: int | None = None, sampler: str = "ddim") -> dict:
    """Optimised path: conditions once, ``chunk`` (default all) depths per UNet batch, inference mode.
    Best of ``repeats`` after a 2-step warm-up (``warmup_s``: its time, the compile time with torch.compile);
    peak memory of the timed runs."""
    chunk = chunk or slices
    start = time.perf_counter()
    _volume_once(generator, xray, slices, 2, chunk, dtype=dtype, sampler=sampler)
    warmup = time.perf_counter() - start
    reset_peak_memory(generator.device)
    runs = [_volume_once(generator, xray, slices, steps, chunk, dtype=dtype, sampler=sampler)
            for _ in range(max(1, repeats))]
    best = min(runs, key=lambda r: r.timings["total"])
    return {**_timings(best), "slices": slices, "steps": steps, "sampler": sampler, "chunk_size": chunk,
            "repeats": len(runs), "warmup_s": warmup, "all_s": [r.timings["total"] for r in runs],
            "peak_memory_mib": peak_memory_mib(generator.device)}


def measure_algorithm2(generator: Any, xray: torch.Tensor, slices: int, measured_slices: int, steps: int,
                       dtype: torch.dtype | None = None, repeats: int = 1) -> dict:
    """The paper's Algorithm 2 as written: conditions per slice, batch 1. Runs ``measured_slices`` slices (best
    of ``repeats``, like the optimised path) and scales linearly to ``slices`` (each slice costs the same:
    conditions + ``steps`` forwards + one decode)."""
    n = min(measured_slices, slices)
    runs = [_volume_once(generator, xray, n, steps, 1, per_slice=True, dtype=dtype) for _ in range(max(1, repeats))]
    result = min(runs, key=lambda r: r.timings["total"])
    scale = slices / n
    measured = _timings(result)
    return {"measured_slices": n, "slices": slices, "steps": steps, "scaled": n < slices, "repeats": len(runs),
            "all_measured_s": [r.timings["total"] for r in runs], "measured": measured,
            "seconds": measured["seconds"] * scale,
            "conditions_s": measured["conditions_s"] * scale, "sampling_s": measured["sampling_s"] * scale,
            "decoding_s": measured["decoding_s"] * scale}


def measure_chunks(generator: Any, xray: torch.Tensor, slices: int, sweep_steps: int, steps: int,
                   chunks: Sequence[int], dtype: torch.dtype | None = None) -> list[dict]:
    """Depth batching: one volume per chunk size on ``sweep_steps`` DDIM steps; the sampling time is scaled
    to ``steps`` (conditions and decoding do not depend on the step count)."""
    rows = []
    _volume_once(generator, xray, min(slices, max(chunks)), 1, max(chunks), dtype=dtype)  # warm-up
    for chunk in chunks:
        t = _timings(_volume_once(generator, xray, slices, sweep_steps, chunk, dtype=dtype))
        estimate = t["conditions_s"] + t["sampling_s"] * steps / sweep_steps + t["decoding_s"]
        rows.append({"chunk_size": chunk, "measured_steps": sweep_steps, **t, "volume_s_at_steps": estimate})
    slowest = max(r["volume_s_at_steps"] for r in rows)
    for row in rows:
        row["speedup_vs_slowest"] = slowest / row["volume_s_at_steps"]
    return rows


def _unet_inputs(latent_shape: Sequence[int], batch: int, device: torch.device) -> tuple:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *latent_shape, generator=gen).to(device)
    t = torch.randint(1, 1000, (batch,), generator=gen).to(device)
    return x, t, random_conditions(batch, latent_shape, device)


def _speedup(baseline: float, variant: float, **extra: Any) -> dict:
    return {"baseline_s": baseline, "variant_s": variant, "speedup": baseline / variant, **extra}


def _inference(fn: Callable[[], object]) -> Callable[[], object]:
    def call() -> object:
        with torch.inference_mode():
            return fn()
    return call


def _compare(baseline: Callable[[], object], variant: Callable[[], object], repeats: int, device: torch.device,
             switch: Callable[[bool], None] | None = None) -> dict:
    """Baseline, variant, baseline again (A B A), each the best of ``repeats``; the baseline is the better of its
    two blocks, so a slow spell of a shared machine does not show up as a speed-up. ``switch(True/False)``
    turns the variant's setting on / off around its block."""
    first = best_time(baseline, repeats, device)
    if switch is not None:
        switch(True)
    try:
        other = best_time(variant, repeats, device)
    finally:
        if switch is not None:
            switch(False)
    again = best_time(baseline, repeats, device)
    return _speedup(min(first, again), other, baseline_blocks_s=[first, again])


def measure_unet(unet: torch.nn.Module, latent_shape: Sequence[int], batch: int, device: torch.device,
                 repeats: int, flops_per_forward: int | None = None) -> dict:
    """UNet forwards per second (batch 1, one step over ``batch`` depths, and the ``2 x batch`` guidance
    batch) and the speed-ups of one sampling step; every figure is the best of ``repeats``."""
    x, t, cond = _unet_inputs(latent_shape, batch, device)

    def forward(n: int = batch) -> Callable[[], object]:
        sub = {k: v[:n] for k, v in cond.items()}
        return lambda: unet(x[:n], t[:n], **sub)

    result: dict[str, Any] = {"batch": batch}
    with torch.inference_mode():
        b1 = best_time(forward(1), repeats, device)
        step = best_time(forward(), repeats, device)
        doubled = {k: torch.cat([v, v]) for k, v in cond.items()}
        cfg = best_time(lambda: unet(torch.cat([x, x]), torch.cat([t, t]), **doubled), repeats, device)
    result.update(forward_b1_s=b1, forwards_per_s_b1=1 / b1, step_s=step, slice_forwards_per_s=batch / step,
                  cfg_step_s=cfg)
    if flops_per_forward:
        result["achieved_tflops_step"] = flops_per_forward * batch / step / 1e12

    reps = max(repeats, 5)  # one step is cheap: more repeats make the comparisons steadier
    speedups: dict[str, dict] = {}

    def no_grad_step() -> object:
        with torch.no_grad():
            return forward()()

    speedups["inference_mode_vs_no_grad"] = _compare(no_grad_step, _inference(forward()), reps, device)
    with torch.inference_mode():
        reference = forward()()
    xc = x.contiguous(memory_format=torch.channels_last)

    def channels_last(enabled: bool) -> None:  # outside inference mode: inference-mode parameters cannot train
        unet.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    try:
        speedups["channels_last"] = _compare(_inference(forward()), _inference(lambda: unet(xc, t, **cond)), reps,
                                             device, switch=channels_last)
    finally:
        channels_last(False)
    blocks = [m for m in unet.modules() if hasattr(m, "use_flash_attention")]
    if blocks:
        default = "sdpa" if blocks[0].use_flash_attention else "einsum"

        def attention(sdpa: bool) -> Callable[[], object]:
            def call() -> object:
                with attention_sdpa(unet, sdpa), torch.inference_mode():
                    return forward()()
            return call

        row = _compare(attention(False), attention(True), reps, device)
        row.update(attention_blocks=len(blocks), default=default,
                   max_abs_diff=float((attention(True)() - reference).abs().max()))
        speedups["sdpa_attention"] = row

    def bf16_step() -> object:
        with amp_context(device, torch.bfloat16), torch.inference_mode():
            return forward()()

    row = _compare(_inference(forward()), bf16_step, reps, device)
    row["max_abs_diff"] = float((bf16_step().float() - reference).abs().max())
    speedups["bf16_autocast"] = row
    result["speedups"] = speedups
    return result


def measure_compile(unet: torch.nn.Module, latent_shape: Sequence[int], batch: int, device: torch.device,
                    repeats: int) -> tuple[dict, torch.nn.Module | None]:
    """``torch.compile`` of the UNet: compile time (first call, empty inductor cache), then one sampling step,
    compared A B A with the eager UNet. Any failure (no C++ compiler, an unsupported op) is recorded as
    ``error``. Returns (figures, compiled module or None)."""
    x, t, cond = _unet_inputs(latent_shape, batch, device)
    torch._dynamo.reset()  # no graphs from earlier calls in this process
    eager = _inference(lambda: unet(x, t, **cond))
    reps = max(repeats, 5)
    try:
        first = best_time(eager, reps, device)
        compiled = torch.compile(unet)
        with _fresh_inductor_cache(), torch.inference_mode():
            sync(device)
            start = time.perf_counter()
            compiled(x, t, **cond)
            sync(device)
            compile_s = time.perf_counter() - start
        step = best_time(_inference(lambda: compiled(x, t, **cond)), reps, device)
        again = best_time(eager, reps, device)
    except Exception as exc:  # noqa: BLE001 - inductor raises many kinds; the benchmark goes on
        message = str(exc).strip().splitlines()
        return {"error": f"{type(exc).__name__}: {message[0] if message else ''}"[:300]}, None
    return {"compile_s": compile_s, **_speedup(min(first, again), step, baseline_blocks_s=[first, again])}, compiled


@contextlib.contextmanager
def _fresh_inductor_cache() -> Iterator[None]:
    """An empty on-disk inductor cache (``TORCHINDUCTOR_CACHE_DIR``), so the compile time is a cold one."""
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="inductor_") as tmp:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tmp
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = before


def measure_training(generator: Any, batch: int, repeats: int, dtype: torch.dtype | None) -> dict:
    """One training iteration of the diffusion stage at ``batch`` slices, three ways: (a) the full iteration as
    the bundle trains by default (``cache_latents``: the frozen E1/C outputs come from ``LatentKneeCache``, so
    the step is posterior sample + noising + UNet/E2 forward, epsilon-MSE, backward, AdamW); (b) the full
    iteration encoding on the fly (``cache_latents false``: frozen E1 encodes slice and crop, frozen C gives p,
    every step); (c) the trainable part alone on a batch prepared once. Also the one-off cost of caching one
    50-slice knee. Random images; the UNet and E2 weights are updated in place (run after the sampling
    measurements)."""
    from monai.networks.schedulers import DDPMScheduler

    from xray2mri_bundle.diffusion import ConditionalDiffusionInferer
    from xray2mri_bundle.diffusion.solvers import DEFAULT_SCHEDULE
    from xray2mri_bundle.engines.denoiser import XrayDenoiser
    from xray2mri_bundle.engines.latent_cache import encode_knee
    from xray2mri_bundle.engines.prepare_batch import LatentDiffusionPrepareBatch

    device, encoders = generator.device, generator.condition_encoder
    size = int(generator.image_size or 0) or _image_size(generator.profile)
    gen = torch.Generator().manual_seed(0)
    knee = {"mri": torch.rand(1, size, size, 50, generator=gen) * 2 - 1,
            "xray": torch.rand(1, size, size, generator=gen) * 2 - 1}
    index = torch.arange(batch) % 50
    batch_data = {
        "image": knee["mri"][..., index].permute(3, 0, 1, 2).expand(-1, 3, -1, -1).contiguous(),
        "xray": knee["xray"].expand(batch, -1, -1, -1).contiguous(),
        "depth": index.float() / 49,
        "intensity": torch.softmax(torch.randn(batch, 16, 8, 8, generator=gen), dim=1),
    }
    def encode() -> dict:
        return encode_knee(knee, encoders.autoencoder, encoders.classifier, device)

    with amp_context(device, dtype):
        encode_knee_s = best_time(encode, repeats, device)
        latents = encode()
    cached_batch = {k: batch_data[k] for k in ("xray", "depth", "intensity")}
    cached_batch.update(latent_mu=latents["mri_latent_mu"][index], latent_sigma=latents["mri_latent_sigma"][index],
                        xray_latent=latents["xray_latent"].expand(batch, -1, -1, -1))
    if "p_map" in latents:
        cached_batch["p_map"] = latents["p_map"].expand(batch, *latents["p_map"].shape)
    scheduler = DDPMScheduler(num_train_timesteps=1000, **DEFAULT_SCHEDULE)
    prepare = LatentDiffusionPrepareBatch(encoders.autoencoder, generator.scale_factor, classifier=encoders.classifier,
                                          amp=device.type == "cuda" and dtype is not None,
                                          prediction_type=generator.prediction_type, scheduler=scheduler)
    inferer = ConditionalDiffusionInferer(scheduler)
    denoiser = XrayDenoiser(generator.unet, encoders.xray_encoder).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=1e-6)

    def step(inputs: tuple) -> None:
        z0, noise, _, kwargs = inputs
        with amp_context(device, dtype):
            prediction = inferer(z0, denoiser, **kwargs)
        loss = F.mse_loss(prediction.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    try:
        prepared = prepare(cached_batch, device)
        reset_peak_memory(device)
        unet_only = best_time(lambda: step(prepared), repeats, device)
        cached = best_time(lambda: step(prepare(cached_batch, device)), repeats, device)
        uncached = best_time(lambda: step(prepare(batch_data, device)), repeats, device)
        prepare_cached_s = best_time(lambda: prepare(cached_batch, device), repeats, device)
        prepare_s = best_time(lambda: prepare(batch_data, device), repeats, device)
        peak = peak_memory_mib(device)
    finally:
        denoiser.eval().requires_grad_(False)
        optimizer.zero_grad(set_to_none=True)
    return {"batch": batch, "amp": str(dtype).replace("torch.", "") if dtype else "none",
            "step_s": cached, "slices_per_s": batch / cached,
            "uncached_step_s": uncached, "uncached_slices_per_s": batch / uncached,
            "unet_encoder_step_s": unet_only, "unet_encoder_slices_per_s": batch / unet_only,
            "prepare_batch_s": prepare_s, "prepare_batch_cached_s": prepare_cached_s,
            "latent_cache_knee_s": encode_knee_s, "peak_memory_mib": peak}


def measure_quality(generator: Any, knee: dict, steps_list: Sequence[int]) -> dict:
    """Fewer DDIM steps: PSNR / SSIM / RSSIM of the generated volume against the knee's real MRI for each
    step count (same seed and noise), the time of each volume, and the PSNR against the most-step volume."""
    from xray2mri_bundle.metrics import volume_psnr, volume_rssim, volume_ssim

    real = knee["mri"]
    volumes, rows = {}, []
    for steps in sorted(steps_list):
        result = _volume_once(generator, knee["xray"], real.shape[-1], steps, real.shape[-1])
        volumes[steps] = result.volume
        rows.append({"steps": steps, "seconds": result.timings["total"],
                     "psnr_db": volume_psnr(result.volume, real), "ssim": volume_ssim(result.volume, real),
                     "rssim": volume_rssim(result.volume, real)})
    most = max(volumes)
    for row in rows:
        row["psnr_vs_most_steps_db"] = volume_psnr(volumes[row["steps"]], volumes[most])
    return {"knee": f"{knee.get('subject')} {knee.get('side')}", "reference_steps": most, "rows": rows}


def measure_ingestion(knees: int, matrix: int, image_size: int) -> dict:
    """Knees per second through the preprocessing cache (``data.measure_cache_speed``): cold = DICOM decode,
    orientation, crop, resize, intensity map and cache write; warm = cache read. The cohort is made fresh
    (``cohort.make_cohort``, ``matrix`` x ``matrix`` MRI) in a temporary folder and removed after."""
    from xray2mri_bundle.cohort import make_cohort
    from xray2mri_bundle.data import index_oai, measure_cache_speed

    with tempfile.TemporaryDirectory(prefix="bench_cohort_") as tmp:
        start = time.perf_counter()
        root = make_cohort(Path(tmp) / "cohort", knees=knees, mri_matrix=matrix, progress=False, workers=1)
        cohort_s = time.perf_counter() - start
        start = time.perf_counter()
        datalist, _ = index_oai(root)
        index_s = time.perf_counter() - start
        records = datalist["training"] + datalist["validation"]
        reset_peak_memory(torch.device("cpu"))
        speed = measure_cache_speed(records, mri_size=image_size, xray_size=image_size)
        peak = peak_memory_mib(torch.device("cpu"))
    return {"mri_matrix": matrix, "image_size": image_size, "make_cohort_s": cohort_s, "index_s": index_s,
            **speed, "peak_memory_mib": peak}


def _image_size(profile: str) -> int:
    from xray2mri_bundle.networks import get_profile

    return int(get_profile(profile)["image_size"])


def training_batch(profile: str) -> int:
    """The profile's diffusion batch (``configs/profiles/<profile>.json``, else ``configs/common.json``)."""
    for path in (ROOT / "configs" / "profiles" / f"{profile}.json", ROOT / "configs" / "common.json"):
        if path.is_file():
            value = json.loads(path.read_text()).get("diffusion_batch_size")
            if value:
                return int(value)
    return 64


# ------------------------------------------------------------------------------------------------ driver
def _save(report: dict, out_dir: Path) -> None:
    from tools.benchmark_report import render_markdown

    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(to_plain(report), indent=2, allow_nan=False)
    (out_dir / "performance.json").write_text(text + "\n")
    page = out_dir / "performance.md"
    kept = _marked_blocks(page.read_text()) if page.is_file() else []  # written by other scripts (sampler_steps)
    page.write_text("\n\n".join([render_markdown(report).rstrip(), *kept]) + "\n")


def _marked_blocks(text: str) -> list[str]:
    """The ``<!-- name:start --> ... <!-- name:end -->`` blocks of a page, in order (other scripts own them)."""
    import re

    return [m.group(0) for m in re.finditer(r"<!-- ([\w-]+):start -->.*?<!-- \1:end -->", text, flags=re.S)]


def _step(name: str, fn: Callable[[], Any], run: dict, section: dict, key: str, save: Callable[[], None]) -> Any:
    """Run one measurement, store it in ``section[key]`` (or its error), print and save."""
    start = time.perf_counter()
    try:
        value = fn()
    except Exception as exc:  # noqa: BLE001 - one failed measurement must not lose the others
        value = None
        section[key] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        run.setdefault("errors", []).append(f"{name}: {type(exc).__name__}: {exc}"[:500])
    else:
        section[key] = value
    print(f"[benchmark] {name}: {time.perf_counter() - start:.1f} s", flush=True)
    save()
    return value


def benchmark_profile(profile: str, args: argparse.Namespace, device: torch.device, run: dict,
                      save: Callable[[], None]) -> None:
    """All measurements of one profile into ``run["profiles"][profile]`` (saved after each)."""
    section: dict[str, Any] = {}
    run["profiles"][profile] = section
    dtype = DTYPES[args.amp]
    start = time.perf_counter()
    generator, weights = build_generator(profile, args.model_dir, device)
    accelerate(generator)  # what `xray2mri generate` applies, at its defaults (fp32, no compile)
    load_s = time.perf_counter() - start if weights.startswith("trained") else None
    size = int(generator.image_size or _image_size(profile))
    latent_shape = list(generator.condition_encoder(torch.zeros(1, size, size, device=device)).latent_shape)
    knee = load_validation_knee(args.datalist, args.dataset_dir, size) if not args.quick else None
    xray = (knee["xray"] if knee is not None else torch.rand(1, size, size) * 2 - 1).to(device)
    section.update(weights=weights, image_size=size, latent_shape=latent_shape, amp=args.amp,
                   xray=f"validation knee {knee['subject']} {knee['side']}" if knee else "random crop")
    flops = unet_flops(profile)
    section["unet_gflop_per_forward"] = flops / 1e9
    s, steps = args.slices, args.steps

    # the path users run first: an X-ray file -> run_batch -> files on disk, at the defaults and at DDIM-50
    scratch = Path(tempfile.mkdtemp(prefix="xray2mri-bench-"))
    try:
        film, film_note = find_xray_file(args.datalist, args.dataset_dir, scratch)
        reference = SamplingSettings("ddim", 50)
        settings = {"default": DEFAULT_SAMPLING, **({} if reference == DEFAULT_SAMPLING else {"ddim_50": reference})}
        user = _step(f"{profile} user path", lambda: measure_user_path(generator, film, s, settings, args.repeats,
                                                                        load_s, scratch), run, section, "user_path",
                     save)
        if user:
            user["input_note"] = film_note
            if "ddim_50" in user:
                user["speedup_default_vs_ddim_50"] = user["ddim_50"]["seconds"] / user["default"]["seconds"]
            save()
        if weights.startswith("trained") and args.cli_process:
            folder = args.model_dir
            _step(f"{profile} xray2mri generate process", lambda: {
                name: measure_cli_process(folder, profile, film, s, ["--sampler", v.sampler, "--steps", str(v.steps)],
                                          scratch / name) for name, v in settings.items()}, run, section,
                  "cli_process", save)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    volume = _step(f"{profile} volume", lambda: measure_volume(generator, xray, s, steps, args.repeats, dtype),
                   run, section, "volume", save)
    alg2 = _step(f"{profile} algorithm 2", lambda: measure_algorithm2(generator, xray, s, args.alg2_slices,
                                                                        steps, dtype, args.repeats), run, section,
                 "algorithm2", save)
    if volume and alg2:
        section["algorithm2"]["ratio_vs_optimised"] = alg2["seconds"] / volume["seconds"]
        save()
    _step(f"{profile} chunk sweep", lambda: measure_chunks(generator, xray, s, args.sweep_steps, steps,
                                                           args.chunks, dtype), run, section, "chunks", save)
    unet = _step(f"{profile} unet", lambda: measure_unet(generator.unet, latent_shape, s, device, args.repeats,
                                                         flops), run, section, "unet", save)
    if args.volume_variants:
        _step(f"{profile} volume variants", lambda: volume_variants(generator, xray, s, steps, args.repeats),
              run, section, "volume_variants", save)
    if knee is not None and weights.startswith("trained") and args.quality_steps:
        _step(f"{profile} steps vs quality", lambda: measure_quality(generator, knee, args.quality_steps),
              run, section, "steps_quality", save)
    if args.train:
        batch = args.train_batch or training_batch(profile)
        _step(f"{profile} training", lambda: measure_training(generator, batch, args.repeats, dtype), run,
              section, "training", save)
    if args.compile and unet and volume:
        def compiled_figures() -> dict:
            figures, compiled = measure_compile(generator.unet, latent_shape, s, device, args.repeats)
            if compiled is not None:  # eager, compiled, eager volumes back to back (A B A), same load
                eager = generator.unet
                first = measure_volume(generator, xray, s, steps, args.repeats, dtype)["seconds"]
                generator.unet = compiled
                try:
                    timed = measure_volume(generator, xray, s, steps, args.repeats, dtype)["seconds"]
                finally:
                    generator.unet = eager
                again = measure_volume(generator, xray, s, steps, args.repeats, dtype)["seconds"]
                figures["volume"] = _speedup(min(first, again), timed, repeats=args.repeats,
                                             baseline_blocks_s=[first, again])
            return figures
        _step(f"{profile} torch.compile", compiled_figures, run, section, "compile", save)


def volume_variants(generator: Any, xray: torch.Tensor, slices: int, steps: int, repeats: int) -> dict:
    """Whole volumes in full precision, bf16 autocast, and bf16 autocast with SDPA attention (for GPUs)."""
    rows = {"fp32": measure_volume(generator, xray, slices, steps, repeats, None),
            "bf16": measure_volume(generator, xray, slices, steps, repeats, torch.bfloat16)}
    with attention_sdpa(generator.unet, True):
        rows["bf16_sdpa"] = measure_volume(generator, xray, slices, steps, repeats, torch.bfloat16)
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xray2mri benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--profiles", nargs="*", default=None, help="default: small on a CPU, paper on CUDA, tiny with --quick")
    add("--device", default="cpu")
    add("--threads", type=int, default=None, help="torch CPU threads (default: OMP_NUM_THREADS, else 2)")
    add("--label", default=None, help="name of this run in the JSON (default: cpu<threads> or the GPU's name)")
    add("--out-dir", type=Path, default=ROOT / "docs", help="performance.json and performance.md go here")
    add("--model-dir", type=Path, default=ROOT / "models", help="trained weights (<dir>/<profile>/*.pt)")
    add("--datalist", type=Path, default=None, help="datalist for the validation knee (quality vs steps)")
    add("--dataset-dir", type=Path, default=ROOT / "data" / "cohort")
    add("--slices", type=int, default=50)
    add("--steps", type=int, default=50)
    add("--alg2-slices", type=int, default=5, help="slices measured for Algorithm 2 (scaled to --slices)")
    add("--chunks", type=int, nargs="*", default=[1, 8, 16, 50])
    add("--sweep-steps", type=int, default=10, help="DDIM steps per chunk-size volume (scaled to --steps)")
    add("--quality-steps", type=int, nargs="*", default=[10, 20, 50])
    add("--repeats", type=int, default=2)
    add("--amp", choices=sorted(DTYPES), default=None, help="autocast dtype (default: bf16 on CUDA, none on CPU)")
    add("--compile", action=argparse.BooleanOptionalAction, default=True, help="also time torch.compile")
    add("--volume-variants", action=argparse.BooleanOptionalAction, default=None,
        help="whole volumes in fp32 / bf16 / bf16+SDPA (default: on CUDA)")
    add("--train", action=argparse.BooleanOptionalAction, default=True)
    add("--cli-process", action=argparse.BooleanOptionalAction, default=True,
        help="also time `xray2mri generate` as its own process (needs trained weights)")
    add("--train-batch", type=int, default=None, help="default: the profile's diffusion_batch_size")
    add("--ingest", action=argparse.BooleanOptionalAction, default=None, help="default: on the CPU")
    add("--ingest-knees", type=int, default=6)
    add("--ingest-matrix", type=int, default=256)
    add("--merge", type=Path, nargs="*", default=[], help="add the runs of these performance.json files")
    add("--render-only", action="store_true", help="only merge and rewrite performance.md")
    add("--quick", action="store_true", help="tiny profile, few slices and steps (seconds; for tests)")
    return parser


def _apply_quick(args: argparse.Namespace) -> None:
    args.profiles = args.profiles or ["tiny"]
    args.slices, args.steps, args.alg2_slices, args.sweep_steps = 8, 4, 2, 2
    args.chunks, args.repeats, args.compile, args.quality_steps = [1, 4, 8], 1, False, []
    args.ingest_knees, args.ingest_matrix = 2, 64
    args.label = args.label or "quick"


def _load_report(out_dir: Path, merge: Sequence[Path]) -> dict:
    report: dict[str, Any] = {"format_version": FORMAT_VERSION, "runs": {}}
    for path in [out_dir / "performance.json", *merge]:
        if path.is_file():
            data = json.loads(path.read_text())
            report["runs"].update(data.get("runs", {}))
            report.setdefault("cost_model", data.get("cost_model"))
    return report


def run_benchmark(args: argparse.Namespace) -> dict:
    """Measure (unless ``render_only``), write the JSON and Markdown, return the report."""
    report = _load_report(args.out_dir, args.merge)
    if not (args.render_only and report.get("cost_model")):
        report["cost_model"] = cost_model(["tiny", "small", "paper"] if not args.quick else ["tiny"])

    def save() -> None:
        _save(report, args.out_dir)

    if args.render_only:
        save()
        return report
    device = torch.device(args.device)
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS") or 2)
    torch.set_num_threads(threads)
    args.amp = args.amp or ("bf16" if device.type == "cuda" else "none")
    if args.volume_variants is None:
        args.volume_variants = device.type == "cuda"
    if args.ingest is None:
        args.ingest = device.type == "cpu"
    machine = machine_description(device)
    label = args.label or (machine.get("gpu", "cuda").split()[1].lower() if device.type == "cuda"
                           else f"cpu{threads}")
    run: dict[str, Any] = {"label": label, "machine": machine, "quick": bool(args.quick), "profiles": {},
                           "command": getattr(args, "command", None),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                           "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                                        if k not in ("merge", "render_only", "out_dir", "command")}}
    report["runs"][label] = run
    save()
    start, cpu_before = time.perf_counter(), cpu_snapshot()
    for profile in args.profiles or (["paper"] if device.type == "cuda" else ["small"]):
        benchmark_profile(profile, args, device, run, save)
    if args.ingest:
        size = _image_size((args.profiles or ["small"])[0])
        _step("ingestion", lambda: measure_ingestion(args.ingest_knees, args.ingest_matrix, size), run, run,
              "ingestion", save)
    run["machine"]["load_average_end"] = load_average()
    run["wall_s"] = time.perf_counter() - start
    run["machine"]["cpu_use_during_run"] = cpu_use_since(cpu_before)
    run["peak_rss_mib_process_lifetime"] = process_peak_rss_mib()
    save()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.command = "xray2mri benchmark " + " ".join(argv)
    if args.quick:
        _apply_quick(args)
    run_benchmark(args)
    print(f"wrote {args.out_dir / 'performance.json'} and {args.out_dir / 'performance.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
