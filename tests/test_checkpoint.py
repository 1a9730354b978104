"""The checkpoint format (``xray2mri_bundle.checkpoint``): networks record their constructor arguments, the writer
stores them, the reader rebuilds the same networks; the shipped format_version 1 files still load bit-identically;
the JSON network definitions of the configs are the profiles' sizes."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from xray2mri_bundle import checkpoint as ckpt
from xray2mri_bundle import networks

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SHIPPED = ROOT / "models" / "small"


def _wake(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights in the zero-initialised layers, so that every condition changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if not param.any():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    return module


def _unet_inputs(latent: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(2, *latent, generator=gen), "timesteps": torch.tensor([10, 500]),
            "xray_latent": torch.randn(2, *latent, generator=gen), "context": torch.randn(2, 1, 768, generator=gen),
            "depth": torch.tensor([0.1, 0.7]), "p_map": torch.rand(2, 5, 8, 8, generator=gen),
            "i_map": torch.rand(2, 16, 8, 8, generator=gen)}


# ------------------------------------------------------------------------------------------------ capture
def test_networks_record_every_constructor_argument() -> None:
    unet = networks.build_unet("tiny", use_guidance=False)
    assert unet.config["_target_"] == "xray2mri_bundle.networks.conditional_unet.XrayConditionedUNet"
    assert unet.config["use_guidance"] is False and unet.config["channels"] == [32, 32]
    assert unet.config["p_channels"] == 5  # defaults are recorded too: a later default change keeps old files
    assert copy.deepcopy(unet).config == unet.config  # EMA copies keep it
    assert "config" not in unet.state_dict()
    autoencoder = networks.build_autoencoder("tiny")
    assert isinstance(autoencoder, networks.AutoencoderKL) and autoencoder.config["spatial_dims"] == 2
    rebuilt = ckpt.build_network(autoencoder.config)
    assert rebuilt.config == autoencoder.config and type(rebuilt) is type(autoencoder)
    with pytest.raises(TypeError, match="args"):
        @networks.register_to_config
        class Loose(torch.nn.Module):
            def __init__(self, **kwargs: int) -> None:
                super().__init__()


def test_stored_targets_stay_inside_the_bundle_and_monai() -> None:
    with pytest.raises(ValueError, match="outside"):
        ckpt.build_network({"_target_": "os.system", "command": "true"})


# ------------------------------------------------------------------------------------------------ round trip
def test_build_write_read_gives_identical_networks(tmp_path: Path) -> None:
    torch.manual_seed(0)
    unet = _wake(networks.build_unet("tiny"), 1)
    ema = _wake(networks.build_unet("tiny"), 2)
    encoder = networks.build_xray_encoder("tiny")
    settings = {"image_size": 64, "noise_schedule": {"schedule": "scaled_linear_beta"}}
    path = ckpt.write_checkpoint(tmp_path / "diffusion.pt", "diffusion", {"unet": unet, "xray_encoder": encoder},
                                 {"unet": ema}, profile="tiny", scale_factor=0.5, settings=settings,
                                 iteration=7, epoch=2)

    raw = torch.load(path, weights_only=True)  # the documented layout, read without the module
    assert set(raw) == {"format_version", "stage", "profile", "networks", "scale_factor", "settings", "iteration",
                        "epoch", "inference_only", "weights_dtype"}
    assert raw["format_version"] == 2 and raw["stage"] == "diffusion" and raw["profile"] == "tiny"
    assert set(raw["networks"]) == {"unet", "xray_encoder"}
    for entry in raw["networks"].values():
        assert set(entry) == {"config", "model", "ema"} and entry["config"]["_target_"].startswith("xray2mri_bundle.")
    assert raw["networks"]["unet"]["config"]["channels"] == [32, 32] and raw["networks"]["xray_encoder"]["ema"] is None
    assert raw["scale_factor"] == 0.5 and raw["settings"] == settings and raw["iteration"] == 7
    assert not raw["inference_only"] and raw["weights_dtype"] == "float32"

    loaded = ckpt.load_networks(path)
    assert ckpt.weights_used(ckpt.read_checkpoint(path), "unet") == "ema"
    inputs = _unet_inputs([4, 8, 8])
    with torch.no_grad():
        assert torch.equal(loaded["unet"](**inputs), ema.eval()(**inputs))
        crop = torch.rand(1, 1, 64, 64)
        assert torch.equal(loaded["xray_encoder"](crop), encoder.eval()(crop))
    raw_unet = ckpt.load_networks(path, ["unet"], prefer="model")["unet"]
    with torch.no_grad():
        assert torch.equal(raw_unet(**inputs), unet.eval()(**inputs))
    assert not loaded["unet"].training and not any(p.requires_grad for p in loaded["unet"].parameters())


def test_unknown_format_versions_and_foreign_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format_version 9"):
        ckpt.parse_checkpoint({"stage": "autoencoder", "format_version": 9, "networks": {}})
    with pytest.raises(ValueError, match="not a final export"):
        ckpt.parse_checkpoint({"state_dict": {}})
    with pytest.raises(FileNotFoundError, match="train the 'classifier' stage"):
        ckpt.read_checkpoint(tmp_path / "classifier.pt")


# ------------------------------------------------------------------------------------------- the old layout
def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _v1_export(stage: str, profile: str = "tiny", **flags: bool) -> dict:
    """A format_version 1 export as the previous writer laid it out (weights at the top, sizes in
    ``config["network"]``, condition flags in ``config["flags"]``, the X-ray encoder in ``config["xray_encoder"]``);
    written literally here because that writer no longer exists."""
    sizes = networks.get_profile(profile)
    base = {"scale_factor": None, "profile": profile, "stage": stage, "iteration": 7, "epoch": 1, "format_version": 1}
    if stage == "autoencoder":
        net = _wake(networks.build_autoencoder(profile), 1)
        return {**base, "model": _state(net), "ema": None,
                "config": {"network": sizes["autoencoder"], "image_size": sizes["image_size"], "kl_weight": 1e-6}}
    if stage == "classifier":
        net = _wake(networks.build_classifier(profile), 2)
        return {**base, "model": _state(net), "ema": None,
                "config": {"network": sizes["classifier"], "image_size": sizes["image_size"], "num_classes": 5}}
    flags = {"use_depth": True, "use_xray_latent": True, "use_context": True, "use_guidance": True,
             "use_intensity": True, **flags}
    unet_flags = {k: v for k, v in flags.items() if k != "use_intensity"}
    raw, ema = (_wake(networks.build_unet(profile, **unet_flags), seed) for seed in (3, 4))
    encoder, encoder_ema = (_wake(networks.build_xray_encoder(profile), seed) for seed in (5, 6))
    return {**base, "scale_factor": 0.7, "model": _state(raw), "ema": _state(ema),
            "xray_encoder": _state(encoder) if flags["use_context"] else None,
            "xray_encoder_ema": _state(encoder_ema) if flags["use_context"] else None,
            "config": {"network": sizes["unet"], "image_size": sizes["image_size"],
                       "latent_shape": sizes["latent_shape"], "flags": flags,
                       "xray_encoder": {"kind": "trainable", "network": sizes["xray_encoder"]},
                       "num_train_timesteps": 1000, "noise_schedule": "scaled_linear_beta",
                       "prediction_type": "epsilon", "ema_decay": 0.99, "p_uncond": 0.05}}


def _legacy_unet(raw: dict) -> torch.nn.Module:
    """How format_version 1 was loaded before this module: the profile's UNet with the stored sizes and flags."""
    config = raw["config"]
    flags = {k: bool(config["flags"][k]) for k in ("use_depth", "use_xray_latent", "use_context", "use_guidance")}
    unet = networks.build_unet(raw["profile"], **{**config["network"], **flags})
    unet.load_state_dict(raw["ema"] or raw["model"])
    return unet.eval()


