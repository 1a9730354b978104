"""The package is a library: a (non-editable) install into a fresh venv outside the checkout runs the commands.

How the venv is built, offline and in seconds: ``python -m venv --without-pip`` in ``tmp_path`` (a pip and
setuptools from ``ensurepip`` would shadow the build backend the project needs), and one ``.pth`` file whose only
line is the site-packages folder of the interpreter running the tests. A plain path line in a ``.pth`` puts that
folder on ``sys.path`` (after the new venv's own site-packages), so torch, MONAI and the other dependencies are
found without a download; the ``.pth`` files INSIDE that folder are not run (``site`` processes ``.pth`` files only
in site directories, not in folders a ``.pth`` line adds), so the editable install of a development checkout
(``__editable__...pth`` and its import finder) cannot shadow the copy installed here. ``--system-site-packages``
would not do: it exposes the base interpreter's packages, not this venv's.

The project (``pyproject.toml``, ``README.md``, ``LICENSE``, ``xray2mri_bundle/``) is copied to ``tmp_path`` and
installed from there by the test interpreter's pip into the venv (``pip --python VENV install --no-deps
--no-build-isolation``, no index; build artefacts stay out of the checkout). Every command then runs from a folder
outside the checkout with ``PYTHONPATH`` unset, and the test checks that ``xray2mri_bundle`` is imported from the
new venv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import nibabel as nib
import pytest
from test_inference import PROFILE, SIZE, save_tiny_bundle, write_film

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("pyproject.toml", "README.md", "LICENSE")


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """(venv folder, environment) of a fresh venv holding a regular install of the project."""
    base = tmp_path_factory.mktemp("install")
    source = base / "source"
    source.mkdir()
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "xray2mri_bundle", source / "xray2mri_bundle",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = base / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_NO_INDEX"] = "1"  # offline: nothing is downloaded
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], base, env)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], base,
                     env).stdout.strip())
    (site / "_xray2mri_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-build-isolation",
                 "--quiet", str(source)], base, env)
    assert done.returncode == 0, done.stdout + done.stderr
    return venv, env


@pytest.mark.slow
def test_installed_package_runs_outside_the_checkout(installed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    venv, env = installed
    work = tmp_path / "elsewhere"  # not the checkout, not below it
    work.mkdir()
    assert not work.resolve().is_relative_to(ROOT)

    # the package imported is the venv's copy (not the checkout, not an editable install)
    origin = _run([str(venv / "bin" / "python"), "-c",
                   "import importlib.util; print(importlib.util.find_spec('xray2mri_bundle').origin)"], work, env)
    assert origin.returncode == 0, origin.stderr
    assert Path(origin.stdout.strip()).resolve().is_relative_to(venv.resolve()), origin.stdout
    assert (venv / "bin" / "xray2mri").is_file()
    xray2mri = str(venv / "bin" / "xray2mri")

    usage = _run([xray2mri, "--help"], work, env)
    assert usage.returncode == 0 and "generate" in usage.stdout and "demo" in usage.stdout, usage.stderr

    for tool in ("demo", "benchmark"):  # tools of the checkout: help anywhere, a clear error when run outside one
        helped = _run([xray2mri, tool, "--help"], work, env)
        assert helped.returncode == 0 and "--bundle-root" in helped.stdout, helped.stdout + helped.stderr
        refused = _run([xray2mri, tool], work, env)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and "configs/metadata.json" in lines[0] and "Traceback" not in refused.stderr

    models = tmp_path / "models"
    save_tiny_bundle(models / PROFILE)
    film = write_film(tmp_path / "film.dcm")
    out = work / "out"
    generated = _run([xray2mri, "generate", str(film), "-o", str(out), "--model-dir", str(models), "--profile",
                      PROFILE, "--slices", "2", "--steps", "1", "--side", "left", "--device", "cpu",
                      "--no-progress"], work, env)
    assert generated.returncode == 0, generated.stdout + generated.stderr
    volume = nib.load(out / "film_left" / "pseudo_mri.nii.gz")
    assert volume.shape == (SIZE, SIZE, 2)
