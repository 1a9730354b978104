#!/usr/bin/env bash
# The README's two fresh-clone commands:
#   scripts/run.sh demo [xray2mri demo options]   set up .venv, then cohort -> train/load -> generate -> evaluate
#   scripts/run.sh test [pytest options]           set up .venv, then ruff and the whole test suite (slow tests included),
#                                                  then the MONAI Label server tests in their own .venv-label
#                                                  (XRAY2MRI_SKIP_LABEL=1 skips that part on a dev machine)
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-}
shift || true
scripts/bootstrap.sh
case "$what" in
  demo) exec .venv/bin/xray2mri demo "$@" ;;
  test)
    .venv/bin/ruff check xray2mri_bundle tools tests scripts monailabel_app
    .venv/bin/python -m pytest -p no:cacheprovider -ra "$@"
    if [ "${XRAY2MRI_SKIP_LABEL:-0}" != 1 ]; then
      scripts/bootstrap.sh --extra label
      .venv-label/bin/python -m pytest -p no:cacheprovider -ra tests/test_monailabel.py
    fi ;;
  *) echo "usage: scripts/run.sh demo|test [options]" >&2; exit 2 ;;
esac
