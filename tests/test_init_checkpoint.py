"""``init_checkpoint`` of the diffusion stage: a tiny synthetic checkpoint in the CompVis/LDM layout
(Zero-1-to-3's, 4 input channels) and this bundle's own export both initialise the denoiser, through the
config key the training runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xray2mri_bundle.checkpoint import make_checkpoint
from xray2mri_bundle.engines.checkpoints import initialise_denoiser
from xray2mri_bundle.engines.denoiser import XrayDenoiser
from xray2mri_bundle.networks import build_unet, build_xray_encoder
from xray2mri_bundle.networks.ldm_import import LDM_PREFIX, ldm_key_map


def tiny_denoiser(seed: int) -> XrayDenoiser:
    torch.manual_seed(seed)
    return XrayDenoiser(build_unet("tiny"), build_xray_encoder("tiny"))


def test_an_ldm_checkpoint_initialises_the_unet_with_input_channel_surgery(tmp_path: Path) -> None:
    source = tiny_denoiser(1).unet
    state = source.state_dict()
    ldm = {LDM_PREFIX + ldm_key: state[ours].clone() for ours, ldm_key in ldm_key_map(source).items()}
    conv_in = LDM_PREFIX + "input_blocks.0.0.weight"
    ldm[conv_in] = ldm[conv_in][:, :4].clone()  # Zero-1-to-3 / SD: 4 latent channels in, ours 4 + 4 (X-ray latent)
    ldm["first_stage_model.decoder.conv_in.weight"] = torch.zeros(1)  # other parts of an LDM file are ignored
    path = tmp_path / "zero123_tiny.ckpt"
    torch.save({"state_dict": ldm}, path)

    target = tiny_denoiser(2)
    encoder_before = {k: v.clone() for k, v in target.xray_encoder.state_dict().items()}
    initialise_denoiser(target, path)
    loaded = target.unet.state_dict()
    assert torch.equal(loaded["time_embed.0.weight"], state["time_embed.0.weight"])
    assert torch.equal(loaded["out.2.conv.weight"], state["out.2.conv.weight"])
    assert torch.equal(loaded["conv_in.conv.weight"][:, :4], state["conv_in.conv.weight"][:, :4])
    assert not loaded["conv_in.conv.weight"][:, 4:].any()  # the X-ray latent channels start at zero
    assert all(torch.equal(v, encoder_before[k]) for k, v in target.xray_encoder.state_dict().items())


def test_a_bundle_export_continues_its_ema_weights(tmp_path: Path) -> None:
    trained = tiny_denoiser(3)
    ema = tiny_denoiser(4)
    export = make_checkpoint("diffusion", {"unet": trained.unet, "xray_encoder": trained.xray_encoder},
                             {"unet": ema.unet, "xray_encoder": ema.xray_encoder}, profile="tiny", scale_factor=0.5)
    path = tmp_path / "diffusion.pt"
    torch.save(export, path)
    target = initialise_denoiser(tiny_denoiser(5), path)
    for mine, wanted in ((target.unet, ema.unet), (target.xray_encoder, ema.xray_encoder)):
        assert all(torch.equal(v, wanted.state_dict()[k]) for k, v in mine.state_dict().items())
    assert initialise_denoiser(target, None) is target
    with pytest.raises(FileNotFoundError, match="init_checkpoint"):
        initialise_denoiser(target, tmp_path / "missing.pt")
    other = XrayDenoiser(build_unet("tiny", use_guidance=False), build_xray_encoder("tiny"))
    with pytest.raises(RuntimeError, match="does not fit"):
        initialise_denoiser(other, path)


def test_the_diffusion_config_wires_init_checkpoint(tmp_path: Path) -> None:
    """``--init_checkpoint`` reaches ``network_raw`` of configs/train_diffusion.json."""
    from monai.bundle import ConfigParser

    ema = tiny_denoiser(6)
    path = tmp_path / "diffusion.pt"
    torch.save(make_checkpoint("diffusion", {"unet": ema.unet, "xray_encoder": ema.xray_encoder},
                               {"unet": ema.unet}, profile="tiny", scale_factor=0.5), path)
    root = Path(__file__).resolve().parents[1] / "configs"
    parser = ConfigParser()
    parser.read_config([str(root / "common.json"), str(root / "profiles" / "tiny.json"),
                        str(root / "train_diffusion.json")])
    parser.update({"init_checkpoint": str(path), "device": "$torch.device('cpu')",
                   "use_guidance": True})
    network = parser.get_parsed_content("network_raw")
    assert all(torch.equal(v, ema.unet.state_dict()[k]) for k, v in network.unet.state_dict().items())
