"""Settings of the xray2mri MONAI Label app: ``--conf`` values at start-up, per-request overrides at run time.

MONAI Label hands ``--conf key value`` pairs to the app as strings, and a viewer sends the infer task's
``config`` back (possibly edited) as JSON ``params``. Both go through the same checks, so a bad value gives
one clear message: a ``ValueError`` at start-up, an HTTP 400 for a request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xray2mri_bundle.diffusion import DEFAULT_SAMPLING
from xray2mri_bundle.inference.settings import LIMITS, check_number, check_sampler

__all__ = ["LIMITS", "SIDES", "AppSettings", "GenerationParams", "parse_generation_params"]

#: Knee of the film to generate: "auto" = a unilateral film's own knee, the RIGHT knee of a bilateral film.
SIDES: tuple[str, ...] = ("auto", "right", "left")
@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings of one request: the ``sampler`` (solver) and its ``steps``, number of ``slices``
    (depths), noise ``seed``, classifier-free ``guidance_scale`` (1 = none) and the knee ``side`` of the film."""

    steps: int = DEFAULT_SAMPLING.steps
    slices: int = 50
    seed: int = 0
    guidance_scale: float = DEFAULT_SAMPLING.guidance_scale
    side: str = "auto"
    sampler: str = DEFAULT_SAMPLING.sampler

    def as_config(self) -> dict[str, Any]:
        """The infer task's user-editable config (shown by viewers, sent back with each request)."""
        return {"sampler": self.sampler, "steps": self.steps, "slices": self.slices, "seed": self.seed,
                "guidance_scale": self.guidance_scale, "side": self.side}


def parse_generation_params(values: Mapping[str, Any], defaults: GenerationParams | None = None) -> GenerationParams:
    """Checked ``GenerationParams`` from strings or JSON values; missing keys keep ``defaults``.

    Raises ``ValueError`` naming the first bad key, its allowed range and the value received.
    """
    base = defaults or GenerationParams()
    side = str(values.get("side", base.side)).strip().lower()
    if side not in SIDES:
        raise ValueError(f"side must be one of {', '.join(SIDES)}, got {values.get('side')!r}")
    return GenerationParams(
        steps=int(check_number("steps", values.get("steps", base.steps), int)),
        slices=int(check_number("slices", values.get("slices", base.slices), int)),
        seed=int(check_number("seed", values.get("seed", base.seed), int)),
        guidance_scale=float(check_number("guidance_scale", values.get("guidance_scale", base.guidance_scale), float)),
        side=side,
        sampler=check_sampler(values.get("sampler", base.sampler)),
    )


@dataclass(frozen=True)
class AppSettings:
    """Start-up settings of the app (``--conf`` keys of ``monailabel start_server``).

    models_dir: folder holding ``<profile>/{autoencoder,classifier,diffusion}.pt`` (or those files directly);
        default ``models/`` of the repository.
    profile: network profile of the checkpoints ("small" default, "paper", "tiny" for tests).
    device: "cpu", "cuda", "cuda:N"; empty = CUDA when available, else CPU.
    max_upload_mb: larger uploads are refused with HTTP 413 before they are decoded.
    defaults: sampling settings used when a request does not override them.
    """

    models_dir: Path
    profile: str = "small"
    device: str = ""
    max_upload_mb: float = 64.0
    defaults: GenerationParams = GenerationParams()

    @classmethod
    def from_conf(cls, conf: Mapping[str, str], default_models_dir: Path) -> AppSettings:
        """Parse MONAI Label's ``conf`` dictionary (string values); raises ``ValueError`` on a bad value."""
        try:
            max_upload_mb = float(conf.get("max_upload_mb", cls.max_upload_mb))
        except ValueError as exc:
            raise ValueError(f"conf max_upload_mb must be a number, got {conf['max_upload_mb']!r}") from exc
        if max_upload_mb <= 0:
            raise ValueError(f"conf max_upload_mb must be positive, got {max_upload_mb}")
        profile = str(conf.get("profile", cls.profile)).strip()
        if not profile:
            raise ValueError("conf profile must not be empty")
        return cls(
            models_dir=Path(conf.get("models_dir") or default_models_dir).expanduser().resolve(),
            profile=profile,
            device=str(conf.get("device", "")).strip(),
            max_upload_mb=max_upload_mb,
            defaults=parse_generation_params(conf),
        )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
