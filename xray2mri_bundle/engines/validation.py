"""Sampled-slice validation of the diffusion stage: DDIM with the EMA weights, PSNR/SSIM against the real slice.

The validation loss (epsilon MSE at random timesteps) says little about image quality, so every validation run
also generates a few slices from their X-ray and depth, the way inference does (conditions from the frozen E1
and C and the EMA E2; a few DDIM steps; decode ``z / scale_factor``), and reports the mean PSNR and SSIM
(``xray2mri_bundle.metrics``, data range 2) in ``engine.state.metrics`` so StatsHandler and MLflow log them.
A montage PNG (top row real, bottom row generated) is written next to the checkpoints.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import list_data_collate
from PIL import Image
from torch import nn

from xray2mri_bundle.engines import distributed as dist_utils
from xray2mri_bundle.engines.handlers import ScaleFactor

__all__ = ["ConditioningCheck", "SampleValidation", "evenly_spaced"]

logger = logging.getLogger(__name__)


def evenly_spaced(length: int, count: int) -> list[int]:
    """``count`` indices spread over ``range(length)`` (all of them when ``count >= length``)."""
    if count >= length:
        return list(range(length))
    return [int(round(i)) for i in np.linspace(0, length - 1, count)]


class SampleValidation:
    """Generate ``num_samples`` validation slices at every validation run and log PSNR/SSIM (rank 0 only).

    Args:
        dataset: validation slice dataset (items with ``image``, ``xray``, ``depth``, ``intensity``).
        autoencoder: frozen E1/D.
        denoiser: the EMA ``XrayDenoiser`` (its ``xray_encoder`` gives the context, its ``unet`` predicts eps).
        scale_factor: ``ScaleFactor`` (or float) of the latent space.
        classifier: frozen KOA classifier (None: null p).
        num_samples: slices to generate, spread evenly over the dataset (different knees and depths).
        num_inference_steps: DDIM steps (few: this is a training-time check).
        guidance_scale: classifier-free guidance scale (1 = conditional only).
        num_train_timesteps, schedule, beta_start, beta_end: the noise schedule the model is trained with.
        seed: initial-noise seed, the same at every validation run so values are comparable.
        output_dir: folder for the montage PNGs (None: no images).
        prefix: metric name prefix (``val_sample_psnr``, ``val_sample_ssim``).
        use_intensity: pass the intensity map (False for the ablation without it).
        prediction_type: what the UNet predicts (``"epsilon"`` or ``"v_prediction"``).
    """

    def __init__(
        self,
        dataset: Sequence,
        autoencoder: nn.Module,
        denoiser: nn.Module,
        scale_factor: ScaleFactor | float,
        classifier: nn.Module | None = None,
        num_samples: int = 4,
        num_inference_steps: int = 10,
        guidance_scale: float = 1.0,
        num_train_timesteps: int = 1000,
        schedule: str = "scaled_linear_beta",
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        seed: int = 0,
        output_dir: str | os.PathLike | None = None,
        prefix: str = "val_sample_",
        use_intensity: bool = True,
        prediction_type: str = "epsilon",
    ) -> None:
        self.dataset, self.prediction_type, self.scale_factor = dataset, prediction_type, scale_factor
        self.autoencoder, self.denoiser, self.classifier = autoencoder, denoiser, classifier
        self.num_samples = int(num_samples)
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = float(guidance_scale)
        self.schedule = {"schedule": schedule, "beta_start": beta_start, "beta_end": beta_end}
        self.num_train_timesteps = int(num_train_timesteps)
        self.seed = int(seed)
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.prefix = prefix
        self.use_intensity = use_intensity

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not dist_utils.is_rank0() or self.num_samples <= 0 or len(self.dataset) == 0:
            return
        device = engine.state.device or torch.device("cpu")
        real, generated = self.sample(device)
        from xray2mri_bundle.metrics import psnr_slices, ssim_slices

        # (B, C, H, W) -> volume layout (C, H, W, B): one "slice" per sample
        pred = generated.permute(1, 2, 3, 0).cpu()
        gt = real.permute(1, 2, 3, 0).cpu()
        psnr = psnr_slices(pred, gt)
        ssim = ssim_slices(pred, gt)
        finite = psnr[np.isfinite(psnr)]
        engine.state.metrics[f"{self.prefix}psnr"] = float(finite.mean()) if finite.size else float("inf")
        engine.state.metrics[f"{self.prefix}ssim"] = float(np.mean(ssim))
        logger.info(
            "sampled %d validation slices (%d DDIM steps, EMA): PSNR %.2f dB, SSIM %.3f", len(psnr),
            self.num_inference_steps, engine.state.metrics[f"{self.prefix}psnr"],
            engine.state.metrics[f"{self.prefix}ssim"],
        )
        if self.output_dir is not None:
            self.save_montage(real, generated, self.output_dir / f"samples_epoch={engine.state.epoch}.png")

    @torch.no_grad()
    def sample(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(real, generated)`` slices (B, C, H, W) in [-1, 1] for the chosen validation items.

        The generation path of inference (``diffusion.ConditionEncoder`` -> ``DiffusionSampler`` (DDIM) ->
        ``decode_slices``), with the dataset's intensity maps and one seeded noise per item.
        """
        from xray2mri_bundle.diffusion import ConditionEncoder, DiffusionSampler, SamplingSettings, decode_slices

        items = [self.dataset[i] for i in evenly_spaced(len(self.dataset), self.num_samples)]
        batch = list_data_collate(items)
        real = torch.as_tensor(batch["image"]).float().to(device)
        xray = torch.as_tensor(batch["xray"]).float().to(device)
        depth = torch.as_tensor(batch["depth"]).float().reshape(-1).to(device)
        was_training = self.denoiser.training
        self.denoiser.eval()
        try:
            encoder = ConditionEncoder(self.autoencoder, getattr(self.denoiser, "xray_encoder", None),
                                       self.classifier)
            conditions = encoder(xray)
            if self.use_intensity:
                conditions = replace(conditions, i_map=torch.as_tensor(batch["intensity"]).float().to(device))
            generator = torch.Generator().manual_seed(self.seed)
            noise = torch.randn(conditions.xray_latent.shape, generator=generator).to(device)
            sampler = DiffusionSampler.from_settings(
                SamplingSettings("ddim", self.num_inference_steps, 0.0, self.guidance_scale),
                self.num_train_timesteps, self.schedule, self.prediction_type)
            latents = sampler(self.denoiser, noise, conditions.model_kwargs(depth))
            scale = self.scale_factor.value if isinstance(self.scale_factor, ScaleFactor) else self.scale_factor
            generated = decode_slices(self.autoencoder, latents, float(scale or 1.0), grey=False)
        finally:
            self.denoiser.train(was_training)
        return real, generated

    @staticmethod
    def save_montage(real: torch.Tensor, generated: torch.Tensor, path: Path) -> Path:
        """Grey PNG: real slices on the top row, generated below (channel 0, [-1, 1] -> 0..255)."""
        rows = [torch.cat(list(t[:, 0].cpu()), dim=1) for t in (real, generated)]
        image = ((torch.cat(rows, dim=0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        return path



#: the per-knee conditions a ``KneeSliceDataset`` item carries (raw or from the latent cache)
CONDITION_KEYS = ("xray", "xray_latent", "p_map", "intensity")


def other_knee_permutation(knee_ids: Sequence[str]) -> list[int] | None:
    """Index map giving every item the conditions of an item of ANOTHER knee (the next knee in order, cyclic);
    None when the items come from one knee only."""
    order = list(dict.fromkeys(knee_ids))
    if len(order) < 2:
        return None
    first = {k: knee_ids.index(k) for k in order}
    return [first[order[(order.index(k) + 1) % len(order)]] for k in knee_ids]


class ConditioningCheck:
    """Does the model use the X-ray? Epsilon-MSE on validation slices with the real X-ray conditions, with
    another knee's (X-ray, its latent, p map and intensity) and with none (context and latent dropped, as
    classifier-free training drops them), at the same noise and timesteps (a seeded ``prepare_batch``), each
    through the stage's ``inferer`` (``ConditionalDiffusionInferer``: noise z0, then denoise) as the loss is.

    Logs ``cond_mse_real``, ``cond_mse_other``, ``cond_mse_null`` and the relative gaps
    ``cond_gap_other = other / real - 1`` and ``cond_gap_null = null / real - 1`` in the evaluator's metrics
    (so StatsHandler, MLflow and the training record carry them). A model that uses the X-ray has both gaps
    clearly above 0; one that memorised its training knees has them near 0 on validation knees.
    Attach to the validation evaluator (runs at its EPOCH_COMPLETED).
    """

    def __init__(self, dataset: Sequence, prepare_batch, inferer, network: nn.Module, batch_size: int = 16,
                 prefix: str = "cond_") -> None:
        self.dataset, self.prepare_batch, self.inferer, self.network = dataset, prepare_batch, inferer, network
        self.batch_size, self.prefix = int(batch_size), prefix

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    @torch.no_grad()
    def measure(self, device: torch.device | str) -> dict[str, float]:
        """``{'real', 'other', 'null'}`` -> mean loss (epsilon- or v-MSE, the training target) over the dataset."""
        items = [self.dataset[i] for i in range(len(self.dataset))]
        ids = [f"{it.get('subject')}_{it.get('side')}" for it in items]
        perm = other_knee_permutation(ids)
        swapped = None if perm is None else [
            {**it, **{k: items[perm[j]][k] for k in CONDITION_KEYS if k in it}} for j, it in enumerate(items)]
        totals = {"real": 0.0, "other": 0.0, "null": 0.0}
        was_training = self.network.training
        self.network.eval()
        try:
            for name, variant in (("real", items), ("other", swapped)):
                if variant is None:
                    continue
                self.prepare_batch.reset()  # same noise, timesteps and posterior draws in every variant
                for start in range(0, len(variant), self.batch_size):
                    chunk = variant[start:start + self.batch_size]
                    z0, target, _, kwargs = self.prepare_batch(list_data_collate(chunk), device)
                    prediction = self.inferer(z0, self.network, **kwargs)
                    totals[name] += float(((prediction - target) ** 2).mean()) * len(chunk)
                    if name == "real":  # the same inputs with the X-ray dropped as classifier-free training does
                        drop = torch.ones(z0.shape[0], dtype=torch.bool, device=z0.device)
                        null = {**kwargs, "drop_context": drop, "drop_latent": drop}
                        prediction = self.inferer(z0, self.network, **null)
                        totals["null"] += float(((prediction - target) ** 2).mean()) * len(chunk)
        finally:
            self.network.train(was_training)
        n = max(len(items), 1)
        return {k: v / n for k, v in totals.items() if k != "other" or perm is not None}

    def __call__(self, engine: Engine) -> None:
        if not dist_utils.is_rank0() or len(self.dataset) == 0:
            return
        mse = self.measure(engine.state.device or torch.device("cpu"))
        for name, value in mse.items():
            engine.state.metrics[f"{self.prefix}mse_{name}"] = value
        for name in ("other", "null"):
            if name in mse:
                engine.state.metrics[f"{self.prefix}gap_{name}"] = mse[name] / max(mse["real"], 1e-12) - 1.0
        logger.info("conditioning check (eps-MSE): real %.4f, other knee's X-ray %s, none %.4f", mse["real"],
                    f"{mse['other']:.4f}" if "other" in mse else "n/a", mse["null"])
