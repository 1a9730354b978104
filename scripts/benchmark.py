"""Performance benchmark (thin wrapper of ``tools/benchmark.py``; same options as ``xray2mri benchmark``).

    OMP_NUM_THREADS=2 python scripts/benchmark.py              # small profile on the CPU -> docs/performance.*
    python scripts/benchmark.py --quick --out-dir /tmp/bench   # tiny profile, a few seconds
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.benchmark import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
