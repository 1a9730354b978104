"""The solvers behind ``--sampler``: DPM-Solver++ 2M against its published update rule, every solver on a
denoiser whose answer is known, and the settings checks."""

from __future__ import annotations

import math

import pytest
import torch

from xray2mri_bundle.diffusion import SAMPLERS, DiffusionSampler, SamplingSettings, build_solver


def alphas_cumprod(steps: int = 1000) -> torch.Tensor:
    """The scaled-linear (Stable Diffusion) schedule, computed here independently of MONAI and diffusers."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


class PointMassDenoiser(torch.nn.Module):
    """The exact noise prediction when every latent is ``x0``: eps = (x - alpha_t x0) / sigma_t."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x0, self.abar = x0, alphas_cumprod()

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, **_: object) -> torch.Tensor:
        abar = self.abar[int(timesteps[0])].float()
        return (x - abar.sqrt() * self.x0) / (1 - abar).sqrt()


@pytest.mark.parametrize("name", ["dpmpp_2m", "unipc"])
def test_multistep_solvers_recover_the_clean_latent_exactly(name: str) -> None:
    """With the exact denoiser of a point mass the data prediction is x0 at every step, so a data-prediction
    solver ends on x0 (its last step goes to sigma = 0)."""
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    for steps in (5, 10, 20):
        out = DiffusionSampler(build_solver(name), steps)(PointMassDenoiser(x0), noise, {})
        assert torch.allclose(out, x0, atol=2e-4), (name, steps, float((out - x0).abs().max()))


def test_ddim_ends_at_the_first_training_noise_level() -> None:
    """DDIM's last step lands on alpha_bar_0 (set_alpha_to_one=False): x0 plus sqrt(1 - abar_0) of its eps."""
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    out = DiffusionSampler(build_solver("ddim"), 10)(PointMassDenoiser(x0), noise, {})
    abar = alphas_cumprod()
    # with the exact denoiser DDIM keeps eps constant: the one of its first timestep (901 on the 10-step grid)
    eps = (noise - abar[901].sqrt().float() * x0) / (1 - abar[901]).sqrt().float()
    expected = math.sqrt(float(abar[0])) * x0 + math.sqrt(1 - float(abar[0])) * eps
    assert torch.allclose(out, expected, atol=1e-4)


def test_dpm_solver_pp_2m_follows_the_published_update_rule() -> None:
    """Lu et al. 2022 (DPM-Solver++, Algorithm 2), written out here with lambda = log(alpha / sigma):
    first order x' = (s'/s) x - a' (e^-h - 1) D;  second order the same with D = (1 + 1/2r) D_i - 1/2r D_(i-1),
    r = h_(i-1) / h_i. The first step is first order (no history yet); the last one goes to sigma = 0, where
    x' = D. Checked on a model whose eps depends on x and t, so every term matters."""
    steps = 6
    solver = build_solver("dpmpp_2m")
    timesteps = solver.timesteps(steps).tolist()
    abar = alphas_cumprod()

    def model(x: torch.Tensor, t: torch.Tensor, **_: object) -> torch.Tensor:
        return torch.tanh(0.7 * x + 0.001 * float(t[0]))

    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = DiffusionSampler(solver, steps)(model, x.float(), {})

    def alpha_sigma(t: int | None) -> tuple[float, float]:
        if t is None:
            return 1.0, 0.0
        return math.sqrt(float(abar[t])), math.sqrt(1 - float(abar[t]))

    def lam(a: float, s: float) -> float:
        return math.log(a / s) if s > 0 else math.inf

    previous_d, previous_h = None, None
    for i, t in enumerate(timesteps):
        a, s = alpha_sigma(t)
        t_next = timesteps[i + 1] if i + 1 < steps else None
        a_next, s_next = alpha_sigma(t_next)
        d = (x - s * model(x, torch.tensor([t]))) / a
        if t_next is None:
            x = d  # sigma' = 0: x' = 0 * x - 1 * (0 - 1) * D
            break
        h = lam(a_next, s_next) - lam(a, s)
        first_order = previous_d is None
        if not first_order:
            r = previous_h / h
            d_used = (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * previous_d
        else:
            d_used = d
        x = (s_next / s) * x - a_next * (math.exp(-h) - 1) * d_used
        previous_d, previous_h = d, h
    assert torch.allclose(got.double(), x, atol=1e-4), float((got.double() - x).abs().max())


def test_every_sampler_has_a_solver_and_settings_are_checked() -> None:
    for name in SAMPLERS:
        timesteps = build_solver(name).timesteps(10)
        assert len(timesteps) == 10 and torch.all(timesteps[:-1] > timesteps[1:])
    with pytest.raises(ValueError, match="unknown sampler"):
        SamplingSettings(sampler="euler")
    with pytest.raises(ValueError, match="deterministic: eta must be 0"):
        build_solver("unipc", eta=0.5)
    with pytest.raises(ValueError, match="num_inference_steps"):
        build_solver("dpmpp_2m").timesteps(0)
    with pytest.raises(ValueError, match="no diffusers equivalent"):
        build_solver("dpmpp_2m", noise_schedule={"schedule": "sigmoid_beta"})


def test_a_solver_call_starts_fresh() -> None:
    """Multistep history must not leak from one chunk of depths to the next."""
    x0 = torch.zeros(1, 4, 8, 8)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    sampler = DiffusionSampler(build_solver("unipc"), 7)

    def model(x: torch.Tensor, t: torch.Tensor, **_: object) -> torch.Tensor:
        return torch.sin(x) + 0.0005 * float(t[0]) + 0 * x0

    assert torch.equal(sampler(model, noise, {}), sampler(model, noise, {}))
