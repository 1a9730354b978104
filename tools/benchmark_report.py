"""docs/performance.md from the benchmark's JSON: targets (pass / fail), machines, per-run tables, cost model.

Pure formatting: every number comes from ``performance.json`` (``tools/benchmark.py``), so the page can be
rewritten at any time with ``xray2mri benchmark --render-only``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["TARGETS", "render_markdown", "target_rows"]

#: (profile, device type of the run, what is measured, required value, comparison)
TARGETS: tuple[tuple[str, str, str, float, str], ...] = (
    ("small", "cpu", "`xray2mri generate` path, 50-slice volume at the defaults, X-ray file to files (s)", 3.0, "<="),
    ("small", "cpu", "`xray2mri generate` path: defaults vs DDIM-50 (x faster)", 4.0, ">="),
    ("small", "cpu", "50-slice volume, 50 DDIM steps (s)", 20.0, "<="),
    ("small", "cpu", "optimised path vs Algorithm 2 as written (x faster)", 5.0, ">="),
    ("small", "cpu", "training throughput (slices/s)", 30.0, ">="),
    ("paper", "cuda", "50-slice volume, 50 DDIM steps, bf16, one H100 (s)", 3.0, "<="),
)


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if value != 0 and abs(value) < 10 ** -digits:
        return f"{value:.2e}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".")


def _ok(section: Any) -> bool:
    return isinstance(section, dict) and "error" not in section


def _runs(report: dict) -> Iterator[tuple[str, dict]]:
    yield from report.get("runs", {}).items()


def _best_bf16_volume(section: dict) -> tuple[float | None, str]:
    """Fastest bf16 whole-volume time of a profile section and which variant gave it."""
    candidates = []
    if _ok(section.get("volume")) and section.get("amp") == "bf16":
        candidates.append((section["volume"]["seconds"], "optimised path, bf16"))
    variants = section.get("volume_variants")
    if _ok(variants):
        for name, row in variants.items():
            if name.startswith("bf16"):
                candidates.append((row["seconds"], f"optimised path, {name.replace('_', ' + ')}"))
    compiled = section.get("compile")
    if _ok(compiled) and "volume" in compiled and section.get("amp") == "bf16":
        candidates.append((compiled["volume"]["variant_s"], "optimised path, bf16 + torch.compile (compile time "
                                                            f"{_num(compiled['compile_s'])} s once per process)"))
    return min(candidates) if candidates else (None, "")


def _measured(profile: str, what: str, section: dict) -> tuple[float | None, str]:
    """The figure a target compares, from one profile section, with a short note."""
    user = section.get("user_path")
    if what.startswith("`xray2mri generate` path,") and _ok(user):
        d = user["default"]
        return d["seconds"], f"{d['sampler']} {d['steps']} steps, {user['slices']} slices, {user['threads']} threads"
    if what.startswith("`xray2mri generate` path:") and _ok(user) and "speedup_default_vs_ddim_50" in user:
        return user["speedup_default_vs_ddim_50"], (f"{_num(user['ddim_50']['seconds'])} s -> "
                                                    f"{_num(user['default']['seconds'])} s, same run")
    if what.startswith("50-slice") and profile == "paper":
        return _best_bf16_volume(section)
    if what.startswith("50-slice") and _ok(section.get("volume")):
        return section["volume"]["seconds"], "optimised path"
    if what.startswith("optimised") and _ok(section.get("algorithm2")):
        alg2 = section["algorithm2"]
        note = f"Algorithm 2 on {alg2['measured_slices']} slices, scaled" if alg2["scaled"] else ""
        return alg2.get("ratio_vs_optimised"), note
    if what.startswith("training") and _ok(section.get("training")):
        train = section["training"]
        if "uncached_slices_per_s" not in train:  # runs before the latent cache: encoders ran every step
            return train["slices_per_s"], (f"batch {train['batch']}, full iteration with the PrepareBatch's frozen "
                                           f"encoders (before the latent cache); UNet + X-ray encoder alone "
                                           f"{_num(train['unet_encoder_slices_per_s'])} slices/s")
        return train["slices_per_s"], (f"batch {train['batch']}, full iteration with cached E1/C latents (the "
                                       f"default); encoding on the fly {_num(train['uncached_slices_per_s'])} "
                                       f"slices/s")
    return None, ""


def target_rows(report: dict) -> list[dict]:
    """One row per target and matching (non-quick) run; a target no run measured gets one 'not measured' row."""
    rows = []
    for profile, device, what, required, op in TARGETS:
        found = False
        for label, run in _runs(report):
            section = run.get("profiles", {}).get(profile)
            if run.get("quick") or section is None or run.get("machine", {}).get("device") != device:
                continue
            value, note = _measured(profile, what, section)
            if value is None:
                continue
            found = True
            passed = value <= required if op == "<=" else value >= required
            rows.append({"profile": profile, "target": what, "required": f"{op} {_num(required)}",
                         "measured": value, "run": label, "note": note, "result": "pass" if passed else "FAIL"})
        if not found:
            note = ""
            bound = report.get("cost_model", {}).get(profile)
            if profile == "paper" and bound:
                note = (f"not measured on a GPU; cost-model lower bound {_num(bound['lower_bound_s'])} s "
                        f"(UNet only, {_num(bound['peak_tflops'])} TFLOP/s)")
            rows.append({"profile": profile, "target": what, "required": f"{op} {_num(required)}",
                         "measured": None, "run": "-", "note": note or "not measured", "result": "unknown"})
    return rows


def _machine_line(label: str, run: dict) -> str:
    m = run.get("machine", {})
    load = f"{m.get('load_average_start', [])} -> {m.get('load_average_end', '(running)')}"
    gpu = m.get("gpu", "-")
    return (f"| {label} | {m.get('nproc')} (of {m.get('cpu_count')}) | {m.get('cpu_model')} | {load} | "
            f"{m.get('torch_threads')} (OMP_NUM_THREADS={m.get('omp_num_threads')}) | {gpu} | "
            f"torch {m.get('torch')}, MONAI {m.get('monai')}, Python {m.get('python')} | {run.get('started', '')} |")


def _peak(peaks: dict | None) -> str:
    if not peaks:
        return "-"
    parts = [f"RSS {_num(peaks.get('rss'))} MiB"]
    if "cuda_allocated" in peaks:
        parts.append(f"CUDA {_num(peaks['cuda_allocated'])} MiB allocated")
    return ", ".join(parts)


def _error(section: Any) -> str | None:
    return section["error"] if isinstance(section, dict) and "error" in section else None


def _profile_tables(label: str, profile: str, s: dict) -> list[str]:
    out = [f"### {label}: {profile} profile", "",
           f"Weights: {s.get('weights')}. Input: {s.get('xray')}. Image {s.get('image_size')} px, latent "
           f"{s.get('latent_shape')}, autocast: {s.get('amp')}.", ""]
    vol, alg2 = s.get("volume"), s.get("algorithm2")
    out += ["| measurement | value |", "| --- | --- |"]
    user = s.get("user_path")
    if _ok(user):
        for name in ("default", "ddim_50"):
            if name not in user:
                continue
            u = user[name]
            out.append(f"| `xray2mri generate` path ({name}: {u['sampler']}, {u['steps']} steps), X-ray file -> "
                       f"{user['slices']} slices -> NIfTI/DICOM/PNG/JSON on disk (best of {user['repeats']}) | "
                       f"**{_num(u['seconds'])} s** (preprocessing {_num(u['preprocessing_s'])}, conditions "
                       f"{_num(u['conditions_s'])}, sampling {_num(u['sampling_s'])}, decoding "
                       f"{_num(u['decoding_s'])}, writing {_num(u['writing_s'])}) |")
        if user.get("load_pipeline_s") is not None:
            out.append(f"| `load_pipeline` + `accelerate()` (once per process) | {_num(user['load_pipeline_s'])} s |")
        if "speedup_default_vs_ddim_50" in user:
            out.append(f"| defaults vs DDIM-50 on that path | **{_num(user['speedup_default_vs_ddim_50'])}x** |")
    cli = s.get("cli_process")
    if _ok(cli):
        for c in cli.values():
            out.append(f"| `xray2mri generate {' '.join(c['flags'])}` as its own process (start, imports, load, "
                       f"generate, write) | {_num(c['seconds'])} s (generation {_num(c['generation_s'])} s) |")
    if _ok(vol):
        out.append(f"| volume: {vol['slices']} slices x {vol['steps']} DDIM steps, optimised path (best of "
                   f"{vol['repeats']}) | **{_num(vol['seconds'])} s** (conditions {_num(vol['conditions_s'])}, "
                   f"sampling {_num(vol['sampling_s'])}, decoding {_num(vol['decoding_s'])}) |")
        out.append(f"| peak memory while sampling | {_peak(vol.get('peak_memory_mib'))} |")
    if _ok(alg2):
        scaled = (f"measured on {alg2['measured_slices']} slices ({_num(alg2['measured']['seconds'])} s, best of "
                  f"{alg2.get('repeats', 1)}), scaled "
                  f"linearly to {alg2['slices']}" if alg2["scaled"] else "measured on the whole volume")
        out.append(f"| volume, Algorithm 2 as written (conditions per slice, batch 1) | {_num(alg2['seconds'])} s, "
                   f"{scaled} |")
        if alg2.get("ratio_vs_optimised"):
            out.append(f"| optimised path speed-up over Algorithm 2 | **{_num(alg2['ratio_vs_optimised'])}x** |")
        if _ok(vol):
            out.append(f"| conditions: once per X-ray vs once per slice | {_num(vol['conditions_s'])} s vs "
                       f"{_num(alg2['conditions_s'])} s per volume |")
    unet = s.get("unet")
    if _ok(unet):
        out.append(f"| UNet forwards/s, batch 1 | {_num(unet['forwards_per_s_b1'])} |")
        out.append(f"| UNet slice-forwards/s, one step over {unet['batch']} depths | "
                   f"{_num(unet['slice_forwards_per_s'])} ({_num(unet['step_s'])} s per step; guidance batch of "
                   f"{2 * unet['batch']}: {_num(unet['cfg_step_s'])} s) |")
        if "achieved_tflops_step" in unet:
            out.append(f"| achieved TFLOP/s in that step | {_num(unet['achieved_tflops_step'])} |")
    train = s.get("training")
    if _ok(train):
        cached = "uncached_slices_per_s" in train
        what = "cached E1/C latents (default) + UNet/E2 fwd+bwd + AdamW" if cached else \
            "PrepareBatch encoders + UNet/E2 fwd+bwd + AdamW"
        out.append(f"| training, full iteration ({what}), batch {train['batch']}, amp {train['amp']} | "
                   f"**{_num(train['slices_per_s'])} slices/s** ({_num(train['step_s'])} s) |")
        if cached:
            out.append(f"| training, full iteration encoding on the fly (``cache_latents false``) | "
                       f"{_num(train['uncached_slices_per_s'])} slices/s ({_num(train['uncached_step_s'])} s; "
                       f"PrepareBatch alone {_num(train['prepare_batch_s'])} s, from the cache "
                       f"{_num(train['prepare_batch_cached_s'])} s) |")
            out.append(f"| latent cache, one-off cost per 50-slice knee (E1 on slices and crop, C on crop) | "
                       f"{_num(train['latent_cache_knee_s'])} s |")
        out.append(f"| training, UNet + X-ray encoder only (batch prepared once) | "
                   f"{_num(train['unet_encoder_slices_per_s'])} slices/s"
                   + ("" if cached else f" (PrepareBatch alone {_num(train['prepare_batch_s'])} s)") + " |")
        out.append(f"| peak memory while training | {_peak(train.get('peak_memory_mib'))} |")
    for key in ("user_path", "cli_process", "volume", "algorithm2", "unet", "training", "chunks", "compile",
                "steps_quality", "volume_variants"):
        if _error(s.get(key)):
            out.append(f"| {key} | failed: {_error(s[key])} |")
    out.append("")

    chunks = s.get("chunks")
    if isinstance(chunks, list) and chunks:
        steps = vol["steps"] if _ok(vol) else "the target"
        out += [f"Depth batching: depths per UNet batch (chunk size), each volume run on "
                f"{chunks[0]['measured_steps']} DDIM steps and its sampling time scaled to {steps} steps.", "",
                "| chunk size | measured s | volume s at full steps (est.) | speed-up vs slowest |",
                "| --- | --- | --- | --- |"]
        out += [f"| {r['chunk_size']} | {_num(r['seconds'])} | {_num(r['volume_s_at_steps'])} | "
                f"{_num(r['speedup_vs_slowest'])}x |" for r in chunks]
        out.append("")

    if _ok(unet) and unet.get("speedups"):
        names = {"inference_mode_vs_no_grad": "torch.inference_mode (baseline: no_grad)",
                 "channels_last": "channels_last memory format",
                 "sdpa_attention": "torch SDPA in MONAI attention (use_flash_attention; baseline: einsum)",
                 "bf16_autocast": "bf16 autocast"}
        out += [f"Speed-ups of one sampling step (UNet over {unet['batch']} depths, best of the run's repeats):", "",
                "| change | baseline s | with the change s | speed-up | note |", "| --- | --- | --- | --- | --- |"]
        for key, row in unet["speedups"].items():
            note = []
            if "max_abs_diff" in row:
                note.append(f"max abs difference of eps {_num(row['max_abs_diff'])}")
            if "default" in row:
                note.append(f"{row['attention_blocks']} attention blocks, profile default: {row['default']}")
            out.append(f"| {names.get(key, key)} | {_num(row['baseline_s'])} | {_num(row['variant_s'])} | "
                       f"{_num(row['speedup'])}x | {'; '.join(note)} |")
        comp = s.get("compile")
        if _ok(comp):
            vol_note = ""
            if "volume" in comp:
                v = comp["volume"]
                vol_note = (f"; whole volume (autocast {s.get('amp')}, eager attention) {_num(v['baseline_s'])} "
                            f"-> {_num(v['variant_s'])} s ({_num(v['speedup'])}x; eager, compiled"
                            f"{', eager' if 'baseline_blocks_s' in v else ''} timed back to back, best of "
                            f"{v.get('repeats', 1)} each)")
            out.append(f"| torch.compile (default mode) | {_num(comp['baseline_s'])} | {_num(comp['variant_s'])} | "
                       f"{_num(comp['speedup'])}x | compile time {_num(comp['compile_s'])} s (first call, empty "
                       f"inductor cache){vol_note} |")
        elif _error(comp):
            out.append(f"| torch.compile | - | - | - | failed here: {_error(comp)} |")
        out.append("")

    verdict = _verdict(s)
    if verdict:
        out += [verdict, ""]

    variants = s.get("volume_variants")
    if _ok(variants):
        out += ["Whole volumes by precision and attention:", "", "| variant | s | peak memory |", "| --- | --- | --- |"]
        out += [f"| {name.replace('_', ' + ')} | {_num(row['seconds'])} | {_peak(row.get('peak_memory_mib'))} |"
                for name, row in variants.items()]
        out.append("")

    quality = s.get("steps_quality")
    if _ok(quality):
        out += [f"Fewer DDIM steps: validation knee {quality['knee']} against its real MRI (same seed, "
                f"{s.get('weights')}, all 50 depths in one batch). The figures against the real MRI are only as good "
                "as the weights (see the training record next to them); the last column is how much fewer steps "
                "change the output itself.", "",
                "| DDIM steps | s per volume | PSNR dB | SSIM | RSSIM | "
                f"PSNR vs {quality['reference_steps']} steps dB |",
                "| --- | --- | --- | --- | --- | --- |"]
        out += [f"| {r['steps']} | {_num(r['seconds'])} | {_num(r['psnr_db'])} | {_num(r['ssim'])} | "
                f"{_num(r['rssim'])} | "
                f"{'(reference)' if r['steps'] == quality['reference_steps'] else _num(r['psnr_vs_most_steps_db'])} |"
                for r in quality["rows"]]
        out.append("")
    return out


def _verdict(s: dict) -> str:
    """One line: which measured changes pay (>= 5 % faster) on this machine and which do not."""
    found: dict[str, float] = {}
    unet = s.get("unet")
    if _ok(unet):
        found.update({k.replace("_", " "): v["speedup"] for k, v in unet.get("speedups", {}).items()})
    if _ok(s.get("compile")):
        comp = s["compile"]
        found["torch.compile (volume)" if "volume" in comp else "torch.compile"] = \
            comp["volume"]["speedup"] if "volume" in comp else comp["speedup"]
    chunks = s.get("chunks")
    if isinstance(chunks, list) and len(chunks) > 1:
        found[f"depth batching ({chunks[-1]['chunk_size']} vs {chunks[0]['chunk_size']} depths per batch)"] = \
            chunks[0]["volume_s_at_steps"] / chunks[-1]["volume_s_at_steps"]
    if not found:
        return ""
    pays = [f"{k} {_num(v)}x" for k, v in sorted(found.items(), key=lambda kv: -kv[1]) if v >= 1.05]
    not_ = [f"{k} {_num(v)}x" for k, v in sorted(found.items(), key=lambda kv: -kv[1]) if v < 1.05]
    return (f"On this machine these pay: {', '.join(pays) or 'none'}. These do not (< 5 % or slower): "
            f"{', '.join(not_) or 'none'}.")


def _cost_model(report: dict) -> list[str]:
    model = report.get("cost_model") or {}
    if not model:
        return []
    peak = _num(next(iter(model.values()))["peak_tflops"])
    out = ["## Cost model", "",
           "FLOPs counted with `torch.utils.flop_counter.FlopCounterMode` on the meta device (2 FLOPs per "
           "multiply-add; one UNet forward of one latent, einsum attention). A volume is 50 slices x 50 DDIM steps "
           f"of UNet forwards (twice that with classifier-free guidance). The lower bound is that work at the H100's "
           f"dense bf16 peak of {peak} TFLOP/s: no implementation on one H100 can be faster.", "",
           "| profile | GFLOP per UNet forward | GFLOP per decoded slice | TFLOP per volume (CFG) | lower bound s "
           "(CFG; + decoding) | measured (run) | fraction of the bound reached |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for profile, m in model.items():
        measured, fraction = "-", "unknown (no GPU measurement)"
        for label, run in _runs(report):
            section = run.get("profiles", {}).get(profile)
            if section and run.get("machine", {}).get("device") == "cuda" and not run.get("quick"):
                seconds, how = _best_bf16_volume(section)
                if seconds is None and _ok(section.get("volume")):
                    seconds, how = section["volume"]["seconds"], "optimised path"
                if seconds:
                    measured = f"{_num(seconds)} s ({label}, {how})"
                    fraction = f"{100 * m['lower_bound_with_decode_s'] / seconds:.1f} %"
        out.append(f"| {profile} | {_num(m['unet_gflop_per_forward'])} | {_num(m['decoder_gflop_per_slice'])} | "
                   f"{_num(m['volume_unet_tflop'])} ({_num(m['volume_unet_tflop_cfg'])}) | "
                   f"{_num(m['lower_bound_s'])} ({_num(m['lower_bound_cfg_s'])}; "
                   f"{_num(m['lower_bound_with_decode_s'])}) | {measured} | {fraction} |")
    out.append("")
    return out


def render_markdown(report: dict) -> str:
    """The whole docs/performance.md page."""
    out = ["# Performance", "",
           "Speed and memory of the X-ray -> pseudo-MRI pipeline, written by `xray2mri benchmark` "
           "(`tools/benchmark.py`) from `performance.json`; do not edit by hand. Each run measures "
           "everything in one process on one machine, so the ratios inside a run compare like with like; "
           "figures from different runs (machines) are not compared. The volumes are synthetic research images, "
           "not for diagnosis.", "",
           "## Targets", "",
           "| profile | target | required | measured | run | result | note |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in target_rows(report):
        out.append(f"| {r['profile']} | {r['target']} | {r['required']} | {_num(r['measured'])} | {r['run']} | "
                   f"**{r['result']}** | {r['note']} |")
    out += ["", "## Machines", "",
            "| run | cores usable (of) | CPU | load average 1/5/15 min, start -> end | torch threads | GPU | "
            "software | started |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    out += [_machine_line(label, run) for label, run in _runs(report)]
    out.append("")
    for label, run in _runs(report):
        out += [f"## Run {label}{' (quick: tiny sizes, not representative)' if run.get('quick') else ''}", ""]
        if run.get("command"):
            out += [f"Command: `{run['command']}`", ""]
        for profile, section in run.get("profiles", {}).items():
            out += _profile_tables(label, profile, section)
        ingest = run.get("ingestion")
        if _ok(ingest):
            out += [f"Ingestion ({ingest['knees']} knees of a fresh synthetic cohort, {ingest['mri_matrix']} px MRI, "
                    f"preprocessed to {ingest['image_size']} px, `data.measure_cache_speed`): cold (DICOM decode + "
                    f"preprocessing + cache write) **{_num(ingest['cold_knees_per_s'])} knees/s**, warm (cache read) "
                    f"**{_num(ingest['warm_knees_per_s'])} knees/s**; cache {_num(ingest['cache_bytes'] / 2**20)} MiB; "
                    f"peak {_peak(ingest.get('peak_memory_mib'))}.", ""]
        elif _error(ingest):
            out += [f"Ingestion failed: {_error(ingest)}", ""]
        if run.get("errors"):
            out += ["Errors in this run: " + "; ".join(run["errors"]), ""]
        if "wall_s" in run:
            use = run.get("machine", {}).get("cpu_use_during_run")
            other = ""
            if use:
                other = (f" CPU time during the run: this process {_num(use['own_cpu_s'])} s, all other processes "
                         f"{_num(use['other_processes_cpu_s'])} s, steal {_num(use['steal_s'])} s.")
            out += [f"Run wall time {_num(run['wall_s'])} s; process peak RSS "
                    f"{_num(run.get('peak_rss_mib_process_lifetime'))} MiB.{other}", ""]
    out += _cost_model(report)
    out += ["## Method", "",
            "- The `xray2mri generate` path is `inference.batch.run_batch` on an X-ray file with the loaded pipeline "
            "(`load_pipeline` + `accelerate()` at the CLI's defaults), all four output formats written, the default "
            "sampler and DDIM-50 timed in turns (A B A B) after a warm-up, best of the repeats; its breakdown comes "
            "from the sidecar. The whole-process figure adds interpreter start, imports and model loading (one run "
            "each): that is what a single `xray2mri generate` call in the README demo costs.",
            "- Timings are wall-clock seconds between device synchronisations; a figure is the best of the run's "
            "repeats after a warm-up. A speed-up is timed baseline, variant, baseline again (the better baseline "
            "counts), so a slow spell of a shared machine is not read as a speed-up (runs from before this "
            "method, without `baseline_blocks_s` in the JSON, timed the baseline once). The optimised path is "
            "`VolumeGenerator` with all depths in one batch "
            "(`chunk_size` = slices), conditions computed once per X-ray, one shared initial noise, "
            "`torch.inference_mode`; Algorithm 2 as written is `per_slice_conditions=True` (conditions and decoding "
            "per slice, UNet batch 1).",
            "- Depth-batching and Algorithm-2 figures that were measured on fewer steps or slices are scaled "
            "linearly (every slice and every step costs the same), as the tables say.",
            "- Peak memory: process resident set (`VmHWM`, reset before each stage through `/proc/self/clear_refs`) "
            "and, on CUDA, `torch.cuda.max_memory_allocated`.",
            "- Training: random images of the profile's size, the diffusion stage's batch "
            "(`configs/profiles/<profile>.json`), the frozen E1 / C inside `LatentDiffusionPrepareBatch`, AdamW.",
            "- Attention: MONAI 1.6.1's `SABlock` and `CrossAttentionBlock` call "
            "`torch.nn.functional.scaled_dot_product_attention` only when built with `use_flash_attention=True`; "
            "`DiffusionModelUNet` passes its `use_flash_attention` argument (default False) down and the profiles "
            "leave it False, so the shipped path is MONAI's einsum + softmax attention. The benchmark flips the "
            "flag on the built blocks (same weights) to compare.",
            "- fp32 figures use PyTorch's defaults (no TF32 matrix products on GPUs); `torch.compile` is the default "
            "mode, its compile time is paid once per process and per new input shape or dtype.",
            "- Speed-ups that lose nothing (inference mode, SDPA with max difference at rounding level) can be "
            "switched on freely; bf16 changes the numbers slightly; fewer DDIM steps trade quality, measured above "
            "only when trained weights were present.", ""]
    return "\n".join(out)
