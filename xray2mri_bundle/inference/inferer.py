"""The bundle's ``inferer``: a knee crop -> a generated volume, with the sampling settings fixed once.

A MONAI ``Inferer`` around :class:`~.generator.VolumeGenerator` (the network that ``network`` would be):
``inferer(crop)`` is ``generator(crop, slices=..., sampler=..., num_inference_steps=..., ...)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import Inferer

from xray2mri_bundle.diffusion import DEFAULT_SAMPLING

from .generator import REFERENCE_SLICES, GenerationResult, VolumeGenerator
from .settings import check_sampler

__all__ = ["VolumeInferer"]


class VolumeInferer(Inferer):
    """``crop`` (1, N, N) in [-1, 1] -> :class:`~.generator.GenerationResult` (volume (H, W, S)).

    The settings are those of ``VolumeGenerator.__call__``; ``network`` (default: ``generator``) is called
    with them, ``progress(done, total)`` reports solver steps.
    """

    def __init__(self, generator: VolumeGenerator, slices: int = REFERENCE_SLICES,
                 sampler: str = DEFAULT_SAMPLING.sampler, num_inference_steps: int = DEFAULT_SAMPLING.steps,
                 eta: float = DEFAULT_SAMPLING.eta, guidance_scale: float = DEFAULT_SAMPLING.guidance_scale,
                 seed: int = 0, chunk_size: int = 16, shared_noise: bool = True,
                 per_slice_conditions: bool = False) -> None:
        super().__init__()
        self.generator = generator
        self.slices, self.num_inference_steps, self.eta = slices, num_inference_steps, eta
        self.sampler = check_sampler(sampler, eta)
        self.guidance_scale, self.seed, self.chunk_size = guidance_scale, seed, chunk_size
        self.shared_noise, self.per_slice_conditions = shared_noise, per_slice_conditions

    @property
    def total_steps(self) -> int:
        """Solver steps of one volume (for a progress bar)."""
        chunks = self.slices if self.per_slice_conditions else math.ceil(self.slices / max(1, self.chunk_size))
        return chunks * self.num_inference_steps

    def __call__(self, inputs: torch.Tensor, network: Callable[..., GenerationResult] | None = None,
                 progress: Callable[[int, int], None] | None = None, **kwargs: Any) -> GenerationResult:
        network = self.generator if network is None else network
        return network(
            inputs, slices=self.slices, num_inference_steps=self.num_inference_steps, eta=self.eta,
            guidance_scale=self.guidance_scale, seed=self.seed, chunk_size=self.chunk_size,
            shared_noise=self.shared_noise, per_slice_conditions=self.per_slice_conditions, progress=progress,
            sampler=self.sampler, **kwargs,
        )
