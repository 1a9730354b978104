"""The trained UNet as a ``torch.export`` program (``.pt2``), checked against eager.

What it is for: deployment without this package's Python code (the program holds the graph and the EMA
weights; ``torch.export.load(path).module()`` runs it), ahead-of-time compilation (AOTInductor) and other
runtimes that take an exported program. TorchScript cannot script MONAI's generative blocks (the model zoo
excludes its LDM bundles from TorchScript for the same reason); ``torch.export`` traces them.

The exported signature is the denoiser's: ``unet(x, timesteps, xray_latent, context, depth, p_map, i_map,
drop_context, drop_latent) -> eps`` with a dynamic batch (chunks of depths, and twice that with guidance).
Conditions the model was trained without (an ablation) are left out of the signature. The autoencoder, the
classifier and the X-ray encoder stay eager (they run once per X-ray).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = ["example_inputs", "export_checkpoint", "export_unet", "random_conditions"]


def random_conditions(batch: int, latent_shape: Sequence[int], device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """UNet condition kwargs of the right shapes: X-ray latent (B, *latent), context (B, 1, 768), depth (B,),
    p (B, 5, 8, 8) and i (B, 16, 8, 8) (softmaxed like the real maps)."""
    kw = {"device": device, "dtype": dtype}
    return {
        "xray_latent": torch.randn(batch, *latent_shape, **kw),
        "context": torch.randn(batch, 1, 768, **kw),
        "depth": torch.linspace(0, 1, batch, **kw),
        "p_map": torch.softmax(torch.randn(batch, 5, 8, 8, **kw), dim=1),
        "i_map": torch.softmax(torch.randn(batch, 16, 8, 8, **kw), dim=1),
    }


def example_inputs(unet: nn.Module, latent_shape: Sequence[int], batch: int = 2, seed: int = 0) -> dict:
    """Keyword inputs of ``unet`` for ``batch`` items (random conditions of the right shapes, half dropped)."""
    gen = torch.Generator().manual_seed(seed)
    inputs = {"x": torch.randn(batch, *latent_shape, generator=gen),
              "timesteps": torch.randint(1, 1000, (batch,), generator=gen)}
    conditions = random_conditions(batch, latent_shape, "cpu")
    keep = {"xray_latent": getattr(unet, "use_xray_latent", True), "context": getattr(unet, "use_context", True),
            "depth": getattr(unet, "use_depth", True), "p_map": getattr(unet, "use_guidance", True),
            "i_map": getattr(unet, "use_guidance", True)}
    inputs.update({k: v for k, v in conditions.items() if keep.get(k, True)})
    drop = torch.arange(batch) % 2 == 1
    inputs.update(drop_context=drop, drop_latent=drop)
    return inputs


def export_unet(unet: nn.Module, latent_shape: Sequence[int], path: str | Path, atol: float = 1e-4) -> dict:
    """Export ``unet`` (eval mode) with a dynamic batch, save it to ``path``, reload it and compare it with
    eager at a batch size other than the traced one. Returns ``{"path", "max_abs_diff", "batch_checked"}``;
    ``RuntimeError`` when the difference exceeds ``atol``."""
    unet = unet.eval()
    inputs = example_inputs(unet, latent_shape, batch=2)
    x, timesteps = inputs.pop("x"), inputs.pop("timesteps")
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = {"x": {0: batch}, "timesteps": {0: batch}, **{k: {0: batch} for k in inputs}}
    with torch.no_grad():
        program = torch.export.export(unet, (x, timesteps), kwargs=inputs, dynamic_shapes=dynamic, strict=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    reloaded = torch.export.load(str(path)).module()
    check = example_inputs(unet, latent_shape, batch=5, seed=1)
    x5, t5 = check.pop("x"), check.pop("timesteps")
    with torch.no_grad():
        diff = float((reloaded(x5, t5, **check) - unet(x5, t5, **check)).abs().max())
    if not diff <= atol:
        raise RuntimeError(f"exported UNet {path} differs from eager by {diff:.3g} (> {atol})")
    return {"path": str(path), "max_abs_diff": diff, "batch_checked": 5}


def export_checkpoint(model_dir: str | Path, profile: str, out: str | Path,
                      diffusion_checkpoint: str | Path | None = None) -> dict:
    """Load the trained bundle in ``model_dir`` (``profile``; ``diffusion_checkpoint``: another diffusion file,
    e.g. an ablation) on the CPU and ``export_unet`` its UNet to ``out``. Raises what ``load_pipeline`` raises."""
    from xray2mri_bundle.inference.generator import load_pipeline

    generator = load_pipeline(model_dir, profile, "cpu", diffusion_checkpoint=diffusion_checkpoint)
    size = int(generator.image_size)
    latent = list(generator.condition_encoder(torch.zeros(1, 1, size, size)).latent_shape)
    return export_unet(generator.unet, latent, out)
