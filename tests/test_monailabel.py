"""MONAI Label integration (monailabel_app/): the REAL server on 127.0.0.1 serves pseudo-MRI generation.

Runs only where MONAI Label is installed, i.e. in the label environment (``VENV=.venv-label
scripts/bootstrap.sh --extra label``; see docs/monailabel.md). Sampling is kept cheap: tiny untrained networks
in the training export layout, 2 DDIM steps, 3 slices. The server is started as a subprocess on a free port,
waited for with a bounded timeout and always killed at the end.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "monailabel",
    reason="monailabel is not installed: run in the label environment (VENV=.venv-label scripts/bootstrap.sh "
    "--extra label; see docs/monailabel.md)",
)

import nibabel as nib  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from xray2mri_bundle import networks  # noqa: E402
from xray2mri_bundle.checkpoint import write_checkpoint  # noqa: E402
from xray2mri_bundle.data.dicom_utils import save_dataset  # noqa: E402
from xray2mri_bundle.diffusion import DEFAULT_SAMPLING  # noqa: E402
from xray2mri_bundle.inference.generator import slice_spacing_mm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "monailabel_app"
PROFILE = "tiny"
MODEL = "xray2mri"
STEPS, SLICES = 2, 3
MAX_UPLOAD_MB = 1.0
READY_TIMEOUT_S = 240.0
REQUEST_TIMEOUT_S = 240.0


# ----------------------------------------------------------------------------------------------------- inputs
def save_tiny_bundle(folder: Path) -> None:
    """Untrained tiny networks saved by the training's writer as the three final exports."""
    torch.manual_seed(0)
    settings = {"image_size": int(networks.get_profile(PROFILE)["image_size"])}
    write_checkpoint(folder / "autoencoder.pt", "autoencoder", {"autoencoder": networks.build_autoencoder(PROFILE)},
                     profile=PROFILE, settings=settings)
    write_checkpoint(folder / "classifier.pt", "classifier", {"classifier": networks.build_classifier(PROFILE)},
                     profile=PROFILE, settings=settings)
    write_checkpoint(folder / "diffusion.pt", "diffusion", {"unet": networks.build_unet(PROFILE),
                                                            "xray_encoder": networks.build_xray_encoder(PROFILE)},
                     profile=PROFILE, scale_factor=0.8, settings=settings)


