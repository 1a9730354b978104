"""Fast tests of the training engines (xray2mri_bundle.engines): losses, PrepareBatch, handlers, stage logic,
datalist errors and config wiring. The end-to-end runs are in tests/test_training_e2e.py (slow)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser
from monai.data import list_data_collate
from monai.engines import SupervisedTrainer
from monai.handlers import CheckpointSaver
from monai.networks.schedulers import DDPMScheduler

from xray2mri_bundle.checkpoint import FORMAT_VERSION, atomic_save, make_checkpoint, read_checkpoint
from xray2mri_bundle.engines.checkpoints import interval_checkpoints
from xray2mri_bundle.engines.datalist import DatasetNotFoundError, load_datalist
from xray2mri_bundle.engines.handlers import (
    ComputeScaleFactor,
    ExportFinalCheckpoint,
    ResumeFromLatest,
    ScaleFactor,
    StopOnDivergence,
    TrainingDivergedError,
)
from xray2mri_bundle.engines.losses import AutoencoderKLLoss, kl_divergence
from xray2mri_bundle.engines.prepare_batch import KeyedPrepareBatch, LatentDiffusionPrepareBatch, cfg_drop_masks
from xray2mri_bundle.engines.schedules import LambdaLinear
from xray2mri_bundle.engines.stages import as_bool, decide, final_checkpoint, prepare_stage

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


# ---------------------------------------------------------------------------------------------- losses
def test_kl_divergence_zero_for_standard_normal_and_positive_otherwise():
    mu, sigma = torch.zeros(2, 4, 3, 3), torch.ones(2, 4, 3, 3)
    assert torch.allclose(kl_divergence(mu, sigma), torch.zeros(2))
    assert (kl_divergence(mu + 0.5, sigma * 2) > 0).all()


def test_autoencoder_loss_is_l2_plus_weighted_kl():
    target = torch.zeros(2, 3, 4, 4)
    recon = torch.full_like(target, 0.5)
    mu, sigma = torch.ones(2, 4, 2, 2), torch.ones(2, 4, 2, 2)
    loss = AutoencoderKLLoss(kl_weight=0.1)((recon, mu, sigma), target)
    kl = 0.5 * 16  # per sample: 0.5 * sum(mu^2) over 16 latent values
    assert loss.item() == pytest.approx(0.25 + 0.1 * kl)
    assert loss_terms_are_tensors(AutoencoderKLLoss())
    with pytest.raises(ValueError):
        AutoencoderKLLoss(kl_weight=-1)


def loss_terms_are_tensors(loss: AutoencoderKLLoss) -> bool:
    loss((torch.zeros(1, 3, 2, 2), torch.zeros(1, 4, 1, 1), torch.ones(1, 4, 1, 1)), torch.zeros(1, 3, 2, 2))
    return set(loss.last_terms) == {"rec_loss", "kl_loss"}


# ---------------------------------------------------------------------------------------------- prepare batch
def test_cfg_drop_masks_follow_zero123_fractions():
    generator = torch.Generator().manual_seed(0)
    drop_context, drop_latent = cfg_drop_masks(200_000, p=0.05, generator=generator)
    both = (drop_context & drop_latent).float().mean().item()
    assert drop_context.float().mean().item() == pytest.approx(0.10, abs=0.005)
    assert drop_latent.float().mean().item() == pytest.approx(0.10, abs=0.005)
    assert both == pytest.approx(0.05, abs=0.005)
    none_dropped = cfg_drop_masks(10, p=0.0)
    assert not none_dropped[0].any() and not none_dropped[1].any()


def test_keyed_prepare_batch_for_autoencoder_and_classifier():
    batch = {"image": torch.rand(2, 3, 8, 8), "xray": torch.rand(2, 1, 8, 8), "kl": torch.tensor([[1], [3]])}
    image, label = KeyedPrepareBatch("image")(batch, "cpu")
    assert label is image
    xray, kl = KeyedPrepareBatch("xray", "kl", torch.long)(batch, "cpu")
    assert xray.shape == (2, 1, 8, 8) and kl.tolist() == [1, 3] and kl.dtype == torch.long


class _TinyAE(torch.nn.Module):
    """Stands in for AutoencoderKL: 3-channel 16 px image -> 4-channel 2 px latent (mean, sigma)."""

    def encode(self, x):
        pooled = torch.nn.functional.avg_pool2d(x, 8)
        mu = torch.cat([pooled, pooled[:, :1]], dim=1)
        return mu, torch.full_like(mu, 0.1)

    def encode_stage_2_inputs(self, x):
        mu, sigma = self.encode(x)
        return mu + sigma * torch.randn_like(mu)


class _TinyClassifier(torch.nn.Module):
    def forward_maps(self, x):
        b = x.shape[0]
        return torch.zeros(b, 5), torch.full((b, 5, 8, 8), 0.2)


def _slice_batch(b: int = 4) -> dict:
    return {
        "image": torch.rand(b, 3, 16, 16) * 2 - 1, "xray": torch.rand(b, 1, 16, 16) * 2 - 1,
        "depth": torch.linspace(0, 1, b), "intensity": torch.rand(b, 16, 8, 8),
    }


def test_latent_diffusion_prepare_batch_builds_latents_noise_and_conditions():
    prepare = LatentDiffusionPrepareBatch(_TinyAE(), ScaleFactor(0.5), _TinyClassifier(), seed=3)
    batch = _slice_batch()
    z0, target, args, kwargs = prepare(batch, "cpu")
    assert z0.shape == target.shape == (4, 4, 2, 2) and args == ()
    assert set(kwargs) == {"noise", "timesteps", "xray", "xray_latent", "context", "depth", "p_map", "i_map",
                           "drop_context", "drop_latent"}
    assert kwargs["context"] is None  # E2 runs on the crop inside the denoiser, where its gradients reach it
    assert kwargs["noise"] is target  # MONAI's DiffusionPrepareBatch layout: the noise is target and keyword
    assert kwargs["timesteps"].dtype == torch.long and kwargs["timesteps"].max() < 1000
    assert kwargs["p_map"].shape == (4, 5, 8, 8) and kwargs["i_map"].shape == (4, 16, 8, 8)
    # the X-ray latent is the unscaled posterior mean of the grey crop repeated to 3 channels
    expected, _ = _TinyAE().encode(batch["xray"].expand(-1, 3, -1, -1))
    assert torch.allclose(kwargs["xray_latent"], expected)
    # seeded (validation) batches are reproducible after reset()
    prepare.reset()
    first = prepare(batch, "cpu")
    prepare.reset()
    second = prepare(batch, "cpu")
    assert torch.equal(first[0], second[0]) and torch.equal(first[3]["timesteps"], second[3]["timesteps"])


class _InputEcho(torch.nn.Module):
    """Returns the noisy latents it is given and records its keyword arguments."""

    def forward(self, x, **kwargs):
        self.kwargs = kwargs
        return x


def test_the_inferer_noises_the_latents_by_the_ddpm_forward_process_and_passes_the_conditions():
    from xray2mri_bundle.diffusion import ConditionalDiffusionInferer

    scheduler = DDPMScheduler(1000)
    prepare = LatentDiffusionPrepareBatch(_TinyAE(), ScaleFactor(1.0), None, seed=0, p_uncond=0.0)
    batch = _slice_batch()
    z0, noise, args, kwargs = prepare(batch, "cpu")
    mu, _ = _TinyAE().encode(batch["image"])
    assert torch.allclose(z0, mu, atol=0.6)  # a posterior sample around the mean (sigma 0.1)
    assert kwargs["p_map"] is None and not kwargs["drop_context"].any()
    echo = _InputEcho()
    noisy = ConditionalDiffusionInferer(scheduler)(z0, echo, *args, **kwargs)
    t = kwargs["timesteps"]
    alpha = scheduler.alphas_cumprod[t].reshape(-1, 1, 1, 1)  # z_t = sqrt(a) z0 + sqrt(1 - a) eps, by hand
    assert torch.allclose(noisy, alpha.sqrt() * z0 + (1 - alpha).sqrt() * noise, atol=1e-6)
    assert not torch.allclose(noisy, z0)
    assert set(echo.kwargs) == set(kwargs) - {"noise"} and echo.kwargs["timesteps"] is t
    with pytest.raises(NotImplementedError, match="DiffusionSampler"):
        ConditionalDiffusionInferer(scheduler).sample(noise, echo)


def test_v_prediction_targets_the_velocity_and_mean_latents_are_the_posterior_mean():
    scheduler = DDPMScheduler(1000, prediction_type="v_prediction")
    batch = _slice_batch()
    prepare = LatentDiffusionPrepareBatch(_TinyAE(), ScaleFactor(2.0), None, seed=1, p_uncond=0.0,
                                          prediction_type="v_prediction", scheduler=scheduler, latent_target="mean")
    z0, target, _, kwargs = prepare(batch, "cpu")
    mu, _ = _TinyAE().encode(batch["image"])
    assert torch.allclose(z0, 2.0 * mu)  # the posterior mean, scaled: no draw
    alpha = scheduler.alphas_cumprod[kwargs["timesteps"]].reshape(-1, 1, 1, 1)
    noise = kwargs["noise"]  # v = sqrt(a) eps - sqrt(1 - a) z0, by hand
    assert torch.allclose(target, alpha.sqrt() * noise - (1 - alpha).sqrt() * z0, atol=1e-6)
    # the same seed draws the same noise and timesteps whatever the target
    eps_prepare = LatentDiffusionPrepareBatch(_TinyAE(), ScaleFactor(2.0), None, seed=1, p_uncond=0.0,
                                              latent_target="mean")
    _, eps_target, _, eps_kwargs = eps_prepare(batch, "cpu")
    assert torch.equal(eps_target, noise) and torch.equal(eps_kwargs["timesteps"], kwargs["timesteps"])
    with pytest.raises(ValueError, match="scheduler"):
        LatentDiffusionPrepareBatch(_TinyAE(), 1.0, prediction_type="v_prediction")
    with pytest.raises(ValueError, match="prediction_type"):
        LatentDiffusionPrepareBatch(_TinyAE(), 1.0, prediction_type="sample")
    with pytest.raises(ValueError, match="latent_target"):
        LatentDiffusionPrepareBatch(_TinyAE(), 1.0, latent_target="median")


def test_min_snr_loss_weights_each_sample_by_its_timestep_and_is_plain_mse_without_gamma():
    """Min-SNR-5 by hand: SNR = a / (1 - a); v-prediction weight min(SNR, 5) / (SNR + 1), epsilon min(SNR, 5) / SNR;
    the timesteps come from the inferer call of the same iteration."""
    from xray2mri_bundle.diffusion import ConditionalDiffusionInferer
    from xray2mri_bundle.engines.losses import MinSNRWeightedMSELoss, min_snr_weights

    scheduler = DDPMScheduler(1000, schedule="scaled_linear_beta", beta_start=0.00085, beta_end=0.012)
    inferer = ConditionalDiffusionInferer(scheduler)
    t = torch.tensor([0, 500, 999])
    a = scheduler.alphas_cumprod[t].double()
    snr = a / (1 - a)
    assert snr[0] > 5 > snr[2]  # the clip acts on the low-noise end only
    by_hand_v = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / (snr + 1)
    by_hand_eps = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / snr
    torch.testing.assert_close(min_snr_weights(scheduler.alphas_cumprod, t, 5, "v_prediction"), by_hand_v.float())
    torch.testing.assert_close(min_snr_weights(scheduler.alphas_cumprod, t, 5, "epsilon"), by_hand_eps.float())
    assert min_snr_weights(scheduler.alphas_cumprod, t, 5, "epsilon")[2] == 1.0  # noisy end: unweighted

    z0, noise = torch.zeros(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    pred = inferer(z0, lambda x, timesteps: x, noise, t)  # identity "network": pred = z_t
    target = torch.zeros_like(pred)
    per_sample = pred.pow(2).flatten(1).mean(1)
    weighted = MinSNRWeightedMSELoss(scheduler, inferer, gamma=5, prediction_type="v_prediction")(pred, target)
    torch.testing.assert_close(weighted, (per_sample * by_hand_v.float()).mean())
    plain = MinSNRWeightedMSELoss(scheduler, inferer, gamma=None)(pred, target)
    assert torch.equal(plain, torch.nn.MSELoss()(pred, target))
    with pytest.raises(RuntimeError, match="timesteps"):
        MinSNRWeightedMSELoss(scheduler, inferer, gamma=5)(pred[:2], target[:2])
    with pytest.raises(ValueError, match="min_snr_gamma"):
        MinSNRWeightedMSELoss(scheduler, inferer, gamma=0)


def test_a_v_prediction_sampler_walks_the_same_path_as_an_epsilon_sampler_of_the_same_model():
    """An exact velocity model of a fixed clean latent, sampled as v-prediction, gives what the matching exact
    noise model gives as epsilon-prediction (DDIM and DPM-Solver++), and ends near that latent: the prediction
    type stored with a checkpoint reaches the solvers."""
    from xray2mri_bundle.diffusion import DiffusionSampler, SamplingSettings

    scheduler = DDPMScheduler(1000, schedule="scaled_linear_beta", beta_start=0.00085, beta_end=0.012)
    clean = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4)

    def noise_of(x, timesteps):
        alpha = scheduler.alphas_cumprod[timesteps].reshape(-1, 1, 1, 1)
        return alpha, (x - alpha.sqrt() * clean) / (1 - alpha).sqrt()

    def velocity(x, timesteps):
        alpha, eps = noise_of(x, timesteps)
        return alpha.sqrt() * eps - (1 - alpha).sqrt() * clean

    start = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    for name in ("ddim", "dpmpp_2m"):
        settings = SamplingSettings(name, 10)
        by_v = DiffusionSampler.from_settings(settings, 1000, None, "v_prediction")(velocity, start)
        by_eps = DiffusionSampler.from_settings(settings, 1000, None, "epsilon")(
            lambda x, timesteps: noise_of(x, timesteps)[1], start)
        assert torch.allclose(by_v, by_eps, atol=1e-4), name
        assert torch.allclose(by_v, clean, atol=0.1), name  # DDIM stops at t = 1: sqrt(1 - a_1) eps is left
    with pytest.raises(ValueError, match="prediction_type"):
        DiffusionSampler.from_settings(SamplingSettings("ddim", 10), 1000, None, "x0")


# ---------------------------------------------------------------------------------------------- schedules, EMA
def test_lambda_linear_warm_up_then_constant():
    schedule = LambdaLinear(warm_up_steps=100, f_start=1e-6)
    assert schedule(0) == pytest.approx(1e-6)
    assert schedule(50) == pytest.approx(0.5, rel=1e-3)
    assert schedule(100) == schedule(10_000) == pytest.approx(1.0)
    accumulated = LambdaLinear(warm_up_steps=10, accumulation_steps=4)
    assert accumulated(19) == accumulated(16) == pytest.approx(LambdaLinear(warm_up_steps=10)(4))


def test_lambda_linear_holds_until_the_decay_then_falls_linearly_to_f_min():
    schedule = LambdaLinear(warm_up_steps=10, f_min=0.0, decay_start=100, cycle_length=40)
    assert schedule(10) == schedule(100) == pytest.approx(1.0)
    assert schedule(110) == pytest.approx(0.75)
    assert schedule(140) == schedule(1000) == pytest.approx(0.0)
    accumulated = LambdaLinear(warm_up_steps=10, f_min=0.0, decay_start=100, cycle_length=40, accumulation_steps=2)
    assert accumulated(221) == pytest.approx(schedule(110))


def _diffusion_schedule(decay_steps: int, accumulation: int = 1) -> ConfigParser:
    """train_diffusion.json's optimiser, scheduler and decay placement over a 1-parameter model."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "common.json"), str(CONFIGS / "train_diffusion.json")])
    parser.update({"network_raw": "$torch.nn.Linear(1, 1)", "diffusion_batch_size": 4,
                   "diffusion_lr_decay_steps": decay_steps, "diffusion_accumulation_steps": accumulation})
    return parser


