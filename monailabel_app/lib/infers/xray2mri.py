"""MONAI Label infer task: one knee X-ray in, one pseudo-MRI NIfTI volume out (synthetic, not for diagnosis).

It reuses the bundle's own inference code: ``prepare_knees`` (validation and the training crop),
``load_pipeline`` (checkpoints of ``models/<profile>/``) and ``writers.write_nifti`` (float32, coronal affine).
The result is a new image, not a label of the input, so MONAI Label's label post-processing is switched off:
no inverse transforms, no post transforms (no ``Restored`` resize back to the X-ray's shape) and our own writer.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from xray2mri_bundle.constants import DISCLAIMER, MRI_FOV_MM
from xray2mri_bundle.inference import writers
from xray2mri_bundle.inference.generator import (
    CHECKPOINT_FILES,
    VolumeGenerator,
    load_pipeline,
    resolve_model_dir,
    slice_spacing_mm,
)

from ..settings import AppSettings, GenerationParams
from ..transforms import CheckRequestd, CheckUploadd, PrepareKneed

__all__ = ["XrayToMRIInfer"]

logger = logging.getLogger(__name__)


class XrayToMRIInfer(BasicInferTask):
    """Generate a pseudo-MRI volume (H, W, S) from an uploaded knee X-ray (``InferType.OTHERS``).

    Request keys (all optional, defaults from the app's ``--conf``): ``sampler``, ``steps``, ``slices``, ``seed``,
    ``guidance_scale``, ``side`` ("auto", "right", "left"). The device is the server's (``--conf device``,
    checked at start-up): a request's ``device`` is ignored, so no request can pick a bogus device or make the
    server load another copy of the networks. The networks are loaded on first use (one pipeline, the served
    device) and reloaded when diffusion.pt changes on disk (a newly trained model).
    """

    def __init__(self, settings: AppSettings) -> None:
        self.settings = settings
        self.model_dir = resolve_model_dir(settings.models_dir, settings.profile)
        config: dict[str, Any] = settings.defaults.as_config()
        super().__init__(
            path=str(self.model_dir / "diffusion.pt"),
            network=None,
            type=InferType.OTHERS,
            labels=[],
            dimension=2,  # input dimension (the X-ray); the output is a 3-D volume
            description=f"Pseudo-MRI volume (coronal T1-like) from one knee X-ray, {settings.profile} profile. "
            f"Outputs are SYNTHETIC research images, not for diagnosis.",
            config=config,
        )
        self.device = served_device(settings.device)
        self._config["device"] = self.device
        self._pipelines: dict[str, tuple[VolumeGenerator, float]] = {}
        self._lock = threading.Lock()
        if not self.is_valid():
            logger.warning("xray2mri: no trained checkpoints in %s (need %s); the model is not offered",
                           self.model_dir, ", ".join(self._required_files()))

    # ---------------------------------------------------------------------------------------------- model
    def _required_files(self) -> list[str]:
        return [name for name in CHECKPOINT_FILES if name != "classifier.pt"]  # classifier: only with p-guidance

    def is_valid(self) -> bool:
        """True when the checkpoint folder has the exports that every model needs."""
        return all((self.model_dir / name).is_file() for name in self._required_files())

    def __call__(self, request: dict[str, Any], callbacks: Any = None) -> Any:
        """Run one request on the served device, whatever ``device`` the request names."""
        return super().__call__({**request, "device": self.device}, callbacks)

    def pipeline(self, device: str) -> VolumeGenerator:
        """The loaded ``VolumeGenerator`` (one at a time: cached until diffusion.pt changes or the device differs)."""
        with self._lock:
            mtime = os.stat(self.model_dir / "diffusion.pt").st_mtime
            cached = self._pipelines.get(device)
            if cached is None or cached[1] != mtime:
                generator = load_pipeline(self.settings.models_dir, self.settings.profile, device)
                self._pipelines = {device: (generator, mtime)}  # bounded: the old pipeline is released
                cached = self._pipelines[device]
            return cached[0]

    def clear(self) -> None:
        self._pipelines.clear()

    # ------------------------------------------------------------------------------------------- stages
    def pre_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        size = self.pipeline(_device(data)).image_size if data else 256
        return [
            CheckUploadd(self.settings.max_upload_bytes),
            CheckRequestd(self.settings.defaults),
            PrepareKneed(size),
        ]

    def inverse_transforms(self, data: dict[str, Any] | None = None) -> None:
        return None  # the volume is not a label of the X-ray: nothing to invert

    def post_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        return []  # no Restored / resize back to the X-ray's shape

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cpu") -> dict:
        """Sample the volume: ``data["pred"]`` (H, W, S) float32 in [-1, 1] and ``data["generation_result"]``."""
        params: GenerationParams = data["generation"]
        generator = self.pipeline(device)
        result = generator(
            data["xray"], slices=params.slices, num_inference_steps=params.steps, seed=params.seed,
            guidance_scale=params.guidance_scale, sampler=params.sampler,
        )
        if str(device).startswith("cuda"):
            torch.cuda.empty_cache()
        data[self.output_label_key] = result.volume
        data["generation_result"] = result
        return data

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[str, dict]:
        """Write the volume as float32 NIfTI (coronal affine, mm) to a temporary file; MONAI Label sends it
        to the client and deletes it. Returns (path, result JSON)."""
        volume = data[self.output_label_key]
        result = data["generation_result"]
        knee = data["knee"]
        height, width, slices = (int(n) for n in volume.shape)
        spacing = (MRI_FOV_MM / height, MRI_FOV_MM / width)
        thickness = slice_spacing_mm(slices)
        fd, path = tempfile.mkstemp(prefix="pseudo_mri_", suffix=".nii.gz")
        os.close(fd)
        side = (knee.side or "unknown side").lower()
        try:
            writers.write_nifti(volume, spacing, thickness, path, description=f"{side} knee")
        except BaseException:
            os.unlink(path)
            raise
        generator = self.pipeline(_device(data))
        return path, {
            "disclaimer": DISCLAIMER,
            "profile": generator.profile,
            "side": knee.side,
            "film": knee.info.get("film"),
            "shape": [height, width, slices],
            "pixel_spacing_mm": list(spacing),
            "slice_spacing_mm": thickness,
            "sampler": result.sampler,
            "steps": result.num_inference_steps,
            "slices": slices,
            "seed": result.seed,
            "guidance_scale": result.guidance_scale,
            "predicted_kl_probabilities": result.kl_probs,
            "timings_s": {k: round(float(v), 4) for k, v in result.timings.items()},
            "checkpoints_sha256": dict(generator.checkpoints),
        }


def served_device(configured: str) -> str:
    """The server's device from ``--conf device`` ('' = CUDA when available, else CPU); ``ValueError`` at
    start-up for an unknown device or CUDA on a machine without it."""
    name = configured.strip() or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"--conf device {configured!r} is not a device (cpu, cuda, cuda:N)") from exc
    if device.type not in ("cpu", "cuda") or (device.type == "cuda" and not torch.cuda.is_available()):
        raise ValueError(f"--conf device {configured!r} is not available here (cpu, or cuda with a GPU)")
    return str(device)


def _device(data: dict[str, Any] | None) -> str:
    """The request's device as BasicInferTask resolved it (``data["device"]``), CPU when absent."""
    device = (data or {}).get("device") or "cpu"
    return device if isinstance(device, str) else str(device)
