"""The ``xray2mri`` dispatcher and the checkout tools' commands (``benchmark``, ``demo``) in and outside a checkout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from xray2mri_bundle.cli import SUBCOMMANDS, main
from xray2mri_bundle.cli._common import BundleRootError, find_bundle_root

ROOT = Path(__file__).resolve().parents[1]


def test_every_command_module_has_a_main() -> None:
    import importlib

    for module, _ in SUBCOMMANDS.values():
        assert callable(importlib.import_module(module).main), module


def test_help_is_fast_and_imports_no_torch() -> None:
    code = "import sys; from xray2mri_bundle.cli import main; main(['--help']); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert "generate" in done.stdout and done.stdout.strip().endswith("False")


@pytest.mark.parametrize("tool", ["demo", "benchmark"])
def test_tools_outside_a_checkout(tool: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([tool, "--help"]) == 0
    assert "--bundle-root" in capsys.readouterr().out
    assert main([tool]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "configs/metadata.json is missing" in err[0] and str(tmp_path.resolve()) in err[0]


def test_tool_help_from_the_checkout_lists_the_tool_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:  # argparse's --help of the tool itself
        main(["demo", "--bundle-root", str(ROOT), "--help"])
    assert stop.value.code == 0
    assert "--retrain" in capsys.readouterr().out


def test_find_bundle_root(tmp_path: Path) -> None:
    assert find_bundle_root(ROOT, needs="tools/demo.py") == ROOT
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "metadata.json").write_text("{}")
    assert find_bundle_root(tmp_path) == tmp_path.resolve()
    with pytest.raises(BundleRootError, match="tools/benchmark.py is missing"):
        find_bundle_root(tmp_path, needs="tools/benchmark.py")


def test_train_outside_a_checkout_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--profile", "tiny"]) == 2
    assert "configs/metadata.json is missing" in capsys.readouterr().err
