"""The previous export layout (format_version 1, the first shipped ``models/small`` files) read as format 2."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from xray2mri_bundle.networks.config import jsonable_arguments

from .format import FORMAT_VERSION, locate_target

__all__ = ["upgrade_v1"]


def _complete(target: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``_target_`` + ``kwargs`` with the constructor's defaults filled in (what a fresh build records)."""
    parameters = inspect.signature(locate_target(target)).parameters
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
