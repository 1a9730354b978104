"""Profiles, shapes and state-dict round trips of every network (tiny on CPU, paper on the meta device)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from xray2mri_bundle.networks import (
    PROFILE_NAMES,
    ClipImageEncoder,
    KOAClassifier,
    XrayConditionedUNet,
    XrayEncoder,
    build_autoencoder,
    build_classifier,
    build_unet,
    build_xray_encoder,
    get_profile,
)

ROOT = Path(__file__).resolve().parents[1]


def _unet_inputs(batch: int, latent_shape: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(batch, *latent_shape, generator=g),
        "timesteps": torch.randint(0, 1000, (batch,), generator=g),
        "xray_latent": torch.randn(batch, *latent_shape, generator=g),
        "context": torch.randn(batch, 1, 768, generator=g),
        "depth": torch.rand(batch, generator=g),
        "p_map": torch.softmax(torch.randn(batch, 5, 8, 8, generator=g), dim=1),
        "i_map": torch.softmax(torch.randn(batch, 16, 8, 8, generator=g), dim=1),
    }


def test_profiles_are_json_and_complete():
    assert set(PROFILE_NAMES) == {"paper", "small", "tiny"}
    for name in PROFILE_NAMES:
        profile = get_profile(name)
        assert json.loads(json.dumps(profile)) == profile
        assert {"autoencoder", "unet", "classifier", "xray_encoder", "image_size", "latent_shape"} <= set(profile)
        factor = 2 ** (len(profile["autoencoder"]["channels"]) - 1)
        assert profile["latent_shape"] == [4, profile["image_size"] // factor, profile["image_size"] // factor]
    paper = get_profile("paper")
    assert paper["autoencoder"]["channels"] == [128, 256, 512, 512] and paper["autoencoder"]["num_res_blocks"] == 2
    assert paper["unet"]["channels"] == [320, 640, 1280, 1280]
    assert paper["unet"]["attention_levels"] == [True, True, True, False]
    heads = [c // h for c, h in zip(paper["unet"]["channels"], paper["unet"]["num_head_channels"], strict=True)]
    assert heads == [8] * 4


def test_get_profile_copies_and_rejects_unknown():
    profile = get_profile("tiny")
    profile["unet"]["channels"][0] = 999
    assert get_profile("tiny")["unet"]["channels"][0] == 32
    with pytest.raises(KeyError, match="small"):
        get_profile("huge")


def test_profiles_are_read_from_the_bundle_configs(tmp_path: Path) -> None:
    """The JSON profile files are the one definition: a changed copy of them changes what ``build_*`` builds;
    the condition flags (``@use_depth``, ...) and ``_target_`` are not sizes; no configs -> the missing file named."""
    configs = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", configs)
    tiny = json.loads((configs / "profiles" / "tiny.json").read_text())
    tiny["unet_def"]["channels"] = [32, 64]
    tiny["image_size"] = 32
    (configs / "profiles" / "tiny.json").write_text(json.dumps(tiny))
    profile = get_profile("tiny", configs)
    assert profile["unet"]["channels"] == [32, 64] and "use_depth" not in profile["unet"]
    assert "_target_" not in profile["unet"] and profile["latent_shape"] == [4, 4, 4]
    assert list(build_unet("tiny", configs).block_out_channels) == [32, 64]
    assert list(build_unet("tiny").block_out_channels) == [32, 32]  # the checkout's own files, unchanged
    with pytest.raises(FileNotFoundError, match=r"nowhere/common\.json is missing"):
        get_profile("small", tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_shapes_cpu(name):
    profile = get_profile(name)
    size = profile["image_size"]
    torch.manual_seed(0)
    autoencoder = build_autoencoder(name)
    reconstruction, z_mu, z_sigma = autoencoder(torch.randn(1, 3, size, size))
    assert reconstruction.shape == (1, 3, size, size)
    assert list(z_mu.shape[1:]) == profile["latent_shape"] == list(z_sigma.shape[1:])

    unet = build_unet(name).eval()
    assert isinstance(unet, XrayConditionedUNet) and unet.in_channels == 8
    with torch.no_grad():
        eps = unet(**_unet_inputs(2, profile["latent_shape"]))
    assert eps.shape == (2, *profile["latent_shape"])

    classifier = build_classifier(name).eval()
    xray = torch.randn(2, 1, size, size)
    with torch.no_grad():
        logits, p_map = classifier.forward_maps(xray)
        assert torch.allclose(logits, classifier(xray), atol=1e-5)
    assert logits.shape == (2, 5) and p_map.shape == (2, 5, 8, 8)
    assert torch.allclose(p_map.sum(dim=1), torch.ones(2, 8, 8), atol=1e-5)

    encoder = build_xray_encoder(name)
    assert encoder(xray).shape == (2, 1, 768)


def test_shapes_paper_on_meta_device():
    with torch.device("meta"):
        unet = build_unet("paper")
        autoencoder = build_autoencoder("paper")
        classifier = build_classifier("paper")
        inputs = _unet_inputs(2, [4, 32, 32])
        eps = unet(**inputs)
        reconstruction, z_mu, _ = autoencoder(torch.randn(1, 3, 256, 256))
        logits, p_map = classifier.forward_maps(torch.randn(2, 1, 256, 256))
        features = classifier.logit_maps(torch.randn(1, 1, 256, 256))
    assert eps.shape == (2, 4, 32, 32)
    assert reconstruction.shape == (1, 3, 256, 256) and z_mu.shape == (1, 4, 32, 32)
    assert logits.shape == (2, 5) and p_map.shape == (2, 5, 8, 8)
    assert features.shape[-2:] == (8, 8)  # DenseNet-121 layout: 256 px -> 8 x 8 map natively
    new_layers = ("depth_embed.", "guidance.", "context_proj.", "null_context")
    base = sum(p.numel() for n, p in unet.named_parameters() if not n.startswith(new_layers))
    # Stable Diffusion v1 UNet (859,520,964 parameters) plus 4 more input channels of conv_in (320 x 4 x 3 x 3)
    assert base == 859_520_964 + 320 * 4 * 9
    assert unet.conv_in.conv.in_channels == 8 and unet.out_channels == 4


def test_networks_are_monai_and_import_no_torchvision():
    import subprocess
    import sys

    from monai.networks.nets import DenseNet

    assert isinstance(KOAClassifier(block_config=(1, 1), init_features=8, growth_rate=4), DenseNet)
    code = "import sys, xray2mri_bundle.networks; sys.exit('torchvision' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def _round_trip(module: torch.nn.Module, fresh: torch.nn.Module, tmp_path, *args, **kwargs) -> None:
    path = tmp_path / "weights.pt"
    torch.save(module.state_dict(), path)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    module.eval(), fresh.eval()
    with torch.no_grad():
        expected, actual = module(*args, **kwargs), fresh(*args, **kwargs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    actual = actual if isinstance(actual, tuple) else (actual,)
    for e, a in zip(expected, actual, strict=True):
        assert torch.equal(e, a)


def test_state_dicts_round_trip(tmp_path):
    torch.manual_seed(0)
    unet = build_unet("tiny")
    with torch.no_grad():  # move the zero-initialised layers so every parameter matters
        for parameter in unet.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    torch.manual_seed(1)
    _round_trip(unet, build_unet("tiny"), tmp_path, **_unet_inputs(2, [4, 8, 8]))
    xray = torch.randn(2, 1, 64, 64)
    _round_trip(build_classifier("tiny"), build_classifier("tiny"), tmp_path, xray)
    _round_trip(build_xray_encoder("tiny"), build_xray_encoder("tiny"), tmp_path, xray)
    autoencoder, fresh = build_autoencoder("tiny"), build_autoencoder("tiny")
    torch.save(autoencoder.state_dict(), tmp_path / "ae.pt")
    fresh.load_state_dict(torch.load(tmp_path / "ae.pt", weights_only=True))
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(autoencoder.reconstruct(image), fresh.reconstruct(image))


class _FakeClipVision(torch.nn.Module):
    """Stands in for transformers' CLIPVisionModelWithProjection: returns an object with ``image_embeds``."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3, 768)

    def forward(self, pixel_values: torch.Tensor):
        assert pixel_values.shape[1:] == (3, 224, 224)
        return type("Output", (), {"image_embeds": self.proj(pixel_values.mean(dim=(2, 3)))})()


