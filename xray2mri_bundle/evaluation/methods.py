"""Registry of the compared methods and their construction.

- ``full``: the proposed model, X-ray latent + X-ray embedding + depth + p/i guidance (``diffusion.pt``);
- ``xray_no_guidance``: ablation, X-ray latent, embedding and depth but no p/i adaptive-weight guidance
  (a UNet trained with use_guidance=False; ``diffusion_xray_no_guidance.pt``);
- ``ldm_depth_only``: classic LDM told only the depth, no X-ray latent, no embedding, no guidance
  (use_xray_latent=use_context=use_guidance=False; ``diffusion_ldm_depth_only.pt``);
- ``mean_volume``: the mean training volume (``baselines.MeanVolume``; training split only);
- ``nearest_xray``: the training knee with the nearest X-ray crop, L2 on 32 x 32 crops
  (``baselines.NearestXray``; training split only);
- ``knn_xray``: the mean volume of the k (default 5) training knees with the nearest X-ray crops;
- ``oracle_knee``: the training knee closest to the TRUE volume (``baselines.OracleKnee``): a ceiling that
  looks at the answer, marked as an oracle, never a method;
- ``autoencoder_ceiling``: the TRUE slices through the shipped autoencoder (``baselines.AutoencoderCeiling``):
  the ceiling of every latent diffusion model that decodes with it (an oracle too).

Scoring one sample against the truth favours blurred answers (two samples of a knee differ from each other
about as much as from the truth), so a diffusion method is also scored as the mean of N samples
(:class:`SampleMean`, reported as ``<name>_mean<N>``); its first sample is the single-sample score
(:class:`FirstSample` replays it, so the single-sample rows cost nothing extra).

A diffusion method's checkpoint is looked up in the model folder as ``diffusion.pt`` (full),
``diffusion_<name>.pt`` or ``<name>/diffusion.pt`` (ablations); autoencoder and classifier are shared
(``autoencoder.pt``, ``classifier.pt``). The UNet flags stored with an ablation's checkpoint are checked
against the registry so a mislabelled file is refused, not silently evaluated under the wrong name.

``DiffusionMethod`` draws a volume at any depths from a loaded ``VolumeGenerator``: the X-ray conditions are
computed once per knee (an LRU keyed by the knee, so the depth sweep and the interpolation strip reuse them),
one shared initial noise per knee (Algorithm 2, seeded by the knee), DDIM over chunks of depths.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from xray2mri_bundle.diffusion import DEFAULT_SAMPLING, SamplingSettings

from .baselines import AutoencoderCeiling, MeanVolume, NearestXray, OracleKnee

__all__ = [
    "METHODS", "DiffusionMethod", "FirstSample", "MethodSpec", "SampleMean", "base_method",
    "build_autoencoder_ceiling", "build_baseline", "build_method", "describe", "diffusion_checkpoint", "is_oracle",
    "method_kind", "parse_methods",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MethodSpec:
    """One compared method. ``unet_flags``: the ``use_*`` flags its UNet must have been trained with."""

    name: str
    kind: Literal["diffusion", "baseline", "oracle"]
    description: str
    unet_flags: Mapping[str, bool] = field(default_factory=dict)

    @property
    def checkpoint_names(self) -> tuple[str, ...]:
        """Candidate diffusion checkpoint paths relative to the model folder, in lookup order."""
        if self.kind != "diffusion":
            return ()
        if self.name == "full":
            return ("diffusion.pt",)
        return (f"diffusion_{self.name}.pt", f"{self.name}/diffusion.pt")


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("full", "diffusion", "proposed model: X-ray latent, X-ray embedding, depth, p/i guidance",
                   {"use_depth": True, "use_xray_latent": True, "use_context": True, "use_guidance": True}),
        MethodSpec("xray_no_guidance", "diffusion",
                   "ablation: X-ray latent, X-ray embedding and depth, no p/i adaptive-weight guidance",
                   {"use_depth": True, "use_xray_latent": True, "use_context": True, "use_guidance": False}),
        MethodSpec("ldm_depth_only", "diffusion", "classic LDM conditioned on the depth only (no X-ray input)",
                   {"use_depth": True, "use_xray_latent": False, "use_context": False, "use_guidance": False}),
        MethodSpec("mean_volume", "baseline", "mean training MRI volume (same for every X-ray)"),
        MethodSpec("nearest_xray", "baseline",
                   "MRI volume of the training knee with the nearest X-ray crop (L2 distance of 32 x 32 crops)"),
        MethodSpec("knn_xray", "baseline",
                   "mean MRI volume of the k training knees with the nearest X-ray crops (default k = 5)"),
        MethodSpec("oracle_knee", "oracle",
                   "ORACLE (a ceiling, not a method): the training knee whose MRI is closest to the true volume"),
        MethodSpec("autoencoder_ceiling", "oracle",
                   "ORACLE (a ceiling, not a method): the true MRI encoded and decoded by the shipped autoencoder"),
    )
}

#: seed step between the samples of one knee in :class:`SampleMean` (sample 0 uses the knee's own seed)
SAMPLE_SEED_STRIDE = 7919


def base_method(name: str) -> str:
    """Registry name behind a reported name (``full_mean4`` -> ``full``)."""
    base, _, n = name.rpartition("_mean")
    return base if base in METHODS and n.isdigit() else name


def method_kind(name: str) -> str:
    """'diffusion', 'baseline', 'oracle' (or '' for an unknown name) of a reported name."""
    spec = METHODS.get(base_method(name))
    return spec.kind if spec else ""


def is_oracle(name: str) -> bool:
    """True for references that look at the true volume (never a method to beat)."""
    return method_kind(name) == "oracle"


def describe(name: str) -> str:
    """One-line description of a reported name (sample means say so)."""
    base = base_method(name)
    if base not in METHODS:
        return ""
    text = METHODS[base].description
    return text if base == name else f"{text}; mean of {name.rpartition('_mean')[2]} samples"


class SampleMean:
    """Score the mean of ``n`` samples of a diffusion method (seeds ``seed + k * SAMPLE_SEED_STRIDE``).

    Keeps each knee's first sample for :class:`FirstSample` (the single-sample score of the same run).
    """

    def __init__(self, method: Any, n: int) -> None:
        if int(n) < 2:
            raise ValueError(f"a sample mean needs n >= 2, got {n}")
        self.method, self.n = method, int(n)
        self.name = f"{method.name}_mean{self.n}"
        self.first: dict[tuple[str, int], torch.Tensor] = {}

    def __call__(self, xray: torch.Tensor, depths: torch.Tensor, *, knee_id: str = "", seed: int = 0,
                 **kwargs: Any) -> torch.Tensor:
        volumes = [torch.as_tensor(self.method(xray, depths, knee_id=knee_id, seed=seed + k * SAMPLE_SEED_STRIDE,
                                               **kwargs)).float() for k in range(self.n)]
        self.first[(knee_id, int(seed))] = volumes[0]
        return torch.stack(volumes).mean(dim=0)


class FirstSample:
    """The single-sample score of a :class:`SampleMean` run: replays each knee's first sample (computed
    again when the knee was not in that run)."""

    def __init__(self, ensemble: SampleMean) -> None:
        self.ensemble = ensemble
        self.name = ensemble.method.name

    def __call__(self, xray: torch.Tensor, depths: torch.Tensor, *, knee_id: str = "", seed: int = 0,
                 **kwargs: Any) -> torch.Tensor:
        cached = self.ensemble.first.pop((knee_id, int(seed)), None)
        if cached is not None:
            return cached
        return self.ensemble.method(xray, depths, knee_id=knee_id, seed=seed, **kwargs)


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """Method names from "a,b,c" (or a list), order kept, duplicates dropped; unknown names raise."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def diffusion_checkpoint(model_dir: str | os.PathLike, name: str) -> Path:
    """Path of a diffusion method's checkpoint in ``model_dir``; FileNotFoundError says what to train."""
    spec = METHODS[name]
    for candidate in spec.checkpoint_names:
        path = Path(model_dir) / candidate
        if path.is_file():
            return path
    flags = ", ".join(f"{k}={v}" for k, v in spec.unet_flags.items())
    raise FileNotFoundError(
        f"no diffusion checkpoint for method {name!r} in {model_dir} (looked for {', '.join(spec.checkpoint_names)}); "
        f"train the diffusion stage with {flags} and export it under that name"
    )


