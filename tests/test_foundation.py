"""Foundation checks: bundle metadata (configs/metadata.json, model-zoo layout) against MONAI's schema and against
the network it describes, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from xray2mri_bundle import cli

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT.parent / "shared" / "monai" / "meta_schema_20240725.json"


META = ROOT / "configs" / "metadata.json"


def test_metadata_is_one_real_file_in_configs() -> None:
    """A symlink would be extracted from a zip as the text of its target (``monai.bundle download`` breaks)."""
    assert META.is_file() and not META.is_symlink()
    assert not (ROOT / "metadata.json").exists()  # one source of truth
    meta = json.loads(META.read_text())
    assert meta["version"] in meta["changelog"]
    assert all(isinstance(v, (int, float)) for v in meta["eval_metrics"].values())


def test_network_data_format_is_network_def_of_inference_json() -> None:
    """MONAI's own check (``verify_net_in_out``) on ``network_def`` with every conditioning input of the metadata:
    shapes and channels of the default profile, output channels and dtype."""
    import torch
    from monai.bundle import ConfigParser, verify_net_in_out

    meta = json.loads(META.read_text())
    inputs = meta["network_data_format"]["inputs"]
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.json"))
    profile = parser["profile"]
    from xray2mri_bundle.networks import get_profile

    latent = get_profile(profile)["latent_shape"]
    assert [inputs["image"]["num_channels"], *inputs["image"]["spatial_shape"]] == latent
    assert [inputs["xray_latent"]["num_channels"], *inputs["xray_latent"]["spatial_shape"]] == latent

    def fake(name: str) -> torch.Tensor:
        spec = inputs[name]
        if spec["dtype"] == "int64":  # timesteps (batch,)
            return torch.full([1], 500, dtype=torch.long)
        if name == "depth":  # (batch,)
            return torch.rand(1)
        if name == "context":  # (batch, tokens, features)
            return torch.rand(1, *spec["spatial_shape"])
        return torch.rand(1, spec["num_channels"], *spec["spatial_shape"])

    extra = {name: fake(name) for name in inputs if name != "image"}
    verify_net_in_out(net_id="network_def", meta_file=str(META), config_file=str(ROOT / "configs" / "inference.json"),
                      device="cpu", extra_forward_args=extra)


@pytest.mark.skipif(not SCHEMA.exists(), reason="MONAI metadata schema not beside the repo (../shared/monai)")
def test_verify_metadata_against_monai_schema() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", "configs/metadata.json",
         "--filepath", str(SCHEMA)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "metadata is verified with no error" in proc.stdout + proc.stderr


def test_metadata_says_synthetic_and_not_for_diagnosis() -> None:
    meta = json.loads(META.read_text())
    assert "not for diagnosis" in meta["description"].lower() or "must not be used for diagnosis" in meta["description"]
    assert "research only" in meta["intended_use"].lower()


def test_cli_lists_commands_and_rejects_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in cli.SUBCOMMANDS:
        assert name in out
    assert cli.main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_every_subcommand_module_exists() -> None:
    import importlib.util

    missing = [mod for mod, _ in cli.SUBCOMMANDS.values() if importlib.util.find_spec(mod) is None]
    assert not missing, f"subcommands point at missing modules: {missing}"


def test_the_package_top_holds_only_its_init_and_subpackages() -> None:
    """Each step of the data flow lives in a subpackage (docs/architecture.md, "Modules")."""
    package = ROOT / "xray2mri_bundle"
    modules = sorted(p.name for p in package.glob("*.py"))
    assert modules == ["__init__.py"], f"modules at the package top: {modules}"
    subpackages = {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    assert {"checkpoint", "constants", "diffusion", "engines", "inference", "cli"} <= subpackages


def test_large_files_are_listed_with_their_hashes(tmp_path: Path) -> None:
    """large_files.yml lists every shipped weight file; the check fails naming a changed or missing file."""
    import shutil

    proc = subprocess.run([sys.executable, "scripts/verify_large_files.py"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listed = {line.split('"')[1] for line in (ROOT / "large_files.yml").read_text().splitlines()
              if line.strip().startswith("- path:")}
    assert listed == {str(p.relative_to(ROOT)) for p in (ROOT / "models").rglob("*.pt")}
    copy = tmp_path / "bundle"
    shutil.copytree(ROOT / "models", copy / "models")
    shutil.copy(ROOT / "large_files.yml", copy / "large_files.yml")
    first = sorted(listed)[0]
    with open(copy / first, "ab") as fh:
        fh.write(b"\0")
    (copy / sorted(listed)[1]).unlink()
    proc = subprocess.run([sys.executable, "scripts/verify_large_files.py", "--listing", str(copy / "large_files.yml")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert f"{first}: sha256 differs" in proc.stderr and f"{sorted(listed)[1]}: listed" in proc.stderr
