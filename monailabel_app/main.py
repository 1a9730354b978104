"""MONAI Label app of xray2mri_bundle: serve pseudo-MRI generation from a knee X-ray as an infer task.

Start it (in the label environment, see docs/monailabel.md)::

    monailabel start_server --app monailabel_app --studies DIR --conf models_dir models --conf profile small

``--conf`` keys: ``models_dir`` (default: the repository's ``models/``), ``profile`` (small), ``steps`` (50),
``slices`` (50), ``seed`` (0), ``guidance_scale`` (1), ``side`` (auto | right | left), ``device`` (auto),
``max_upload_mb`` (64). Nothing is downloaded: the checkpoints come from ``models_dir``. The single model is
``xray2mri`` (type "others"): POST an X-ray to ``/infer/xray2mri?output=image`` and get a NIfTI volume back.
Outputs are SYNTHETIC research images, not for diagnosis.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lib.endpoint import install as install_infer_endpoint
from lib.infers import XrayToMRIInfer
from lib.settings import AppSettings
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask

import xray2mri_bundle
from xray2mri_bundle.constants import RESEARCH_USE

logger = logging.getLogger(__name__)
install_infer_endpoint()  # this app's /infer handling: no request leaves files behind, ids only (lib/endpoint.py)

#: Checkpoints shipped with / trained into the repository: ``<repo>/models/<profile>/``.
DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
#: Besides MONAI Label's defaults (NIfTI, NRRD, PNG, JPEG, TIFF), list DICOM X-rays of the studies folder.
DICOM_PATTERNS = ("*.dcm", "*.DCM", "*.dicom")


class XrayToMRIApp(MONAILabelApp):
    """One infer task, ``xray2mri``; no training or scoring tasks (nothing here is a label to learn from)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.app_settings = AppSettings.from_conf(conf or {}, DEFAULT_MODELS_DIR)
        logger.info("xray2mri app: models %s, profile %s", self.app_settings.models_dir, self.app_settings.profile)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="xray2mri",
            description=f"Knee X-ray -> pseudo-MRI volume (conditional latent diffusion). {RESEARCH_USE}",
            version=xray2mri_bundle.__version__,
            labels=[],
        )

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()  # DICOMweb / XNAT / DSA as configured for MONAI Label
        extensions = list(dict.fromkeys([*settings.MONAI_LABEL_DATASTORE_FILE_EXT, *DICOM_PATTERNS]))
        return LocalDatastore(
            self.studies,
            extensions=extensions,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, InferTask]:
        return {"xray2mri": XrayToMRIInfer(self.app_settings)}
