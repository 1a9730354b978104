"""End-to-end training tests on a tiny synthetic cohort (6 knees, 64 px), through the real bundle command
``python -m monai.bundle run training --config_file ...``: all three stages, MLflow (SQLite and a real
``mlflow server``), resume after SIGKILL, 2-process DDP on gloo, and the missing-dataset message.

The subprocesses run with one OpenMP thread each: on a shared 2-core machine more threads only contend.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from xray2mri_bundle.engines.checkpoints import interval_checkpoints
from xray2mri_bundle.networks import build_unet

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TINY = "['configs/train.json','configs/profiles/tiny.json']"
STAGES = ("autoencoder", "classifier", "diffusion")
# tiny profile: 4 training knees, batch 2, one random slice per knee per epoch -> 2 iterations x 2 epochs
TINY_ITERATIONS = 4
LOGGING_CONF = """[loggers]
keys=root
[handlers]
keys=console
[formatters]
keys=plain
[logger_root]
level=INFO
handlers=console
[handler_console]
class=StreamHandler
level=INFO
formatter=plain
args=(sys.stdout,)
[formatter_plain]
format=%(asctime)s %(name)s %(levelname)s %(message)s
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GIT_PYTHON_REFRESH="quiet", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> Path:
    generate = pytest.importorskip("xray2mri_bundle.cohort")
    out = tmp_path_factory.mktemp("cohort")
    generate.make_cohort(out, knees=6, seed=0, mri_matrix=64, progress=False)
    return out


