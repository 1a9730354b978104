"""Frozen-encoder outputs computed once per knee, so a diffusion training step runs only U and E2.

The diffusion stage's PrepareBatch would otherwise run the frozen autoencoder E1 on every slice and on every
X-ray crop, and the frozen KOA classifier C on every crop, at every iteration: on 2 CPU cores that is two
thirds of the step (docs/performance.md). Those networks are frozen and in eval mode, so their outputs per knee
never change during the stage: :class:`LatentKneeCache` computes, once per knee,

- ``mri_latent_mu`` / ``mri_latent_sigma`` (S, 4, h, w): E1's posterior of every slice. The training latent is
  still a fresh posterior *sample* ``mu + sigma * eps`` at every step (drawn in the PrepareBatch), exactly as
  when encoding on the fly;
- ``xray_latent`` (4, h, w): E1's posterior mean of the crop (grey repeated to the autoencoder's channels);
- ``p_map``: C's KOA probability map of the crop (only with a classifier).

and keeps the knee's other keys (``xray`` for the trainable E2, ``intensity``, ``kl``, ...). The knee's MRI
itself is dropped (the slices are not needed once encoded), so the cache is small: 4 x 16 x 16 floats x 2 per
slice in the small profile, 0.4 MB per knee. With ``cache_dir`` the entries are also written to disk, under a
digest of the encoders' weights and the knee's files, so a resumed or repeated run with the same encoders skips
the encoding; new weights never read stale latents.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import Dataset
from torch import nn

from xray2mri_bundle.diffusion.conditions import encode_xray
from xray2mri_bundle.engines.checkpoints import atomic_save

__all__ = ["LATENT_KEYS", "LatentKneeCache", "encode_knee", "encoder_digest"]

logger = logging.getLogger(__name__)

#: keys a cached knee adds (``p_map`` only with a classifier)
LATENT_KEYS = ("mri_latent_mu", "mri_latent_sigma", "xray_latent", "p_map")


def encoder_digest(*modules: nn.Module | None) -> str:
    """Short SHA-256 of the modules' parameters and buffers (names, shapes, values); None counts as absent."""
    sha = hashlib.sha256()
    for module in modules:
        sha.update(b"none" if module is None else b"module")
        if module is None:
            continue
        for name, tensor in sorted(module.state_dict().items()):
            sha.update(name.encode())
            sha.update(str(tuple(tensor.shape)).encode())
            sha.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return sha.hexdigest()[:16]


def _plain(value: Any) -> torch.Tensor:
    """A plain float32 CPU tensor (no MetaTensor: cached and freshly encoded knees must collate together)."""
    return torch.as_tensor(value).as_subclass(torch.Tensor).detach().float().cpu().contiguous()


def _knee_identity(knee: Mapping[str, Any]) -> str:
    """The knee's files, labels and preprocessed pixels as a short digest (the disk-cache file name): the pixels
    count so that two preprocessing chains (e.g. the joint-centred and the canonical-pose MRI frame) sharing one
    ``cache_dir`` never serve each other's latents."""
    sha = hashlib.sha256(json.dumps({
        "mri": (knee.get("mri_meta") or {}).get("filename_or_obj"),
        "xray": (knee.get("xray_meta") or {}).get("filename_or_obj"),
        "side": knee.get("side"), "subject": knee.get("subject"), "visit": knee.get("visit"),
        "shape": list(torch.as_tensor(knee["mri"]).shape),
    }, sort_keys=True, default=str).encode())
    for key in ("mri", "xray"):
        sha.update(_plain(knee[key]).numpy().tobytes())
    return sha.hexdigest()[:20]


