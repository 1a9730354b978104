"""Reverse-process solvers behind one interface: DDIM (MONAI) and the multistep DPM-Solver++ 2M and UniPC
(diffusers), for epsilon- or v-prediction weights (``PREDICTION_TYPES``, stored with the checkpoint).

A solver is built for the noise schedule a model was trained with (``noise_schedule`` in its checkpoint) and
answers two calls: ``timesteps(n)`` (the descending grid of one sampling run; resets any multistep history)
and ``step(eps, t, x, generator) -> x_prev``. ``DiffusionSampler`` runs the loop and the guidance over any of them.

- ``ddim``: MONAI's ``DDIMScheduler`` on the uniform DDIM grid ``k * (T // n) + 1`` (as in the DDIM/LDM samplers);
  ``eta`` > 0 adds DDPM-like noise.
- ``dpmpp_2m``: diffusers' ``DPMSolverMultistepScheduler`` with ``algorithm_type="dpmsolver++"``, order 2, the
  settings its authors give for guided sampling (data prediction, second order, first order at the last steps
  below 15 steps), ``trailing`` grid (starts at t = T - 1, so few steps still begin from pure noise).
- ``unipc``: diffusers' ``UniPCMultistepScheduler``, order 2, ``bh2`` (the variant for guided sampling),
  corrector on, same grid.
The multistep solvers are deterministic (``eta`` must be 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch
from monai.networks.schedulers import DDIMScheduler

__all__ = [
    "DEFAULT_SCHEDULE",
    "PREDICTION_TYPES",
    "check_prediction_type",
    "SAMPLERS",
    "DDIMSolver",
    "DiffusersSolver",
    "Solver",
    "build_ddim_scheduler",
    "build_solver",
    "check_sampler",
    "uniform_ddim_timesteps",
]

#: Zero-1-to-3 / Stable Diffusion noise schedule (the paper initialises the UNet from Zero-123).
#: what a UNet predicts, in the spelling of MONAI's and diffusers' schedulers
PREDICTION_TYPES = ("epsilon", "v_prediction")

DEFAULT_SCHEDULE: dict = {"schedule": "scaled_linear_beta", "beta_start": 0.00085, "beta_end": 0.012}

#: Selectable samplers (``--sampler``): name -> one-line description.
SAMPLERS: dict[str, str] = {
    "ddim": "DDIM (MONAI DDIMScheduler), the paper's sampler",
    "dpmpp_2m": "DPM-Solver++ 2M (diffusers), multistep, deterministic",
    "unipc": "UniPC bh2 order 2 (diffusers), multistep predictor-corrector, deterministic",
}

#: MONAI schedule names -> diffusers ``beta_schedule`` names (same betas).
_DIFFUSERS_SCHEDULES = {"scaled_linear_beta": "scaled_linear", "linear_beta": "linear", "cosine": "squaredcos_cap_v2"}


class Solver(Protocol):
    """What ``DiffusionSampler`` needs of a solver."""

    name: str
    init_noise_sigma: float

    def timesteps(self, num_inference_steps: int) -> torch.Tensor:
        """Descending integer timesteps of one run (n,); starts a fresh run (multistep history cleared)."""

    def step(self, eps: torch.Tensor, t: int, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """x_t -> x_{t_prev} given the noise prediction ``eps`` (same shape as ``x``)."""


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


class DDIMSolver:
    """DDIM through MONAI's scheduler (``eta`` = 0 deterministic, 1 DDPM-like)."""

    name = "ddim"

    def __init__(self, scheduler: DDIMScheduler, eta: float = 0.0) -> None:
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.scheduler, self.eta = scheduler, float(eta)

    @property
    def init_noise_sigma(self) -> float:
        return float(self.scheduler.init_noise_sigma)

    def timesteps(self, num_inference_steps: int) -> torch.Tensor:
        return uniform_ddim_timesteps(self.scheduler, num_inference_steps)

    def step(self, eps: torch.Tensor, t: int, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return self.scheduler.step(eps, t, x, eta=self.eta, generator=generator)[0]


class DiffusersSolver:
    """A diffusers multistep scheduler (``DPMSolverMultistepScheduler``, ``UniPCMultistepScheduler``)."""

    def __init__(self, name: str, scheduler: object) -> None:
        self.name, self.scheduler = name, scheduler

    @property
    def init_noise_sigma(self) -> float:
        return float(self.scheduler.init_noise_sigma)

    def timesteps(self, num_inference_steps: int) -> torch.Tensor:
        total = int(self.scheduler.config.num_train_timesteps)
        if not 1 <= num_inference_steps <= total:
            raise ValueError(f"num_inference_steps must be in [1, {total}], got {num_inference_steps}")
        self.scheduler.set_timesteps(int(num_inference_steps))  # also clears the multistep history
        return self.scheduler.timesteps

    def step(self, eps: torch.Tensor, t: int, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return self.scheduler.step(eps, t, x, return_dict=False)[0]  # deterministic: no noise to draw


def _diffusers_kwargs(num_train_timesteps: int, noise_schedule: Mapping, prediction_type: str) -> dict:
    schedule = {**DEFAULT_SCHEDULE, **dict(noise_schedule)}
    name = schedule.pop("schedule")
    if name not in _DIFFUSERS_SCHEDULES:
        raise ValueError(f"noise schedule {name!r} has no diffusers equivalent; use --sampler ddim "
                         f"(diffusers samplers support {', '.join(_DIFFUSERS_SCHEDULES)})")
    kwargs = {"num_train_timesteps": int(num_train_timesteps), "beta_schedule": _DIFFUSERS_SCHEDULES[name],
              "prediction_type": prediction_type, "timestep_spacing": "trailing"}
    if name != "cosine":
        kwargs.update(beta_start=float(schedule["beta_start"]), beta_end=float(schedule["beta_end"]))
    return kwargs


def check_prediction_type(prediction_type: object) -> str:
    """``prediction_type`` if it is one of ``PREDICTION_TYPES``; ``ValueError`` otherwise."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    return str(prediction_type)


def check_sampler(name: object, eta: float = 0.0) -> str:
    """``name`` as a key of ``SAMPLERS`` (case and spaces ignored); ``ValueError`` for an unknown name, or for
    eta != 0 with a multistep solver (they are deterministic; eta is a DDIM setting)."""
    key = str(name).strip().lower()
    if key not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    if key != "ddim" and float(eta) != 0.0:
        raise ValueError(f"sampler {key} is deterministic: eta must be 0, got {eta} (eta is a DDIM setting)")
    return key


def build_solver(
    name: str = "ddim",
    num_train_timesteps: int = 1000,
    noise_schedule: Mapping | None = None,
    prediction_type: str = "epsilon",
    eta: float = 0.0,
) -> Solver:
    """The solver ``name`` (one of ``SAMPLERS``) for a model trained with this schedule and parametrisation."""
    name = check_sampler(name, eta)
    check_prediction_type(prediction_type)
    noise_schedule = dict(noise_schedule or {})
    if name == "ddim":
        scheduler = build_ddim_scheduler(num_train_timesteps, **noise_schedule, prediction_type=prediction_type)
        return DDIMSolver(scheduler, eta)
    kwargs = _diffusers_kwargs(num_train_timesteps, noise_schedule, prediction_type)
    if name == "dpmpp_2m":
        from diffusers import DPMSolverMultistepScheduler

        return DiffusersSolver(name, DPMSolverMultistepScheduler(
            algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True, thresholding=False, **kwargs))
    from diffusers import UniPCMultistepScheduler

    return DiffusersSolver(name, UniPCMultistepScheduler(
        solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, thresholding=False, **kwargs))
