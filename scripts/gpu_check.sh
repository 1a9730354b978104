#!/usr/bin/env bash
# The GPU figures of docs/performance.md in one short run (see scripts/gpu_check.py): paper profile, default
# sampler, bf16 + SDPA + torch.compile, 50 and 500 depths, training at batch 64 bf16, NCCL with 2+ GPUs.
# Usage on a GPU machine: scripts/gpu_check.sh [OUT_JSON]  (sets up .venv first if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || scripts/bootstrap.sh
OUT=${1:-gpu_check.json}
.venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device: scripts/gpu_check.sh needs a GPU'"
exec .venv/bin/python scripts/gpu_check.py --device cuda --profile paper --out "$OUT"