@pytest.mark.parametrize("flags", [{}, {"use_guidance": False, "use_intensity": False},
                                   {"use_xray_latent": False, "use_context": False, "use_guidance": False,
                                    "use_intensity": False}], ids=["full", "xray_no_guidance", "ldm_depth_only"])
def test_format_version_1_diffusion_files_load_bit_identically(tmp_path: Path, flags: dict) -> None:
    path = tmp_path / "diffusion.pt"
    torch.save(_v1_export("diffusion", **flags), path)
    raw = torch.load(path, weights_only=True)
    upgraded = ckpt.read_checkpoint(path)
    assert upgraded["format_version"] == 2 and upgraded["settings"]["noise_schedule"] == "scaled_linear_beta"
    assert upgraded["settings"]["use_intensity"] == raw["config"]["flags"]["use_intensity"]
    assert upgraded["scale_factor"] == 0.7 and upgraded["iteration"] == 7
    new = ckpt.load_networks(upgraded)
    assert ("xray_encoder" in new) == raw["config"]["flags"]["use_context"]
    inputs = _unet_inputs(raw["config"]["latent_shape"])
    with torch.no_grad():
        assert torch.equal(new["unet"](**inputs), _legacy_unet(raw)(**inputs))
    if "xray_encoder" in new:
        legacy = networks.XrayEncoder(**raw["config"]["xray_encoder"]["network"])
        legacy.load_state_dict(raw["xray_encoder_ema"])
        crop = torch.rand(1, 1, 64, 64)
        with torch.no_grad():
            assert torch.equal(new["xray_encoder"](crop), legacy.eval()(crop))


