"""Infer tasks of the xray2mri MONAI Label app."""

from .xray2mri import XrayToMRIInfer

__all__ = ["XrayToMRIInfer"]
