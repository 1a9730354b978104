"""xray2mri_bundle: X-ray to pseudo-MRI latent diffusion for knee OA research (synthetic outputs, not for diagnosis)."""

__version__ = "0.1.0"
