"""Import LDM / CompVis-layout UNet weights (Stable Diffusion v1, Zero-1-to-3) into ``XrayConditionedUNet``.

CompVis names (``model.diffusion_model.`` prefix in a checkpoint's ``state_dict``)::

    time_embed.{0,2}                              -> time_embed.{0,2}
    input_blocks.0.0                              -> conv_in.conv
    input_blocks.N.0 (ResBlock)                   -> down_blocks.L.resnets.R
    input_blocks.N.1 (SpatialTransformer)         -> down_blocks.L.attentions.R
    input_blocks.N.0.op (Downsample)              -> down_blocks.L.downsampler.op.conv
    middle_block.{0,1,2}                          -> middle_block.{resnet_1,attention,resnet_2}
    output_blocks.N.0 / .1                        -> up_blocks.L.resnets.R / attentions.R
    output_blocks.N.{1|2}.conv (Upsample)         -> up_blocks.L.upsampler.postconv.conv
    out.0 / out.2                                 -> out.0 / out.2.conv
    ResBlock: in_layers.0/.2, emb_layers.1, out_layers.0/.3, skip_connection
           -> norm1, conv1.conv, time_emb_proj, norm2, conv2.conv, skip_connection.conv
    SpatialTransformer: norm, proj_in, proj_out, transformer_blocks.T.{attn1,attn2}.{to_q,to_k,to_v,to_out.0},
           ff.net.0.proj, ff.net.2, norm1-3 -> same names except to_out.0 -> out_proj, ff.net.0.proj -> ff.linear1,
           ff.net.2 -> ff.linear2, proj_in/proj_out -> proj_in.conv/proj_out.conv

Input-channel surgery (Zero-1-to-3): a 4-channel ``conv_in`` fills the first 4 input channels of our 8-channel
``conv_in`` (the noisy latent comes first in our concatenation); the X-ray latent channels start at zero.
Zero-1-to-3's ``cc_projection`` (``Linear(772, 768)``, top level of the checkpoint) loads into ``context_proj``
when the shapes agree. Layers that exist only here (depth MLP, guidance module, null context) keep their
initial values. Any other mismatch raises ``LdmImportError`` listing the unmatched keys in both directions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from monai.networks.nets import DiffusionModelUNet

__all__ = [
    "LdmImportError",
    "LdmImportReport",
    "convert_ldm_unet_state_dict",
    "ldm_key_map",
    "load_ldm_checkpoint",
    "load_ldm_unet",
]

LDM_PREFIX = "model.diffusion_model."
CC_PROJECTION = "cc_projection."

_RESNET = {
    "norm1": "in_layers.0",
    "conv1.conv": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2.conv": "out_layers.3",
    "skip_connection.conv": "skip_connection",
}
_TRANSFORMER = {
    "norm": "norm",
    "proj_in.conv": "proj_in",
    "proj_out.conv": "proj_out",
}
_TRANSFORMER_BLOCK = {
    "attn1.out_proj": "attn1.to_out.0",
    "attn2.out_proj": "attn2.to_out.0",
    "ff.linear1": "ff.net.0.proj",
    "ff.linear2": "ff.net.2",
}
# layers that exist only in XrayConditionedUNet (kept at their initial values on import)
_NEW_MODULES = ("depth_embed.", "guidance.", "null_context", "context_proj.")


class LdmImportError(KeyError):
    """The LDM state dict does not match the UNet; the message lists what is missing on each side."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0]) if self.args else ""


@dataclass
class LdmImportReport:
    """What an import did: tensors copied, input-channel surgery, cc_projection, layers kept as initialised."""

    loaded: list[str] = field(default_factory=list)
    input_channel_surgery: bool = False
    cc_projection_loaded: bool = False
    kept_initialised: list[str] = field(default_factory=list)
    ignored_source_keys: int = 0


def _map_submodule(target_keys: list[str], monai_prefix: str, ldm_prefix: str, table: Mapping[str, str]) -> dict:
    """Map every target key under ``monai_prefix`` by replacing a leading sub-name from ``table``."""
    mapping = {}
    for key in target_keys:
        if not key.startswith(monai_prefix):
            continue
        rest = key[len(monai_prefix) :]
        for monai_name, ldm_name in table.items():
            if rest.startswith(monai_name + "."):
                rest = ldm_name + rest[len(monai_name) :]
                break
        mapping[key] = ldm_prefix + rest
    return mapping


