"""LDM/CompVis UNet import: a state dict generated in the CompVis layout lands tensor by tensor in our UNet."""

from __future__ import annotations

import pytest
import torch

from xray2mri_bundle.networks import (
    LdmImportError,
    XrayConditionedUNet,
    convert_ldm_unet_state_dict,
    ldm_key_map,
    load_ldm_unet,
)

PREFIX = "model.diffusion_model."
# small configuration with different widths per level, so a misrouted tensor would not fit
CONFIG = {
    "channels": (32, 64, 96),
    "num_res_blocks": 2,
    "attention_levels": (False, True, True),
    "num_head_channels": (16, 16, 32),
    "cross_attention_dim": 768,
}


def _resblock(keys: dict, name: str, c_in: int, c_out: int, temb: int) -> None:
    keys[f"{name}.in_layers.0.weight"] = (c_in,)
    keys[f"{name}.in_layers.0.bias"] = (c_in,)
    keys[f"{name}.in_layers.2.weight"] = (c_out, c_in, 3, 3)
    keys[f"{name}.in_layers.2.bias"] = (c_out,)
    keys[f"{name}.emb_layers.1.weight"] = (c_out, temb)
    keys[f"{name}.emb_layers.1.bias"] = (c_out,)
    keys[f"{name}.out_layers.0.weight"] = (c_out,)
    keys[f"{name}.out_layers.0.bias"] = (c_out,)
    keys[f"{name}.out_layers.3.weight"] = (c_out, c_out, 3, 3)
    keys[f"{name}.out_layers.3.bias"] = (c_out,)
    if c_in != c_out:
        keys[f"{name}.skip_connection.weight"] = (c_out, c_in, 1, 1)
        keys[f"{name}.skip_connection.bias"] = (c_out,)


def _transformer(keys: dict, name: str, ch: int, context_dim: int, linear_proj: bool) -> None:
    proj = (ch, ch) if linear_proj else (ch, ch, 1, 1)
    keys[f"{name}.norm.weight"] = (ch,)
    keys[f"{name}.norm.bias"] = (ch,)
    keys[f"{name}.proj_in.weight"] = proj
    keys[f"{name}.proj_in.bias"] = (ch,)
    block = f"{name}.transformer_blocks.0"
    for attn, kv_dim in (("attn1", ch), ("attn2", context_dim)):
        keys[f"{block}.{attn}.to_q.weight"] = (ch, ch)
        keys[f"{block}.{attn}.to_k.weight"] = (ch, kv_dim)
        keys[f"{block}.{attn}.to_v.weight"] = (ch, kv_dim)
        keys[f"{block}.{attn}.to_out.0.weight"] = (ch, ch)
        keys[f"{block}.{attn}.to_out.0.bias"] = (ch,)
    keys[f"{block}.ff.net.0.proj.weight"] = (ch * 8, ch)
    keys[f"{block}.ff.net.0.proj.bias"] = (ch * 8,)
    keys[f"{block}.ff.net.2.weight"] = (ch, ch * 4)
    keys[f"{block}.ff.net.2.bias"] = (ch,)
    for norm in ("norm1", "norm2", "norm3"):
        keys[f"{block}.{norm}.weight"] = (ch,)
        keys[f"{block}.{norm}.bias"] = (ch,)
    keys[f"{name}.proj_out.weight"] = proj
    keys[f"{name}.proj_out.bias"] = (ch,)


