"""Measuring tools shared by the benchmark (``xray2mri benchmark``) and ``scripts/network_costs.py``.

Wall-clock timing between device syncs, peak memory (process RSS from ``/proc``, CUDA allocator peaks), the
machine description every figure must carry, FLOP counts of one network call on the meta device, and random
condition tensors of the UNet's shapes. Nothing here loads weights or data.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from xray2mri_bundle.inference.export import random_conditions  # noqa: F401  (re-exported for the tools)

__all__ = [
    "H100_BF16_DENSE_TFLOPS",
    "amp_context",
    "attention_sdpa",
    "best_time",
    "count_flops",
    "cpu_snapshot",
    "cpu_use_since",
    "cpu_name",
    "load_average",
    "machine_description",
    "peak_memory_mib",
    "process_peak_rss_mib",
    "random_conditions",
    "reset_peak_memory",
    "sync",
]

#: NVIDIA's dense (no sparsity) bf16 tensor-core peak of an H100 SXM, TFLOP/s: the cost model's ceiling.
H100_BF16_DENSE_TFLOPS: float = 989.0

_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def cpu_name() -> str:
    """CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (runnable processes; compare with the core count)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # not available on this platform
        return []


def cpu_snapshot() -> dict[str, float]:
    """Machine-wide busy and steal CPU seconds (``/proc/stat``) and this process's own CPU seconds (with its
    finished children, e.g. compiler workers); two snapshots give how much OTHER processes ran meanwhile."""
    own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    snap = {"own_s": own, "busy_s": math.nan, "steal_s": math.nan}
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        tick = os.sysconf("SC_CLK_TCK")
        # user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait
        snap["busy_s"] = (sum(fields[:8]) - fields[3] - fields[4]) / tick
        snap["steal_s"] = fields[7] / tick
    return snap


def cpu_use_since(before: dict[str, float]) -> dict[str, float]:
    """CPU seconds since ``before``: this process, all other processes together, and steal (time the host
    gave our virtual CPUs to other machines). Other processes or steal well above zero mean a disturbed run."""
    now = cpu_snapshot()
    own = now["own_s"] - before["own_s"]
    busy = now["busy_s"] - before["busy_s"]
    return {"own_cpu_s": round(own, 1), "other_processes_cpu_s": round(max(0.0, busy - own), 1),
            "steal_s": round(now["steal_s"] - before["steal_s"], 1)}


def machine_description(device: torch.device) -> dict:
    """What a timing depends on: cores, CPU model, load, threads, library versions and the accelerator."""
    import monai

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    machine = {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_name(),
        "load_average_start": load_average(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "device": device.type,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        machine.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                       cuda=torch.version.cuda)
    return machine


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on the CPU) so that wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 1) -> float:
    """Smallest wall time (s) of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def reset_peak_memory(device: torch.device) -> None:
    """Restart the peak counters: the process's peak RSS (Linux ``clear_refs``) and CUDA's allocator peak."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with contextlib.suppress(OSError):
        _CLEAR_REFS.write_text("5")


def peak_memory_mib(device: torch.device) -> dict[str, float]:
    """Peaks since ``reset_peak_memory``: ``rss`` (VmHWM; without /proc the process-lifetime ru_maxrss) and,
    on CUDA, ``cuda_allocated`` / ``cuda_reserved`` (MiB)."""
    peaks: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in _PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks["rss"] = round(int(line.split()[1]) / 1024, 1)
    if "rss" not in peaks:
        peaks["rss"] = process_peak_rss_mib()
    if device.type == "cuda":
        peaks["cuda_allocated"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        peaks["cuda_reserved"] = round(torch.cuda.max_memory_reserved(device) / 2**20, 1)
    return peaks


def process_peak_rss_mib() -> float:
    """Peak RSS of the whole process lifetime (``ru_maxrss``; not reset by ``reset_peak_memory``), MiB."""
    scale = 1024**2 if platform.system() == "Darwin" else 1024  # bytes on macOS, KiB on Linux
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale, 1)


def amp_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device`` (None: full precision)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def attention_sdpa(module: nn.Module, enabled: bool) -> Iterator[int]:
    """Switch MONAI's attention blocks (``SABlock``, ``CrossAttentionBlock``) to / from
    ``torch.nn.functional.scaled_dot_product_attention`` (their ``use_flash_attention`` flag; MONAI's default
    is the einsum + softmax path). The weights are the same either way. Yields the number of blocks switched."""
    from xray2mri_bundle.inference.acceleration import attention_blocks

    blocks = attention_blocks(module)
    before = [m.use_flash_attention for m in blocks]
    try:
        for m in blocks:
            m.use_flash_attention = enabled
        yield len(blocks)
    finally:
        for m, value in zip(blocks, before, strict=True):
            m.use_flash_attention = value


def count_flops(build: Callable[[], nn.Module], call: Callable[[nn.Module], object]) -> int:
    """FLOPs (2 per multiply-add) of ``call(build())`` counted by ``torch.utils.flop_counter.FlopCounterMode``
    on the meta device: no memory, no arithmetic, so the paper-size networks count in seconds on a laptop."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        module = build().eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            call(module)
    return int(counter.get_total_flops())
