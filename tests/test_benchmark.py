"""Benchmark (``xray2mri benchmark --quick``): tiny profile, writes valid JSON and Markdown to a temporary folder.

No timing is asserted (the machine is shared); only the structure and that every figure is a positive number.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tools import benchmark, benchmark_report
from tools.benchmark_tools import attention_sdpa
from xray2mri_bundle.diffusion import DEFAULT_SAMPLING, SamplingSettings


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bench")
    # no trained weights: an empty model folder (the repository's models/ may hold the small profile only)
    assert benchmark.main(["--quick", "--out-dir", str(out), "--model-dir", str(out / "no_models")]) == 0
    return out, json.loads((out / "performance.json").read_text())


def test_quick_writes_json_and_markdown(quick_report: tuple[Path, dict]) -> None:
    out, report = quick_report
    assert (out / "performance.md").is_file()
    run = report["runs"]["quick"]
    assert run["quick"] is True and not run.get("errors")
    machine = run["machine"]
    assert machine["nproc"] >= 1 and machine["cpu_model"] and len(machine["load_average_start"]) == 3
    tiny = run["profiles"]["tiny"]
    assert tiny["weights"].startswith("random init")
    for value in (tiny["volume"]["seconds"], tiny["volume"]["peak_memory_mib"]["rss"],
                  tiny["algorithm2"]["seconds"], tiny["algorithm2"]["ratio_vs_optimised"],
                  tiny["unet"]["forwards_per_s_b1"], tiny["unet"]["slice_forwards_per_s"],
                  tiny["training"]["slices_per_s"], tiny["training"]["unet_encoder_slices_per_s"],
                  tiny["training"]["uncached_slices_per_s"], tiny["training"]["latent_cache_knee_s"],
                  run["ingestion"]["cold_knees_per_s"], run["ingestion"]["warm_knees_per_s"],
                  report["cost_model"]["tiny"]["unet_gflop_per_forward"],
                  report["cost_model"]["tiny"]["lower_bound_s"]):
        assert _positive(value), value
    assert tiny["algorithm2"]["scaled"] and tiny["algorithm2"]["measured_slices"] < tiny["algorithm2"]["slices"]
    assert [row["chunk_size"] for row in tiny["chunks"]] == [1, 4, 8]
    assert all(_positive(row["volume_s_at_steps"]) for row in tiny["chunks"])
    assert set(tiny["unet"]["speedups"]) >= {"inference_mode_vs_no_grad", "channels_last", "sdpa_attention",
                                             "bf16_autocast"}
    assert all(_positive(row["speedup"]) for row in tiny["unet"]["speedups"].values())
    assert "compile" not in tiny and "steps_quality" not in tiny  # --quick skips them
    user = tiny["user_path"]  # the path `xray2mri generate` runs: an X-ray file to files on disk
    assert ("ddim_50" in user) == (SamplingSettings("ddim", 50) != DEFAULT_SAMPLING)  # today's path beside it
    for value in (user["default"]["seconds"], user["default"]["sampling_s"], user["default"]["decoding_s"],
                  user["default"]["preprocessing_s"]):
        assert _positive(value), value
    assert user["default"]["seconds"] >= user["default"]["sampling_s"] + user["default"]["decoding_s"]


def test_markdown_has_targets_and_machine(quick_report: tuple[Path, dict]) -> None:
    out, report = quick_report
    text = (out / "performance.md").read_text()
    for heading in ("## Targets", "## Machines", "## Cost model", "| quick | "):
        assert heading in text
    rows = benchmark_report.target_rows(report)
    assert len(rows) == len(benchmark_report.TARGETS)
    assert all(row["result"] == "unknown" for row in rows)  # a quick run never counts for a target


def test_render_only_keeps_and_merges_runs(quick_report: tuple[Path, dict], tmp_path: Path) -> None:
    out, report = quick_report
    other = json.loads(json.dumps(report))
    other["runs"] = {"gpu": {**report["runs"]["quick"], "label": "gpu", "quick": False}}
    other["runs"]["gpu"]["machine"] = {**other["runs"]["gpu"]["machine"], "device": "cuda"}
    merged_file = tmp_path / "other.json"
    merged_file.write_text(json.dumps(other))
    target = tmp_path / "docs"
    benchmark.main(["--render-only", "--out-dir", str(target), "--merge", str(out / "performance.json"),
                    str(merged_file)])
    merged = json.loads((target / "performance.json").read_text())
    assert set(merged["runs"]) == {"quick", "gpu"}


def test_attention_switch_restores_the_flag() -> None:
    from xray2mri_bundle.networks import build_unet

    unet = build_unet("tiny")
    with attention_sdpa(unet, True) as blocks:
        assert blocks > 0
        assert all(m.use_flash_attention for m in unet.modules() if hasattr(m, "use_flash_attention"))
    assert not any(m.use_flash_attention for m in unet.modules() if hasattr(m, "use_flash_attention"))


def test_gpu_check_script_runs_unchanged_on_a_cpu(tmp_path: Path) -> None:
    """scripts/gpu_check.py is kept ready for a GPU machine: the same code on the CPU with the tiny profile."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, str(root / "scripts" / "gpu_check.py"), "--device", "cpu", "--profile",
                           "tiny", "--no-compile", "--repeats", "1", "--interpolation-slices", "12", "--batch", "2",
                           "--model-dir", str(tmp_path / "no_models"), "--out", str(out)],
                          capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["sampling"] == {"sampler": DEFAULT_SAMPLING.sampler, "steps": DEFAULT_SAMPLING.steps}
    assert _positive(report["volume_50"]["seconds"]) and report["volume_12"]["slices"] == 12
    assert _positive(report["training"]["slices_per_s"]) and "skipped" in report["nccl_allreduce_2proc"]


def test_rewriting_the_page_keeps_blocks_other_scripts_wrote(quick_report: tuple[Path, dict]) -> None:
    """scripts/sampler_steps.py owns a marked block of performance.md; the benchmark's rewrite keeps it."""
    out, _ = quick_report
    page = out / "performance.md"
    block = "<!-- sampler-steps:start -->\nthe equal-quality table\n<!-- sampler-steps:end -->"
    page.write_text(page.read_text() + "\n" + block + "\n")
    assert benchmark.main(["--render-only", "--out-dir", str(out)]) == 0
    text = page.read_text()
    assert text.count(block) == 1 and text.startswith("# Performance")