class LatentKneeCache(Dataset):
    """Knees (from :func:`xray2mri_bundle.data.build_knee_dataset`) with their frozen-encoder outputs added.

    Encodes every knee at construction (progress on stderr), in the main process, then serves plain dicts;
    :class:`xray2mri_bundle.data.KneeSliceDataset` picks slice ``d`` of the cached latents and
    ``LatentDiffusionPrepareBatch`` uses them instead of running E1 and C.

    Args:
        knees: preprocessed knees: ``mri`` (C, H, W, S) in [-1, 1], ``xray`` (1, H, W), plus labels.
        autoencoder: frozen E1 (``AutoencoderKL``).
        classifier: frozen KOA classifier with ``forward_maps``; None caches no ``p_map``.
        device: where the encoders run (the training device).
        batch_size: slices per encoder call.
        channels: channels of the autoencoder's input (grey repeated, 3 as in the paper).
        cache_dir: optional folder for the on-disk copy (``<cache_dir>/<encoder digest>/<knee digest>.pt``).
        progress: show a progress bar while encoding.
    """

    def __init__(
        self,
        knees: Sequence[Mapping[str, Any]],
        autoencoder: nn.Module,
        classifier: nn.Module | None = None,
        device: torch.device | str = "cpu",
        batch_size: int = 32,
        channels: int = 3,
        cache_dir: str | Path | None = None,
        progress: bool = True,
    ) -> None:
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.classifier = None if classifier is None else classifier.eval().requires_grad_(False)
        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))
        self.channels = channels
        self.digest = encoder_digest(self.autoencoder, self.classifier)
        self.folder = None if cache_dir is None else Path(cache_dir) / self.digest
        super().__init__(data=self._encode_all(knees, progress))

    def _encode_all(self, knees: Sequence[Mapping[str, Any]], progress: bool) -> list[dict]:
        from tqdm.auto import tqdm

        entries, reused = [], 0
        for index in tqdm(range(len(knees)), desc="encode knees (frozen E1/C)", unit="knee", file=sys.stderr,
                          disable=not progress):
            knee = knees[index]
            path = None if self.folder is None else self.folder / f"{_knee_identity(knee)}.pt"
            if path is not None and path.is_file():
                latents, reused = torch.load(path, map_location="cpu", weights_only=True), reused + 1
            else:
                latents = self.encode_knee(knee)
                if path is not None:
                    atomic_save(latents, path)
            # plain tensors only: a knee fresh from the transforms holds MetaTensors, one read from the disk
            # cache plain tensors, and a batch mixing both does not collate
            entry = {k: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v
                     for k, v in knee.items() if k != "mri"}
            entry.update(latents)
            entries.append(entry)
        logger.info("latent cache: %d knees (%d read from %s, %d encoded), encoders %s",
                    len(entries), reused, self.folder, len(entries) - reused, self.digest)
        return entries

    def encode_knee(self, knee: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """:func:`encode_knee` with this cache's encoders and settings."""
        return encode_knee(knee, self.autoencoder, self.classifier, self.device, self.batch_size, self.channels)


@torch.no_grad()
def encode_knee(
    knee: Mapping[str, Any], autoencoder: nn.Module, classifier: nn.Module | None = None,
    device: torch.device | str = "cpu", batch_size: int = 32, channels: int = 3,
) -> dict[str, torch.Tensor]:
    """E1 posterior of every slice (S, 4, h, w) x 2, E1 mean of the crop (4, h, w), C's map of the crop (plain
    float32 CPU tensors; the encoders are expected frozen and in eval mode)."""
    slices = _plain(knee["mri"]).permute(3, 0, 1, 2)  # (C, H, W, S) -> (S, C, H, W)
    if slices.shape[1] == 1 and channels > 1:
        slices = slices.expand(-1, channels, -1, -1)
    posteriors = [autoencoder.encode(chunk.to(device)) for chunk in slices.split(batch_size)]
    xray = _plain(knee["xray"])[None].to(device)  # (1, 1, H, W)
    xray_latent, _, p_map = encode_xray(autoencoder, xray, classifier, channels)
    out = {
        "mri_latent_mu": _plain(torch.cat([mu for mu, _ in posteriors])),
        "mri_latent_sigma": _plain(torch.cat([sigma for _, sigma in posteriors])),
        "xray_latent": _plain(xray_latent[0]),
    }
    if p_map is not None:
        out["p_map"] = _plain(p_map[0])
    return out