def _started(epoch_length: int, max_epochs: int) -> SimpleNamespace:
    """An engine as a handler sees it at STARTED (a resumed one carries its checkpoint's epoch length)."""
    return SimpleNamespace(state=SimpleNamespace(epoch_length=epoch_length, max_epochs=max_epochs))


def test_the_config_decays_the_last_steps_of_the_run_the_trainer_has(caplog):
    """``diffusion_lr_decay_steps`` = the run's last optimiser steps fall linearly to 0, the run's length taken
    from the trainer when it starts; 0 leaves LDM's constant schedule untouched."""
    parser = _diffusion_schedule(decay_steps=100)
    scheduler = parser.get_parsed_content("lr_scheduler")
    assert any("lr_decay.attach(@train" in expr for expr in parser["run"])
    parser.get_parsed_content("train#lr_decay")(_started(10, 30))  # 300 optimiser steps: decay from 200
    factor = scheduler.lr_lambdas[0]
    assert factor(199) == pytest.approx(1.0) and factor(250) == pytest.approx(0.5) and factor(299) > 0.0
    assert factor(300) == 0.0
    parser.get_parsed_content("train#lr_decay")(_started(20, 30))  # a resumed run of epoch length 20
    assert factor(500) == pytest.approx(1.0) and factor(550) == pytest.approx(0.5)

    constant = _diffusion_schedule(decay_steps=0)
    constant.get_parsed_content("train#lr_decay")(_started(10, 30))
    assert all(constant.get_parsed_content("lr_scheduler").lr_lambdas[0](s) == 1.0 for s in (100, 299, 300, 10**6))

    accumulated = _diffusion_schedule(decay_steps=20, accumulation=4)  # 310 iterations = 78 optimiser steps
    accumulated.update({"diffusion_warmup_steps": 10})
    accumulated.get_parsed_content("train#lr_decay")(_started(10, 31))
    last = accumulated.get_parsed_content("lr_scheduler").lr_lambdas[0](309)  # the last iteration's factor
    assert last == pytest.approx(0.05)

    too_long = _diffusion_schedule(decay_steps=500)  # 300 steps, 100 of them warm-up: 200 left to decay
    with caplog.at_level("WARNING"):
        too_long.get_parsed_content("train#lr_decay")(_started(10, 30))
    assert "shortened to 200" in caplog.text
    assert too_long.get_parsed_content("lr_scheduler").lr_lambdas[0](200) == pytest.approx(0.5)


