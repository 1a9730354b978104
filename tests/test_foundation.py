"""Foundation checks: bundle metadata against MONAI's schema, the configs/metadata.json link, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from xray2mri_bundle import cli

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT.parent / "shared" / "monai" / "meta_schema_20240725.json"


def test_configs_metadata_is_the_top_level_file() -> None:
    linked = ROOT / "configs" / "metadata.json"
    assert linked.resolve() == (ROOT / "metadata.json").resolve()
    assert json.loads(linked.read_text())["version"] == json.loads((ROOT / "metadata.json").read_text())["version"]


@pytest.mark.skipif(not SCHEMA.exists(), reason="MONAI metadata schema not beside the repo (../shared/monai)")
def test_verify_metadata_against_monai_schema() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", "metadata.json",
         "--filepath", str(SCHEMA)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "metadata is verified with no error" in proc.stdout + proc.stderr


def test_metadata_says_synthetic_and_not_for_diagnosis() -> None:
    meta = json.loads((ROOT / "metadata.json").read_text())
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