class DiffusionMethod:
    """Volumes at arbitrary depths from a loaded ``inference.VolumeGenerator`` (see the module docstring).

    Args:
        name: the method's registry name.
        generator: a ``VolumeGenerator`` (its ``condition_encoder``, ``device`` and ``sample_depths``).
        steps, eta, guidance_scale, sampler: the sampling settings (``diffusion.SamplingSettings``).
        chunk_size: depths denoised together.
        cache_size: knees whose conditions are kept.
    """

    def __init__(
        self, name: str, generator: Any, steps: int = DEFAULT_SAMPLING.steps, eta: float = 0.0,
        guidance_scale: float = 1.0, chunk_size: int = 16, cache_size: int = 4, sampler: str = DEFAULT_SAMPLING.sampler,
    ) -> None:
        self.name = name
        self.generator = generator
        self.settings = SamplingSettings(sampler, int(steps), float(eta), float(guidance_scale))
        self.chunk_size = int(chunk_size)
        self.cache_size = int(cache_size)
        self._conditions: OrderedDict[str, Any] = OrderedDict()
        self.condition_calls = 0

    def conditions(self, xray: torch.Tensor, knee_id: str = "") -> Any:
        """The knee's ``XrayConditions``, computed on first use (``condition_calls`` counts computations)."""
        if knee_id and knee_id in self._conditions:
            self._conditions.move_to_end(knee_id)
            return self._conditions[knee_id]
        conditions = self.generator.condition_encoder(xray.to(self.generator.device, torch.float32))
        self.condition_calls += 1
        if knee_id:
            self._conditions[knee_id] = conditions
            while len(self._conditions) > self.cache_size:
                self._conditions.popitem(last=False)
        return conditions

    def __call__(
        self, xray: torch.Tensor, depths: torch.Tensor, *, knee_id: str = "", seed: int = 0,
        intensity: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Volume (H, W, n) float32 on CPU in [-1, 1] for ``xray`` (1, H, W) at ``depths`` (n,) in [0, 1].

        Same seed and depths ``linspace(0, 1, n)`` give ``VolumeGenerator(xray, slices=n, seed=seed)``'s volume
        (both run ``VolumeGenerator.sample_depths``). ``intensity`` is unused: the condition encoder computes i
        from the crop itself.
        """
        return self.generator.sample_depths(self.conditions(xray, knee_id), depths, self.settings, seed,
                                            self.chunk_size)


def _check_flags(name: str, unet: Any) -> None:
    """Refuse a UNet whose ``use_*`` flags differ from the method's registry entry."""
    wrong = {k: getattr(unet, k) for k, v in METHODS[name].unet_flags.items()
             if hasattr(unet, k) and bool(getattr(unet, k)) != v}
    if wrong:
        raise ValueError(f"the checkpoint loaded for {name!r} has a UNet with {wrong}, expected "
                         f"{dict(METHODS[name].unet_flags)}: is it the right file?")


LoadFn = Callable[..., Any]


def build_diffusion(
    name: str, model_dir: str | os.PathLike, device: torch.device | str = "cpu", steps: int = DEFAULT_SAMPLING.steps,
    eta: float = 0.0, guidance_scale: float = 1.0, chunk_size: int = 16, load_fn: LoadFn | None = None,
    profile: str | None = None, image_size: int | None = None, sampler: str = DEFAULT_SAMPLING.sampler,
) -> DiffusionMethod:
    """Load a diffusion method's pipeline with ``inference.load_pipeline`` (or ``load_fn``, same signature).

    ``model_dir`` may be the checkpoint folder or its parent (``models`` with ``profile``); ``image_size``, when
    given, must be the pipeline's (the evaluated knees are preprocessed at that size).
    """
    from xray2mri_bundle.inference.generator import load_pipeline, resolve_model_dir  # baselines need no networks

    folder = resolve_model_dir(model_dir, profile)
    checkpoint = diffusion_checkpoint(folder, name)
    generator = (load_fn or load_pipeline)(folder, profile, device, diffusion_checkpoint=checkpoint.relative_to(folder))
    _check_flags(name, generator.unet)
    size = getattr(generator, "image_size", None)
    if image_size is not None and size is not None and int(size) != int(image_size):
        raise ValueError(f"{checkpoint} generates {size} px slices but the knees are prepared at {image_size} px "
                         "(set --profile / --image-size to the model's)")
    return DiffusionMethod(name, generator, steps=steps, eta=eta, guidance_scale=guidance_scale,
                           chunk_size=chunk_size, sampler=sampler)


def build_baseline(
    name: str, training: Sequence[Mapping[str, Any]], metric: Literal["l2", "cosine"] = "l2", knn: int = 5,
) -> MeanVolume | NearestXray | OracleKnee:
    """Fit a baseline (or the oracle) on ``training`` knees (a knee dataset: items with ``mri`` (C, H, W, 50),
    ``xray``); ``knn``: neighbours of ``knn_xray``."""
    if len(training) == 0:
        raise ValueError(f"baseline {name!r} needs training knees, the training split is empty")
    if name == "mean_volume":
        return MeanVolume.fit(torch.as_tensor(training[i]["mri"]) for i in range(len(training)))
    names = [f"{k.get('subject')}_{k.get('side')}" for k in (training[i] for i in range(len(training)))]
    if name in ("nearest_xray", "knn_xray"):
        xrays = [torch.as_tensor(training[i]["xray"]) for i in range(len(training))]
        return NearestXray.fit(xrays, lambda i: torch.as_tensor(training[i]["mri"]), names, metric=metric,
                               k=1 if name == "nearest_xray" else knn, name=name)
    if name == "oracle_knee":
        return OracleKnee.fit((torch.as_tensor(training[i]["mri"]) for i in range(len(training))), names)
    raise ValueError(f"{name!r} is not a baseline")


def build_autoencoder_ceiling(
    model_dir: str | os.PathLike | None, device: torch.device | str = "cpu", profile: str | None = None,
    chunk_size: int = 16,
) -> AutoencoderCeiling:
    """The autoencoder round trip of the model folder's ``autoencoder.pt`` (an oracle: it is shown the truth)."""
    from xray2mri_bundle.checkpoint import load_network
    from xray2mri_bundle.inference.generator import resolve_model_dir

    if model_dir is None:
        raise ValueError("method 'autoencoder_ceiling' needs a model folder (it reads autoencoder.pt)")
    path = resolve_model_dir(model_dir, profile) / "autoencoder.pt"
    if not path.is_file():
        raise FileNotFoundError(f"autoencoder_ceiling: {path} not found (a trained bundle has it)")
    return AutoencoderCeiling(load_network(path, "autoencoder", device=torch.device(device)), chunk_size)


def build_method(
    name: str, model_dir: str | os.PathLike | None = None, training: Sequence[Mapping[str, Any]] = (),
    device: torch.device | str = "cpu", steps: int = DEFAULT_SAMPLING.steps, eta: float = 0.0,
    guidance_scale: float = 1.0, chunk_size: int = 16, nearest_metric: Literal["l2", "cosine"] = "l2",
    load_fn: LoadFn | None = None, profile: str | None = None, image_size: int | None = None, knn: int = 5,
    sampler: str = DEFAULT_SAMPLING.sampler,
) -> DiffusionMethod | MeanVolume | NearestXray | OracleKnee | AutoencoderCeiling:
    """Any registered method by name (see ``METHODS``); baselines are fitted on ``training`` knees."""
    spec = METHODS[parse_methods([name])[0]]
    if name == "autoencoder_ceiling":
        return build_autoencoder_ceiling(model_dir, device, profile, chunk_size)
    if spec.kind != "diffusion":
        return build_baseline(name, training, nearest_metric, knn)
    if model_dir is None:
        raise ValueError(f"method {name!r} needs a model folder")
    return build_diffusion(name, model_dir, device, steps, eta, guidance_scale, chunk_size, load_fn, profile,
                           image_size, sampler)