def test_a_resumed_run_follows_the_config_schedule_not_the_checkpoints():
    """The checkpoint's scheduler state restores the step count only: a run resumed with a decay added (or a
    longer budget, a lower learning rate) follows its config from the step it stood at, at once."""
    constant = _diffusion_schedule(decay_steps=0)
    saved = constant.get_parsed_content("lr_scheduler")
    for _ in range(250):
        saved.optimizer.step()
        saved.step()
    state = constant.get_parsed_content("train#checkpoint_dict#lr_scheduler").state_dict()

    resumed = _diffusion_schedule(decay_steps=100)
    resumed.update({"diffusion_base_lr": 5e-7})
    optimiser, lr = resumed.get_parsed_content("optimizer"), resumed.get_parsed_content("lr")
    assert lr == pytest.approx(0.5 * constant.get_parsed_content("lr"))
    resumed.get_parsed_content("train#checkpoint_dict#lr_scheduler").load_state_dict(state)
    assert optimiser.param_groups[0]["lr"] == pytest.approx(lr)  # the new base rate, constant so far
    resumed.get_parsed_content("train#lr_decay")(_started(10, 30))  # then STARTED places the decay
    assert optimiser.param_groups[0]["lr"] == pytest.approx(0.5 * lr)
    optimiser.step()
    resumed.get_parsed_content("lr_scheduler").step()
    assert optimiser.param_groups[0]["lr"] == pytest.approx(0.49 * lr)


