"""Checkpoint files: the interval "latest" files that resume a stage, and the final per-stage export.

Layout (``model_dir`` defaults to ``<bundle_root>/models/<profile>``; ``run_dir`` to ``<output_dir>/<profile>``)::

    <model_dir>/autoencoder.pt | classifier.pt | diffusion.pt      final export, one per stage (inference reads these)
    <run_dir>/<stage>/checkpoint_iteration=N.pt                     latest interval checkpoints (full training state)
    <run_dir>/<stage>/best.pt                                       best validation key metric (full training state)

A final export is a plain dict (loadable with ``torch.load(..., weights_only=True)``)::

    {"model": state_dict, "ema": state_dict | None, "scale_factor": float | None, "profile": str,
     "config": dict, "stage": str, "iteration": int, "epoch": int, "format_version": 1}

It is written atomically (temporary file + rename) only when a stage completes, so its presence means "this
stage finished"; a run killed at any moment never leaves a truncated final file.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xray2mri_bundle.data.atomic import temp_file
from xray2mri_bundle.engines.distributed import unwrap

__all__ = [
    "FORMAT_VERSION",
    "atomic_save",
    "inference_checkpoint",
    "interval_checkpoints",
    "load_final",
    "load_weights",
    "initialise_denoiser",
    "make_final_checkpoint",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_ITERATION_RE = re.compile(r"iteration=(\d+)\.pt$")


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file(path.parent, prefix=f".{path.name}.")  # the usual file mode, umask untouched
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


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


def make_final_checkpoint(
    stage: str,
    model: nn.Module,
    ema: nn.Module | None = None,
    scale_factor: float | None = None,
    profile: str = "paper",
    config: Mapping[str, Any] | None = None,
    iteration: int = 0,
    epoch: int = 0,
    extra_modules: Mapping[str, nn.Module | None] | None = None,
) -> dict[str, Any]:
    """The export dict of one stage (weights moved to CPU; DDP wrappers removed).

    ``extra_modules`` adds more state dicts under their own keys (the diffusion stage stores its trained X-ray
    encoder E2 as ``xray_encoder`` and ``xray_encoder_ema`` next to the UNet's ``model`` / ``ema``).
    """

    def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in unwrap(module).state_dict().items()}

    checkpoint = {
        "model": cpu_state(model),
        "ema": None if ema is None else cpu_state(ema),
        "scale_factor": None if scale_factor is None else float(scale_factor),
        "profile": str(profile),
        "config": dict(config or {}),
        "stage": stage,
        "iteration": int(iteration),
        "epoch": int(epoch),
        "format_version": FORMAT_VERSION,
    }
    for key, module in (extra_modules or {}).items():
        checkpoint[key] = None if module is None else cpu_state(module)
    return checkpoint


#: (raw, EMA) weight pairs of a final export: inference keeps one of each pair (the EMA one when present)
WEIGHT_PAIRS: tuple[tuple[str, str], ...] = (("model", "ema"), ("xray_encoder", "xray_encoder_ema"))


def inference_checkpoint(checkpoint: Mapping[str, Any], dtype: torch.dtype = torch.float16) -> dict[str, Any]:
    """What inference needs of a final export: of each (raw, EMA) pair only the weights generation loads (EMA
    when present, else raw; the other entry becomes None), floating tensors stored as ``dtype``; metadata,
    config and scale factor unchanged. Loading casts back to the network's precision (``load_state_dict``).

    Records ``inference_only`` True and ``weights_dtype``. The shipped weights are made this way
    (``scripts/slim_weights.py``, docs/training.md gives the measured effect on generated volumes).
    """
    def cast(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}

    out = dict(checkpoint)
    for raw, ema in WEIGHT_PAIRS:
        if raw not in checkpoint and ema not in checkpoint:
            continue
        keep = ema if checkpoint.get(ema) else raw
        drop = raw if keep == ema else ema
        out[keep] = cast(checkpoint[keep]) if checkpoint.get(keep) else None
        out[drop] = None
    out["inference_only"] = True
    out["weights_dtype"] = str(dtype).replace("torch.", "")
    return out


def load_final(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a final export; a clear error names the stage to train when the file is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found: train the '{path.stem}' stage first "
            "(python -m monai.bundle run training --config_file configs/train.json)"
        )
    return torch.load(path, map_location=map_location, weights_only=True)


def load_weights(
    network: nn.Module, path: str | os.PathLike, key: str = "model", strict: bool = True, freeze: bool = False
) -> nn.Module:
    """Load ``checkpoint[key]`` (``"model"`` or ``"ema"``, falling back to ``"model"`` when there is no EMA)
    into ``network`` and return it; ``freeze`` puts it in eval mode with gradients off (frozen E1 and C)."""
    checkpoint = load_final(path)
    state = checkpoint.get(key) or checkpoint.get("model") or checkpoint.get("ema")
    if not state:
        raise KeyError(f"checkpoint {path} holds no weights under '{key}', 'model' or 'ema'")
    unwrap(network).load_state_dict(state, strict=strict)
    if freeze:
        network.eval()
        network.requires_grad_(False)
    logger.info("loaded %s weights of %s", key, path)
    return network


def initialise_denoiser(denoiser: nn.Module, path: str | os.PathLike | None) -> nn.Module:
    """Start the diffusion stage's ``XrayDenoiser`` from ``path`` instead of random weights (``init_checkpoint``).

    Two layouts are recognised:
    - this bundle's diffusion export (``diffusion.pt``, full or inference-only): the UNet takes its EMA weights
      (else raw), the X-ray encoder E2 its ``xray_encoder_ema`` (else ``xray_encoder``); the network must have
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
    if isinstance(checkpoint, Mapping) and checkpoint.get("stage") == "diffusion":
        unet_state = checkpoint.get("ema") or checkpoint.get("model")
        try:
            target.unet.load_state_dict(unet_state, strict=True)
            encoder_state = checkpoint.get("xray_encoder_ema") or checkpoint.get("xray_encoder")
            if target.xray_encoder is not None and encoder_state:
                target.xray_encoder.load_state_dict(encoder_state, strict=True)
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
