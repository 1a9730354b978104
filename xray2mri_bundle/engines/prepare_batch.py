"""PrepareBatch callables: turn a collated batch dict into ``(inputs, target, args, kwargs)`` for MONAI engines.

- ``KeyedPrepareBatch``: ``(batch[image_key], batch[label_key])``; the autoencoder reconstructs its input
  (label = image), the KOA classifier predicts ``kl`` from ``xray``.
- ``LatentDiffusionPrepareBatch``: the diffusion stage's inputs (paper Algorithm 1, Zero-1-to-3 conditioning):
  ``z0 = scale * E1(x_d)`` (a posterior sample, or its mean: ``latent_target``), noise ``eps``, timesteps
  ``t`` ~ U{0..T-1}, ``z_t = sqrt(a_t) z0 + sqrt(1 - a_t) eps`` (MONAI ``DDPMScheduler.add_noise``); the
  conditions: X-ray latent ``E1(x_c)`` (posterior mean, unscaled), the crop ``x_c`` itself (E2 is trained, so
  it runs inside the network), depth ``d``, KOA probability map ``p = C.forward_maps(x_c)`` (frozen C) and
  intensity map ``i``; and the classifier-free-guidance masks (5% drop embedding, 5% drop both, 5% drop latent).
  The target is ``eps`` (epsilon prediction: the loss is ``MSE(U(z_t, t, ...), eps)``) or the velocity
  ``v = sqrt(a_t) eps - sqrt(1 - a_t) z0`` (``prediction_type="v_prediction"``, MONAI's ``VPredictionPrepareBatch``).
  Batches from ``engines.latent_cache.LatentKneeCache`` carry E1's posterior and C's map already, so only the
  posterior sample, the noising and the masks happen here (no frozen network runs per step).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.engines.utils import DiffusionPrepareBatch, PrepareBatch
from torch import nn

from xray2mri_bundle.diffusion.conditions import XrayConditions, encode_xray
from xray2mri_bundle.diffusion.latents import check_latent_target, training_latents
from xray2mri_bundle.diffusion.solvers import check_prediction_type

__all__ = ["KeyedPrepareBatch", "LatentDiffusionPrepareBatch", "cfg_drop_masks"]


def _tensor(value: Any, device: torch.device | str | None, non_blocking: bool = False, **kwargs: Any) -> torch.Tensor:
    """A plain tensor on ``device`` (MetaTensor metadata is not needed inside the engines)."""
    if isinstance(value, MetaTensor):
        value = value.as_tensor()
    return torch.as_tensor(value).to(device=device, non_blocking=non_blocking, **kwargs)


class KeyedPrepareBatch(PrepareBatch):
    """``(inputs, target)`` = ``(batch[image_key], batch[label_key])`` moved to the engine's device.

    Args:
        image_key: key of the network input.
        label_key: key of the target; None (or the same key) uses the input itself (autoencoder).
        label_dtype: dtype of the target (``torch.long`` for class labels, then shape (B,)); None keeps it.
    """

    def __init__(self, image_key: str = "image", label_key: str | None = None, label_dtype: Any = None) -> None:
        self.image_key = image_key
        self.label_key = label_key
        self.label_dtype = label_dtype

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: torch.device | str | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        images = _tensor(batchdata[self.image_key], device, non_blocking, **kwargs)
        if self.label_key is None or self.label_key == self.image_key:
            return images, images
        labels = _tensor(batchdata[self.label_key], device, non_blocking)
        if self.label_dtype is not None:
            labels = labels.to(self.label_dtype)
            if not labels.is_floating_point() and labels.ndim > 1 and labels.shape[-1] == 1:
                labels = labels.reshape(labels.shape[0])  # class indices (B, 1) -> (B,) for CrossEntropyLoss
        return images, labels


def cfg_drop_masks(
    batch: int, p: float = 0.05, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Classifier-free-guidance dropout masks ``(drop_context, drop_latent)``, bool (B,), as in Zero-1-to-3.

    One uniform draw u per sample: ``u < p`` drops the embedding, ``p <= u < 2p`` drops both, ``2p <= u < 3p``
    drops the X-ray latent (so each case has probability p, 0.05 in the paper's initialisation).
    """
    u = torch.rand(batch, generator=generator)
    drop_context = u < 2 * p
    drop_latent = (u >= p) & (u < 3 * p)
    return drop_context.to(device), drop_latent.to(device)


