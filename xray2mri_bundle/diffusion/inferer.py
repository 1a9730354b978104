"""The training-time inferer of the diffusion stage: MONAI's ``DiffusionInferer`` for a keyword-conditioned model.

``LatentDiffusionPrepareBatch`` (a MONAI ``DiffusionPrepareBatch``) hands the engine clean latents z0 as inputs,
the noise as the target and ``{noise, timesteps, **conditions}`` as keyword arguments; this inferer noises z0
with the scheduler's forward process and calls the denoiser, so training loss, validation loss and the
conditioning check all run the same ``add_noise`` + forward. Sampling is ``diffusion.sampler.DiffusionSampler``.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import DiffusionInferer
from torch import nn

__all__ = ["ConditionalDiffusionInferer"]


class ConditionalDiffusionInferer(DiffusionInferer):
    """``eps_hat = network(q(z_t | z0, noise, t), timesteps=t, **conditions)``.

    MONAI's ``DiffusionInferer`` passes one ``condition`` tensor as cross-attention context or concatenation;
    the X-ray UNet takes several named conditions (X-ray crop, its latent, depth, p and i maps, dropout masks),
    so they are forwarded as keywords.

    Args:
        scheduler: the noise scheduler of training (MONAI ``DDPMScheduler``), which defines ``add_noise``.

    The timesteps of the last call stay in ``last_timesteps`` for a timestep-weighted loss
    (``engines.losses.MinSNRWeightedMSELoss``), which MONAI's trainer calls as ``loss(pred, target)``.
    """

    last_timesteps: torch.Tensor | None = None

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        diffusion_model: nn.Module,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        **conditions: Any,
    ) -> torch.Tensor:
        """inputs: clean scaled latents z0 (B, C, h, w); noise like inputs; timesteps (B,) long.
        Returns the model's prediction for the noised latents (B, C, h, w)."""
        self.last_timesteps = timesteps
        noisy = self.scheduler.add_noise(original_samples=inputs, noise=noise, timesteps=timesteps)
        return diffusion_model(noisy, timesteps=timesteps, **conditions)

    def sample(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102 - MONAI's loop cannot pass the conditions
        raise NotImplementedError(
            "ConditionalDiffusionInferer is the training-time inferer; sample with "
            "xray2mri_bundle.diffusion.DiffusionSampler (the X-ray conditions need the project's loop)")

    def get_likelihood(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102
        raise NotImplementedError("likelihoods of the conditional model are not implemented")