def test_format_version_1_autoencoder_and_classifier_load_bit_identically(tmp_path: Path) -> None:
    torch.save(_v1_export("autoencoder"), tmp_path / "autoencoder.pt")
    raw = torch.load(tmp_path / "autoencoder.pt", weights_only=True)
    legacy = networks.build_autoencoder("tiny", **raw["config"]["network"])
    legacy.load_state_dict(raw["model"])
    new = ckpt.load_network(tmp_path / "autoencoder.pt")
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        mu, _ = new.encode(image)  # the posterior mean (encode_stage_2_inputs would sample)
        assert torch.equal(mu, legacy.eval().encode(image)[0])
        assert torch.equal(new.decode(mu), legacy.decode(mu))
    torch.save(_v1_export("classifier"), tmp_path / "classifier.pt")
    raw = torch.load(tmp_path / "classifier.pt", weights_only=True)
    legacy = networks.build_classifier("tiny", **raw["config"]["network"])
    legacy.load_state_dict(raw["model"])
    new = ckpt.load_network(tmp_path / "classifier.pt")
    crop = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(new(crop), legacy.eval()(crop))
    # the upgraded config is what a fresh build records: a re-export of these weights writes the same sizes
    assert new.config == networks.build_classifier("tiny").config
    slim = ckpt.inference_checkpoint(ckpt.read_checkpoint(tmp_path / "classifier.pt"))
    assert slim["format_version"] == 2 and slim["networks"]["classifier"]["ema"] is None
    assert {v.dtype for v in slim["networks"]["classifier"]["model"].values() if v.is_floating_point()} == {
        torch.float16}


@pytest.mark.parametrize("name", sorted(p.name for p in SHIPPED.glob("*.pt")))
def test_shipped_files_are_inference_only_current_format(name: str) -> None:
    """The shipped weights: format_version 2, one weight set per network in weight-only int8 (float16 scales and
    small tensors), sizes of a fresh small build."""
    raw = torch.load(SHIPPED / name, weights_only=True)
    assert raw["format_version"] == ckpt.FORMAT_VERSION == 2 and raw["inference_only"] and raw["profile"] == "small"
    assert raw["weights_dtype"] == "int8" and raw["int8_group_size"] == ckpt.INT8_GROUP_SIZE
    for part in raw["networks"].values():
        kept = [w for w in (part["model"], part["ema"]) if w is not None]
        assert len(kept) == 1
        assert {v.dtype for v in kept[0].values() if v.is_floating_point()} == {torch.float16}
        quantized = {k for k, v in kept[0].items() if v.dtype == torch.int8}
        assert quantized and quantized == set(part["scales"])
        int8_bytes = sum(kept[0][k].numel() for k in quantized)
        assert int8_bytes > 0.8 * sum(v.numel() for v in kept[0].values())  # most of the weights are int8
    built = ckpt.load_networks(ckpt.read_checkpoint(SHIPPED / name))
    fresh = {"autoencoder": networks.build_autoencoder, "classifier": networks.build_classifier,
             "xray_encoder": networks.build_xray_encoder}
    for part, network in built.items():
        if part in fresh:
            assert network.config == fresh[part]("small").config
        else:
            flags = {k: v for k, v in network.config.items() if k.startswith("use_")}
            assert network.config == networks.build_unet("small", **flags).config


# ------------------------------------------------------------------------------- JSON network definitions
PARTS = {"autoencoder_def": ("autoencoder", networks.build_autoencoder),
         "classifier_def": ("classifier", networks.build_classifier),
         "unet_def": ("unet", networks.build_unet),
         "xray_encoder_def": ("xray_encoder", networks.build_xray_encoder)}

