"""Pre-transforms of the pseudo-MRI infer task: refuse bad uploads with an HTTP 4xx, then crop the knee.

They run inside MONAI Label's request handler, so raising ``fastapi.HTTPException`` gives the client that
status code and message while the server goes on serving (any other exception would be an HTTP 500).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

from fastapi import HTTPException

from xray2mri_bundle.data.xray_io import InvalidXrayError
from xray2mri_bundle.inference.knees import prepare_knees

from .settings import GenerationParams, parse_generation_params

__all__ = ["NOT_FOUND", "CheckRequestd", "CheckUploadd", "PrepareKneed", "too_large"]


#: the answer to an unknown study id, a path, or a request without an X-ray (the same 404 for all of them, so a
#: client learns nothing about files outside the studies datastore)
NOT_FOUND = ("X-ray not found: upload a file, or give the id of an image in the server's studies folder "
             "(GET /datastore/?output=all lists them)")


def too_large(size: int, max_bytes: int) -> HTTPException:
    """The 413 answer of an upload of ``size`` bytes over ``max_bytes``."""
    return HTTPException(status_code=413, detail=f"the uploaded X-ray has {size / 2**20:.1f} MiB, more than the "
                         f"server's limit of {max_bytes / 2**20:.1f} MiB (conf max_upload_mb)")


class CheckUploadd:
    """Refuse an upload that is missing (404), empty (400) or larger than ``max_bytes`` (413).

    Reads ``data[key]``, the path MONAI Label saved the upload to (or a datastore image path).
    """

    def __init__(self, max_bytes: int, key: str = "image") -> None:
        self.max_bytes, self.key = int(max_bytes), key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        path = data.get(self.key)
        if not isinstance(path, str) or not os.path.isfile(path):
            raise HTTPException(status_code=404, detail=NOT_FOUND)
        size = os.path.getsize(path)
        if size == 0:
            raise HTTPException(status_code=400, detail="the uploaded X-ray is an empty file")
        if size > self.max_bytes:
            raise too_large(size, self.max_bytes)
        return dict(data)


class CheckRequestd:
    """Parse the request's sampling settings (sampler, steps, slices, seed, guidance_scale, side) into
    ``data["generation"]`` (:class:`GenerationParams`); a bad value is an HTTP 400 naming it."""

    def __init__(self, defaults: GenerationParams) -> None:
        self.defaults = defaults

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        try:
            d["generation"] = parse_generation_params(d, self.defaults)
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=f"bad request parameter: {exc}") from exc
        return d


class PrepareKneed:
    """Load the X-ray (DICOM DX/CR, PNG, 2-D NIfTI) and crop the knee the way the training data were cropped.

    Sets ``data["xray"]`` (1, N, N) float32 in [-1, 1] (N = the model's image size) and ``data["knee"]``
    (the bundle's ``KneeInput``: side, film information). A file that is not a usable radiograph is an
    HTTP 422 with the bundle's message (e.g. "not a DICOM file", "modality MR is not a radiograph").
    """

    def __init__(self, image_size: int, key: str = "image") -> None:
        self.image_size, self.key = int(image_size), key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        params: GenerationParams = d["generation"]
        side = None if params.side == "auto" else params.side.upper()
        try:
            knees = prepare_knees(d[self.key], side=side, image_size=self.image_size)
        except (InvalidXrayError, ValueError) as exc:
            raise HTTPException(status_code=422, detail=f"not a usable knee X-ray: {_without_path(exc, d)}") from exc
        if not knees:
            raise HTTPException(status_code=422, detail="no knee found in the X-ray")
        knee = knees[0]  # "auto" on a bilateral film gives [RIGHT, LEFT]: the right knee, as documented
        d["knee"], d["xray"] = knee, knee.crop
        return d


def _without_path(exc: Exception, data: Mapping[Hashable, Any]) -> str:
    """The error message with the server's temporary upload path replaced by the client's file name."""
    text = str(exc)
    path = data.get("image_path") or data.get("image")
    return text.replace(str(path), "upload") if path else text
