"""The ``/infer/{model}`` request handling of this app: nothing of a request survives it, nothing outside the
studies datastore is read.

MONAI Label 0.8.5's handler (``monailabel.endpoints.infer.run_inference``) saves an upload under the system temp
folder and deletes it only after a successful answer, lets ``?image=`` or ``params["image"]`` name any path on
the host, and answers malformed ``params`` with a 500. The app installs :func:`run_inference` in its place
(``install``, called when the app module is imported; the route itself, authentication and the response
encoding stay MONAI Label's):

- an upload is written to a private folder (0700) made for this request and removed in ``finally``, whatever
  the outcome; its size is checked before it is written (413), its name reduced to a short safe suffix;
- ``image`` is only ever an id of the studies datastore; a path, or an unknown id, gets the same 404;
- ``params`` must be a JSON object and may not set ``image`` or ``label``: 400 with a message (``device`` is
  ignored by the task: the served device is the server's);
- no file and no id: 400. Anything the task raises keeps its own status (400, 404, 413, 422).

The web framework spools a request body before any handler runs (Starlette's own temporary file, removed by
it when the request ends), so 413 is decided after the body arrived; a reverse proxy's body limit stops an
oversized upload earlier (docs/monailabel.md).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from typing import Any

from fastapi import HTTPException

from .transforms import NOT_FOUND, too_large

__all__ = ["install", "run_inference", "safe_suffix"]

#: request keys a client may not set through ``params``: the upload and the label are not the client's to
#: replace (a ``device`` entry is allowed but ignored: the task always runs on the served device)
RESERVED_PARAMS = ("image", "label")
#: longest kept file-name suffix (".nii.gz" is the longest the readers need)
MAX_SUFFIX = 16


def safe_suffix(filename: str | None) -> str:
    """The upload's suffixes (``.nii.gz``, ``.dcm``, ``.png``), letters and digits only, at most 16 characters."""
    suffix = "".join(pathlib.Path(filename or "").suffixes)[-MAX_SUFFIX:]
    return "".join(c for c in suffix if c.isalnum() or c == ".")


def _params(text: str | None) -> dict[str, Any]:
    try:
        params = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise HTTPException(status_code=400,
                            detail=f"params is not valid JSON ({exc.msg} at character {exc.pos})") from exc
    if not isinstance(params, dict):
        raise HTTPException(status_code=400, detail="params must be a JSON object")
    reserved = sorted(set(params) & set(RESERVED_PARAMS))
    if reserved:
        raise HTTPException(status_code=400, detail=f"params may not set {', '.join(reserved)}: upload the X-ray "
                            "as the file field or give a study id as ?image=")
    return params


def _study(instance: Any, image: str) -> str:
    """The datastore path of study id ``image``; 404 (the unknown-id answer) for anything that is not an id."""
    datastore = instance.datastore()
    if image not in set(datastore.list_images()):
        raise HTTPException(status_code=404, detail=NOT_FOUND)
    return datastore.get_image_uri(image)


def _upload_size(upload: Any) -> int:
    stream = upload.file
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(0)
    return size


def run_inference(background_tasks: Any, model: str, image: str = "", session_id: str = "", params: str = "{}",
                  file: Any = None, label: Any = None, output: Any = None) -> Any:
    """MONAI Label's infer handler with this app's guarantees (module docstring); same signature."""
    from monailabel.endpoints import infer as infer_endpoint
    from monailabel.interfaces.utils.app import app_instance

    instance = app_instance()
    request_params = _params(params)
    if file is None and not image and not session_id:
        raise HTTPException(status_code=400, detail="no X-ray in the request: send it as the 'file' form field or "
                            "give a study id as ?image=")
    folder = None
    try:
        request: dict[str, Any] = {"model": model}
        if file is not None:
            limit = instance.app_settings.max_upload_bytes
            size = _upload_size(file)
            if size > limit:
                raise too_large(size, limit)
            folder = tempfile.mkdtemp(prefix="xray2mri_request_")
            path = os.path.join(folder, "upload" + safe_suffix(file.filename))
            with open(path, "wb") as out:
                shutil.copyfileobj(file.file, out)
            request["image"] = path
        elif image:
            request["image"] = _study(instance, image)
        request.update(instance.info().get("config", {}).get("infer", {}))
        request.update(request_params)
        if session_id and "image" not in request:
            session = instance.sessions().get_session(session_id)
            if session is None:
                raise HTTPException(status_code=404, detail=NOT_FOUND)
            request["image"] = session.image
        result = instance.infer(request)
        if result is None:
            raise HTTPException(status_code=500, detail="generation failed (see the server log)")
        return infer_endpoint.send_response(instance.datastore(), result, output, background_tasks)
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def install() -> None:
    """Route MONAI Label's ``/infer/{model}`` handler to :func:`run_inference` (MONAI Label 0.8.5 calls the
    module-level ``run_inference`` from its route at request time)."""
    from monailabel.endpoints import infer as infer_endpoint

    infer_endpoint.run_inference = run_inference