def ldm_unet_layout(in_channels: int = 4, linear_proj: bool = False) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a CompVis ``openaimodel.UNetModel`` built like CONFIG (written from the CompVis layout)."""
    channels, n_res, attention = CONFIG["channels"], CONFIG["num_res_blocks"], CONFIG["attention_levels"]
    context_dim, temb = CONFIG["cross_attention_dim"], channels[0] * 4
    keys: dict[str, tuple[int, ...]] = {
        "time_embed.0.weight": (temb, channels[0]),
        "time_embed.0.bias": (temb,),
        "time_embed.2.weight": (temb, temb),
        "time_embed.2.bias": (temb,),
        "input_blocks.0.0.weight": (channels[0], in_channels, 3, 3),
        "input_blocks.0.0.bias": (channels[0],),
    }
    skip_channels, ch, index = [channels[0]], channels[0], 1
    for level, width in enumerate(channels):
        for _ in range(n_res):
            _resblock(keys, f"input_blocks.{index}.0", ch, width, temb)
            ch = width
            if attention[level]:
                _transformer(keys, f"input_blocks.{index}.1", ch, context_dim, linear_proj)
            skip_channels.append(ch)
            index += 1
        if level < len(channels) - 1:
            keys[f"input_blocks.{index}.0.op.weight"] = (ch, ch, 3, 3)
            keys[f"input_blocks.{index}.0.op.bias"] = (ch,)
            skip_channels.append(ch)
            index += 1
    _resblock(keys, "middle_block.0", ch, ch, temb)
    _transformer(keys, "middle_block.1", ch, context_dim, linear_proj)
    _resblock(keys, "middle_block.2", ch, ch, temb)
    index = 0
    for level in reversed(range(len(channels))):
        width = channels[level]
        for r in range(n_res + 1):
            _resblock(keys, f"output_blocks.{index}.0", ch + skip_channels.pop(), width, temb)
            ch = width
            slot = 1
            if attention[level]:
                _transformer(keys, f"output_blocks.{index}.1", ch, context_dim, linear_proj)
                slot = 2
            if level > 0 and r == n_res:
                keys[f"output_blocks.{index}.{slot}.conv.weight"] = (ch, ch, 3, 3)
                keys[f"output_blocks.{index}.{slot}.conv.bias"] = (ch,)
            index += 1
    keys["out.0.weight"] = (ch,)
    keys["out.0.bias"] = (ch,)
    keys["out.2.weight"] = (4, ch, 3, 3)
    keys["out.2.bias"] = (4,)
    return keys


def ldm_checkpoint(in_channels: int = 4, linear_proj: bool = False, cc_projection: bool = True) -> dict:
    """A checkpoint ``state_dict`` in the CompVis layout; each tensor holds distinct random values."""
    g = torch.Generator().manual_seed(0)
    layout = ldm_unet_layout(in_channels, linear_proj)
    state = {PREFIX + k: torch.randn(shape, generator=g) for k, shape in layout.items()}
    state["first_stage_model.decoder.conv_in.weight"] = torch.randn(4, 4, generator=g)  # other parts: ignored
    if cc_projection:
        state["cc_projection.weight"] = torch.randn(768, 772, generator=g)
        state["cc_projection.bias"] = torch.randn(768, generator=g)
    return state


def _unet() -> XrayConditionedUNet:
    torch.manual_seed(0)
    return XrayConditionedUNet(**CONFIG)


def test_generated_layout_matches_the_key_map():
    assert set(ldm_key_map(_unet()).values()) == set(ldm_unet_layout())


@pytest.mark.parametrize("linear_proj", [False, True])
def test_every_tensor_lands_where_it_should(linear_proj):
    unet = _unet()
    initial = {k: v.clone() for k, v in unet.state_dict().items()}
    checkpoint = ldm_checkpoint(linear_proj=linear_proj)
    report = load_ldm_unet(unet, checkpoint)
    state = unet.state_dict()
    key_map = ldm_key_map(unet)

    # every CompVis tensor is copied exactly once, value for value
    for ours, theirs in key_map.items():
        source = checkpoint[PREFIX + theirs]
        if ours == "conv_in.conv.weight":
            assert torch.equal(state[ours][:, :4], source) and torch.count_nonzero(state[ours][:, 4:]) == 0
        else:
            assert torch.equal(state[ours], source.reshape(state[ours].shape)), ours
    assert len(set(key_map.values())) == len(key_map)
    assert report.input_channel_surgery and report.cc_projection_loaded
    assert torch.equal(state["context_proj.weight"], checkpoint["cc_projection.weight"])
    assert report.ignored_source_keys == 1

    # hand-written correspondences (same-shaped tensors that a wrong map could swap)
    expected = {
        "time_embed.0.weight": "time_embed.0.weight",
        "down_blocks.0.resnets.0.conv1.conv.weight": "input_blocks.1.0.in_layers.2.weight",
        "down_blocks.0.resnets.1.conv2.conv.weight": "input_blocks.2.0.out_layers.3.weight",
        "down_blocks.0.resnets.1.norm2.bias": "input_blocks.2.0.out_layers.0.bias",
        "down_blocks.0.downsampler.op.conv.weight": "input_blocks.3.0.op.weight",
        "down_blocks.1.resnets.0.skip_connection.conv.weight": "input_blocks.4.0.skip_connection.weight",
        "down_blocks.1.attentions.1.transformer_blocks.0.attn1.to_k.weight": (
            "input_blocks.5.1.transformer_blocks.0.attn1.to_k.weight"
        ),
        "down_blocks.2.attentions.0.transformer_blocks.0.attn2.out_proj.bias": (
            "input_blocks.7.1.transformer_blocks.0.attn2.to_out.0.bias"
        ),
        "down_blocks.2.attentions.0.transformer_blocks.0.ff.linear1.weight": (
            "input_blocks.7.1.transformer_blocks.0.ff.net.0.proj.weight"
        ),
        "middle_block.resnet_2.time_emb_proj.weight": "middle_block.2.emb_layers.1.weight",
        "middle_block.attention.transformer_blocks.0.norm3.weight": "middle_block.1.transformer_blocks.0.norm3.weight",
        "up_blocks.0.resnets.2.norm1.weight": "output_blocks.2.0.in_layers.0.weight",
        "up_blocks.0.upsampler.postconv.conv.weight": "output_blocks.2.2.conv.weight",
        "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v.weight": (
            "output_blocks.3.1.transformer_blocks.0.attn1.to_v.weight"
        ),
        "up_blocks.1.upsampler.postconv.conv.bias": "output_blocks.5.2.conv.bias",
        "up_blocks.2.resnets.0.conv1.conv.weight": "output_blocks.6.0.in_layers.2.weight",
        "up_blocks.2.resnets.2.conv2.conv.bias": "output_blocks.8.0.out_layers.3.bias",
        "out.0.weight": "out.0.weight",
        "out.2.conv.weight": "out.2.weight",
    }
    for ours, theirs in expected.items():
        assert key_map[ours] == theirs
        assert torch.equal(state[ours], checkpoint[PREFIX + theirs].reshape(state[ours].shape)), ours

    # layers that only this UNet has keep their initial values
    for key in report.kept_initialised:
        assert key.startswith(("depth_embed.", "guidance.", "null_context")), key
        assert torch.equal(state[key], initial[key])


def test_eight_channel_source_and_bare_keys_load_directly():
    checkpoint = ldm_checkpoint(in_channels=8, cc_projection=False)
    bare = {k[len(PREFIX) :]: v for k, v in checkpoint.items() if k.startswith(PREFIX)}
    unet = _unet()
    report = load_ldm_unet(unet, bare)
    assert not report.input_channel_surgery and not report.cc_projection_loaded
    assert torch.equal(unet.conv_in.conv.weight, bare["input_blocks.0.0.weight"])
    assert torch.equal(unet.context_proj.weight[:, :768], torch.eye(768))  # kept identity


def test_unmatched_keys_are_listed_both_ways():
    checkpoint = ldm_checkpoint()
    del checkpoint[PREFIX + "middle_block.1.proj_in.weight"]
    checkpoint[PREFIX + "input_blocks.99.0.surprise.weight"] = torch.zeros(1)
    checkpoint[PREFIX + "out.2.weight"] = torch.zeros(4, 7, 3, 3)
    with pytest.raises(LdmImportError) as info:
        convert_ldm_unet_state_dict(checkpoint, _unet())
    message = str(info.value)
    assert "not in the source" in message and "middle_block.1.proj_in.weight" in message
    assert "not in the UNet" in message and "input_blocks.99.0.surprise.weight" in message
    assert "shape mismatch" in message and "out.2.weight" in message


def test_import_into_a_model_without_context_reports_missing_cross_attention():
    torch.manual_seed(0)
    unet = XrayConditionedUNet(**{**CONFIG, "use_context": False})
    with pytest.raises(LdmImportError, match="attn2"):
        load_ldm_unet(unet, ldm_checkpoint())
