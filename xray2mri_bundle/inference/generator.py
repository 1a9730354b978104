"""Pseudo-MRI volume generation (the paper's Algorithm 2): one X-ray crop -> a stack of coronal slices.

The generator only batches depths and stacks slices; the denoising loop is ``diffusion.DiffusionSampler`` and
the conditions come from ``diffusion.ConditionEncoder``. Algorithm 2 samples ONE initial noise and reuses it for every
depth; the conditions do not depend on the depth, so they are computed once and broadcast.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xray2mri_bundle.data.datasets import slice_depths
from xray2mri_bundle.data.frame import CANONICAL_POSE, JOINT_CENTRED, WorldFrame
from xray2mri_bundle.data.pose import POSE_TEMPLATE_FILE, model_frame
from xray2mri_bundle.diffusion import (
    DEFAULT_SAMPLING,
    ConditionEncoder,
    DiffusionSampler,
    SamplingSettings,
    XrayConditions,
    decode_slices,
)

__all__ = [
    "CHECKPOINT_FILES",
    "REFERENCE_SLICES",
    "REFERENCE_SPACING_MM",
    "GenerationResult",
    "VolumeGenerator",
    "load_pipeline",
    "resolve_model_dir",
    "sha256_file",
    "slice_depths",
    "slice_spacing_mm",
]

logger = logging.getLogger(__name__)

#: The training volumes: 50 coronal slices (13..63 of 80) of 1.5 mm (``xray2mri_bundle.constants``).
from xray2mri_bundle.constants import REFERENCE_SLICES, REFERENCE_SPACING_MM  # noqa: E402

ProgressFn = Callable[[int, int], None]
"""``progress(done, total)`` in denoising steps summed over all chunks (for a progress bar)."""


def slice_spacing_mm(
    slices: int, reference_slices: int = REFERENCE_SLICES, reference_spacing_mm: float = REFERENCE_SPACING_MM
) -> float:
    """Distance between generated slice centres (mm) when ``slices`` depths span the training extent.

    Depth 0 and 1 are the centres of the first and last training slice, 49 x 1.5 = 73.5 mm apart, so
    s slices are ``73.5 / (s - 1)`` mm apart (1.5 mm at s = 50, ~0.147 mm at s = 500).
    """
    if slices <= 1:
        return reference_spacing_mm * reference_slices
    return reference_spacing_mm * (reference_slices - 1) / (slices - 1)


@dataclass
class GenerationResult:
    """One generated pseudo-MRI volume (synthetic, not for diagnosis).

    ``volume``: (H, W, S) float32 on CPU in [-1, 1]; slice k is depth ``depths[k]`` (the three identical
    decoder channels are averaged). ``timings`` in seconds: conditions, sampling, decoding, total, per_slice.
    """

    volume: torch.Tensor
    depths: torch.Tensor
    seed: int
    timings: dict[str, float]
    num_inference_steps: int
    eta: float
    guidance_scale: float
    shared_noise: bool
    per_slice_conditions: bool
    kl_probs: list[float] | None = None
    """The KOA classifier's KL-grade probabilities for the crop (reported; a model output, not a grading)."""
    sampler: str = DEFAULT_SAMPLING.sampler
    """Name of the solver (``diffusion.SAMPLERS``)."""

    @property
    def slices(self) -> int:
        return int(self.volume.shape[-1])


