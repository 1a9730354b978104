"""Training-side checkpoint files: the interval "latest" files that resume a stage, and the diffusion stage's
initialisation from an earlier export or an LDM checkpoint.

Layout (``model_dir`` defaults to ``<bundle_root>/models/<profile>``; ``run_dir`` to ``<output_dir>/<profile>``)::

    <model_dir>/autoencoder.pt | classifier.pt | diffusion.pt      final export, one per stage (inference reads these)
    <run_dir>/<stage>/checkpoint_iteration=N.pt                     latest interval checkpoints (full training state)
    <run_dir>/<stage>/best.pt                                       best validation key metric (full training state)

The final exports' format (what they hold, how they are written and read) belongs to ``xray2mri_bundle.checkpoint``;
the interval and best files are MONAI ``CheckpointSaver`` files.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch
from torch import nn

from xray2mri_bundle.checkpoint import atomic_save, is_export, load_networks, parse_checkpoint
from xray2mri_bundle.engines.distributed import unwrap

__all__ = [
    "atomic_save",
    "interval_checkpoints",
    "initialise_denoiser",
]

logger = logging.getLogger(__name__)

_ITERATION_RE = re.compile(r"iteration=(\d+)\.pt$")

def interval_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(iteration, path)`` of the interval checkpoints ``*iteration=N.pt`` in ``folder``, newest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.glob("*iteration=*.pt"):
        match = _ITERATION_RE.search(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found, key=lambda item: item[0], reverse=True)


def initialise_denoiser(denoiser: nn.Module, path: str | os.PathLike | None) -> nn.Module:
    """Start the diffusion stage's ``XrayDenoiser`` from ``path`` instead of random weights (``init_checkpoint``).

    Two layouts are recognised:
    - this bundle's diffusion export (``diffusion.pt``, full or inference-only): the UNet takes its EMA weights
      (else raw), the X-ray encoder E2 likewise (``xray2mri_bundle.checkpoint``, either format version); the
      network must have
      the same profile and condition flags (``load_state_dict`` strict). Continues training a shipped model.
    - a CompVis/LDM checkpoint (Stable Diffusion v1, Zero-1-to-3; ``state_dict`` with
      ``model.diffusion_model.*``): the paper's initialisation, through ``networks.ldm_import`` (input-channel
      surgery, ``cc_projection`` -> ``context_proj``); E2 keeps its initial weights.
    ``None`` returns ``denoiser`` unchanged. A resumed run's interval checkpoint overrides this (resume wins).
    """
    if path is None or str(path) == "":
        return denoiser
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"init_checkpoint {path} not found")
    from xray2mri_bundle.networks.ldm_import import load_ldm_checkpoint, load_ldm_unet

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign files raise several types
        raise RuntimeError(f"init_checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from exc
    target = unwrap(denoiser)
    if is_export(checkpoint) and checkpoint.get("stage") == "diffusion":
        export = parse_checkpoint(checkpoint, path)
        encoder = export["networks"].get("xray_encoder") or {}
        modules = {"unet": target.unet}
        if target.xray_encoder is not None and (encoder.get("ema") or encoder.get("model")):
            modules["xray_encoder"] = target.xray_encoder
        try:  # the checkpoint module's loader: EMA weights when stored, else the raw ones
            load_networks(checkpoint, names=list(modules), modules=modules, freeze=False)
        except RuntimeError as exc:
            raise RuntimeError(
                f"init_checkpoint {path} does not fit this diffusion network (another profile or condition "
                f"flags?): {exc}"
            ) from exc
        logger.info("diffusion stage initialised from the bundle export %s (iteration %s)", path,
                    checkpoint.get("iteration"))
        return denoiser
    report = load_ldm_unet(target.unet, load_ldm_checkpoint(path))
    logger.info("diffusion UNet initialised from the LDM checkpoint %s: %d tensors loaded, %d kept initialised",
                path, len(report.loaded), len(report.kept_initialised))
    return denoiser
