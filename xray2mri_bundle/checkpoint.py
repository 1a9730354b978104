"""The checkpoint format of the bundle's final exports: written once, read once (training, inference, tools, tests).

One file per training stage, ``<model_dir>/autoencoder.pt | classifier.pt | diffusion.pt``, a plain dict that
``torch.load(..., weights_only=True)`` reads (format_version 2)::

    {
      "format_version": 2,
      "stage": "autoencoder" | "classifier" | "diffusion",
      "profile": "small",                       # the profile name the stage was trained with (a label)
      "networks": {                             # autoencoder: {"autoencoder"}; classifier: {"classifier"};
        "<name>": {                             # diffusion: {"unet", "xray_encoder" (absent without context)}
          "config": {"_target_": "xray2mri_bundle.networks.conditional_unet.XrayConditionedUNet", **kwargs},
          "model": state_dict | None,           # raw trained weights
          "ema": state_dict | None,             # EMA weights (diffusion); inference prefers them
        },
      },
      "scale_factor": float | None,             # latent scale of the diffusion stage
      "settings": {...},                        # what is not a network argument: image_size, noise schedule, ...
      "iteration": int, "epoch": int,
      "inference_only": bool, "weights_dtype": "float32" | "float16" | "int8" | ...,
    }

``weights_dtype == "int8"`` (weight-only int8, ``inference_checkpoint(..., "int8")``, the shipped files): every
floating weight of two or more dimensions is stored as int8 with one float16 scale per group of
``INT8_GROUP_SIZE`` consecutive entries of an output channel, in the network entry's ``"scales"``
(``{key: tensor (out_channels, groups)}``, symmetric: ``w = q * scale``; the group size is stored as
``"int8_group_size"``); every other floating tensor is float16. Reading dequantizes (:func:`parse_checkpoint`),
so loaders see float tensors as in any export.

``config`` is what the network recorded when it was built (``networks.config.register_to_config``): the writer
reads it from the module, the reader rebuilds the network from it (``build_network``), so no config or test
retypes the sizes. The previous layout (format_version 1: ``model``/``ema``/``xray_encoder``/``xray_encoder_ema``
at the top, sizes in ``config["network"]``, condition flags in ``config["flags"]``; the shipped ``models/small``
files) is turned into this one by :func:`upgrade_v1` when read.

Files are written atomically (temporary file + rename), so a final export exists only for a finished stage.
Interval/best training checkpoints are MONAI ``CheckpointSaver`` files of the full training state, not this format.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xray2mri_bundle.data.atomic import temp_file
from xray2mri_bundle.networks.config import CONFIG_ATTR, jsonable_arguments

__all__ = [
    "FORMAT_VERSION",
    "INFERENCE_PRECISIONS",
    "STAGE_NETWORKS",
    "atomic_save",
    "build_network",
    "dequantize_int8",
    "inference_checkpoint",
    "load_network",
    "load_networks",
    "make_checkpoint",
    "network_config",
    "parse_checkpoint",
    "quantize_int8",
    "read_checkpoint",
    "upgrade_v1",
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


#: the precisions ``inference_checkpoint`` stores (``"int8"``: weight-only int8, see the module docstring)
INFERENCE_PRECISIONS = ("float32", "float16", "bfloat16", "int8")
#: entries per int8 scale (consecutive entries of one output channel, GPTQ/AWQ-style groups). Per-channel scales
#: (one per row) lost the small entries of rows with one large entry (the UNet's near-identity context
#: projection: 6 % RMS error); with groups of 64 the RMS error of a weight is at most 3 % by construction
#: (entry error <= |max| / 254, group RMS >= |max| / 8) and at most 1.7 % on the shipped weights.
INT8_GROUP_SIZE = 64


def quantize_int8(tensor: torch.Tensor, group_size: int = INT8_GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric group-wise int8 of a weight ``(out, ...)``: each row (one output channel, flattened) is cut
    into groups of ``group_size`` consecutive entries (the last one shorter), each with its own scale.

    Returns ``(q, scale)``: ``q`` int8 of the weight's shape, ``scale`` float16 ``(out, groups)``; the weight is
    ``q * scale`` per group (absolute error at most ``scale / 2`` per entry, plus the scale's float16 rounding).
    """
    rows = tensor.detach().float().reshape(tensor.shape[0], -1)
    groups = -(-rows.shape[1] // group_size)
    padded = torch.nn.functional.pad(rows, (0, groups * group_size - rows.shape[1])).reshape(len(rows), groups, -1)
    scale = (padded.abs().amax(dim=2) / 127.0).to(torch.float16).float()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(padded / scale[..., None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(len(rows), -1)[:, : rows.shape[1]].reshape(tensor.shape), scale.to(torch.float16)


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, group_size: int = INT8_GROUP_SIZE) -> torch.Tensor:
    """The float32 weight of ``quantize_int8``'s pair."""
    rows = q.reshape(q.shape[0], -1).float()
    if scale.shape != (rows.shape[0], -(-rows.shape[1] // group_size)):
        raise ValueError(f"int8 scales of shape {tuple(scale.shape)} do not fit a weight {tuple(q.shape)} "
                         f"in groups of {group_size}")
    per_entry = scale.float().repeat_interleave(group_size, dim=1)[:, : rows.shape[1]]
    return (rows * per_entry).reshape(q.shape)


def _stored(state: Mapping[str, torch.Tensor], precision: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``state`` in ``precision``: the tensors to store and, for int8, the scales of the quantized ones."""
    if precision != "int8":
        dtype = getattr(torch, precision)
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, {}
    tensors, scales = {}, {}
    for key, value in state.items():
        if value.is_floating_point() and value.dim() >= 2:
            tensors[key], scales[key] = quantize_int8(value)
        else:
            tensors[key] = value.to(torch.float16) if value.is_floating_point() else value
    return tensors, scales


def inference_checkpoint(checkpoint: Mapping[str, Any], dtype: torch.dtype | str = "int8") -> dict[str, Any]:
    """What inference needs of an export: of each network only the weights generation loads (EMA when present,
    else raw; the other entry becomes None), stored in ``dtype`` (a floating dtype, or ``"int8"`` for
    weight-only int8 with per-channel scales); configs, settings and scale factor unchanged. Loading
    dequantizes / casts back to the network's precision.

    Sets ``inference_only`` and ``weights_dtype``. The shipped weights are made this way
    (``scripts/slim_weights.py``; docs/training.md gives the measured effect on generated volumes).
    """
    precision = str(dtype).replace("torch.", "")
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"inference precision {precision!r}: choose from {', '.join(INFERENCE_PRECISIONS)}")
    checkpoint = parse_checkpoint(checkpoint)
    out = dict(checkpoint)
    out["networks"] = {}
    for name, entry in checkpoint["networks"].items():
        keep = weights_used(checkpoint, name)
        slim: dict[str, Any] = {"config": dict(entry["config"]), "model": None, "ema": None}
        if entry.get(keep):
            slim[keep], scales = _stored(entry[keep], precision)
            if scales:
                slim["scales"] = scales
        out["networks"][name] = slim
    out["inference_only"] = True
    out["weights_dtype"] = precision
    if precision == "int8":
        out["int8_group_size"] = INT8_GROUP_SIZE
    else:
        out.pop("int8_group_size", None)
    return out


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
        raw = upgrade_v1(raw)
    elif version != FORMAT_VERSION:
        raise ValueError(f"{source} has format_version {version}; this code reads 1 and {FORMAT_VERSION}")
    networks = {}
    for name, entry in raw["networks"].items():
        if "_target_" not in (entry.get("config") or {}):
            raise ValueError(f"{source}: network '{name}' has no config['_target_']")
        networks[name] = _dequantized(entry, f"{source}: network '{name}'",
                                      int(raw.get("int8_group_size", INT8_GROUP_SIZE)))
    return dict(raw, networks=networks)


def _dequantized(entry: Mapping[str, Any], where: str, group_size: int) -> dict[str, Any]:
    """A network entry with its int8 weights (``"scales"``) turned back into float32 tensors."""
    scales = entry.get("scales")
    if not scales:
        return dict(entry)
    out = {k: v for k, v in entry.items() if k != "scales"}
    for which in ("model", "ema"):
        state = entry.get(which)
        if not state:
            continue
        missing = [key for key in scales if key not in state]
        if missing:
            raise ValueError(f"{where} has int8 scales for missing weights {missing[:3]}")
        try:
            out[which] = {k: dequantize_int8(v, scales[k], group_size) if k in scales else v
                          for k, v in state.items()}
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
    return out


def weights_used(checkpoint: Mapping[str, Any], name: str, prefer: str = "ema") -> str:
    """``"ema"`` or ``"model"``: the weights of network ``name`` that loading takes (``prefer`` when present)."""
    entry = checkpoint["networks"][name]
    other = "model" if prefer == "ema" else "ema"
    return prefer if entry.get(prefer) else other


def _locate(target: str) -> Any:
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
    return _locate(str(config["_target_"]))(**kwargs)


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


# ---------------------------------------------------------------------------------------- the previous layout
def _complete(target: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``_target_`` + ``kwargs`` with the constructor's defaults filled in (what a fresh build records)."""
    parameters = inspect.signature(_locate(target)).parameters
    full = {name: p.default for name, p in parameters.items()
            if p.default is not inspect.Parameter.empty and name != "self"}
    full.update(kwargs)
    return {"_target_": target, **jsonable_arguments(full)}


def upgrade_v1(old: Mapping[str, Any]) -> dict[str, Any]:
    """A format_version 1 export (the shipped ``models/small`` files) in the format_version 2 layout.

    v1 kept the weights at the top (``model``, ``ema``, and for diffusion ``xray_encoder``,
    ``xray_encoder_ema``), the sizes in ``config["network"]`` (the profile's when absent), the UNet's condition
    flags and ``use_intensity`` in ``config["flags"]`` (all True when absent) and the X-ray encoder as
    ``config["xray_encoder"] = {"kind": "trainable" | "clip", "network": kwargs}``. The weight tensors are
    taken over unchanged (same objects), so a network loads bit-identical weights from either layout.
    """
    from xray2mri_bundle.networks.profiles import get_profile

    stage = str(old["stage"])
    profile = old.get("profile")
    config = dict(old.get("config") or {})
    sizes = dict(config.pop("network", None) or {})
    flags = {"use_depth": True, "use_xray_latent": True, "use_context": True, "use_guidance": True,
             "use_intensity": True, **dict(config.pop("flags", None) or {})}
    encoder = dict(config.pop("xray_encoder", None) or {})

    def profile_part(part: str) -> dict[str, Any]:
        return sizes if sizes else dict(get_profile(profile or "small")[part])

    networks: dict[str, dict[str, Any]] = {}
    if stage == "autoencoder":
        networks["autoencoder"] = {"config": _complete("xray2mri_bundle.networks.autoencoder.AutoencoderKL",
                                                       profile_part("autoencoder")),
                                   "model": old.get("model"), "ema": old.get("ema")}
    elif stage == "classifier":
        networks["classifier"] = {"config": _complete("xray2mri_bundle.networks.koa_classifier.KOAClassifier",
                                                      profile_part("classifier")),
                                  "model": old.get("model"), "ema": old.get("ema")}
    elif stage == "diffusion":
        unet_flags = {k: bool(flags[k]) for k in ("use_depth", "use_xray_latent", "use_context", "use_guidance")}
        networks["unet"] = {"config": _complete("xray2mri_bundle.networks.conditional_unet.XrayConditionedUNet",
                                                {**profile_part("unet"), **unet_flags}),
                            "model": old.get("model"), "ema": old.get("ema")}
        if unet_flags["use_context"]:
            if encoder.get("kind", "trainable") == "clip":
                encoder_config = {"_target_": "xray2mri_bundle.networks.xray_encoder.ClipImageEncoder.from_folder",
                                  "image_size": 224}
            else:
                kwargs = dict(encoder.get("network") or get_profile(profile or "small")["xray_encoder"])
                encoder_config = _complete("xray2mri_bundle.networks.xray_encoder.XrayEncoder", kwargs)
            networks["xray_encoder"] = {"config": encoder_config, "model": old.get("xray_encoder"),
                                        "ema": old.get("xray_encoder_ema")}
        config["use_intensity"] = bool(flags["use_intensity"])
    else:
        raise ValueError(f"unknown stage {stage!r} in a format_version 1 checkpoint")
    return {
        "format_version": FORMAT_VERSION,
        "stage": stage,
        "profile": profile,
        "networks": networks,
        "scale_factor": old.get("scale_factor"),
        "settings": config,
        "iteration": int(old.get("iteration", 0)),
        "epoch": int(old.get("epoch", 0)),
        "inference_only": bool(old.get("inference_only", False)),
        "weights_dtype": str(old.get("weights_dtype", "float32")),
    }