def _map_resnet(keys: list[str], monai_prefix: str, ldm_prefix: str) -> dict:
    return _map_submodule(keys, monai_prefix + ".", ldm_prefix + ".", _RESNET)


def _map_transformer(keys: list[str], monai_prefix: str, ldm_prefix: str) -> dict:
    mapping = _map_submodule(keys, monai_prefix + ".", ldm_prefix + ".", _TRANSFORMER)
    for key, ldm_key in mapping.items():
        for monai_name, ldm_name in _TRANSFORMER_BLOCK.items():
            marker = "." + monai_name + "."
            if marker in ldm_key:
                mapping[key] = ldm_key.replace(marker, "." + ldm_name + ".")
    return mapping


def ldm_key_map(unet: DiffusionModelUNet) -> dict[str, str]:
    """Our state-dict key -> CompVis key (without the ``model.diffusion_model.`` prefix), for the base UNet."""
    keys = [k for k in unet.state_dict() if not k.startswith(_NEW_MODULES)]
    mapping: dict[str, str] = {}
    mapping.update(_map_submodule(keys, "conv_in.conv.", "input_blocks.0.0.", {}))
    mapping.update(_map_submodule(keys, "time_embed.", "time_embed.", {}))
    index = 1
    for level, block in enumerate(unet.down_blocks):
        for r in range(len(block.resnets)):
            mapping.update(_map_resnet(keys, f"down_blocks.{level}.resnets.{r}", f"input_blocks.{index}.0"))
            if hasattr(block, "attentions"):
                mapping.update(_map_transformer(keys, f"down_blocks.{level}.attentions.{r}", f"input_blocks.{index}.1"))
            index += 1
        if block.downsampler is not None:
            mapping.update(
                _map_submodule(keys, f"down_blocks.{level}.downsampler.op.conv.", f"input_blocks.{index}.0.op.", {})
            )
            index += 1
    mapping.update(_map_resnet(keys, "middle_block.resnet_1", "middle_block.0"))
    mapping.update(_map_transformer(keys, "middle_block.attention", "middle_block.1"))
    mapping.update(_map_resnet(keys, "middle_block.resnet_2", "middle_block.2"))
    index = 0
    for level, block in enumerate(unet.up_blocks):
        n_res = len(block.resnets)
        for r in range(n_res):
            mapping.update(_map_resnet(keys, f"up_blocks.{level}.resnets.{r}", f"output_blocks.{index}.0"))
            slot = 1
            if hasattr(block, "attentions"):
                mapping.update(_map_transformer(keys, f"up_blocks.{level}.attentions.{r}", f"output_blocks.{index}.1"))
                slot = 2
            if r == n_res - 1 and block.upsampler is not None:
                mapping.update(
                    _map_submodule(
                        keys, f"up_blocks.{level}.upsampler.postconv.conv.", f"output_blocks.{index}.{slot}.conv.", {}
                    )
                )
            index += 1
    mapping.update(_map_submodule(keys, "out.0.", "out.0.", {}))
    mapping.update(_map_submodule(keys, "out.2.conv.", "out.2.", {}))
    unmapped = sorted(set(keys) - set(mapping))
    if unmapped:
        raise LdmImportError(f"no CompVis name known for: {', '.join(unmapped)}")
    return mapping


def _fit(source: torch.Tensor, target: torch.Tensor, key: str, report: LdmImportReport) -> torch.Tensor | None:
    """Source tensor shaped like ``target``: 1 x 1 conv <-> linear reshape, conv_in channel surgery; else None."""
    if source.shape == target.shape:
        return source.to(target.dtype)
    if source.numel() == target.numel() and source.squeeze().shape == target.squeeze().shape:
        return source.reshape(target.shape).to(target.dtype)  # SD-2 style linear proj_in/proj_out
    widen = (
        key == "conv_in.conv.weight"
        and source.ndim == 4
        and source.shape[0] == target.shape[0]
        and source.shape[1] < target.shape[1]
        and source.shape[2:] == target.shape[2:]
    )
    if not widen:
        return None
    widened = torch.zeros_like(target)
    widened[:, : source.shape[1]] = source.to(target.dtype)
    report.input_channel_surgery = True
    return widened