def _ema_run(model: torch.nn.Module, ema, iterations: int, accumulation: int = 1, start: int = 0) -> None:
    """``iterations`` fake iterations (weights += 1 each), ``ema`` attached as train_diffusion.json does."""
    engine = Engine(lambda e, b: model.weight.data.add_(1.0))
    ema.attach(engine, event=Events.ITERATION_COMPLETED(every=accumulation))
    engine.add_event_handler(Events.STARTED, lambda e: setattr(e.state, "iteration", start))
    engine.run(range(start + iterations), max_epochs=1)


def test_ema_is_ignites_handler_with_the_paper_decay_per_optimiser_step():
    """train_diffusion.json builds ignite's EMAHandler with momentum = 1 - ema_decay (ignite's convention) and
    attaches it every ``diffusion_accumulation_steps`` iterations: ema = 0.99 ema + 0.01 w per optimiser step."""
    from ignite.handlers import EMAHandler

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "common.json"), str(CONFIGS / "train_diffusion.json")])
    assert parser["ema"]["_target_"] == "ignite.handlers.EMAHandler"
    parser["network_raw"] = "$torch.nn.Linear(2, 2)"
    ema = parser.get_parsed_content("ema")
    assert isinstance(ema, EMAHandler) and ema.momentum == pytest.approx(1.0 - parser["ema_decay"])
    assert not any(p.requires_grad for p in ema.ema_model.parameters())
    assert any("@ema.attach(" in expr and "every=@diffusion_accumulation_steps" in expr for expr in parser["run"])

    model = ema.model
    start = ema.ema_model.weight.detach().clone()
    _ema_run(model, ema, iterations=4, accumulation=2)  # optimiser steps at iterations 2 and 4
    expected = start.clone()
    for weights in (start + 2, start + 4):
        expected = 0.99 * expected + 0.01 * weights
    assert torch.allclose(ema.ema_model.weight, expected, atol=1e-6)


