#!/usr/bin/env bash
# The README's two fresh-clone commands:
#   scripts/run.sh demo [xray2mri demo options]   set up .venv, then cohort -> train/load -> generate -> evaluate
#   scripts/run.sh test [pytest options]           set up .venv, then ruff and the whole test suite (slow tests included)
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-}
shift || true
scripts/bootstrap.sh
case "$what" in
  demo) exec .venv/bin/xray2mri demo "$@" ;;
  test)
    .venv/bin/ruff check xray2mri_bundle tests scripts
    exec .venv/bin/python -m pytest -p no:cacheprovider -ra "$@" ;;
  *) echo "usage: scripts/run.sh demo|test [options]" >&2; exit 2 ;;
esac
