"""The one sampling loop of the bundle: classifier-free guidance over any ``Solver``, generic over the denoiser.

Generation (``inference.VolumeGenerator``), evaluation (through the generator) and the training-time sampled
validation all call ``DiffusionSampler``. It knows nothing of X-rays or depths: it takes a noise tensor and a
dict of condition tensors passed to the model as keyword arguments. Any model called as
``model(x, timesteps, **conditions, drop_context=mask, drop_latent=mask) -> eps`` works (the signature of
``XrayConditionedUNet`` and ``XrayDenoiser``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from .solvers import Solver, build_solver, check_sampler

__all__ = ["DEFAULT_SAMPLING", "DiffusionSampler", "SamplingSettings", "StepCallback"]

StepCallback = Callable[[int, int, int], None]
"""``callback(step_index, num_steps, timestep)`` called after every denoising step (progress bars)."""


@dataclass(frozen=True)
class SamplingSettings:
    """How one volume is sampled: solver name, steps, DDIM eta and classifier-free guidance scale."""

    sampler: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    guidance_scale: float = 1.0

    def __post_init__(self) -> None:
        check_sampler(self.sampler, self.eta)


#: The default of every entry point (``xray2mri generate``, inference.json, the evaluator, MONAI Label, the demo):
#: DPM-Solver++ 2M at 5 steps, the fewest steps whose PSNR / SSIM / RSSIM / adjacent-slice r are within the
#: run-to-run noise of DDIM at 50 steps on the validation knees (``scripts/sampler_steps.py``, the table in
#: docs/performance.md); 10x fewer UNet calls. ``SamplingSettings("ddim", 50)`` is the paper's sampler.
DEFAULT_SAMPLING = SamplingSettings("dpmpp_2m", 5)


class DiffusionSampler:
    """Denoise latents with a solver, optionally with classifier-free guidance (CFG).

    Args:
        solver: a ``Solver`` (``build_solver``); its timesteps are reset per call.
        num_inference_steps: solver steps.
        guidance_scale: CFG scale g; ``eps = eps_uncond + g * (eps_cond - eps_uncond)``. ``g == 1`` runs the
            conditional model only; any other value runs conditional and unconditional halves in ONE batch.
        null_masks: names of the model's boolean keyword arguments that switch a sample to its null
            condition; the unconditional half gets ``True`` for every one of them.
    """

    def __init__(
        self,
        solver: Solver,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        null_masks: Sequence[str] = ("drop_context", "drop_latent"),
    ) -> None:
        self.solver = solver
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = float(guidance_scale)
        self.null_masks = tuple(null_masks)

    @classmethod
    def from_settings(
        cls, settings: SamplingSettings, num_train_timesteps: int = 1000, noise_schedule: Mapping | None = None,
        prediction_type: str = "epsilon",
    ) -> DiffusionSampler:
        """The sampler of ``settings`` for a model trained with this schedule (a fresh solver: no shared state)."""
        solver = build_solver(settings.sampler, num_train_timesteps, noise_schedule, prediction_type, settings.eta)
        return cls(solver, settings.steps, settings.guidance_scale)

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
        model's null condition). ``generator`` drives the DDIM ``eta > 0`` noise; it must live on ``noise.device``.
        """
        conditions = dict(conditions or {})
        timesteps = self.solver.timesteps(self.num_inference_steps)
        x = noise * self.solver.init_noise_sigma
        for index, t in enumerate(timesteps.tolist()):
            eps = self.predict_noise(model, x, t, conditions)
            x = self.solver.step(eps, t, x, generator)
            if callback is not None:
                callback(index, len(timesteps), t)
        return x


def _double(value: torch.Tensor | None) -> torch.Tensor | None:
    """Repeat a condition for the conditional and unconditional halves of a CFG batch."""
    return None if value is None else torch.cat([value, value])