def test_json_network_defs_build_the_profile_networks() -> None:
    """The same merge the bundle runs (common + profile + stage file) builds what ``build_*("tiny")`` builds."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "common.json"), str(CONFIGS / "profiles" / "tiny.json"),
                        str(CONFIGS / "train_diffusion.json")])
    for key, (_, build) in PARTS.items():
        assert parser.get_parsed_content(key).config == build("tiny").config, key
    assert parser.get_parsed_content("network_def").unet.config == networks.build_unet("tiny").config


# ------------------------------------------------------------------------------------------ weight-only int8
def test_int8_groups_quantize_a_hand_computed_weight() -> None:
    """Two output channels, 5 entries each, groups of 4: each group scaled by its own |max| / 127 (float16)."""
    w = torch.tensor([[1.27, -0.64, 0.0, 0.3175, 2.54], [0.0, 0.0, 0.0, 0.0, -0.127]])
    q, scale = ckpt.quantize_int8(w, group_size=4)
    assert q.dtype == torch.int8 and scale.dtype == torch.float16 and scale.shape == (2, 2)
    assert scale[:, 0].float().tolist() == pytest.approx([0.01, 1.0], rel=1e-3)  # an all-zero group keeps scale 1
    assert q[0].tolist() == [127, -64, 0, 32, 127] and q[1].tolist() == [0, 0, 0, 0, -127]
    back = ckpt.dequantize_int8(q, scale, group_size=4)
    assert float((back - w).abs().max()) <= float(scale.float().max()) / 2 + 1e-3
    with pytest.raises(ValueError, match="do not fit"):
        ckpt.dequantize_int8(q, scale, group_size=2)


def test_int8_inference_checkpoint_loads_close_to_float32(tmp_path: Path) -> None:
    """A tiny diffusion export in int8: int8 tensors + scales on disk (1-d tensors float16), float32 weights
    after reading, each within the 3 % RMS bound of groups of 64 -- also rows with one large entry, whose
    small entries one scale per row rounds to 0 (over 4 % error)."""
    unet = networks.build_unet("tiny")
    with torch.no_grad():
        for param in unet.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    spiky = 0.002 * torch.randn(4, 768)
    spiky[:, 0] = 1.0  # like a near-identity projection: one large entry per row
    exported = ckpt.make_checkpoint("diffusion", {"unet": unet}, {"unet": unet})
    exported["networks"]["unet"]["ema"]["extra.spiky"] = spiky
    ckpt.atomic_save(ckpt.inference_checkpoint(exported, "int8"), tmp_path / "diffusion.pt")
    raw = torch.load(tmp_path / "diffusion.pt", weights_only=True)
    stored, scales = raw["networks"]["unet"]["ema"], raw["networks"]["unet"]["scales"]
    assert raw["weights_dtype"] == "int8" and set(scales) == {k for k, v in stored.items() if v.dim() >= 2}
    assert all(stored[k].dtype == torch.int8 for k in scales)
    assert {v.dtype for k, v in stored.items() if k not in scales and v.is_floating_point()} == {torch.float16}
    parsed = ckpt.read_checkpoint(tmp_path / "diffusion.pt")["networks"]["unet"]
    assert "scales" not in parsed
    reference = exported["networks"]["unet"]["ema"]
    for key, value in parsed["ema"].items():
        assert value.dtype == (torch.float32 if key in scales else torch.float16)
        assert value.shape == reference[key].shape
        rms = float(reference[key].pow(2).mean().sqrt())
        assert float((value - reference[key]).pow(2).mean().sqrt()) <= 0.031 * rms + 1e-3 * (key not in scales), key
    per_row = spiky.abs().amax(dim=1, keepdim=True) / 127  # one scale per row: the small entries vanish
    spiky_rms = float(spiky.pow(2).mean().sqrt())
    assert float(((spiky / per_row).round() * per_row - spiky).pow(2).mean().sqrt()) > 0.04 * spiky_rms
    assert float((parsed["ema"]["extra.spiky"] - spiky).pow(2).mean().sqrt()) < 0.025 * spiky_rms
    with pytest.raises(ValueError, match="inference precision"):
        ckpt.inference_checkpoint(exported, "int4")
