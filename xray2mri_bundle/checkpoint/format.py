"""The export layout (module docstring of ``xray2mri_bundle.checkpoint``): write it, read it, rebuild its networks."""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xray2mri_bundle.data.atomic import write_atomic
from xray2mri_bundle.networks.config import CONFIG_ATTR, jsonable_arguments

from .quantization import INT8_GROUP_SIZE, dequantize_entry

__all__ = [
    "FORMAT_VERSION",
    "STAGE_NETWORKS",
    "atomic_save",
    "build_network",
    "is_export",
    "load_network",
    "load_networks",
    "locate_target",
    "make_checkpoint",
    "network_config",
    "parse_checkpoint",
    "read_checkpoint",
    "weights_used",
    "write_checkpoint",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
#: the networks each stage stores, in order (the first one is the stage's main network)
STAGE_NETWORKS: dict[str, tuple[str, ...]] = {
    "autoencoder": ("autoencoder",),
    "classifier": ("classifier",),
    "diffusion": ("unet", "xray_encoder"),
}
#: modules a stored ``_target_`` may name (a checkpoint must not import arbitrary code)
_TARGET_PREFIXES = ("xray2mri_bundle.", "monai.")


# ------------------------------------------------------------------------------------------------------ writing
def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path`` (``data.atomic``)."""
    return write_atomic(path, lambda fh: torch.save(obj, fh))


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def network_config(module: nn.Module) -> dict[str, Any]:
    """The constructor arguments ``module`` recorded when built (``_target_`` + kwargs); DDP wrappers removed."""
    config = getattr(_unwrap(module), CONFIG_ATTR, None)
    if not isinstance(config, Mapping) or "_target_" not in config:
        raise TypeError(
            f"{type(_unwrap(module)).__name__} did not record its constructor arguments: build it from a class "
            "decorated with xray2mri_bundle.networks.register_to_config (e.g. xray2mri_bundle.networks.AutoencoderKL)"
        )
    return dict(config)


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in _unwrap(module).state_dict().items()}


def make_checkpoint(
    stage: str,
    networks: Mapping[str, nn.Module | None],
    ema: Mapping[str, nn.Module | None] | None = None,
    *,
    profile: str | None = None,
    scale_factor: float | None = None,
    settings: Mapping[str, Any] | None = None,
    iteration: int = 0,
    epoch: int = 0,
) -> dict[str, Any]:
    """The export dict of one stage: for every network its recorded ``config`` and its CPU weights.

    ``networks``: name -> trained module (None entries are left out, e.g. no X-ray encoder without context).
    ``ema``: name -> EMA copy of the same network (optional per name). ``settings``: JSON data that is not a
    network argument (image size, noise schedule, ...).
    """
    ema = dict(ema or {})
    entries: dict[str, dict[str, Any]] = {}
    for name, module in networks.items():
        if module is None:
            continue
        average = ema.get(name)
        entries[name] = {
            "config": network_config(module),
            "model": _cpu_state(module),
            "ema": None if average is None else _cpu_state(average),
        }
    return {
        "format_version": FORMAT_VERSION,
        "stage": str(stage),
        "profile": None if profile is None else str(profile),
        "networks": entries,
        "scale_factor": None if scale_factor is None else float(scale_factor),
        "settings": _settings(settings),
        "iteration": int(iteration),
        "epoch": int(epoch),
        "inference_only": False,
        "weights_dtype": "float32",
    }


def _settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """JSON data only (``weights_only`` loading); anything else becomes its string form."""
    def plain(value: Any) -> Any:
        try:
            return jsonable_arguments(value)
        except TypeError:
            if isinstance(value, Mapping):
                return {str(k): plain(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            return str(value)

    return plain(dict(settings or {}))


def write_checkpoint(path: str | os.PathLike, stage: str, networks: Mapping[str, nn.Module | None],
                     ema: Mapping[str, nn.Module | None] | None = None, **fields: Any) -> Path:
    """``make_checkpoint(stage, networks, ema, **fields)`` written atomically to ``path``."""
    return atomic_save(make_checkpoint(stage, networks, ema, **fields), path)


# ------------------------------------------------------------------------------------------------------ reading
def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a final export (either layout) as a format-2 dict; a missing file names the stage to train."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found: train the '{path.stem}' stage first "
            "(python -m monai.bundle run training --config_file configs/train.json)"
        )
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        raise RuntimeError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from exc
    return parse_checkpoint(raw, path)


def is_export(raw: Any) -> bool:
    """Whether ``raw`` (a loaded file) is one of this bundle's final exports (any format version)."""
    return isinstance(raw, Mapping) and "stage" in raw and "format_version" in raw


def parse_checkpoint(raw: Any, source: str | os.PathLike = "checkpoint") -> dict[str, Any]:
    """Validate a loaded export and bring it to the current layout (``upgrade_v1`` for format_version 1)."""
    if not is_export(raw):
        raise ValueError(f"{source} is not a final export of this bundle (no 'stage' / 'format_version')")
    version = int(raw["format_version"])
    if version == 1:
        from .legacy import upgrade_v1  # legacy builds on this module

        raw = upgrade_v1(raw)
    elif version != FORMAT_VERSION:
        raise ValueError(f"{source} has format_version {version}; this code reads 1 and {FORMAT_VERSION}")
    networks = {}
    for name, entry in raw["networks"].items():
        if "_target_" not in (entry.get("config") or {}):
            raise ValueError(f"{source}: network '{name}' has no config['_target_']")
        networks[name] = dequantize_entry(entry, f"{source}: network '{name}'",
                                      int(raw.get("int8_group_size", INT8_GROUP_SIZE)))
    return dict(raw, networks=networks)


def weights_used(checkpoint: Mapping[str, Any], name: str, prefer: str = "ema") -> str:
    """``"ema"`` or ``"model"``: the weights of network ``name`` that loading takes (``prefer`` when present)."""
    entry = checkpoint["networks"][name]
    other = "model" if prefer == "ema" else "ema"
    return prefer if entry.get(prefer) else other


def locate_target(target: str) -> Any:
    if not target.startswith(_TARGET_PREFIXES):
        raise ValueError(f"network target {target!r} is outside {', '.join(_TARGET_PREFIXES)}")
    parts = target.split(".")
    for split in range(len(parts) - 1, 0, -1):  # longest importable module, then attributes
        try:
            obj: Any = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            obj = getattr(obj, attribute)
        return obj
    raise ValueError(f"network target {target!r} cannot be imported")


def build_network(config: Mapping[str, Any], **overrides: Any) -> nn.Module:
    """Instantiate a stored ``config`` (``_target_`` + kwargs); ``overrides`` replace single arguments."""
    kwargs = {k: v for k, v in config.items() if k != "_target_"}
    kwargs.update(overrides)
    return locate_target(str(config["_target_"]))(**kwargs)


def load_networks(
    checkpoint: Mapping[str, Any] | str | os.PathLike,
    names: Iterable[str] | None = None,
    modules: Mapping[str, nn.Module | None] | None = None,
    prefer: str = "ema",
    clip_folder: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    freeze: bool = True,
) -> dict[str, nn.Module]:
    """Rebuild the networks of an export and load their weights (EMA when present with ``prefer="ema"``).

    Args:
        checkpoint: an export dict (either layout) or its path.
        names: networks to load (default: all stored ones).
        modules: already-built networks to load into instead of building (a bundle config's ``network_def``).
        clip_folder: local CLIP vision model, for an X-ray encoder stored as ``ClipImageEncoder``.
        device: where to move the networks; ``freeze``: eval mode and no gradients.
    Raises ``RuntimeError`` naming the network when weights do not fit.
    """
    source = checkpoint if isinstance(checkpoint, (str, os.PathLike)) else "checkpoint"
    checkpoint = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else parse_checkpoint(
        checkpoint)
    modules = dict(modules or {})
    loaded: dict[str, nn.Module] = {}
    for name in list(names) if names is not None else list(checkpoint["networks"]):
        if name not in checkpoint["networks"]:
            raise KeyError(f"{source} holds no network '{name}' (it has {', '.join(checkpoint['networks'])})")
        entry = checkpoint["networks"][name]
        module = modules.get(name)
        if module is None:
            config = entry["config"]
            extra = {"folder": clip_folder} if str(config["_target_"]).endswith(".from_folder") else {}
            if extra and clip_folder is None:
                raise ValueError(f"{source}: the '{name}' network is a CLIP encoder; give clip_folder")
            module = build_network(config, **extra)
        state = entry.get(weights_used(checkpoint, name, prefer))
        if state:
            try:
                _unwrap(module).load_state_dict(state)
            except RuntimeError as exc:
                raise RuntimeError(
                    f"weights of '{name}' in {source} do not fit {type(_unwrap(module)).__name__} (another profile "
                    f"or condition flags?): {exc}"
                ) from exc
        elif not str(entry["config"]["_target_"]).endswith(".from_folder"):
            raise KeyError(f"{source} holds no weights for network '{name}'")
        if device is not None:
            module.to(device)
        if freeze:
            module.eval().requires_grad_(False)
        loaded[name] = module
    return loaded


def load_network(path: str | os.PathLike, name: str | None = None, **kwargs: Any) -> nn.Module:
    """One network of an export (default: the stage's main one), built, loaded, frozen; see ``load_networks``."""
    checkpoint = read_checkpoint(path)
    name = name or STAGE_NETWORKS.get(checkpoint["stage"], tuple(checkpoint["networks"]))[0]
    return load_networks(checkpoint, [name], **kwargs)[name]
