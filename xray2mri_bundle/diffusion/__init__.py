"""The diffusion core below training and inference: conditions of an X-ray, solvers, the sampling loop, decoding.

- ``conditions``: ``encode_xray`` (the frozen E1 latent and p map, for sampling and training alike),
  ``ConditionEncoder`` (X-ray crop -> E1 latent, E2 context, p map, i map), ``XrayConditions``;
- ``solvers``: DDIM (MONAI) and DPM-Solver++ 2M / UniPC (diffusers) behind one ``Solver`` interface;
- ``sampler``: ``DiffusionSampler``, the one reverse-process loop with classifier-free guidance;
- ``latents``: ``training_latents`` (E1's posterior -> what the model learns), ``decode_slices`` (D(z / scale));
- ``inferer``: ``ConditionalDiffusionInferer``, MONAI's ``DiffusionInferer`` for training: noise, then denoise.
"""

from .conditions import ConditionEncoder, XrayConditions, encode_xray
from .inferer import ConditionalDiffusionInferer
from .latents import LATENT_TARGETS, decode_slices, training_latents
from .sampler import DEFAULT_SAMPLING, DiffusionSampler, SamplingSettings
from .solvers import PREDICTION_TYPES, SAMPLERS, build_ddim_scheduler, build_solver, uniform_ddim_timesteps

__all__ = [
    "DEFAULT_SAMPLING",
    "LATENT_TARGETS",
    "PREDICTION_TYPES",
    "SAMPLERS",
    "ConditionEncoder",
    "ConditionalDiffusionInferer",
    "DiffusionSampler",
    "SamplingSettings",
    "XrayConditions",
    "encode_xray",
    "build_ddim_scheduler",
    "build_solver",
    "decode_slices",
    "training_latents",
    "uniform_ddim_timesteps",
]
