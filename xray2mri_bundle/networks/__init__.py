"""Networks of the X-ray -> pseudo-MRI latent diffusion model (paper section 2.2).

Everything takes and returns plain tensors; sizes of the profiles ("paper", "small", "tiny") come from
the bundle's JSON configs (``get_profile``, ``profiles.py``).
"""

from .adaptive_weight import AdaptiveWeight, GuidanceEmbedding
from .autoencoder import AutoencoderKL, build_autoencoder
from .conditional_unet import XrayConditionedUNet, build_unet, depth_fourier_code
from .config import register_to_config
from .koa_classifier import KOAClassifier, build_classifier
from .ldm_import import (
    LdmImportError,
    LdmImportReport,
    convert_ldm_unet_state_dict,
    ldm_key_map,
    load_ldm_checkpoint,
    load_ldm_unet,
)
from .profiles import PROFILE_NAMES, get_profile
from .xray_encoder import ClipImageEncoder, XrayEncoder, build_xray_encoder

__all__ = [
    "PROFILE_NAMES",
    "AdaptiveWeight",
    "AutoencoderKL",
    "ClipImageEncoder",
    "GuidanceEmbedding",
    "KOAClassifier",
    "LdmImportError",
    "LdmImportReport",
    "XrayConditionedUNet",
    "XrayEncoder",
    "build_autoencoder",
    "build_classifier",
    "build_unet",
    "build_xray_encoder",
    "convert_ldm_unet_state_dict",
    "depth_fourier_code",
    "get_profile",
    "ldm_key_map",
    "load_ldm_checkpoint",
    "load_ldm_unet",
    "register_to_config",
]
