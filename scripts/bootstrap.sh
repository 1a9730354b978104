#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install the pinned dependency set.
# Usage: [VENV=DIR] scripts/bootstrap.sh [--extra label] [--freeze]
#   --extra NAME  also install the optional extra NAME (e.g. "label" for MONAI Label; see README)
#   --freeze      rewrite constraints.txt (constraints-label.txt with --extra label) from the environment
# --extra label installs into its own venv, .venv-label by default (VENV=... to choose): MONAI Label needs
# pydicom 2.4.4 and its own stack (constraints-label.txt), which must not leak into the core .venv.
# Needs only Python >= 3.10 on PATH (PYTHON=... to choose one). Re-running is cheap: a stamp file records
# the hash of pyproject.toml + the constraints file(s) and the install is skipped when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRA=""
FREEZE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --extra) EXTRA="$2"; shift 2 ;;
    --freeze) FREEZE=1; shift ;;
    *) echo "bootstrap.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

"$PYTHON" - <<'PY' || { echo "bootstrap.sh: Python >= 3.10 is required" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 10) else 1)
PY

CONSTRAINTS=constraints.txt
if [ "$EXTRA" = label ]; then CONSTRAINTS=constraints-label.txt; VENV=${VENV:-.venv-label}; fi
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
stamp=$VENV/.xray2mri-installed
want=$(cat pyproject.toml constraints.txt "$CONSTRAINTS" | sha256sum | cut -d' ' -f1)-dev${EXTRA:+-$EXTRA}
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[bootstrap] installing the pinned environment into $VENV (first run takes a few minutes)" >&2
  "${PIP[@]}" install -q --upgrade pip
  # torch first, pinned: an unpinned torch would pull a multi-GB CUDA build on CPU-only machines.
  "${PIP[@]}" install -q -c constraints.txt "torch==$(grep -E '^torch==' constraints.txt | cut -d= -f3)"
  case "$EXTRA" in
    "") "${PIP[@]}" install -q -c constraints.txt -e ".[dev]" ;;
    label)  # docs/monailabel.md. --no-build-isolation: sdists (sam2, ...) build against the pinned CPU torch
      "${PIP[@]}" install -q -c constraints-label.txt setuptools wheel
      SAM2_BUILD_CUDA=0 "${PIP[@]}" install -q --no-build-isolation -c constraints-label.txt -e ".[dev,label]"
      # without their declared deps: pydicom-seg 0.4.1 wants jsonschema<4 (core: >=4.20) and numpy<2 (both work)
      "${PIP[@]}" install -q --no-deps -c constraints-label.txt monailabel==0.8.5 pydicom-seg==0.4.1 ;;
    *) "${PIP[@]}" install -q -c constraints.txt -e ".[dev,$EXTRA]" ;;
  esac
  echo "$want" > "$stamp"
fi
if [ "$FREEZE" = 1 ]; then
  { sed -n '1,2p' "$CONSTRAINTS"; "${PIP[@]}" freeze --exclude-editable | sed -E 's/^torch==([0-9.]+)\+cpu/torch==\1/'; } > "$CONSTRAINTS.new"
  mv "$CONSTRAINTS.new" "$CONSTRAINTS"
fi
