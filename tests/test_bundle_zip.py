"""The model-zoo way of getting the bundle: a zip made by ``git archive`` downloads with ``monai.bundle download``
and generates with ``monai.bundle run`` from an empty folder, the bundle root on ``sys.path`` (as the zoo and
MONAI Label load bundles) instead of an installed package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_git_archive_zip_downloads_and_runs(tmp_path: Path) -> None:
    from xray2mri_bundle.cohort.generate import make_cohort

    archive = tmp_path / "xray2mri_bundle.zip"
    subprocess.run(["git", "archive", "--format", "zip", "--prefix", "xray2mri_bundle/", "-o", str(archive), "HEAD"],
                   cwd=ROOT, check=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    download = subprocess.run([sys.executable, "-m", "monai.bundle", "download", "--name", "xray2mri_bundle",
                               "--url", archive.as_uri(), "--bundle_dir", str(empty / "bundles")],
                              cwd=empty, capture_output=True, text=True, env=env, timeout=300)
    assert download.returncode == 0, download.stderr[-3000:]
    bundle = empty / "bundles" / "xray2mri_bundle"
    assert (bundle / "configs" / "metadata.json").is_file() and not (bundle / "configs" / "metadata.json").is_symlink()
    env["PYTHONPATH"] = str(bundle)
    found = subprocess.run([sys.executable, "-c", "import xray2mri_bundle; print(xray2mri_bundle.__file__)"],
                           cwd=empty, capture_output=True, text=True, env=env, check=True)
    assert Path(found.stdout.strip()).is_relative_to(bundle)  # the extracted code, not the checkout's

    make_cohort(tmp_path / "cohort", knees=2, seed=3, mri_matrix=64)
    film = sorted(p for p in (tmp_path / "cohort" / "0.E.1").rglob("*") if p.is_file())[0]
    run = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                          str(bundle / "configs" / "inference.json"), "--meta_file",
                          str(bundle / "configs" / "metadata.json"), "--bundle_root", str(bundle),
                          "--xray", f"['{film}']", "--side", "right", "--output_dir", str(empty / "out"),
                          "--num_inference_steps", "2", "--slices", "3", "--progress", "False"],
                         cwd=empty, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    knee = next((empty / "out").iterdir())
    assert nib.load(knee / "pseudo_mri.nii.gz").shape[-1] == 3
    sidecar = json.loads((knee / "generation.json").read_text())
    assert "not for diagnosis" in sidecar["disclaimer"].lower()
    assert all(Path(k).parts[0] in ("autoencoder.pt", "classifier.pt", "diffusion.pt") for k in
               sidecar["checkpoints_sha256"])