class VolumeGenerator:
    """Generate a pseudo-MRI volume from one knee X-ray crop.

    Args:
        unet: the denoiser (``XrayConditionedUNet`` with EMA weights, eval mode).
        autoencoder: MONAI ``AutoencoderKL``; D decodes ``z / scale_factor``.
        condition_encoder: computes the depth-independent conditions from the crop.
        scale_factor: latent scale (``z = scale * E1(x)`` in diffusion space), stored with diffusion.pt.
        device: where the networks live.
        num_train_timesteps, noise_schedule, prediction_type: how the UNet was trained (stored with
            diffusion.pt); every call builds its solver for them (``DiffusionSampler.from_settings``).
    """

    def __init__(
        self,
        unet: nn.Module,
        autoencoder: nn.Module,
        condition_encoder: ConditionEncoder,
        scale_factor: float = 1.0,
        device: str | torch.device = "cpu",
        num_train_timesteps: int = 1000,
        noise_schedule: Mapping[str, Any] | None = None,
        prediction_type: str = "epsilon",
    ) -> None:
        self.unet = unet
        self.autoencoder = autoencoder
        self.condition_encoder = condition_encoder
        self.scale_factor = float(scale_factor)
        self.device = torch.device(device)
        self.num_train_timesteps = int(num_train_timesteps)
        self.noise_schedule = dict(noise_schedule or {})
        self.prediction_type = str(prediction_type)
        # provenance, filled by ``load_pipeline``: profile, checkpoint name -> sha256, weights used, input size
        self.profile: str | None = None
        self.checkpoints: dict[str, str] = {}
        self.weights: str = "model"
        self.image_size: int | None = None
        #: the MRI frame it was trained in (``settings.mri_frame``) and, for the canonical-pose frame, the model
        #: folder's template (``mri_pose_template.pt``; None when the folder has none)
        self.mri_frame: str = JOINT_CENTRED
        self.pose_template: Path | None = None
        self.pose_fit_size: bool = False
        #: latents decoded together: the decoder's 128-256 px activations run faster in small batches on a CPU
        #: (50 slices at 16 per batch: 1.1 s, in one batch: 1.5 s, small profile, one thread); same slices
        self.decode_batch: int = 16
        # opt-in speed-ups (``inference.acceleration.accelerate``): UNet autocast dtype, what was switched on
        self.autocast_dtype: torch.dtype | None = None
        self.acceleration: dict[str, object] = {"precision": "fp32", "fast_attention_blocks": 0, "compile": False}

    def reference_frame(self, mri: str | os.PathLike, side: str | None = None) -> WorldFrame:
        """Where this model's frame lies in the real MRI series ``mri`` (``data.mri_transforms.reference_frame``:
        the joint-centred frame, or, for a model trained in the canonical-pose frame, that frame found by
        registering ``mri`` to the model's template), so that a generated volume written in it overlays ``mri``."""
        from xray2mri_bundle.data.mri_transforms import reference_frame

        template = None
        if self.mri_frame == CANONICAL_POSE:
            if self.pose_template is None:
                raise ValueError(f"the model was trained in the canonical-pose MRI frame, but its folder holds no "
                                 f"{POSE_TEMPLATE_FILE}: the volume cannot be placed in {mri}")
            template = self.pose_template
        return reference_frame(str(mri), side, pose_template=template, pose_fit_size=self.pose_fit_size)

    def sampler(self, settings: SamplingSettings = DEFAULT_SAMPLING) -> DiffusionSampler:
        """A fresh ``DiffusionSampler`` of ``settings`` for this model's noise schedule."""
        return DiffusionSampler.from_settings(settings, self.num_train_timesteps, self.noise_schedule,
                                              self.prediction_type)

    @torch.inference_mode()
    def __call__(
        self,
        xray: torch.Tensor,
        slices: int = REFERENCE_SLICES,
        num_inference_steps: int = DEFAULT_SAMPLING.steps,
        eta: float = DEFAULT_SAMPLING.eta,
        guidance_scale: float = DEFAULT_SAMPLING.guidance_scale,
        seed: int = 0,
        chunk_size: int = 16,
        shared_noise: bool = True,
        per_slice_conditions: bool = False,
        progress: ProgressFn | None = None,
        sampler: str = DEFAULT_SAMPLING.sampler,
    ) -> GenerationResult:
        """Generate ``slices`` slices for one crop ``xray`` (1, H, W) or (1, 1, H, W) float in [-1, 1].

        Args:
            slices: number of depths s, evenly spaced in [0, 1] (s > 50 interpolates).
            num_inference_steps, eta, guidance_scale, sampler: the sampling settings (``SamplingSettings``:
                solver steps, DDIM eta, CFG scale with 1 = no CFG, solver name).
            seed: seeds a ``torch.Generator`` on ``device``; same seed + device + settings -> same volume.
            chunk_size: depths denoised together (memory: with CFG the UNet batch is 2 x chunk_size). With
                eta = 0 the result does not depend on it.
            shared_noise: one initial noise for all depths (Algorithm 2); False draws one per depth.
            per_slice_conditions: the paper's Algorithm 2 as written: conditions recomputed for every
                slice and batch size 1 (slow; for the benchmark's ratio). Same volume up to float rounding.
            progress: optional ``progress(done, total)`` callback, outside the maths.
        """
        settings = SamplingSettings(sampler, int(num_inference_steps), float(eta), float(guidance_scale))
        xray = xray.to(self.device, torch.float32)
        depths = slice_depths(slices).to(self.device)
        timings = {"conditions": 0.0, "sampling": 0.0, "decoding": 0.0}
        start = time.perf_counter()
        with _timer(timings, "conditions", self.device):
            conditions = self.condition_encoder(xray)
        refresh = (lambda: self.condition_encoder(xray)) if per_slice_conditions else None
        volume = self.sample_depths(conditions, depths, settings, seed, 1 if per_slice_conditions else chunk_size,
                                    shared_noise, progress, timings, refresh)
        timings["total"] = time.perf_counter() - start
        timings["per_slice"] = timings["total"] / slices
        kl = None if conditions.kl_probs is None else [float(v) for v in conditions.kl_probs[0].cpu()]
        return GenerationResult(
            volume=volume, depths=depths.cpu(), seed=int(seed), timings=timings,
            num_inference_steps=settings.steps, eta=settings.eta, guidance_scale=settings.guidance_scale,
            shared_noise=shared_noise, per_slice_conditions=per_slice_conditions, kl_probs=kl,
            sampler=settings.sampler,
        )

    @torch.inference_mode()
    def sample_depths(
        self,
        conditions: XrayConditions,
        depths: torch.Tensor,
        settings: SamplingSettings = DEFAULT_SAMPLING,
        seed: int = 0,
        chunk_size: int = 16,
        shared_noise: bool = True,
        progress: ProgressFn | None = None,
        timings: dict[str, float] | None = None,
        refresh: Callable[[], XrayConditions] | None = None,
    ) -> torch.Tensor:
        """Volume (H, W, n) float32 on CPU in [-1, 1] at ``depths`` (n,) in [0, 1] for one crop's ``conditions``.

        The seeded initial noise (one shared by all depths, Algorithm 2, or one per depth), then the sampler
        over chunks of ``chunk_size`` depths, then decoding. ``timings`` (when given) accumulates the seconds
        of sampling and decoding; ``refresh`` recomputes the conditions before every chunk after the first
        (the paper's per-slice Algorithm 2).
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        timings = {"conditions": 0.0, "sampling": 0.0, "decoding": 0.0} if timings is None else timings
        sampler = self.sampler(settings)
        depths = torch.as_tensor(depths, dtype=torch.float32).to(self.device)
        count = int(depths.shape[0])
        generator = torch.Generator(device=self.device).manual_seed(int(seed))
        shape = conditions.latent_shape
        if shared_noise:
            noise = torch.randn((1, *shape), generator=generator, device=self.device).expand(count, *shape)
        else:
            noise = torch.randn((count, *shape), generator=generator, device=self.device)
        total_steps = math.ceil(count / chunk_size) * settings.steps
        images = []
        for number, index in enumerate(_chunks(count, chunk_size)):
            if refresh is not None and index.start > 0:
                with _timer(timings, "conditions", self.device):
                    conditions = refresh()
            callback = None
            if progress is not None:
                done = number * settings.steps

                def callback(step: int, _steps: int, _t: int, done: int = done) -> None:
                    progress(done + step + 1, total_steps)
            with _timer(timings, "sampling", self.device), torch.autocast(
                self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
            ):
                latents = sampler(self.unet, noise[index], conditions.model_kwargs(depths[index]),
                                  generator=generator, callback=callback)
            with _timer(timings, "decoding", self.device):
                for part in latents.float().split(self.decode_batch):
                    images.append(decode_slices(self.autoencoder, part, self.scale_factor).cpu())
        _sync(self.device)
        return torch.cat(images).permute(1, 2, 0).contiguous()


def _chunks(total: int, size: int) -> Iterator[slice]:
    for begin in range(0, total, size):
        yield slice(begin, min(begin + size, total))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _timer(timings: dict[str, float], key: str, device: torch.device) -> Iterator[None]:
    """Add the wall time of a block (between device syncs) to ``timings[key]``."""
    _sync(device)
    start = time.perf_counter()
    yield
    _sync(device)
    timings[key] += time.perf_counter() - start


# ------------------------------------------------------------------------------------------- checkpoint loading
#: One final export per training stage (``xray2mri_bundle.engines.checkpoints``), in ``models/<profile>/``.
CHECKPOINT_FILES: tuple[str, ...] = ("autoencoder.pt", "classifier.pt", "diffusion.pt")


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (recorded in every sidecar so an output names the exact weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_bytes), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_model_dir(model_dir: str | os.PathLike, profile: str | None) -> Path:
    """``model_dir/<profile>`` when it holds a diffusion.pt, else ``model_dir`` itself (both layouts work)."""
    model_dir = Path(model_dir)
    if profile and (model_dir / profile / "diffusion.pt").is_file():
        return model_dir / profile
    return model_dir


def _check_profile(checkpoint: Mapping[str, Any], path: Path, profile: str | None) -> None:
    saved = checkpoint.get("profile")
    if profile is not None and saved is not None and saved != profile:
        raise ValueError(f"checkpoint {path} was trained with profile {saved!r}, not {profile!r}")


def load_pipeline(
    model_dir: str | os.PathLike,
    profile: str | None = None,
    device: str | torch.device = "cpu",
    diffusion_checkpoint: str | os.PathLike | None = None,
    unet: nn.Module | None = None,
    autoencoder: nn.Module | None = None,
    classifier: nn.Module | None = None,
    xray_encoder: nn.Module | None = None,
    clip_folder: str | os.PathLike | None = None,
) -> VolumeGenerator:
    """Load a trained bundle into a ``VolumeGenerator`` (EMA weights when present, eval mode, no gradients).

    Expects ``model_dir`` (or ``model_dir/<profile>``) to hold the final exports of the three stages
    (``autoencoder.pt``, ``classifier.pt``, ``diffusion.pt``; layout in ``xray2mri_bundle.checkpoint``, either
    format version). Every network is rebuilt from the constructor arguments stored with it, unless given here
    (a bundle config's ``network_def`` etc.); weights are always loaded here (``checkpoint.load_networks``).
    ``diffusion.pt`` also holds the latent scale factor and the noise schedule (``settings``).

    ``profile``: expected profile (None: the checkpoint's); a checkpoint of another profile raises
    ``ValueError``. ``diffusion_checkpoint``: another diffusion file (an ablation, e.g.
    ``diffusion_xray_no_guidance.pt``; relative paths are taken inside the model folder) sharing the
    autoencoder and classifier. classifier.pt is needed only when the UNet uses the p guidance. Missing files
    raise one ``FileNotFoundError`` naming each missing file. ``clip_folder``: local CLIP vision model, for a
    model trained with the frozen CLIP encoder.
    """
    from xray2mri_bundle.checkpoint import load_networks, read_checkpoint, weights_used
    from xray2mri_bundle.data.intensity import IntensityDistribution
    from xray2mri_bundle.networks import get_profile

    folder = resolve_model_dir(model_dir, profile)
    diffusion_path = folder / (diffusion_checkpoint or "diffusion.pt")
    diffusion = read_checkpoint(diffusion_path) if diffusion_path.is_file() else {"networks": {}}
    settings = dict(diffusion.get("settings") or {})
    unet_config = dict((diffusion["networks"].get("unet") or {}).get("config") or {})
    use_guidance = bool(unet_config.get("use_guidance", True))
    needed = [name for name in CHECKPOINT_FILES if name != "classifier.pt" or use_guidance]
    paths = {name: folder / name for name in needed}
    paths["diffusion.pt"] = diffusion_path
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"missing checkpoint file(s): {', '.join(missing)}. A trained bundle has {', '.join(needed)} in "
            f"{folder} (train them with `python -m monai.bundle run training --config_file configs/train.json`)"
        )
    _check_profile(diffusion, diffusion_path, profile)
    profile = profile or diffusion.get("profile") or "small"
    device = torch.device(device)

    ae_ckpt = read_checkpoint(paths["autoencoder.pt"])
    _check_profile(ae_ckpt, paths["autoencoder.pt"], profile)
    autoencoder = load_networks(ae_ckpt, ["autoencoder"], {"autoencoder": autoencoder}, device=device)["autoencoder"]
    if use_guidance:
        cls_ckpt = read_checkpoint(paths["classifier.pt"])
        _check_profile(cls_ckpt, paths["classifier.pt"], profile)
        classifier = load_networks(cls_ckpt, ["classifier"], {"classifier": classifier}, device=device)["classifier"]
    else:
        classifier = None
    names = [name for name in ("unet", "xray_encoder") if name in diffusion["networks"]]
    loaded = load_networks(diffusion, names, {"unet": unet, "xray_encoder": xray_encoder}, clip_folder=clip_folder,
                           device=device)
    unet, xray_encoder = loaded["unet"], loaded.get("xray_encoder")
    unet_key = weights_used(diffusion, "unet")

    scale = diffusion.get("scale_factor")
    if scale is None:
        raise KeyError(f"checkpoint {diffusion_path} has no 'scale_factor' (the latent scale used in training)")
    intensity = IntensityDistribution() if settings.get("use_intensity", True) else None
    encoder = ConditionEncoder(autoencoder, xray_encoder, classifier, intensity)
    generator = VolumeGenerator(
        unet, autoencoder, encoder, float(scale), device,
        num_train_timesteps=int(settings.get("num_train_timesteps", 1000)),
        noise_schedule=dict(settings.get("noise_schedule") or {}),
        prediction_type=str(settings.get("prediction_type", "epsilon")),
    )
    generator.profile = profile
    generator.checkpoints = {
        str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path): sha256_file(path)
        for path in paths.values()
    }
    generator.weights = unet_key
    generator.sampler(DEFAULT_SAMPLING)  # the default solver's imports (diffusers) at load time, not per volume
    generator.image_size = int(settings.get("image_size") or get_profile(profile)["image_size"])
    generator.mri_frame, generator.pose_template = model_frame(settings, folder)
    generator.pose_fit_size = bool(settings.get("mri_pose_fit_size", False))
    if generator.mri_frame == CANONICAL_POSE and generator.pose_template is None:
        logger.warning("%s was trained in the canonical-pose MRI frame but %s has no %s: its volumes lie in that "
                       "frame and cannot be placed in a reference MRI", diffusion_path, folder, POSE_TEMPLATE_FILE)
    logger.info("loaded the %s pipeline from %s (%s weights, scale factor %.4f)", profile, folder, unet_key, scale)
    return generator