@pytest.fixture(scope="session")
def logging_conf(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("logging") / "logging.conf"
    path.write_text(LOGGING_CONF)
    return path


def bundle_command(cohort: Path, out: Path, logging_conf: Path, *extra: str, config_file: str = TINY) -> list[str]:
    """The user's command on the tiny profile, writing everything under ``out``."""
    return [
        sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config_file,
        "--dataset_dir", str(cohort), "--output_dir", str(out), "--model_dir", str(out / "models"),
        "--logging_file", str(logging_conf), *extra,
    ]


def run_bundle(command: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return result


def copy_trained(trained: Path, out: Path, stages: tuple[str, ...]) -> Path:
    """A fresh output folder holding the final checkpoints of ``stages`` from the session run."""
    (out / "models").mkdir(parents=True)
    for stage in stages:
        shutil.copy2(trained / "models" / f"{stage}.pt", out / "models" / f"{stage}.pt")
    return out


@pytest.fixture(scope="session")
def trained(cohort, logging_conf, tmp_path_factory) -> Path:
    """All three stages of the tiny profile, trained once with MLflow tracking to the default SQLite store."""
    out = tmp_path_factory.mktemp("trained")
    result = run_bundle(bundle_command(cohort, out, logging_conf, "--tracking", "mlflow"))
    (out / "run.log").write_text(result.stdout + result.stderr)
    return out


def test_all_stages_write_the_inference_checkpoints(trained):
    for stage in STAGES:
        ckpt = torch.load(trained / "models" / f"{stage}.pt", weights_only=True)
        assert {"format_version", "networks", "scale_factor", "profile", "settings"} <= set(ckpt), stage
        assert ckpt["profile"] == "tiny" and ckpt["stage"] == stage and ckpt["iteration"] == TINY_ITERATIONS
        assert all(entry["config"]["_target_"] and entry["model"] for entry in ckpt["networks"].values()), stage
    diffusion = torch.load(trained / "models" / "diffusion.pt", weights_only=True)
    unet, encoder = diffusion["networks"]["unet"], diffusion["networks"]["xray_encoder"]
    assert diffusion["scale_factor"] > 0 and unet["ema"] and encoder["ema"]
    assert diffusion["settings"]["num_train_timesteps"] == 1000
    assert diffusion["settings"]["mri_frame"] == "joint_centred"  # the default frame, recorded
    assert diffusion["settings"]["mri_pose_template_sha256"] is None
    assert unet["config"] == build_unet("tiny").config  # the sizes of configs/profiles/tiny.json
    log = (trained / "run.log").read_text()
    assert "1 / std of the training latents" in log and "val_sample_psnr" in log
    assert list((trained / "tiny" / "diffusion" / "samples").glob("samples_epoch=*.png"))
    for stage in STAGES:  # latest and best checkpoints next to the final export
        assert interval_checkpoints(trained / "tiny" / stage) and (trained / "tiny" / stage / "best.pt").is_file()
    from xray2mri_bundle.inference.generator import load_pipeline

    generator = load_pipeline(trained / "models", "tiny")
    assert generator.weights == "ema" and generator.scale_factor == pytest.approx(diffusion["scale_factor"])


def test_mlflow_sqlite_store_has_one_run_per_stage(trained):
    from mlflow import MlflowClient
    from monai.utils import path_to_sqlite_uri

    client = MlflowClient(path_to_sqlite_uri(trained / "mlruns.db"))
    experiment = client.get_experiment_by_name("xray2mri")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert set(runs) == set(STAGES)
    expected_metrics = {"autoencoder": "val_psnr", "classifier": "val_accuracy", "diffusion": "val_sample_ssim"}
    for stage, run in runs.items():
        assert run.info.status == "FINISHED"
        assert run.data.params["profile"] == "tiny" and run.data.params["stage"] == stage
        assert "lr" in run.data.params and "train_loss" in run.data.metrics
        assert expected_metrics[stage] in run.data.metrics
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "executed_config.json" in artifacts
        assert f"{stage}.pt" in artifacts  # MLFlowHandler(artifacts=...): the final checkpoint
    assert runs["diffusion"].data.metrics["scale_factor"] > 0  # the trainer metric set by ComputeScaleFactor
    samples = {a.path for a in client.list_artifacts(runs["diffusion"].info.run_id)}
    assert any(path.startswith("samples_epoch=") for path in samples)  # the validation sample images


def test_rerun_skips_finished_stages(trained, cohort):
    from monai.bundle import ConfigWorkflow

    before = {s: (trained / "models" / f"{s}.pt").stat().st_mtime_ns for s in STAGES}
    workflow = ConfigWorkflow(
        config_file=[str(REPO / "configs" / "train.json"), str(REPO / "configs" / "profiles" / "tiny.json")],
        run_id="training", logging_file=False, dataset_dir=str(cohort), output_dir=str(trained),
        model_dir=str(trained / "models"),
    )
    workflow.initialize()
    (decisions,) = workflow.run()
    assert [d.action for d in decisions] == ["skip"] * 3
    assert before == {s: (trained / "models" / f"{s}.pt").stat().st_mtime_ns for s in STAGES}


def test_resume_after_sigkill_continues_from_the_last_checkpoint(trained, cohort, logging_conf, tmp_path):
    out = copy_trained(trained, tmp_path / "resume", ("autoencoder", "classifier"))
    epochs, per_epoch = 8, 2
    command = bundle_command(cohort, out, logging_conf, "--stages", "['diffusion']", "--diffusion_max_epochs",
                             str(epochs), "--diffusion_val_interval", "4")
    folder = out / "tiny" / "diffusion"
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        deadline = time.monotonic() + 600
        while process.poll() is None and time.monotonic() < deadline:
            saved = interval_checkpoints(folder)
            if saved and saved[0][0] >= 4:  # two checkpoints (2 and 4): the older one is surely complete
                os.kill(process.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert not (out / "models" / "diffusion.pt").exists()

    result = run_bundle(command)
    match = re.search(r"resumed from \S+checkpoint_iteration=(\d+)\.pt at iteration (\d+)", result.stdout)
    assert match, result.stdout[-3000:]
    resumed = int(match.group(2))
    assert resumed >= 2 and int(match.group(1)) == resumed
    assert "(restored)" in result.stdout  # the scale factor came back with the checkpoint
    iterations_run = len(re.findall(rf"Epoch: \d+/{epochs}, Iter: \d+/{per_epoch} -- train_loss", result.stdout))
    assert iterations_run == epochs * per_epoch - resumed
    final = torch.load(out / "models" / "diffusion.pt", weights_only=True)
    assert final["iteration"] == epochs * per_epoch
    # the folder keeps the documented two interval checkpoints: the resumed-from file went once two newer existed
    kept = interval_checkpoints(folder)
    assert len(kept) == 2 and all(it > resumed for it, _ in kept)
    saved_state = torch.load(kept[0][1], weights_only=True)  # the scale factor is restored, never recomputed
    assert final["scale_factor"] == pytest.approx(saved_state["scale_factor"]["value"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
               "--artifacts-destination", str(tmp_path / "server_artifacts")]
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(command, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=15)


def test_mlflow_tracking_server(trained, cohort, logging_conf, tmp_path, mlflow_server):
    from mlflow import MlflowClient

    out = copy_trained(trained, tmp_path / "served", ())
    run_bundle(bundle_command(cohort, out, logging_conf, "--stages", "['classifier']", "--tracking", "mlflow",
                              "--tracking_uri", mlflow_server))
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("xray2mri")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "classifier" and run.info.status == "FINISHED"
    assert run.data.params["profile"] == "tiny" and float(run.data.params["lr"]) > 0
    assert {"train_loss", "val_accuracy", "val_loss"} <= set(run.data.metrics)
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert len(history) == TINY_ITERATIONS
    assert {"executed_config.json", "classifier.pt"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert not (out / "mlruns.db").exists()  # nothing went to the local store


def test_two_process_ddp_on_gloo_keeps_ranks_identical(trained, cohort, logging_conf, tmp_path):
    out = copy_trained(trained, tmp_path / "ddp", ("autoencoder", "classifier"))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}"]
    config = "['configs/train.json','configs/profiles/tiny.json','configs/multi_gpu_train.json']"
    command = bundle_command(cohort, out, logging_conf, "--stages", "['diffusion']", "--save_rank_digests", "true",
                             config_file=config)
    run_bundle(torchrun + command[1:])
    digests = [json.loads(p.read_text()) for p in sorted((out / "tiny" / "diffusion" / "rank_digests").glob("rank*"))]
    assert [d["rank"] for d in digests] == [0, 1] and all(d["world_size"] == 2 for d in digests)
    # 4 knees over 2 ranks, batch 2: one iteration per epoch on each rank
    assert all(d["iteration"] == TINY_ITERATIONS // 2 for d in digests)
    assert digests[0]["sha256"] == digests[1]["sha256"]
    assert all(d["sha256"] != d["initial_sha256"] for d in digests)
    final = torch.load(out / "models" / "diffusion.pt", weights_only=True)
    assert final["iteration"] == TINY_ITERATIONS // 2


def test_missing_dataset_gives_a_clear_message(tmp_path, logging_conf):
    missing = tmp_path / "no_such_cohort"
    command = bundle_command(missing, tmp_path / "out", logging_conf)
    result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    tail = result.stderr.strip().splitlines()[-8:]
    message = "\n".join(tail)
    assert "No training data: the path does not exist" in message and str(missing) in message
    assert "--dataset_dir /path/to/OAI" in message and "xray2mri make-cohort --out DIR" in message
    assert "Traceback" not in result.stderr


def test_pose_frame_overlay_trains_every_stage_in_that_frame(cohort, logging_conf, tmp_path):
    """``configs/pose_frame.json`` merged after ``train.json``: the first stage builds the model folder's pose
    template from the training knees, every stage trains on aligned MRIs, and diffusion.pt records the frame."""
    from xray2mri_bundle.data.pose import load_pose_template

    out = tmp_path / "pose"
    config = "['configs/train.json','configs/pose_frame.json','configs/profiles/tiny.json']"
    result = run_bundle(bundle_command(cohort, out, logging_conf, "--mri_pose_template_knees", "2",
                                       "--mri_pose_template_rounds", "1", config_file=config))
    log = result.stdout + result.stderr
    template = out / "models" / "mri_pose_template.pt"
    assert load_pose_template(template).image.shape == (31, 57, 57)
    assert json.loads(template.with_suffix(".json").read_text())["knees"] == 2
    assert log.count("pose frame: building the template") == 1  # built once, by the first stage
    for stage in STAGES:
        assert (out / "models" / f"{stage}.pt").is_file(), stage
    settings = torch.load(out / "models" / "diffusion.pt", weights_only=True)["settings"]
    assert settings["mri_frame"] == "canonical_pose" and settings["mri_pose_fit_size"] is False
    assert settings["mri_pose_template_sha256"] == load_pose_template(template).digest
    assert torch.load(out / "models" / "autoencoder.pt", weights_only=True)["settings"]["mri_frame"] == "canonical_pose"
