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

Modules: ``format`` (the layout: write, read, rebuild the networks), ``quantization`` (weight-only int8 and
casts), ``inference`` (``inference_checkpoint``: the lean copy that ships), ``legacy`` (format_version 1).
"""

from .format import (
    FORMAT_VERSION,
    STAGE_NETWORKS,
    atomic_save,
    build_network,
    is_export,
    load_network,
    load_networks,
    make_checkpoint,
    network_config,
    parse_checkpoint,
    read_checkpoint,
    weights_used,
    write_checkpoint,
)
from .inference import inference_checkpoint
from .legacy import upgrade_v1
from .quantization import INFERENCE_PRECISIONS, INT8_GROUP_SIZE, dequantize_int8, quantize_int8

__all__ = [
    "FORMAT_VERSION",
    "INFERENCE_PRECISIONS",
    "INT8_GROUP_SIZE",
    "STAGE_NETWORKS",
    "atomic_save",
    "build_network",
    "dequantize_int8",
    "inference_checkpoint",
    "is_export",
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
