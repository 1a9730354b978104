"""The per-knee latent cache: the same training inputs as encoding on the fly, read back from disk, keyed by
the encoders' weights."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine
from torch.utils.data import DataLoader

from xray2mri_bundle.data import KneeSliceDataset
from xray2mri_bundle.engines.handlers import ComputeScaleFactor, ScaleFactor
from xray2mri_bundle.engines.latent_cache import LatentKneeCache, encoder_digest
from xray2mri_bundle.engines.prepare_batch import LatentDiffusionPrepareBatch
from xray2mri_bundle.networks import build_autoencoder, build_classifier

SIZE, SLICES = 64, 6


def _knees(count: int = 3) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    return [
        {
            "mri": torch.rand(1, SIZE, SIZE, SLICES, generator=gen) * 2 - 1,
            "xray": torch.rand(1, SIZE, SIZE, generator=gen) * 2 - 1,
            "intensity": torch.softmax(torch.randn(16, 8, 8, generator=gen), dim=0),
            "kl": k % 5, "subject": f"900000{k}", "side": "LEFT",
            "mri_meta": {"filename_or_obj": f"/data/mri/{k}"}, "xray_meta": {"filename_or_obj": f"/data/xray/{k}"},
        }
        for k in range(count)
    ]


@pytest.fixture(scope="module")
def encoders() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    return build_autoencoder("tiny").eval(), build_classifier("tiny").eval()


def test_cached_knee_holds_the_encoder_outputs_and_drops_the_mri(encoders):
    autoencoder, classifier = encoders
    knees = _knees(2)
    cache = LatentKneeCache(knees, autoencoder, classifier, batch_size=4, progress=False)
    entry = cache[1]
    assert "mri" not in entry and entry["subject"] == "9000001" and entry["kl"] == 1
    assert entry["mri_latent_mu"].shape == entry["mri_latent_sigma"].shape == (SLICES, 4, 8, 8)
    with torch.no_grad():
        slices = knees[1]["mri"].permute(3, 0, 1, 2).expand(-1, 3, -1, -1)
        mu, sigma = autoencoder.encode(slices)
        xray_mu, _ = autoencoder.encode(knees[1]["xray"][None].expand(-1, 3, -1, -1))
        _, p_map = classifier.forward_maps(knees[1]["xray"][None])
    assert torch.allclose(entry["mri_latent_mu"], mu, atol=1e-5)
    assert torch.allclose(entry["mri_latent_sigma"], sigma, atol=1e-5)
    assert torch.allclose(entry["xray_latent"], xray_mu[0], atol=1e-5)
    assert torch.allclose(entry["p_map"], p_map[0], atol=1e-6)
    assert "p_map" not in LatentKneeCache(knees, autoencoder, None, progress=False)[0]


def test_cached_batches_give_the_same_training_inputs_as_encoding_on_the_fly(encoders):
    """Same seed -> the same posterior sample, noise, timesteps, masks and conditions either way."""
    autoencoder, classifier = encoders
    knees = _knees(3)
    cached = KneeSliceDataset(LatentKneeCache(knees, autoencoder, classifier, progress=False), slices=SLICES)
    plain = KneeSliceDataset(knees, slices=SLICES)
    batch_cached = next(iter(DataLoader(cached, batch_size=8, shuffle=False)))
    batch_plain = next(iter(DataLoader(plain, batch_size=8, shuffle=False)))
    assert "image" not in batch_cached and batch_cached["latent_mu"].shape == (8, 4, 8, 8)
    prepare = LatentDiffusionPrepareBatch(autoencoder, ScaleFactor(0.7), classifier, seed=5)
    z0_c, target_c, _, kwargs_c = prepare(batch_cached, "cpu")
    prepare.reset()
    z0_p, target_p, _, kwargs_p = prepare(batch_plain, "cpu")
    assert torch.equal(target_c, target_p)
    assert torch.allclose(z0_c, z0_p, atol=1e-5)
    for key in ("timesteps", "depth", "drop_context", "drop_latent", "i_map", "xray"):
        assert torch.equal(kwargs_c[key], kwargs_p[key]), key
    for key in ("xray_latent", "p_map"):
        assert torch.allclose(kwargs_c[key], kwargs_p[key], atol=1e-5), key


def test_a_cache_without_p_maps_is_refused_by_a_guided_prepare_batch(encoders):
    autoencoder, classifier = encoders
    dataset = KneeSliceDataset(LatentKneeCache(_knees(1), autoencoder, None, progress=False), slices=SLICES)
    batch = next(iter(DataLoader(dataset, batch_size=2)))
    with pytest.raises(KeyError, match="p_map"):
        LatentDiffusionPrepareBatch(autoencoder, ScaleFactor(1.0), classifier)(batch, "cpu")


def test_disk_cache_is_reused_for_the_same_weights_and_not_for_new_ones(encoders, tmp_path, monkeypatch):
    autoencoder, classifier = encoders
    knees = _knees(2)
    first = LatentKneeCache(knees, autoencoder, classifier, cache_dir=tmp_path, progress=False)
    files = sorted((tmp_path / first.digest).glob("*.pt"))
    assert len(files) == 2
    reread = torch.load(files[0], weights_only=True)
    assert set(reread) == {"mri_latent_mu", "mri_latent_sigma", "xray_latent", "p_map"}

    def refuse(self, knee):
        raise AssertionError("encoded again although the cache holds this knee")

    monkeypatch.setattr(LatentKneeCache, "encode_knee", refuse)
    second = LatentKneeCache(knees, autoencoder, classifier, cache_dir=tmp_path, progress=False)
    assert torch.equal(second[0]["mri_latent_mu"], first[0]["mri_latent_mu"])
    monkeypatch.undo()

    changed = build_autoencoder("tiny").eval()
    assert encoder_digest(changed, classifier) != first.digest
    third = LatentKneeCache(knees, changed, classifier, cache_dir=tmp_path, progress=False)
    assert third.digest != first.digest and len(list(tmp_path.iterdir())) == 2


def test_disk_cache_is_not_shared_by_two_preprocessings_of_the_same_files(encoders, tmp_path):
    """Same files, labels and shape, other pixels (e.g. the canonical-pose MRI frame): encoded anew, not reused."""
    autoencoder, classifier = encoders
    knees = _knees(1)
    first = LatentKneeCache(knees, autoencoder, classifier, cache_dir=tmp_path, progress=False)
    other = [dict(knees[0], mri=knees[0]["mri"].flip(1))]
    second = LatentKneeCache(other, autoencoder, classifier, cache_dir=tmp_path, progress=False)
    assert len(list((tmp_path / first.digest).glob("*.pt"))) == 2
    assert not torch.equal(second[0]["mri_latent_mu"], first[0]["mri_latent_mu"])


def test_scale_factor_from_cached_posteriors(encoders):
    autoencoder, _ = encoders
    dataset = KneeSliceDataset(LatentKneeCache(_knees(3), autoencoder, None, progress=False), slices=SLICES)
    loader = DataLoader(dataset, batch_size=6)
    scale = ScaleFactor()
    ComputeScaleFactor(scale, autoencoder, loader, num_batches=3)(Engine(lambda e, b: None))
    mus = torch.cat([b["latent_mu"] for b in loader])
    sigmas = torch.cat([b["latent_sigma"] for b in loader])
    # posterior samples: variance = variance of the means + mean posterior variance
    expected = 1 / (mus.var() + sigmas.pow(2).mean()).sqrt().item()
    assert scale.value == pytest.approx(expected, rel=0.05)
