"""Measure parameter counts and forward/training/sampling times of the networks per profile.

Writes the figures to docs/networks.json and the tables between the ``costs`` markers of docs/networks.md.
Parameters are counted on the meta device (no memory). Each run's timings go into a column named ``--label``;
the other columns already in the JSON are kept, so runs on several machines sit side by side. With
``--paper-cpu`` one batch-1 paper-profile UNet forward is also timed on the CPU (about 3.5 GB of memory).
CPU timings use ``--threads`` threads (default 2, the project's target); pin the cores too for clean figures.

    python scripts/network_costs.py                                   # tiny + small, 2 threads
    taskset -c 0,1 python scripts/network_costs.py --paper-cpu        # plus one paper UNet forward
    python scripts/network_costs.py --device cuda --profiles paper small

The whole-pipeline benchmark (volumes, Algorithm 2 ratio, speed-ups, training, ingestion, targets) is
``xray2mri benchmark`` (docs/performance.md); this script and it share ``tools/benchmark_tools.py``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch
from monai.networks.schedulers import DDIMScheduler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.benchmark_tools import best_time, cpu_name  # noqa: E402
from xray2mri_bundle.inference.export import random_conditions as conditions  # noqa: E402
from xray2mri_bundle.networks import (  # noqa: E402
    PROFILE_NAMES,
    build_autoencoder,
    build_classifier,
    build_unet,
    build_xray_encoder,
    get_profile,
)

ROOT = Path(__file__).resolve().parents[1]
NEW_LAYERS = ("depth_embed.", "guidance.", "context_proj.", "null_context")


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(name: str) -> dict[str, int]:
    with torch.device("meta"):
        unet = build_unet(name)
        counts = {
            "autoencoder": count(build_autoencoder(name)),
            "unet": count(unet),
            "unet_base": sum(p.numel() for n, p in unet.named_parameters() if not n.startswith(NEW_LAYERS)),
            "classifier": count(build_classifier(name)),
            "xray_encoder": count(build_xray_encoder(name)),
        }
    return counts


def sample_volume(unet, autoencoder, cond, latent_shape, slices, steps, guidance_scale, device) -> torch.Tensor:
    """DDIM over ``slices`` depths at once from one shared noise (paper Algorithm 2), then decode."""
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(steps, device=device)
    z = torch.randn(1, *latent_shape, device=device).expand(slices, -1, -1, -1).contiguous()
    drop = None
    if guidance_scale != 1.0:
        cond = {k: torch.cat([v, v]) for k, v in cond.items()}
        drop = torch.cat([torch.zeros(slices), torch.ones(slices)]).bool().to(device)
    for t in scheduler.timesteps:
        if drop is None:
            eps = unet(z, t.expand(slices), **cond)
        else:
            both = unet(torch.cat([z, z]), t.expand(2 * slices), **cond, drop_context=drop, drop_latent=drop)
            eps_c, eps_u = both.chunk(2)
            eps = eps_u + guidance_scale * (eps_c - eps_u)
        z, _ = scheduler.step(eps, int(t), z)
    return autoencoder.decode(z / 0.2)


def timings(name: str, device: torch.device, slices: int, train_batch: int, repeats: int) -> dict[str, float]:
    profile = get_profile(name)
    latent_shape, size = profile["latent_shape"], profile["image_size"]
    torch.manual_seed(0)
    unet = build_unet(name).to(device).eval()
    autoencoder = build_autoencoder(name).to(device).eval()
    classifier = build_classifier(name).to(device).eval()
    encoder = build_xray_encoder(name).to(device).eval()
    result: dict[str, float] = {}
    cond = conditions(slices, latent_shape, device)
    x = torch.randn(slices, *latent_shape, device=device)
    t = torch.randint(0, 1000, (slices,), device=device)
    xray = torch.randn(1, 1, size, size, device=device)
    with torch.inference_mode():
        result["unet_forward_b1_s"] = best_time(
            lambda: unet(x[:1], t[:1], **{k: v[:1] for k, v in cond.items()}), repeats, device
        )
        result[f"unet_forward_b{slices}_s"] = best_time(lambda: unet(x, t, **cond), repeats, device)
        doubled = {k: torch.cat([v, v]) for k, v in cond.items()}
        result[f"unet_forward_b{2 * slices}_s"] = best_time(
            lambda: unet(torch.cat([x, x]), torch.cat([t, t]), **doubled), repeats, device
        )
        result[f"ae_decode_b{slices}_s"] = best_time(lambda: autoencoder.decode(x), repeats, device)
        result["ae_encode_b1_s"] = best_time(lambda: autoencoder.encode(xray.repeat(1, 3, 1, 1)), repeats, device)
        result["classifier_maps_b1_s"] = best_time(lambda: classifier.forward_maps(xray), repeats, device)
        result["xray_encoder_b1_s"] = best_time(lambda: encoder(xray), repeats, device)
        sample_volume(unet, autoencoder, cond, latent_shape, slices, 2, 3.0, device)  # warm-up
        for scale, key in ((1.0, "sample_volume_s"), (3.0, "sample_volume_cfg_s")):
            start = time.perf_counter()
            volume = sample_volume(unet, autoencoder, cond, latent_shape, slices, 50, scale, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            result[key] = time.perf_counter() - start
            assert volume.shape == (slices, 3, size, size)

    unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    xb, tb = torch.randn(train_batch, *latent_shape, device=device), t[:train_batch].repeat(2)[:train_batch]
    cond_b = conditions(train_batch, latent_shape, device)

    def train_step() -> None:
        loss = (unet(xb, tb, **cond_b) - xb).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step = best_time(train_step, repeats, device)
    result[f"unet_train_step_b{train_batch}_s"] = step
    result["unet_train_slices_per_s"] = train_batch / step
    return result


def paper_cpu_forward() -> float:
    """One batch-1 forward of the paper-profile UNet at a 32 x 32 latent on the CPU (s)."""
    torch.manual_seed(0)
    unet = build_unet("paper").eval()
    x = torch.randn(1, 4, 32, 32)
    cond = conditions(1, [4, 32, 32], torch.device("cpu"))
    with torch.inference_mode():
        unet(x, torch.tensor([500]), **cond)  # warm-up
        start = time.perf_counter()
        unet(x, torch.tensor([500]), **cond)
        return time.perf_counter() - start


def millions(n: int) -> str:
    return f"{n / 1e6:.2f} M"


def markdown_tables(report: dict) -> str:
    """Parameter table, then one timing table with a column per measured run (machine / threads / device)."""
    lines = [
        "| profile | autoencoder | UNet (base + condition layers) | KOA classifier | X-ray encoder |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, c in report["parameters"].items():
        extra = c["unet"] - c["unet_base"]
        lines.append(
            f"| {name} | {millions(c['autoencoder'])} | {millions(c['unet'])} ({millions(c['unet_base'])} + "
            f"{millions(extra)}) | {millions(c['classifier'])} | {millions(c['xray_encoder'])} |"
        )
    runs = report["runs"]
    if not runs:
        return "\n".join(lines)
    labels = list(runs)
    lines += ["", "Runs: " + "; ".join(f"**{label}**: {runs[label]['machine']}" for label in labels) + ".", ""]
    lines += ["| profile | measurement (s unless stated) | " + " | ".join(labels) + " |"]
    lines += ["| --- | --- |" + " --- |" * len(labels)]
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for label in labels:
        for name, values in runs[label]["timings"].items():
            for key, value in values.items():
                rows.setdefault((name, key), {})[label] = value
    order = {name: index for index, name in enumerate(PROFILE_NAMES)}
    for (name, key), values in sorted(rows.items(), key=lambda item: order.get(item[0][0], len(order))):
        cells = []
        for label in labels:
            value = values.get(label)
            if value is None:
                cells.append("")
            else:
                cells.append(f"{value:.0f} slices/s" if key.endswith("per_s") else f"{value:.3f}")
        lines.append(f"| {name} | {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_docs(report: dict, json_path: Path, md_path: Path) -> None:
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    begin, end = "<!-- costs:begin -->", "<!-- costs:end -->"
    text = md_path.read_text() if md_path.exists() else f"# Networks\n\n{begin}\n{end}\n"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
    md_path.write_text(pattern.sub(lambda _: f"{begin}\n{markdown_tables(report)}\n{end}", text))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", nargs="*", default=["tiny", "small"], help="profiles to time")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (the project's target: 2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--label", default=None, help="name of this run's column (default: device and threads)")
    parser.add_argument("--slices", type=int, default=50, help="depths per volume (batch of one sampling step)")
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paper-cpu", action="store_true", help="also time one paper UNet forward on the CPU")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "networks.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "docs" / "networks.md")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        machine, label = f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}", "cuda"
    else:
        machine = f"{cpu_name()}, {args.threads} threads, torch {torch.__version__}"
        label = f"cpu{args.threads}"
    label = args.label or label
    report: dict = {"parameters": {}, "runs": {}}
    if args.json.exists():  # keep the other runs' columns
        previous = json.loads(args.json.read_text())
        report["runs"] = {k: v for k, v in previous.get("runs", {}).items() if k != label}
    run: dict = {"machine": machine, "timings": {}}
    for name in PROFILE_NAMES:
        report["parameters"][name] = parameter_counts(name)
        if name in args.profiles:
            run["timings"][name] = timings(name, device, args.slices, args.train_batch, args.repeats)
        if name == "paper" and args.paper_cpu:
            run["timings"].setdefault(name, {})["unet_forward_b1_cpu_s"] = paper_cpu_forward()
        print(name, json.dumps(run["timings"].get(name, {}), indent=1), flush=True)
    if run["timings"]:
        report["runs"][label] = run
    write_docs(report, args.json, args.markdown)
    return report


if __name__ == "__main__":
    main()
