#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install the pinned dependency set.
# Usage: scripts/bootstrap.sh [--extra label] [--freeze]
#   --extra NAME  also install the optional extra NAME (e.g. "label" for MONAI Label; see README)
#   --freeze      rewrite constraints.txt from the current environment (after a deliberate upgrade)
# Needs only Python >= 3.10 on PATH (PYTHON=... to choose one). Re-running is cheap: a stamp file records
# the hash of pyproject.toml + constraints.txt and the install is skipped when nothing changed.
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

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
stamp=.venv/.xray2mri-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)-dev${EXTRA:+-$EXTRA}
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[bootstrap] installing the pinned environment into .venv (first run takes a few minutes)" >&2
  "${PIP[@]}" install -q --upgrade pip
  # torch first, pinned: an unpinned torch would pull a multi-GB CUDA build on CPU-only machines.
  "${PIP[@]}" install -q -c constraints.txt "torch==$(grep -E '^torch==' constraints.txt | cut -d= -f3)"
  "${PIP[@]}" install -q -c constraints.txt -e ".[dev]"
  if [ -n "$EXTRA" ]; then
    case "$EXTRA" in
      label) SAM2_BUILD_CUDA=0 "${PIP[@]}" install -q --no-build-isolation -c constraints-label.txt -e ".[label]" ;;
      *) "${PIP[@]}" install -q -c constraints.txt -e ".[$EXTRA]" ;;
    esac
  fi
  echo "$want" > "$stamp"
fi
if [ "$FREEZE" = 1 ]; then
  { sed -n '1,2p' constraints.txt; "${PIP[@]}" freeze --exclude-editable | sed -E 's/^torch==([0-9.]+)\+cpu/torch==\1/'; } > constraints.txt.new
  mv constraints.txt.new constraints.txt
fi
