"""Knee-level preprocessing + cache, and the slice-level dataset the diffusion model trains on.

A *knee* (one datalist record) is preprocessed once by :func:`knee_transforms` (``knee_preprocessing`` of
``configs/common.json``: DICOM decode, orientation, slices 13..62, resize, [-1, 1], X-ray crop, intensity map)
and cached: on disk with MONAI ``PersistentDataset`` (``cache_dir``), or in memory with ``CacheDataset``; later
epochs never decode DICOM.
The cache stores the MRI with ONE channel (a third of the bytes); :class:`KneeSliceDataset` repeats it to 3
channels per slice.

A *sample* is (knee, depth): keys ``image`` (3, H, W) (or, for knees from
``engines.latent_cache.LatentKneeCache``, the slice's cached ``latent_mu`` / ``latent_sigma`` and the knee's
``xray_latent`` / ``p_map``), ``depth`` float in [0, 1] (slice k of S -> k / (S - 1)),
``xray`` (1, H, W), ``intensity`` (16, 8, 8), ``kl`` int64, plus ``subject``, ``side``, ``slice``.
Training draws every (knee, slice) pair (shuffle in the DataLoader) or one random depth per knee
(``depths="random"``); validation draws all S depths of each knee in order.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import CacheDataset, Dataset, MetaTensor, PersistentDataset
from monai.transforms import Compose, MapTransform, Randomizable

from xray2mri_bundle.data.plain import to_plain

from .bundle_configs import chain_configs, given, parse_config
from .localiser import JointLocaliser, MRIJointLocaliser
from .pose import PoseTemplate

__all__ = [
    "KneeSliceDataset",
    "MetaToDictd",
    "build_knee_dataset",
    "knee_transforms",
    "measure_cache_speed",
    "read_datalist",
    "slice_depths",
    "transform_fingerprint",
]

#: meta entries kept (as plain values) in ``<key>_meta`` by :class:`MetaToDictd`
META_FIELDS = (
    "filename_or_obj", "spacing", "film_spacing", "photometric", "side", "knee_region", "joint_rc", "crop_box",
    "film_shape", "slice_start", "slice_count", "affine", "original_shape", "magnification", "magnification_source",
    "joint_localised", "frame_mm", "frame_padded",
)


def slice_depths(count: int) -> torch.Tensor:
    """The depth condition of ``count`` evenly spaced slices, (count,) float32 in [0, 1]: k / (count - 1) for
    slice k (training slice k of the 50), one slice is the middle, 0.5. Generation uses the same values, and
    ``count > 50`` interpolates between the training depths (the paper's s = 100 ... 500)."""
    if count < 1:
        raise ValueError(f"slices must be >= 1, got {count}")
    if count == 1:
        return torch.tensor([0.5])
    return torch.linspace(0.0, 1.0, count)


def read_datalist(path: str | os.PathLike, split: str = "training") -> list[dict]:
    """Records of one split of a datalist JSON ('training', 'validation', or 'all' for both)."""
    data = json.loads(Path(path).read_text())
    if split == "all":
        return list(data.get("training", [])) + list(data.get("validation", []))
    return list(data[split])


class MetaToDictd(MapTransform):
    """MetaTensor -> plain tensor plus ``<key>_meta``: a dict of plain values (lists, numbers, strings) from
    :data:`META_FIELDS`, so the knee can be cached by ``PersistentDataset`` (``torch.load(weights_only=True)``)."""

    def __init__(self, keys: KeysCollection, fields: Sequence[str] = META_FIELDS,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.fields = tuple(fields)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            meta = img.meta if isinstance(img, MetaTensor) else {}
            d[f"{key}_meta"] = {f: to_plain(meta[f], finite=False) for f in self.fields if f in meta}
            d[key] = torch.as_tensor(img).as_subclass(torch.Tensor).float().contiguous()
        return d


def knee_transforms(
    mri_size: int | None = None, xray_size: int | None = None, slice_start: int | None = None,
    slice_count: int | None = None, crop_mm: float | None = None, percentiles: tuple[float, float] | None = None,
    localiser: JointLocaliser | None = None, expected_slices: int | None = None,
    mri_localiser: MRIJointLocaliser | None = None, png_spacing_mm: float | None = None,
    pose_template: PoseTemplate | str | os.PathLike | None = None,
) -> Compose:
    """Deterministic per-knee chain: record -> {mri (1, S, S, count), xray (1, N, N), intensity (16, 8, 8), kl,
    ..., mri_meta, xray_meta}, cache-friendly (plain tensors at the end). It is ``knee_preprocessing`` of
    ``configs/common.json`` (what training caches), built from the packaged config so that the evaluator, the
    tools and training run one chain written once. Arguments left None keep the config's settings; the others
    replace them: ``mri_size``, ``xray_size``, ``slice_start`` / ``slice_count`` (``mri_slice_start`` /
    ``mri_slice_count``), ``crop_mm`` (``frame_mm``), ``percentiles`` (``intensity_percentiles``), ``localiser``
    (``xray_localiser``), ``expected_slices`` (``mri_expected_slices``), ``mri_localiser``, ``png_spacing_mm``;
    ``pose_template`` (``mri_pose_template``) builds the canonical-pose frame of ``configs/pose_frame.json``."""
    overrides = given(
        mri_size=mri_size, xray_size=xray_size, mri_slice_start=slice_start, mri_slice_count=slice_count,
        frame_mm=crop_mm, intensity_percentiles=percentiles, xray_localiser=localiser,
        mri_expected_slices=expected_slices, mri_localiser=mri_localiser, png_spacing_mm=png_spacing_mm,
        mri_pose_template=pose_template,
    )
    return parse_config(chain_configs(pose_template), "knee_preprocessing", overrides)


_PRIMITIVES = (str, int, float, bool, type(None))


def _describe(obj: object, depth: int = 0) -> object:
    """A plain description of a transform: class name + primitive settings, nested transforms two levels deep."""
    if isinstance(obj, _PRIMITIVES):
        return obj
    if isinstance(obj, (list, tuple)):
        return [_describe(v, depth) for v in obj]
    if isinstance(obj, (Mapping, np.ndarray, torch.Tensor)) or depth > 2 or not hasattr(obj, "__dict__"):
        return type(obj).__name__
    return [type(obj).__name__] + [
        (k, _describe(v, depth + 1)) for k, v in sorted(vars(obj).items())
        if not k.startswith("_") and k != "R" and (isinstance(v, _PRIMITIVES + (list, tuple)) or callable(v))
    ]


def transform_fingerprint(transforms: object) -> bytes:
    """Short hash of the transforms' classes and settings, used by ``PersistentDataset`` (``hash_transform``)
    so that caches of different settings (e.g. 64 vs 256 px) never mix in one ``cache_dir``."""
    text = json.dumps(_describe(transforms), default=str, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16].encode()


def build_knee_dataset(
    records: Sequence[Mapping], transform: Callable | None = None, cache: str = "persistent",
    cache_dir: str | os.PathLike | None = None, num_workers: int = 0, **transform_kwargs,
) -> Dataset:
    """A MONAI dataset of preprocessed knees. ``cache``: 'persistent' (``PersistentDataset`` in ``cache_dir``;
    file names carry a fingerprint of the transform settings), 'memory' (``CacheDataset``) or 'none'.
    ``transform`` defaults to ``knee_transforms(**transform_kwargs)``."""
    transform = transform if transform is not None else knee_transforms(**transform_kwargs)
    data = [dict(r) for r in records]
    if cache == "persistent":
        if cache_dir is None:
            raise ValueError("cache='persistent' needs a cache_dir")
        return PersistentDataset(data, transform, cache_dir=cache_dir, hash_transform=transform_fingerprint)
    if cache == "memory":
        return CacheDataset(data, transform, num_workers=num_workers, progress=False)
    if cache == "none":
        return Dataset(data, transform)
    raise ValueError(f"cache must be 'persistent', 'memory' or 'none', got {cache!r}")


class KneeSliceDataset(Dataset, Randomizable):
    """Slice samples on top of a knee dataset (usually cached, see :func:`build_knee_dataset`).

    ``depths``: 'all' -> one item per (knee, slice) pair, knee-major (validation order: all S depths of a knee);
    'random' -> one item per knee with a random depth each time (call ``set_random_state`` for determinism).
    ``slices``: S, the number of slices per cached knee (50). ``channels``: channels of ``image`` (3).
    ``knee_cache_size``: decoded knees kept in an LRU so consecutive slices of a knee load it once.
    ``transform``: optional callable applied to each sample dict (e.g. random augmentation).
    """

    def __init__(self, knees: Sequence[Mapping], depths: str = "all", slices: int = 50, channels: int = 3,
                 knee_cache_size: int = 4, transform: Callable | None = None) -> None:
        if depths not in ("all", "random"):
            raise ValueError(f"depths must be 'all' or 'random', got {depths!r}")
        pairs = [(k, s) for k in range(len(knees)) for s in range(slices)] if depths == "all" else \
            [(k, -1) for k in range(len(knees))]
        super().__init__(data=pairs, transform=transform)
        self.knees, self.depths, self.slices, self.channels = knees, depths, slices, channels
        self.slice_depths = slice_depths(slices)
        self.knee_cache_size = knee_cache_size
        self._lru: OrderedDict[int, Mapping] = OrderedDict()

    def randomize(self, data: object = None) -> int:
        return int(self.R.randint(self.slices))

    def _knee(self, index: int) -> Mapping:
        if index in self._lru:
            self._lru.move_to_end(index)
            return self._lru[index]
        knee = self.knees[index]
        if self.knee_cache_size > 0:
            self._lru[index] = knee
            while len(self._lru) > self.knee_cache_size:
                self._lru.popitem(last=False)
        return knee

    def _slice_content(self, knee: Mapping, knee_index: int, slice_index: int) -> dict:
        """``image`` (channels, H, W) of slice ``slice_index``; for a knee from ``LatentKneeCache`` instead
        its cached ``latent_mu`` / ``latent_sigma`` (4, h, w) plus ``xray_latent`` (and ``p_map``)."""
        if "mri_latent_mu" in knee:
            mu, sigma = torch.as_tensor(knee["mri_latent_mu"]), torch.as_tensor(knee["mri_latent_sigma"])
            if mu.shape[0] != self.slices:
                raise ValueError(f"knee {knee_index} has {mu.shape[0]} cached slices, dataset expects {self.slices}")
            out = {"latent_mu": mu[slice_index], "latent_sigma": sigma[slice_index],
                   "xray_latent": torch.as_tensor(knee["xray_latent"])}
            if "p_map" in knee:
                out["p_map"] = torch.as_tensor(knee["p_map"])
            return out
        volume = torch.as_tensor(knee["mri"])
        if volume.shape[-1] != self.slices:
            raise ValueError(f"knee {knee_index} has {volume.shape[-1]} slices, dataset expects {self.slices}")
        image = volume[..., slice_index]
        if image.shape[0] == 1 and self.channels > 1:
            image = image.expand(self.channels, *image.shape[1:])
        return {"image": image.float().contiguous()}

    def _transform(self, index: int) -> dict:
        knee_index, slice_index = self.data[index]
        if slice_index < 0:
            slice_index = self.randomize()
        knee = self._knee(knee_index)
        sample = {
            **self._slice_content(knee, knee_index, slice_index),
            "depth": self.slice_depths[slice_index].clone(),
            "xray": torch.as_tensor(knee["xray"]).float(),
            "intensity": torch.as_tensor(knee["intensity"]).float(),
            "kl": torch.tensor(int(knee["kl"]), dtype=torch.int64),
            "subject": str(knee.get("subject", "")),
            "side": str(knee.get("side", "")),
            "slice": slice_index,
        }
        return self.transform(sample) if self.transform is not None else sample


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure_cache_speed(
    records: Sequence[Mapping], cache_dir: str | os.PathLike | None = None, transform: Callable | None = None,
    limit: int | None = None, **transform_kwargs,
) -> dict:
    """Knees per second through a ``PersistentDataset``: cold (decode DICOM + preprocess + write the cache)
    then warm (read the cache). Uses a fresh temporary cache when ``cache_dir`` is None (removed after).

    Returns {"knees", "cold_s", "warm_s", "cold_knees_per_s", "warm_knees_per_s", "cache_bytes"}.
    """
    records = list(records)[:limit] if limit else list(records)
    own = cache_dir is None
    cache_path = Path(tempfile.mkdtemp(prefix="knee_cache_")) if own else Path(cache_dir)
    try:
        if any(cache_path.glob("*.pt")):
            raise ValueError(f"{cache_path} already holds cache files; a cold measurement needs an empty folder")
        ds = build_knee_dataset(records, transform, cache="persistent", cache_dir=cache_path, **transform_kwargs)
        timings = []
        for _ in range(2):
            t0 = time.perf_counter()
            for i in range(len(ds)):
                ds[i]
            timings.append(time.perf_counter() - t0)
        n = len(records)
        return {
            "knees": n, "cold_s": timings[0], "warm_s": timings[1],
            "cold_knees_per_s": n / timings[0] if timings[0] > 0 else float("inf"),
            "warm_knees_per_s": n / timings[1] if timings[1] > 0 else float("inf"),
            "cache_bytes": _dir_bytes(cache_path),
        }
    finally:
        if own:
            shutil.rmtree(cache_path, ignore_errors=True)
