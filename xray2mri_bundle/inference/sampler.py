"""DDIM sampling loop with classifier-free guidance, generic over the denoiser.

The sampler knows nothing of X-rays or depths: it takes a noise tensor, a dict of condition tensors that
are passed to the model as keyword arguments, and a MONAI ``DDIMScheduler``. Any model called as
``model(x, timesteps, **conditions, drop_context=mask, drop_latent=mask) -> eps`` works (the signature of
``XrayConditionedUNet``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from monai.networks.schedulers import DDIMScheduler

__all__ = ["DDIMSampler", "build_ddim_scheduler", "uniform_ddim_timesteps"]

# Zero-1-to-3 / Stable Diffusion noise schedule (the paper initialises the UNet from Zero-123).
DEFAULT_SCHEDULE: dict = {"schedule": "scaled_linear_beta", "beta_start": 0.00085, "beta_end": 0.012}

StepCallback = Callable[[int, int, int], None]
"""``callback(step_index, num_steps, timestep)`` called after every denoising step (progress bars)."""


def build_ddim_scheduler(num_train_timesteps: int = 1000, **schedule: object) -> DDIMScheduler:
    """MONAI DDIM scheduler for latent diffusion.

    ``schedule`` overrides ``DEFAULT_SCHEDULE`` (``schedule``, ``beta_start``, ``beta_end``, ...); it must match
    the schedule the model was trained with. ``clip_sample`` is off because latents are not bounded to [-1, 1];
    ``steps_offset=1`` and ``set_alpha_to_one=False`` give the DDIM/LDM grid (last step lands on t=1 and uses
    alpha_bar_0 as the final "previous" alpha).
    """
    kwargs: dict = {**DEFAULT_SCHEDULE, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}
    kwargs.update(schedule)
    return DDIMScheduler(num_train_timesteps=num_train_timesteps, **kwargs)


def uniform_ddim_timesteps(scheduler: DDIMScheduler, num_inference_steps: int) -> torch.Tensor:
    """Set ``num_inference_steps`` on ``scheduler`` and use the uniform DDIM grid ``k * (T // n) + offset``.

    MONAI's ``set_timesteps`` uses ``linspace(T - 1, 0, n).round()`` while ``step`` assumes the previous
    timestep is ``t - T // n``; the two disagree unless ``n`` divides ``T - 1``. The uniform grid makes every
    step's "previous" timestep the timestep actually visited next (as in the DDIM and LDM samplers).
    Returns the timesteps, descending, shape (n,).
    """
    if not 1 <= num_inference_steps <= scheduler.num_train_timesteps:
        raise ValueError(
            f"num_inference_steps must be in [1, {scheduler.num_train_timesteps}], got {num_inference_steps}"
        )
    scheduler.set_timesteps(num_inference_steps)
    stride = scheduler.num_train_timesteps // num_inference_steps
    grid = torch.arange(num_inference_steps, dtype=torch.long) * stride + scheduler.steps_offset
    scheduler.timesteps = grid.flip(0).clamp(max=scheduler.num_train_timesteps - 1)
    return scheduler.timesteps


class DDIMSampler:
    """Denoise latents with DDIM, optionally with classifier-free guidance (CFG).

    Args:
        scheduler: a MONAI ``DDIMScheduler`` (see ``build_ddim_scheduler``); its timesteps are reset per call.
        num_inference_steps: DDIM steps (the paper samples with DDIM; 50 is the usual setting).
        eta: DDIM stochasticity (0 = deterministic DDIM, 1 = DDPM-like variance).
        guidance_scale: CFG scale g; ``eps = eps_uncond + g * (eps_cond - eps_uncond)``. ``g == 1`` runs the
            conditional model only; any other value runs conditional and unconditional halves in ONE batch.
        null_masks: names of the model's boolean keyword arguments that switch a sample to its null
            condition; the unconditional half gets ``True`` for every one of them.
    """

    def __init__(
        self,
        scheduler: DDIMScheduler,
        num_inference_steps: int = 50,
        eta: float = 0.0,
        guidance_scale: float = 1.0,
        null_masks: Sequence[str] = ("drop_context", "drop_latent"),
    ) -> None:
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.scheduler = scheduler
        self.num_inference_steps = int(num_inference_steps)
        self.eta = float(eta)
        self.guidance_scale = float(guidance_scale)
        self.null_masks = tuple(null_masks)

    @property
    def uses_guidance(self) -> bool:
        """True when each step needs an unconditional prediction as well."""
        return self.guidance_scale != 1.0

    def predict_noise(
        self, model: Callable[..., torch.Tensor], x: torch.Tensor, t: int, conditions: Mapping
    ) -> torch.Tensor:
        """One (guided) noise prediction for latents ``x`` (B, C, h, w) at timestep ``t``."""
        batch = x.shape[0]
        if not self.uses_guidance:
            timesteps = torch.full((batch,), t, dtype=torch.long, device=x.device)
            return model(x, timesteps, **conditions)
        doubled = {k: _double(v) for k, v in conditions.items()}
        null = torch.cat([torch.zeros(batch, dtype=torch.bool), torch.ones(batch, dtype=torch.bool)]).to(x.device)
        doubled.update({name: null for name in self.null_masks})
        timesteps = torch.full((2 * batch,), t, dtype=torch.long, device=x.device)
        eps_cond, eps_uncond = model(torch.cat([x, x]), timesteps, **doubled).chunk(2)
        return eps_uncond + self.guidance_scale * (eps_cond - eps_uncond)

    @torch.inference_mode()
    def __call__(
        self,
        model: Callable[..., torch.Tensor],
        noise: torch.Tensor,
        conditions: Mapping[str, torch.Tensor | None] | None = None,
        generator: torch.Generator | None = None,
        callback: StepCallback | None = None,
    ) -> torch.Tensor:
        """Run the reverse process from ``noise`` (B, C, h, w) = z_T to the clean latent z_0 (same shape).

        ``conditions`` are keyword arguments for ``model``; tensors must have batch size B (``None`` means the
        model's null condition). ``generator`` drives the ``eta > 0`` noise; it must live on ``noise.device``.
        """
        conditions = dict(conditions or {})
        timesteps = uniform_ddim_timesteps(self.scheduler, self.num_inference_steps)
        x = noise * self.scheduler.init_noise_sigma
        for index, t in enumerate(timesteps.tolist()):
            eps = self.predict_noise(model, x, t, conditions)
            x, _ = self.scheduler.step(eps, t, x, eta=self.eta, generator=generator)
            if callback is not None:
                callback(index, len(timesteps), t)
        return x


def _double(value: torch.Tensor | None) -> torch.Tensor | None:
    """Repeat a condition for the conditional and unconditional halves of a CFG batch."""
    return None if value is None else torch.cat([value, value])