def test_resumed_ema_equals_the_uninterrupted_one(tmp_path: Path):
    """The EMA copy saved in a checkpoint dict and loaded back continues exactly as without the interruption."""
    from ignite.handlers import EMAHandler

    torch.manual_seed(0)
    base = torch.nn.Linear(3, 3)
    whole = EMAHandler(copy_module(base), momentum=0.01)
    _ema_run(whole.model, whole, iterations=6)

    first = EMAHandler(copy_module(base), momentum=0.01)
    _ema_run(first.model, first, iterations=3)
    path = tmp_path / "ckpt.pt"
    torch.save({"network": first.model.state_dict(), "ema": first.ema_model.state_dict()}, path)
    saved = torch.load(path)
    resumed_model = copy_module(base)
    resumed_model.load_state_dict(saved["network"])
    second = EMAHandler(resumed_model, momentum=0.01)
    second.ema_model.load_state_dict(saved["ema"])
    _ema_run(second.model, second, iterations=3, start=3)
    assert torch.equal(second.ema_model.weight, whole.ema_model.weight)
    assert torch.equal(second.model.weight, whole.model.weight)


def copy_module(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module)


# ---------------------------------------------------------------------------------------------- scale factor
def test_scale_factor_is_one_over_latent_std_unless_fixed_or_restored():
    loader = [{"image": torch.randn(8, 3, 16, 16) * 4} for _ in range(3)]
    engine = Engine(lambda e, b: None)
    scale = ScaleFactor()
    ComputeScaleFactor(scale, _TinyAE(), loader, num_batches=2)(engine)
    latents = torch.cat([_TinyAE().encode(b["image"])[0] for b in loader[:2]])
    assert scale.value == pytest.approx(1 / latents.std().item(), rel=0.1)
    fixed = ScaleFactor()
    ComputeScaleFactor(fixed, _TinyAE(), loader, override=0.2)(engine)
    assert fixed.value == 0.2
    restored = ScaleFactor()
    restored.load_state_dict({"value": 0.7})
    ComputeScaleFactor(restored, _TinyAE(), loader)(engine)
    assert restored.value == 0.7 and ScaleFactor().state_dict() == {}


# ---------------------------------------------------------------------------------------------- divergence, resume
def _toy_trainer(nan_at: int | None, max_epochs: int = 4, epoch_length: int = 3) -> SupervisedTrainer:
    network = torch.nn.Linear(2, 1)
    data = [{"image": torch.rand(2, 2), "label": torch.rand(2, 1)} for _ in range(epoch_length)]

    def loss_fn(pred, target):
        loss = torch.nn.functional.mse_loss(pred, target)
        if nan_at is not None and trainer.state.iteration >= nan_at:
            return loss * float("nan")
        return loss

    trainer = SupervisedTrainer(
        device="cpu", max_epochs=max_epochs, train_data_loader=data, network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.1), loss_function=loss_fn,
        prepare_batch=KeyedPrepareBatch("image", "label"),
    )
    return trainer


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = _toy_trainer(nan_at=5)
    save = {"trainer": trainer, "network": trainer.network, "optimizer": trainer.optimizer}
    StopOnDivergence(checkpoint_dir=tmp_path).attach(trainer)
    CheckpointSaver(str(tmp_path), save, save_interval=2, epoch_level=False, n_saved=2).attach(trainer)
    with pytest.raises(TrainingDivergedError, match=r"iteration 5: the loss is nan.*checkpoint_iteration=4\.pt"):
        trainer.run()
    assert [i for i, _ in interval_checkpoints(tmp_path)] == [4, 2]
    state = torch.load(tmp_path / "checkpoint_iteration=4.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["network"].values())


def test_exploding_loss_is_detected_after_the_window():
    stop = StopOnDivergence(explode_factor=10.0, window=3)
    engine = Engine(lambda e, b: None)
    for loss in (1.0, 1.1, 0.9, 2.0):
        engine.state.output = {"loss": torch.tensor(loss)}
        stop(engine)
    engine.state.output = [{"loss": torch.tensor(50.0)}]
    with pytest.raises(TrainingDivergedError, match="exploded"):
        stop(engine)


def test_resume_from_latest_loads_the_newest_readable_checkpoint(tmp_path):
    first = _toy_trainer(nan_at=None, max_epochs=2)
    save = {"trainer": first, "network": first.network, "optimizer": first.optimizer}
    CheckpointSaver(str(tmp_path), save, save_interval=2, epoch_level=False, n_saved=None).attach(first)
    first.run()  # 6 iterations: checkpoints at 2, 4, 6
    (tmp_path / "checkpoint_iteration=8.pt").write_bytes(b"truncated by a kill")
    second = _toy_trainer(nan_at=None, max_epochs=4)
    resume = ResumeFromLatest(tmp_path, {"trainer": second, "network": second.network,
                                         "optimizer": second.optimizer})
    resume.attach(second)
    seen = []
    second.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.iteration))
    second.run()
    assert resume.resumed_iteration == 6 and seen == list(range(7, 13))
    assert not (tmp_path / "checkpoint_iteration=2.pt").exists()  # older files are cleaned up


