"""Baselines that need no diffusion model, fitted on the training split.

- ``MeanVolume``: the voxel-wise mean of the training MRI volumes; the same prediction for every X-ray. It is
  the volume that minimises the mean squared error over the training knees, so it is a strong PSNR baseline
  that carries no knee-specific structure (a floor for RSSIM and joint-space width).
- ``NearestXray``: the MRI volume of the training knee whose X-ray is nearest to the query X-ray, or with
  ``k > 1`` the voxel-wise mean of the k nearest knees' volumes (``knn_xray``: an X-ray-informed average, the
  strongest cheap PSNR reference once X-ray and MRI share the joint-centred frame). Feature: the preprocessed
  knee crop (the model's input, (1, H, W) in [-1, 1]) area-downsampled to 32 x 32 and flattened; distance:
  Euclidean (L2, default) or cosine. An embedding function (e.g. the trained E2 X-ray encoder) can replace it.
- ``OracleKnee``: the training knee whose MRI is closest (lowest MSE) to the TRUE volume of the query knee.
  It looks at the answer, so it is not a method but a ceiling: how well any "copy a training knee" answer could
  do. Marked as an oracle in every table.
- ``AutoencoderCeiling``: the query's TRUE slices encoded by the shipped autoencoder E1 (posterior mean) and
  decoded by D. Every latent diffusion model with this autoencoder generates through D, so this round trip
  bounds what any of them can score: if it is low, the autoencoder, not the diffusion model, is the limit.
  Also an oracle (it looks at the answer).

Both answer any set of depths in [0, 1]: the stored 50-slice volumes are linearly interpolated along depth,
so they run through the same evaluator (and the same depth sweep) as the diffusion methods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F

__all__ = ["AutoencoderCeiling", "MeanVolume", "NearestXray", "OracleKnee", "crop_feature", "sample_depths"]

FEATURE_SIZE = 32
"""Side of the downsampled crop used as the nearest-neighbour feature (32 x 32 = 1024 values)."""


def sample_depths(volume: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
    """Linearly interpolate a volume (C, H, W, S) at normalised depths (n,) in [0, 1] -> (C, H, W, n).

    Depth d sits at slice position d * (S - 1), as in the transforms (slice k of S has depth k / (S - 1)).
    """
    s = volume.shape[-1]
    pos = depths.to(torch.float64).clamp(0.0, 1.0) * (s - 1)
    pos = torch.where((pos - pos.round()).abs() < 1e-4, pos.round(), pos)  # real slice depths: exact copies
    lo = pos.floor().long().clamp(max=s - 1)
    hi = (lo + 1).clamp(max=s - 1)
    w = (pos - lo.to(pos.dtype)).to(volume.dtype).to(volume.device)
    lo, hi = lo.to(volume.device), hi.to(volume.device)
    return volume[..., lo] * (1 - w) + volume[..., hi] * w


def crop_feature(xray: torch.Tensor, size: int = FEATURE_SIZE) -> torch.Tensor:
    """Feature of a knee crop (1, H, W) or (1, 1, H, W): area-downsampled to ``size`` x ``size``, flattened."""
    x = xray.float().reshape(1, 1, *xray.shape[-2:])
    return F.adaptive_avg_pool2d(x, size).flatten()


class MeanVolume:
    """Predict the mean training volume (C, H, W, S), whatever the X-ray."""

    name = "mean_volume"

    def __init__(self, mean: torch.Tensor, n_training: int) -> None:
        self.mean = mean
        self.n_training = n_training

    @classmethod
    def fit(cls, volumes: Iterable[torch.Tensor]) -> MeanVolume:
        """Streaming float64 mean of training volumes (C, H, W, S), all of one shape; stored as float32."""
        total: torch.Tensor | None = None
        count = 0
        for volume in volumes:
            v = torch.as_tensor(volume).detach().cpu().to(torch.float64)
            if total is not None and v.shape != total.shape:
                raise ValueError(f"training volumes differ in shape: {tuple(v.shape)} vs {tuple(total.shape)}")
            total = v.clone() if total is None else total.add_(v)
            count += 1
        if total is None:
            raise ValueError("MeanVolume.fit needs at least one training volume")
        return cls((total / count).float(), count)

    def __call__(self, xray: torch.Tensor, depths: torch.Tensor, **_: object) -> torch.Tensor:
        """Volume (C, H, W, n) at ``depths`` (n,); ``xray`` is ignored."""
        return sample_depths(self.mean, depths)


class NearestXray:
    """Predict the MRI volume of the training knee with the nearest X-ray feature (``k`` = 1), or the mean
    volume of the ``k`` nearest.

    Args:
        features: (N, F) one feature per training knee.
        volume_of: returns training knee i's volume (C, H, W, S) (lazy: e.g. an item of a cached dataset).
        names: N labels of the training knees (reported as the neighbour of each query).
        metric: "l2" (Euclidean) or "cosine" (1 - cosine similarity).
        feature_fn: crop (1, H, W) -> (F,); default ``crop_feature``.
        k: neighbours averaged (1: the nearest knee's volume itself).
    """

    def __init__(
        self,
        features: torch.Tensor,
        volume_of: Callable[[int], torch.Tensor],
        names: list[str],
        metric: Literal["l2", "cosine"] = "l2",
        feature_fn: Callable[[torch.Tensor], torch.Tensor] = crop_feature,
        k: int = 1,
        name: str | None = None,
    ) -> None:
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if metric not in ("l2", "cosine"):
            raise ValueError(f"metric must be 'l2' or 'cosine', got {metric!r}")
        if features.ndim != 2 or features.shape[0] != len(names) or not names:
            raise ValueError(f"features (N, F) must match {len(names)} names, got {tuple(features.shape)}")
        self.features = features.float()
        self.volume_of = volume_of
        self.names = names
        self.metric = metric
        self.feature_fn = feature_fn
        self.k = min(int(k), len(names))
        self.name = name or ("nearest_xray" if self.k == 1 else "knn_xray")
        self.last_neighbour: str | None = None
        self._cache: tuple[tuple[int, ...], torch.Tensor] | None = None

    @classmethod
    def fit(
        cls,
        xrays: Iterable[torch.Tensor],
        volume_of: Callable[[int], torch.Tensor],
        names: list[str],
        feature_fn: Callable[[torch.Tensor], torch.Tensor] = crop_feature,
        **options: Any,
    ) -> NearestXray:
        """Compute the features of the training crops ``xrays`` (each (1, H, W)), in the order of ``names``;
        ``options`` (``metric``, ``k``, ``name``) as for the constructor."""
        with torch.inference_mode():
            feats = torch.stack([feature_fn(x).detach().cpu().float().flatten() for x in xrays])
        return cls(feats, volume_of, names, feature_fn=feature_fn, **options)

    def distances(self, xray: torch.Tensor) -> torch.Tensor:
        """Distances (N,) from the query crop (1, H, W) to every training knee."""
        with torch.inference_mode():
            q = self.feature_fn(xray).detach().cpu().float().flatten()
        if self.metric == "l2":
            return torch.linalg.vector_norm(self.features - q, dim=1)
        return 1.0 - F.cosine_similarity(self.features, q[None], dim=1)

    def nearest(self, xray: torch.Tensor) -> int:
        """Index of the nearest training knee (ties: the first)."""
        return int(torch.argmin(self.distances(xray)))

    def neighbours(self, xray: torch.Tensor) -> tuple[int, ...]:
        """Indices of the ``k`` nearest training knees, nearest first (ties: the first)."""
        order = torch.argsort(self.distances(xray), stable=True)
        return tuple(int(i) for i in order[: self.k])

    def __call__(self, xray: torch.Tensor, depths: torch.Tensor, **_: object) -> torch.Tensor:
        """Volume (C, H, W, n) of the nearest training knee (mean of the k nearest) at ``depths`` (n,)."""
        indices = self.neighbours(xray)
        self.last_neighbour = ";".join(self.names[i] for i in indices)
        if self._cache is None or self._cache[0] != indices:
            volumes = [torch.as_tensor(self.volume_of(i)).float() for i in indices]
            self._cache = (indices, volumes[0] if len(volumes) == 1 else torch.stack(volumes).mean(dim=0))
        return sample_depths(self._cache[1], depths)


class OracleKnee:
    """Ceiling, not a method: the training volume with the lowest MSE to the query's TRUE volume.

    Args:
        volumes: (N, H, W, S) grey training volumes (stored as float16 to halve the memory).
        names: N labels (the chosen knee is reported as ``last_neighbour``).
    """

    name = "oracle_knee"
    uses_truth = True

    def __init__(self, volumes: torch.Tensor, names: list[str]) -> None:
        if volumes.ndim != 4 or volumes.shape[0] != len(names) or not names:
            raise ValueError(f"volumes (N, H, W, S) must match {len(names)} names, got {tuple(volumes.shape)}")
        self.volumes = volumes.to(torch.float16)
        self.names = names
        self.last_neighbour: str | None = None

    @classmethod
    def fit(cls, volumes: Iterable[torch.Tensor], names: list[str]) -> OracleKnee:
        """Stack training volumes (C, H, W, S) (channels averaged)."""
        grey = [torch.as_tensor(v).float().reshape(-1, *torch.as_tensor(v).shape[-3:]).mean(dim=0).half()
                for v in volumes]  # float16 one by one: a few hundred knees stay one compact stack
        return cls(torch.stack(grey), names)

    def __call__(self, xray: torch.Tensor, depths: torch.Tensor, *, truth: torch.Tensor | None = None,
                 **_: object) -> torch.Tensor:
        """Volume (1, H, W, n) of the training knee closest to ``truth`` (H, W, n) at ``depths`` (n,)."""
        if truth is None:
            raise ValueError("oracle_knee needs the true volume (it is a ceiling, not a method)")
        target = torch.as_tensor(truth).float().reshape(-1, *truth.shape[-3:]).mean(dim=0)
        best, best_mse = 0, float("inf")
        for i in range(self.volumes.shape[0]):
            mse = float(((sample_depths(self.volumes[i].float(), depths) - target) ** 2).mean())
            if mse < best_mse:
                best, best_mse = i, mse
        self.last_neighbour = self.names[best]
        return sample_depths(self.volumes[best].float(), depths)[None]


class AutoencoderCeiling:
    """Ceiling, not a method: ``D(mean E1(x))`` of the query's TRUE slices ``x`` (see the module docstring).

    Args:
        autoencoder: MONAI ``AutoencoderKL`` (eval mode), e.g. ``checkpoint.load_network(autoencoder.pt)``.
        chunk_size: slices encoded together.
    """

    name = "autoencoder_ceiling"
    uses_truth = True

    def __init__(self, autoencoder: torch.nn.Module, chunk_size: int = 16) -> None:
        self.autoencoder = autoencoder
        self.chunk_size = int(chunk_size)

    @torch.no_grad()
    def __call__(self, xray: torch.Tensor, depths: torch.Tensor, *, truth: torch.Tensor | None = None,
                 **_: object) -> torch.Tensor:
        """Volume (1, H, W, n) in [-1, 1]: the round trip of ``truth`` (C, H, W, n) slice by slice."""
        from xray2mri_bundle.diffusion.latents import decode_slices

        if truth is None:
            raise ValueError("autoencoder_ceiling needs the true volume (it is a ceiling, not a method)")
        grey = torch.as_tensor(truth).float().reshape(-1, *truth.shape[-3:]).mean(dim=0)  # (H, W, n)
        channels = int(self.autoencoder.encoder.in_channels)
        device = next(self.autoencoder.parameters()).device
        slices = grey.permute(2, 0, 1)[:, None].expand(-1, channels, -1, -1)  # (n, C, H, W)
        out = []
        for start in range(0, slices.shape[0], self.chunk_size):
            mu, _sigma = self.autoencoder.encode(slices[start:start + self.chunk_size].to(device))
            out.append(decode_slices(self.autoencoder, mu, 1.0).cpu())
        return torch.cat(out).permute(1, 2, 0)[None]

