"""Inference: DDIM sampling of pseudo-MRI volumes from a knee X-ray and writers of the results (synthetic outputs)."""

from xray2mri_bundle.inference.generator import GenerationResult, VolumeGenerator, load_pipeline

__all__ = ["GenerationResult", "VolumeGenerator", "load_pipeline"]