def test_a_resumed_run_keeps_as_many_interval_checkpoints_as_a_fresh_one(tmp_path):
    first = _toy_trainer(nan_at=None, max_epochs=2)
    save = {"trainer": first, "network": first.network, "optimizer": first.optimizer}
    CheckpointSaver(str(tmp_path), save, save_interval=2, epoch_level=False, n_saved=2).attach(first)
    first.run()  # checkpoints at 4 and 6 remain
    second = _toy_trainer(nan_at=None, max_epochs=4)
    load = {"trainer": second, "network": second.network, "optimizer": second.optimizer}
    ResumeFromLatest(tmp_path, load, keep=2).attach(second)
    CheckpointSaver(str(tmp_path), load, save_interval=2, epoch_level=False, n_saved=2).attach(second)
    second.run()  # resumes at 6, saves 8, 10, 12 (the saver keeps its newest two)
    assert [it for it, _ in interval_checkpoints(tmp_path)] == [12, 10]  # the resumed file 6 is gone too


def small_net(seed: int = 0) -> torch.nn.Module:
    """A few-parameter network that records its constructor arguments (what the export writer needs)."""
    from xray2mri_bundle.networks import XrayEncoder

    torch.manual_seed(seed)
    return XrayEncoder(channels=[8], embed_dim=8)


def test_export_final_checkpoint_layout(tmp_path):
    model, ema, encoder = small_net(0), small_net(1), small_net(2)
    engine = Engine(lambda e, b: None)
    engine.state.iteration, engine.state.epoch = 12, 3
    path = tmp_path / "models" / "diffusion.pt"
    ExportFinalCheckpoint(path, "diffusion", {"unet": model, "xray_encoder": encoder, "absent": None},
                          {"unet": ema}, ScaleFactor(0.25), "tiny", {"noise": {"T": 1000}})(engine)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["format_version"] == FORMAT_VERSION and set(ckpt["networks"]) == {"unet", "xray_encoder"}
    assert ckpt["scale_factor"] == 0.25 and ckpt["profile"] == "tiny" and ckpt["iteration"] == 12
    assert ckpt["settings"] == {"noise": {"T": 1000}} and ckpt["networks"]["unet"]["config"] == model.config
    assert torch.equal(ckpt["networks"]["unet"]["ema"]["head.weight"], ema.head.weight)
    assert ckpt["networks"]["xray_encoder"]["ema"] is None
    assert make_checkpoint("autoencoder", {"autoencoder": model})["networks"]["autoencoder"]["ema"] is None
    with pytest.raises(TypeError, match="register_to_config"):
        make_checkpoint("autoencoder", {"autoencoder": torch.nn.Linear(2, 2)})
    assert read_checkpoint(path)["networks"]["unet"]["config"] == model.config