def test_clip_encoder_wraps_a_frozen_model():
    encoder = ClipImageEncoder(_FakeClipVision())
    encoder.train()
    assert not encoder.vision_model.training
    assert not any(p.requires_grad for p in encoder.parameters())
    assert encoder(torch.rand(2, 1, 64, 64) * 2 - 1).shape == (2, 1, 768)


def test_clip_encoder_missing_folder_gives_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        ClipImageEncoder.from_folder(tmp_path / "no_such_clip")
    with pytest.raises(ValueError, match="clip_folder"):
        build_xray_encoder("tiny", kind="clip")


def test_clip_encoder_without_transformers_says_what_to_install(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails as if not installed
    with pytest.raises(ImportError, match="pip install transformers"):
        ClipImageEncoder.from_folder(tmp_path)


def test_trainable_encoder_accepts_any_size():
    encoder = XrayEncoder(channels=(8, 16), embed_dim=768)
    assert encoder(torch.randn(3, 1, 50, 70)).shape == (3, 1, 768)


def test_builders_accept_a_custom_profile_dict():
    custom = get_profile("tiny")
    custom["unet"]["channels"] = [32, 64]
    unet = build_unet(custom, use_guidance=False)
    assert list(unet.block_out_channels) == [32, 64] and not hasattr(unet, "guidance")
    assert isinstance(build_classifier(custom), KOAClassifier)


def test_latent_shape_of_reads_the_autoencoder_not_the_profile():
    """The diffusion export records E1's real latent shape: the profile's for its own autoencoder, 2x finer for
    an autoencoder with one down-sampling level fewer (``autoencoder_def#channels`` overridden)."""
    from xray2mri_bundle.diffusion.latents import latent_shape_of
    from xray2mri_bundle.networks import build_autoencoder, get_profile

    tiny = get_profile("tiny")
    assert latent_shape_of(build_autoencoder("tiny"), tiny["image_size"]) == list(tiny["latent_shape"])
    kwargs = dict(tiny["autoencoder"])
    kwargs["channels"] = list(kwargs["channels"])[:-1]
    kwargs["attention_levels"] = list(kwargs["attention_levels"])[:-1]
    from monai.networks.nets import AutoencoderKL

    finer = latent_shape_of(AutoencoderKL(**kwargs), tiny["image_size"])
    assert finer == [tiny["latent_shape"][0], 2 * tiny["latent_shape"][1], 2 * tiny["latent_shape"][2]]