class LatentDiffusionPrepareBatch(DiffusionPrepareBatch):
    """Build the diffusion stage's clean latents, noise, timesteps and conditions from a slice batch.

    Batch keys (after collation): ``image`` (B, 3, H, W) MRI slice in [-1, 1], ``xray`` (B, 1, H, W) knee crop
    in [-1, 1], ``depth`` (B,) in [0, 1], ``intensity`` (B, 16, 8, 8); with cached latents ``latent_mu`` /
    ``latent_sigma`` (B, 4, h, w), ``xray_latent`` and ``p_map`` replace ``image`` and the encoders. Returns,
    as MONAI's ``DiffusionPrepareBatch`` does, ``(z0, target, (), kwargs)`` (target ``eps`` or ``v``) with
    kwargs ``noise, timesteps, xray, xray_latent, context (None: the denoiser runs E2 on xray), depth, p_map,
    i_map, drop_context, drop_latent`` for ``ConditionalDiffusionInferer``, which noises z0 and calls the
    denoiser (``XrayDenoiser``).

    Args:
        autoencoder: frozen stage-1 ``AutoencoderKL`` (E1); put in eval mode without gradients here.
        scale_factor: the latent scale (a ``ScaleFactor``, filled at start, or a float).
        classifier: frozen KOA classifier with ``forward_maps``; None gives the null p (``p_map=None``).
        num_train_timesteps: T (1000).
        p_uncond: CFG dropout probability per case (0.05); 0 disables dropout (validation).
        use_intensity: False passes ``i_map=None`` (ablation without the intensity distribution).
        seed: when given, noise, timesteps and masks come from a generator reset at every engine start
            (attach this object to the evaluator), so validation losses are comparable across epochs.
        amp: run the frozen encoders under ``torch.autocast`` on CUDA.
        prediction_type: ``"epsilon"`` (target eps) or ``"v_prediction"`` (target v; needs ``scheduler``).
        scheduler: the training noise scheduler (``DDPMScheduler``), for ``get_velocity``.
        latent_target: ``"sample"`` (a fresh posterior draw per step) or ``"mean"`` (E1's posterior mean).
        image_key, xray_key, depth_key, intensity_key: batch keys.
    """

    def __init__(
        self,
        autoencoder: nn.Module,
        scale_factor: Any,
        classifier: nn.Module | None = None,
        num_train_timesteps: int = 1000,
        p_uncond: float = 0.05,
        use_intensity: bool = True,
        seed: int | None = None,
        amp: bool = False,
        prediction_type: str = "epsilon",
        scheduler: Any = None,
        latent_target: str = "sample",
        image_key: str = "image",
        xray_key: str = "xray",
        depth_key: str = "depth",
        intensity_key: str = "intensity",
    ) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps)
        if not 0.0 <= 3 * p_uncond <= 1.0:
            raise ValueError(f"p_uncond must be in [0, 1/3], got {p_uncond}")
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.classifier = None if classifier is None else classifier.eval().requires_grad_(False)
        self.scale_factor = scale_factor
        self.p_uncond = float(p_uncond)
        self.use_intensity = use_intensity
        self.seed = seed
        self.amp = amp
        self.prediction_type = check_prediction_type(prediction_type)
        if self.prediction_type == "v_prediction" and scheduler is None:
            raise ValueError("prediction_type='v_prediction' needs the noise scheduler (for get_velocity)")
        self.scheduler, self.latent_target = scheduler, check_latent_target(latent_target)
        self.image_key, self.xray_key = image_key, xray_key
        self.depth_key, self.intensity_key = depth_key, intensity_key
        self.generator: torch.Generator | None = None
        self.reset()

    def reset(self, engine: Engine | None = None) -> None:
        """Restart the seeded generator (no-op without a seed)."""
        self.generator = None if self.seed is None else torch.Generator().manual_seed(int(self.seed))

    def attach(self, engine: Engine) -> None:
        """Reset the generator whenever ``engine`` starts (use on the validation evaluator)."""
        engine.add_event_handler(Events.STARTED, self.reset)

    def get_noise(self, images: torch.Tensor) -> torch.Tensor:
        if self.generator is None:
            return torch.randn_like(images)
        return torch.randn(images.shape, generator=self.generator, dtype=images.dtype).to(images.device)

    def get_timesteps(self, images: torch.Tensor) -> torch.Tensor:
        shape = (images.shape[0],)
        t = torch.randint(0, self.num_train_timesteps, shape, generator=self.generator)
        return t.to(images.device).long()

    def get_target(self, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The loss target for clean latents ``images``: ``noise`` (epsilon) or the velocity (v-prediction)."""
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(images, noise, timesteps)
        return noise

    def _autocast(self, device: torch.device):
        return torch.autocast("cuda") if self.amp and device.type == "cuda" else nullcontext()

    @torch.no_grad()
    def encode(
        self, images: torch.Tensor, xray: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(z0, xray_latent, p_map)``: scaled training latents of the slices (``latent_target``), unscaled
        posterior mean of the crop (grey repeated to the autoencoder's channels) and the classifier's map."""
        with self._autocast(images.device):
            z_mu, z_sigma = self.autoencoder.encode(images)
            z0 = training_latents(z_mu.float(), z_sigma.float(), self.latent_target, self.get_noise)
            z0 = z0 * float(self.scale_factor)
            xray_latent, _, p_map = encode_xray(self.autoencoder, xray, self.classifier, channels=images.shape[1])
        return z0, xray_latent.float(), None if p_map is None else p_map.float()

    def from_cache(
        self, batchdata: Mapping[str, Any], device: torch.device | str | None, non_blocking: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(z0, xray_latent, p_map)`` from a batch of ``LatentKneeCache`` slices: the scaled training latents
        (as :meth:`encode` draws them) and the cached crop latent and p map."""
        mu = _tensor(batchdata["latent_mu"], device, non_blocking).float()
        sigma = _tensor(batchdata["latent_sigma"], device, non_blocking).float()
        z0 = training_latents(mu, sigma, self.latent_target, self.get_noise) * float(self.scale_factor)
        xray_latent = _tensor(batchdata["xray_latent"], device, non_blocking).float()
        p_map = None
        if self.classifier is not None:
            if "p_map" not in batchdata:
                raise KeyError("the batch has cached latents but no 'p_map': the latent cache was built without "
                               "the classifier this PrepareBatch uses")
            p_map = _tensor(batchdata["p_map"], device, non_blocking).float()
        return z0, xray_latent, p_map

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: torch.device | str | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        """Batches with cached latents (``latent_mu`` key) skip the frozen encoders; others run them."""
        xray = _tensor(batchdata[self.xray_key], device, non_blocking, **kwargs).float()
        if "latent_mu" in batchdata:
            z0, xray_latent, p_map = self.from_cache(batchdata, device, non_blocking)
        else:
            images = _tensor(batchdata[self.image_key], device, non_blocking, **kwargs).float()
            z0, xray_latent, p_map = self.encode(images, xray)
        depth = _tensor(batchdata[self.depth_key], device, non_blocking).float().reshape(z0.shape[0])
        i_map = None
        if self.use_intensity and self.intensity_key in batchdata:
            i_map = _tensor(batchdata[self.intensity_key], device, non_blocking).float()
        noise = self.get_noise(z0)
        timesteps = self.get_timesteps(z0)
        drop_context, drop_latent = cfg_drop_masks(z0.shape[0], self.p_uncond, self.generator, z0.device)
        # the UNet's keywords as sampling builds them (the context is E2(xray), computed in the denoiser)
        conditions = XrayConditions(xray_latent=xray_latent, context=None, p_map=p_map, i_map=i_map)
        infer_kwargs = {
            "noise": noise,
            "timesteps": timesteps,
            "xray": xray,
            **conditions.model_kwargs(depth),
            "drop_context": drop_context,
            "drop_latent": drop_latent,
        }
        return z0, self.get_target(z0, noise, timesteps), (), infer_kwargs