def test_atomic_save_leaves_no_temporary_file(tmp_path):
    atomic_save({"a": torch.ones(1)}, tmp_path / "x.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]
    mask = os.umask(0o022)
    try:
        atomic_save({"a": torch.ones(1)}, tmp_path / "y.pt")
    finally:
        os.umask(mask)
    assert (tmp_path / "y.pt").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


# ---------------------------------------------------------------------------------------------- stages
def test_stage_decisions(tmp_path):
    models, ckpts = tmp_path / "models", tmp_path / "runs"
    models.mkdir()
    assert decide("autoencoder", models, ckpts).action == "train"
    ckpts.mkdir()
    (ckpts / "checkpoint_iteration=4.pt").write_bytes(b"x")
    assert decide("autoencoder", models, ckpts).action == "resume"
    for stage in ("autoencoder", "classifier", "diffusion"):
        atomic_save(make_checkpoint(stage, {stage: small_net()}), final_checkpoint(models, stage))
    assert decide("diffusion", models, ckpts).action == "skip"
    assert decide("diffusion", models, ckpts, force=True).action == "retrain"
    later = time.time() + 10
    os.utime(final_checkpoint(models, "autoencoder"), (later, later))
    decision = decide("diffusion", models, ckpts)
    assert decision.action == "retrain" and "autoencoder" in decision.reason
    assert decide("classifier", models, ckpts).action == "skip"


def test_weights_of_another_mri_frame_are_retrained(tmp_path):
    """A pose-frame run (configs/pose_frame.json) over joint-centred weights retrains the MRI stages, not the
    classifier (X-ray only); weights that recorded the run's frame are kept."""
    models, ckpts = tmp_path / "models", tmp_path / "runs"
    models.mkdir()
    for stage in ("autoencoder", "classifier", "diffusion"):  # no mri_frame recorded: the joint-centred frame
        atomic_save(make_checkpoint(stage, {stage: small_net()}), final_checkpoint(models, stage))
    assert decide("autoencoder", models, ckpts, mri_frame="joint_centred").action == "skip"
    decision = decide("autoencoder", models, ckpts, mri_frame="canonical_pose")
    assert decision.action == "retrain" and "joint_centred MRI frame" in decision.reason
    assert decide("classifier", models, ckpts, mri_frame="canonical_pose").action == "skip"
    atomic_save(make_checkpoint("diffusion", {"diffusion": small_net()}, settings={"mri_frame": "canonical_pose"}),
                final_checkpoint(models, "diffusion"))
    assert decide("diffusion", models, ckpts, mri_frame="canonical_pose").action == "skip"
    assert decide("diffusion", models, ckpts, mri_frame="joint_centred").action == "retrain"


def test_a_hand_set_frame_is_refused_before_a_finished_stage_is_cleared(tmp_path):
    """``--mri_frame canonical_pose`` without configs/pose_frame.json over joint-centred weights would decide
    "retrain" (another frame) and clear the finished stage: the pipeline refuses it first, the weights stay."""
    from xray2mri_bundle.engines.stages import run_training

    models = tmp_path / "models"
    models.mkdir()
    final = final_checkpoint(models, "autoencoder")
    atomic_save(make_checkpoint("autoencoder", {"autoencoder": small_net()}), final)
    before = final.read_bytes()
    config = {"model_dir": str(models), "output_dir": str(tmp_path / "out"), "mri_frame": "canonical_pose"}
    with pytest.raises(ValueError, match="has no pose alignment"):
        run_training(["autoencoder"], config=config, config_dir=REPO / "configs")
    assert final.read_bytes() == before and not (tmp_path / "out").exists()


def test_a_corrupt_final_checkpoint_is_not_a_finished_stage(tmp_path, caplog):
    models, ckpts = tmp_path / "models", tmp_path / "runs"
    ckpts.mkdir(parents=True)
    models.mkdir()
    final = final_checkpoint(models, "autoencoder")
    atomic_save(make_checkpoint("autoencoder", {"autoencoder": small_net()}), final)
    final.write_bytes(final.read_bytes()[:100])  # truncated, as by a full disk or a copy cut short
    with caplog.at_level("WARNING"):
        decision = decide("autoencoder", models, ckpts)
    assert decision.action == "train" and "could not be loaded" in decision.reason
    assert str(final) in caplog.text and not final.exists()
    assert (models / "autoencoder.pt.corrupt").stat().st_size == 100  # kept for inspection, not deleted
    (ckpts / "checkpoint_iteration=7.pt").write_bytes(b"x")
    (ckpts / "checkpoint_iteration=9.pt").write_bytes(b"")  # killed while saving: 0 bytes
    final.write_bytes(b"")  # empty final file, with an interval checkpoint to resume from
    decision = decide("autoencoder", models, ckpts)
    assert decision.action == "resume" and "checkpoint_iteration=7.pt" in decision.reason
    assert "checkpoint_iteration=9.pt empty, not used" in decision.reason


def test_prepare_stage_force_clears_checkpoints(tmp_path):
    ckpts, final = tmp_path / "stage", tmp_path / "models" / "autoencoder.pt"
    ckpts.mkdir()
    final.parent.mkdir()
    for name in ("checkpoint_iteration=2.pt", "best.pt"):
        (ckpts / name).write_bytes(b"x")
    final.write_bytes(b"x")
    prepare_stage(ckpts, final, force="false")
    assert final.exists() and (ckpts / "best.pt").exists()
    prepare_stage(ckpts, final, force="true")
    assert not final.exists() and list(ckpts.iterdir()) == []


def test_as_bool_accepts_command_line_strings():
    assert as_bool("true") and as_bool("True") and as_bool(True) and as_bool("1")
    assert not as_bool("false") and not as_bool(False) and not as_bool("0") and not as_bool(None)


# ---------------------------------------------------------------------------------------------- datalist
def test_missing_or_empty_dataset_explains_how_to_get_data(tmp_path):
    for path, problem in ((tmp_path / "nope", "does not exist"), (tmp_path, "empty")):
        with pytest.raises(DatasetNotFoundError) as info:
            load_datalist(path)
        message = str(info.value)
        assert problem in message and "--dataset_dir" in message and "xray2mri make-cohort --out DIR" in message
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetNotFoundError, match="contents.csv"):
        load_datalist(tmp_path)


def test_a_given_datalist_file_is_used_as_is(tmp_path):
    datalist = {"training": [{"subject": "1", "xray": "x", "mri": "m", "kl": 0}], "validation": []}
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(datalist))
    assert load_datalist(None, path) == datalist
    path.write_text(json.dumps({"training": [], "validation": []}))
    with pytest.raises(DatasetNotFoundError, match="no paired"):
        load_datalist(None, path)


# ---------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", ["common", "train", "train_autoencoder", "train_classifier", "train_diffusion",
                                  "multi_gpu_train", "profiles/paper", "profiles/small", "profiles/tiny"])
def test_configs_are_valid_json(name):
    assert isinstance(json.loads((CONFIGS / f"{name}.json").read_text()), dict)


def test_profiles_merge_the_monai_way():
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "common.json"), str(CONFIGS / "train_diffusion.json")])
    assert parser["profile"] == "paper" and parser["diffusion_batch_size"] == 64
    assert parser["num_train_timesteps"] == 1000 and parser["ema_decay"] == 0.99
    parser.read_config([str(CONFIGS / "common.json"), str(CONFIGS / "train_diffusion.json"),
                        str(CONFIGS / "profiles" / "tiny.json")])
    assert parser["profile"] == "tiny" and parser["diffusion_batch_size"] == 2
    for key in ("train#trainer", "train#handlers", "train#dataloader", "train#inferer", "validate#evaluator",
                "validate#handlers", "run", "initialize"):
        assert key in parser, key
    # every key a profile sets exists in the defaults (a typo would silently add an unused key)
    defaults = json.loads((CONFIGS / "common.json").read_text())
    for profile in ("paper", "small", "tiny"):
        unknown = set(json.loads((CONFIGS / "profiles" / f"{profile}.json").read_text())) - set(defaults)
        assert not unknown, (profile, unknown)