def convert_ldm_unet_state_dict(
    ldm_state_dict: Mapping[str, torch.Tensor],
    unet: DiffusionModelUNet,
    prefix: str | None = None,
) -> tuple[dict[str, torch.Tensor], LdmImportReport]:
    """Translate a CompVis-layout state dict into a complete state dict for ``unet``.

    Args:
        ldm_state_dict: a checkpoint's ``state_dict`` (keys ``model.diffusion_model.*``, optionally
            ``cc_projection.*``; others such as ``first_stage_model.*`` are ignored) or the bare UNet dict.
        unet: the target network (its current values fill the layers the source lacks).
        prefix: the UNet prefix in ``ldm_state_dict``; None detects ``model.diffusion_model.`` or no prefix.

    Raises:
        LdmImportError: keys of the source UNet without a target, target keys missing in the source, or shapes
            that cannot be fitted.
    """
    if prefix is None:
        prefix = LDM_PREFIX if any(k.startswith(LDM_PREFIX) for k in ldm_state_dict) else ""
    source = {k[len(prefix) :]: v for k, v in ldm_state_dict.items() if k.startswith(prefix)}
    extras = {k: v for k, v in ldm_state_dict.items() if not k.startswith(prefix)}
    if prefix == "":
        source = {k: v for k, v in source.items() if not k.startswith(CC_PROJECTION)}
    report = LdmImportReport(ignored_source_keys=sum(not k.startswith(CC_PROJECTION) for k in extras))

    state = {k: v.clone() for k, v in unet.state_dict().items()}
    mapping = ldm_key_map(unet)
    missing = sorted(ldm for ldm in mapping.values() if ldm not in source)
    unexpected = sorted(set(source) - set(mapping.values()))
    bad_shapes = []
    for key, ldm in mapping.items():
        if ldm not in source:
            continue
        fitted = _fit(source[ldm], state[key], key, report)
        if fitted is None:
            bad_shapes.append(f"{ldm} {tuple(source[ldm].shape)} -> {key} {tuple(state[key].shape)}")
            continue
        state[key] = fitted
        report.loaded.append(key)
    if missing or unexpected or bad_shapes:
        lines = ["LDM UNet state dict does not match XrayConditionedUNet:"]
        if missing:
            lines.append(f"  in the UNet but not in the source ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            lines.append(f"  in the source but not in the UNet ({len(unexpected)}): " + ", ".join(unexpected))
        if bad_shapes:
            lines.append(f"  shape mismatch ({len(bad_shapes)}): " + "; ".join(bad_shapes))
        raise LdmImportError("\n".join(lines))

    cc_weight, cc_bias = ldm_state_dict.get(CC_PROJECTION + "weight"), ldm_state_dict.get(CC_PROJECTION + "bias")
    target_cc = state.get("context_proj.weight")
    if cc_weight is not None and cc_bias is not None and target_cc is not None and cc_weight.shape == target_cc.shape:
        state["context_proj.weight"] = cc_weight.to(target_cc.dtype)
        state["context_proj.bias"] = cc_bias.to(target_cc.dtype)
        report.cc_projection_loaded = True
        report.loaded += ["context_proj.weight", "context_proj.bias"]
    report.kept_initialised = sorted(k for k in state if k not in set(report.loaded))
    return state, report


def load_ldm_checkpoint(path: str | Path, weights_only: bool = True) -> dict[str, torch.Tensor]:
    """Read a CompVis checkpoint (``.ckpt``/``.pt`` with a ``state_dict`` entry, or ``.safetensors``) on the CPU.

    ``weights_only=False`` unpickles arbitrary objects (some Lightning checkpoints need it): only for trusted files.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LDM checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as error:
            message = "reading .safetensors needs the `safetensors` package: pip install safetensors"
            raise ImportError(message) from error
        return load_file(str(path), device="cpu")
    checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only)
    return checkpoint.get("state_dict", checkpoint)


def load_ldm_unet(
    unet: DiffusionModelUNet,
    source: Mapping[str, torch.Tensor] | str | Path,
    prefix: str | None = None,
) -> LdmImportReport:
    """Load CompVis-layout weights (a state dict or a checkpoint path) into ``unet`` in place; returns the report."""
    state_dict = source if isinstance(source, Mapping) else load_ldm_checkpoint(source)
    state, report = convert_ldm_unet_state_dict(state_dict, unet, prefix=prefix)
    unet.load_state_dict(state, strict=True)
    return report