def film_pixels(rows: int = 160, cols: int = 320) -> np.ndarray:
    """A bilateral film: per knee a bright 'leg' (bone) with a dark joint gap in the middle; uint16 12 bit."""
    r, c = np.mgrid[0:rows, 0:cols]
    image = np.full((rows, cols), 300.0)
    for centre in (cols // 4, 3 * cols // 4):
        image[(np.abs(c - centre) < cols // 10) & (np.abs(r - rows // 2) >= 3)] = 3000.0
    image += np.random.default_rng(0).normal(0, 20, image.shape)
    return np.clip(image, 0, 4095).astype(np.uint16)


def write_dicom_film(path: Path, spacing_mm: float = 0.8) -> Path:
    """A DX DICOM of :func:`film_pixels` (works on pydicom 2.4 and 3.x)."""
    pixels = film_pixels()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesDescription, ds.PatientID = "DX", "Bilateral PA Fixed Flexion Knee", "9000099"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImagerPixelSpacing = [str(spacing_mm), str(spacing_mm)]
    ds.PixelData = pixels.tobytes()
    save_dataset(ds, path)
    return path


def write_png_film(path: Path) -> Path:
    """The same film as an 8-bit PNG (no calibration: the bundle's default PNG spacing applies)."""
    Image.fromarray((film_pixels() / 16).astype(np.uint8)).save(path)
    return path


# ----------------------------------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path
    work: Path

    def log_tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def _get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback only
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def post_file(url: str, filename: str | None, content: bytes | None, params: dict | None = None,
              timeout: float = REQUEST_TIMEOUT_S) -> tuple[int, dict[str, str], bytes]:
    """Plain multipart/form-data POST (standard library only): fields ``params`` (JSON) and ``file`` (if any)."""
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n'.encode())
    body.write(json.dumps(params or {}).encode() + b"\r\n")
    if content is not None:
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                   "Content-Type: application/octet-stream\r\n\r\n".encode())
        body.write(content + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    request = urllib.request.Request(url, data=body.getvalue(), method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback only
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL it if it has not exited after 20 s."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("monailabel")
    save_tiny_bundle(work / "models" / PROFILE)
    studies = work / "studies"
    studies.mkdir()
    write_png_film(studies / "knee_png.png")
    # a copy of the app: start_server creates logs/, model/, bin/ inside the app folder
    app = shutil.copytree(APP, work / "app", ignore=shutil.ignore_patterns("__pycache__", "logs", "model", "bin"))
    port = free_port()
    env = {
        **os.environ,
        # offline: anything that tried to reach the internet through requests/urllib would fail at once
        "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1,localhost",
        "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
        "MONAI_LABEL_TRACKING_ENABLED": "false",
        "OMP_NUM_THREADS": "1",
        "TMPDIR": str(work / "tmp"),  # the server's temp folder, so tests can see what a request leaves behind
    }
    (work / "tmp").mkdir()
    command = [
        sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
        "--host", "127.0.0.1", "--port", str(port),
        "--conf", "models_dir", str(work / "models"), "--conf", "profile", PROFILE,
        "--conf", "steps", str(STEPS), "--conf", "slices", str(SLICES), "--conf", "seed", "7",
        "--conf", "device", "cpu", "--conf", "max_upload_mb", str(MAX_UPLOAD_MB),
    ]
    log = work / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    srv = Server(f"http://127.0.0.1:{port}", process, log, work)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"MONAI Label server exited with {process.returncode}:\n{srv.log_tail()}")
            try:
                status, _ = _get(srv.url + "/info/", timeout=5)
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"MONAI Label server not ready after {READY_TIMEOUT_S:.0f} s:\n{srv.log_tail()}")
            time.sleep(1.0)
        yield srv
    finally:
        stop(process)


def read_nifti(content: bytes, folder: Path) -> nib.Nifti1Image:
    path = folder / f"{uuid.uuid4().hex}.nii.gz"
    path.write_bytes(content)
    return nib.load(str(path))


def check_volume(img: nib.Nifti1Image, slices: int = SLICES) -> None:
    """Shape (N, N, slices) of the tiny profile, float32, channel squeezed, mm spacing of the bundle's writer."""
    size = int(networks.get_profile(PROFILE)["image_size"])
    assert img.shape == (size, size, slices)
    assert img.get_data_dtype() == np.float32
    data = np.asarray(img.dataobj)
    assert np.isfinite(data).all() and data.min() >= -1.0 and data.max() <= 1.0
    spacing = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
    np.testing.assert_allclose(spacing, [140.0 / size, 140.0 / size, slice_spacing_mm(slices)], rtol=1e-5)  # frame
    assert nib.aff2axcodes(img.affine) == ("I", "L", "P")
    assert b"SYNTHETIC" in bytes(img.header["descrip"])


# ------------------------------------------------------------------------------------------------------ tests
def test_info_lists_the_model(server: Server) -> None:
    status, body = _get(server.url + "/info/")
    assert status == 200, body
    info = json.loads(body)
    model = info["models"][MODEL]
    assert model["type"] == "others"
    assert model["config"]["steps"] == STEPS and model["config"]["slices"] == SLICES
    assert "not for diagnosis" in model["description"]


def test_infer_with_the_monailabel_client(server: Server, tmp_path: Path) -> None:
    from monailabel.client import MONAILabelClient

    dicom = write_dicom_film(tmp_path / "film.dcm")
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    result_file, params = client.infer(MODEL, "", {"side": "left"}, file=str(dicom))
    img = nib.load(result_file)
    check_volume(img)
    assert params["side"] == "LEFT" and params["steps"] == STEPS and params["seed"] == 7
    assert "not for diagnosis" in params["disclaimer"]
    # the solver is a request setting like the others, and the result names it
    _, multistep = client.infer(MODEL, "", {"side": "left", "sampler": "dpmpp_2m"}, file=str(dicom))
    assert multistep["sampler"] == "dpmpp_2m" and params["sampler"] == DEFAULT_SAMPLING.sampler


def test_infer_with_plain_http_returns_nifti(server: Server, tmp_path: Path) -> None:
    png = write_png_film(tmp_path / "film.png").read_bytes()
    status, headers, body = post_file(server.url + f"/infer/{MODEL}?output=image", "film.png", png,
                                      {"slices": 4, "seed": 1})
    assert status == 200, body[:2000]
    check_volume(read_nifti(body, tmp_path), slices=4)
    # same request, same seed: the same volume (the generation is seeded)
    status, _, again = post_file(server.url + f"/infer/{MODEL}?output=image", "film.png", png,
                                 {"slices": 4, "seed": 1})
    assert status == 200
    np.testing.assert_array_equal(np.asarray(read_nifti(again, tmp_path).dataobj),
                                  np.asarray(read_nifti(body, tmp_path).dataobj))


@pytest.mark.parametrize("device", ["meta", "bogus9", "cpu:1", "cuda:7"])
def test_a_request_cannot_choose_the_device(server: Server, tmp_path: Path, device: str) -> None:
    """The served device is the server's configuration: a request's device is ignored (no 500, no new pipeline)."""
    png = write_png_film(tmp_path / "film.png").read_bytes()
    status, _, body = post_file(server.url + f"/infer/{MODEL}?output=image", "film.png", png,
                                {"slices": 2, "seed": 1, "device": device})
    assert status == 200, body[:2000]
    check_volume(read_nifti(body, tmp_path), slices=2)


def test_served_device_is_checked_at_start_up() -> None:
    sys.path.insert(0, str(APP))
    from lib.infers.xray2mri import served_device

    assert served_device("cpu") == "cpu"
    for bad in ("meta", "bogus9", "cuda:0" if not torch.cuda.is_available() else "meta"):
        with pytest.raises(ValueError, match="device"):
            served_device(bad)


def test_infer_a_study_of_the_datastore_by_id(server: Server, tmp_path: Path) -> None:
    status, body = _get(server.url + "/datastore/?output=all")
    assert status == 200, body
    assert "knee_png" in json.loads(body)["objects"]
    status, _, body = post_file(server.url + f"/infer/{MODEL}?image=knee_png&output=image", None, None)
    assert status == 200, body[:2000]
    check_volume(read_nifti(body, tmp_path))
    status, _, body = post_file(server.url + f"/infer/{MODEL}?image=no_such_study&output=image", None, None)
    assert status == 404 and "not found" in json.loads(body)["detail"]


def _raw_post(url: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:  # noqa: S310 - loopback
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _files_under(*folders: Path) -> set[str]:
    return {str(p) for folder in folders for p in folder.rglob("*") if p.is_file()}


def test_no_request_leaves_anything_behind_and_only_study_ids_are_read(server: Server, tmp_path: Path) -> None:
    png = write_png_film(tmp_path / "film.png").read_bytes()
    secret = tmp_path / "outside.png"
    secret.write_bytes(png)  # a readable image OUTSIDE the studies folder
    watched = (server.work / "tmp", server.work / "app", server.work / "studies")
    before = _files_under(*watched)
    url = server.url + f"/infer/{MODEL}?output=json"
    answers = [
        post_file(url, "notes.txt", b"this is not an image\n" * 20)[0],
        post_file(url, "empty.png", b"")[0],
        post_file(url, "huge.dcm", b"\0" * int((MAX_UPLOAD_MB + 0.5) * 2**20))[0],
        post_file(url, "film." + "x" * 300, png)[0],  # over-long suffix: a safe short name, then a normal answer
        post_file(url, "film.png", png, {"image": str(secret)})[0],  # params may not replace the upload
        post_file(server.url + f"/infer/{MODEL}?image={secret}&output=json", None, None)[0],
        post_file(server.url + f"/infer/{MODEL}?image=/no/such/file.png&output=json", None, None)[0],
        post_file(url, None, None)[0],  # no file field
    ]
    boundary = uuid.uuid4().hex
    bad_json = (f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{{not json\r\n'
                f"--{boundary}--\r\n").encode()
    answers.append(_raw_post(url, bad_json, f"multipart/form-data; boundary={boundary}")[0])
    assert answers[:3] == [422, 400, 413] and answers[4] == 400
    assert answers[5] == answers[6] == 404  # a host path and a missing path look the same as an unknown id
    assert all(400 <= a < 500 for a in answers if a != 200) and answers[7] == 400 and answers[8] == 400
    assert _files_under(*watched) == before, sorted(_files_under(*watched) - before)


@pytest.mark.parametrize(
    ("name", "content", "params", "status", "message"),
    [
        ("notes.txt", b"this is not an image\n" * 20, {}, 422, "not a usable knee X-ray"),
        ("empty.png", b"", {}, 400, "empty"),
        ("huge.dcm", b"\0" * int((MAX_UPLOAD_MB + 0.5) * 2**20), {}, 413, "max_upload_mb"),
        ("film.png", None, {"steps": 0}, 400, "steps"),
        ("film.png", None, {"side": "middle"}, 400, "side"),
        ("film.png", None, {"sampler": "euler"}, 400, "sampler"),
    ],
    ids=["not-an-image", "empty", "oversized", "bad-steps", "bad-side", "bad-sampler"],
)
def test_bad_uploads_get_4xx_with_a_message_and_the_server_keeps_serving(
    server: Server, tmp_path: Path, name: str, content: bytes | None, params: dict, status: int, message: str
) -> None:
    if content is None:
        content = write_png_film(tmp_path / "film.png").read_bytes()
    code, _, body = post_file(server.url + f"/infer/{MODEL}?output=image", name, content, params)
    assert code == status, body[:2000]
    detail = json.loads(body)["detail"]
    assert message in detail
    assert server.process.poll() is None
    good = write_png_film(tmp_path / "good.png").read_bytes()
    code, _, body = post_file(server.url + f"/infer/{MODEL}?output=image", "good.png", good)
    assert code == 200, body[:2000]
    check_volume(read_nifti(body, tmp_path))


def test_app_loads_offline_without_torchvision(tmp_path: Path) -> None:
    """Loading the app and running one request imports neither torchvision nor SAM2 nor MONAI Label's
    post transforms (``Restored``): the app works without them and needs nothing from the internet."""
    save_tiny_bundle(tmp_path / "models" / PROFILE)
    app = shutil.copytree(APP, tmp_path / "app", ignore=shutil.ignore_patterns("__pycache__"))
    film = write_png_film(tmp_path / "film.png")
    (tmp_path / "studies").mkdir()
    script = f"""
import sys
from monailabel.interfaces.utils.app import app_instance
conf = {{"models_dir": {str(tmp_path / "models")!r}, "profile": {PROFILE!r}, "steps": "1", "slices": "2",
        "device": "cpu"}}
app = app_instance({str(app)!r}, {str(tmp_path / "studies")!r}, conf)
assert "{MODEL}" in app.info()["models"], app.info()["models"]
result = app.infer({{"model": "{MODEL}", "image": {str(film)!r}}})
assert result["file"].endswith(".nii.gz"), result
# MONAI probes torchvision with optional_import when monai.networks is imported; in this CPU environment the
# PyPI torchvision (a CUDA build) fails to load, so the probe fails and torchvision itself is never imported.
loaded = sorted(m for m in ("torchvision", "sam2", "monailabel.transform.post") if m in sys.modules)
assert not loaded, loaded
print("OK")
"""
    env = {**os.environ, "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=REQUEST_TIMEOUT_S)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout[-3000:] + proc.stderr[-6000:]


def test_the_generic_monaibundle_task_cannot_serve_this_bundle(caplog: pytest.LogCaptureFixture) -> None:
    """MONAI Label's generic ``BundleInferTask`` (the ``monaibundle`` app) looks for ONE ``models/model.pt`` or
    ``model.ts`` and a preprocessing -> inferer -> postprocessing chain; generation needs four networks and a
    sampling loop, so the generic task refuses the bundle and the bundle's own app (above) serves it, as
    configs/metadata.json and docs/monailabel.md say. The generic task imports ``torchvision.utils`` for its
    post transforms; PyPI's torchvision cannot load beside the CPU torch here, so a stand-in module is given."""
    import types

    root = Path(__file__).resolve().parents[1]
    stand_in = types.ModuleType("torchvision")
    stand_in.__path__ = []
    utils = types.ModuleType("torchvision.utils")
    utils.make_grid = utils.save_image = lambda *args, **kwargs: None
    saved = {name: sys.modules.get(name) for name in ("torchvision", "torchvision.utils")}
    sys.modules.update({"torchvision": stand_in, "torchvision.utils": utils})
    try:
        from monailabel.tasks.infer.bundle import BundleInferTask

        with caplog.at_level("WARNING"):
            task = BundleInferTask(str(root), {})
        assert not task.is_valid()
        assert "neither model.pt nor model.ts exists" in caplog.text
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    assert "monailabel_app" in meta["monai_label"]["app"] and "monaibundle" in meta["monai_label"]["generic_app"]
