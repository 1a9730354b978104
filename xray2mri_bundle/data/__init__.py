"""Data: OAI-style ingestion (index + report), MONAI transforms for MRI and X-ray, joint localiser, slice
dataset with caching, preview PNG. Synthetic research data only; nothing here is for diagnosis.

Submodules: ``index`` (datalist), ``report``, ``mri_transforms``, ``xray_transforms``, ``localiser``,
``intensity``, ``datasets``, ``preview``, ``bundle_configs`` (the bundle's configs as package data, from which
the chains are built) and the readers ``dicom_utils``, ``mri_io``, ``xray_io``. The most
used names are re-exported here lazily, so ``xray2mri index`` does not pay for importing MONAI / torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "datasets": ("KneeSliceDataset", "MetaToDictd", "build_knee_dataset", "knee_transforms", "measure_cache_speed",
                 "read_datalist"),
    "dicom_utils": ("DataFileError",),
    "index": ("index_manifest", "index_oai", "write_datalist"),
    "intensity": ("IntensityDistribution", "IntensityDistributiond", "intensity_distribution"),
    "localiser": ("ClassicalJointLocaliser", "JointLocaliser"),
    "mri_transforms": ("LoadMRISeries", "LoadMRISeriesd", "SelectSlices",
                       "SelectSlicesd", "mri_transforms"),
    "report": ("REASONS", "IngestionReport"),
    "xray_io": ("InvalidXrayError", "read_xray"),
    "xray_transforms": ("CropJoint", "CropJointd", "InvertMonochrome1", "InvertMonochrome1d", "LoadXray",
                        "LoadXrayd", "LocaliseJoint", "LocaliseJointd", "SelectKnee", "SelectKneed",
                        "xray_transforms"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> object:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