def test_stage_paths_resolve_for_the_paper_profile():
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "common.json"), str(CONFIGS / "train_autoencoder.json")])
    parser.update({"bundle_root": "/bundle"})
    assert parser.get_parsed_content("final_path") == "/bundle/models/paper/autoencoder.pt"
    assert parser.get_parsed_content("checkpoint_dir") == "/bundle/outputs/paper/autoencoder"
    assert parser.get_parsed_content("image_size") == 256


def test_command_line_spellings_become_values():
    from xray2mri_bundle.engines.stages import command_line_value

    assert command_line_value("true") is True and command_line_value("False") is False
    assert command_line_value("null") is None and command_line_value("tiny") == "tiny"
    assert command_line_value(0.2) == 0.2


def test_train_cli_builds_the_bundle_command(tmp_path):
    from xray2mri_bundle.cli.train import bundle_arguments

    kwargs = bundle_arguments(["--profile", "small", "--dataset-dir", str(tmp_path), "--stages", "diffusion",
                               "--force-retrain", "--tracking", "mlflow", "--set", "diffusion_max_epochs=3",
                               "--set", "scale_factor=0.2", "--bundle-root", str(REPO)])
    assert kwargs["run_id"] == "training" and kwargs["bundle_root"] == str(REPO)
    assert kwargs["config_file"] == [str(CONFIGS / "train.json"), str(CONFIGS / "profiles" / "small.json")]
    assert kwargs["dataset_dir"] == str(tmp_path) and kwargs["stages"] == ["diffusion"]
    assert kwargs["force_retrain"] is True and kwargs["tracking"] == "mlflow"
    assert kwargs["diffusion_max_epochs"] == 3 and kwargs["scale_factor"] == 0.2


def test_cli_paths_are_literal_values_never_config_expressions(tmp_path, capsys):
    from xray2mri_bundle.cli.train import bundle_arguments

    hostile = {"dataset_dir": '$print("RAN") or "x"', "output_dir": "@model_dir", "model_dir": "%configs/x.json#a"}
    kwargs = bundle_arguments(["--dataset-dir", hostile["dataset_dir"], "--output-dir", hostile["output_dir"],
                               "--model-dir", hostile["model_dir"], "--bundle-root", str(REPO)])
    parser = ConfigParser({key: kwargs[key] for key in hostile})
    for key, text in hostile.items():
        assert parser.get_parsed_content(key) == text  # the literal string the user typed
    assert "RAN" not in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- conditioning check
def test_other_knee_permutation_never_keeps_a_knee() -> None:
    from xray2mri_bundle.engines.validation import other_knee_permutation

    ids = ["a", "a", "b", "c", "c"]
    perm = other_knee_permutation(ids)
    assert perm == [2, 2, 3, 0, 0] and all(ids[p] != k for k, p in zip(ids, perm, strict=True))
    assert other_knee_permutation(["a", "a"]) is None


class _ConditionEcho(torch.nn.Module):
    """Predicts the noise only when it sees its own knee's X-ray latent and is not dropped: a model that 'uses
    the X-ray' in the simplest possible way (the prediction degrades with a wrong or missing X-ray)."""

    def forward(self, x, timesteps, xray=None, xray_latent=None, context=None, depth=None, p_map=None, i_map=None,
                drop_context=None, drop_latent=None):
        keep = (~drop_latent).float()[:, None, None, None] if drop_latent is not None else 1.0
        return x * 0 + xray_latent * keep


def test_conditioning_check_separates_real_other_and_null() -> None:
    from xray2mri_bundle.diffusion import ConditionalDiffusionInferer
    from xray2mri_bundle.engines.validation import ConditioningCheck

    scheduler = DDPMScheduler(1000, schedule="scaled_linear_beta", beta_start=0.00085, beta_end=0.012)
    prepare = LatentDiffusionPrepareBatch(_TinyAE(), ScaleFactor(0.5), None, seed=1)
    items = []
    for k in range(4):  # two knees, two slices each; the cached "X-ray latent" of a knee is its target noise
        items.append({"latent_mu": torch.zeros(4, 2, 2), "latent_sigma": torch.zeros(4, 2, 2),
                      "xray": torch.zeros(1, 8, 8), "xray_latent": torch.full((4, 2, 2), float(k // 2)),
                      "depth": torch.tensor(0.5), "subject": str(k // 2), "side": "RIGHT"})
    check = ConditioningCheck(items, prepare, ConditionalDiffusionInferer(scheduler), _ConditionEcho(), batch_size=4)
    mse = check.measure("cpu")
    assert set(mse) == {"real", "other", "null"}
    # same noise in every variant: the swapped X-ray latents (0 <-> 1) and the dropped one change the error
    assert mse["other"] != mse["real"] and mse["null"] != mse["real"]
    prepare.reset()
    noise = prepare(list_data_collate(items), "cpu")[1]
    own = torch.stack([it["xray_latent"] for it in items])
    assert mse["real"] == pytest.approx(float(((own - noise) ** 2).mean()), rel=1e-5)
    assert mse["null"] == pytest.approx(float((noise ** 2).mean()), rel=1e-5)
