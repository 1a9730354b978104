"""Check the bundle's large files against ``large_files.yml`` (model-zoo convention): every listed file exists
and its hash matches (``monai.apps.utils.check_hash``); ``--update`` rewrites the hashes after a retrain.

    python scripts/verify_large_files.py            # exit 1 naming each missing or changed file
    python scripts/verify_large_files.py --update   # after replacing models/<profile>/*.pt
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from monai.apps.utils import check_hash

ROOT = Path(__file__).resolve().parents[1]


def problems(listing: Path, root: Path) -> list[str]:
    """One line per listed file that is missing or whose hash differs (empty: all good)."""
    entries = (yaml.safe_load(listing.read_text()) or {}).get("large_files") or []
    if not entries:
        return [f"{listing}: no large_files entries"]
    found = []
    for entry in entries:
        path = root / entry["path"]
        if not path.is_file():
            found.append(f"{entry['path']}: listed in {listing.name} but missing")
        elif not check_hash(path, entry["hash_val"], entry.get("hash_type", "sha256")):
            found.append(f"{entry['path']}: {entry.get('hash_type', 'sha256')} differs from {listing.name} "
                         "(retrained? run with --update)")
    return found


def update(listing: Path, root: Path) -> None:
    """Rewrite the ``hash_val`` lines of ``listing`` from the files (comments and order kept)."""
    lines, current = [], None
    for line in listing.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("- path:"):
            current = root / stripped.split(":", 1)[1].strip().strip('"')
        if stripped.startswith("hash_val:") and current is not None:
            line = line[: line.index("hash_val:")] + f'hash_val: "{hashlib.sha256(current.read_bytes()).hexdigest()}"'
        lines.append(line)
    listing.write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listing", type=Path, default=ROOT / "large_files.yml")
    parser.add_argument("--update", action="store_true", help="rewrite the hashes from the files")
    args = parser.parse_args(argv)
    root = args.listing.resolve().parent
    if args.update:
        update(args.listing, root)
    found = problems(args.listing, root)
    for line in found:
        print(f"error: {line}", file=sys.stderr)
    if not found:
        print(f"{args.listing.name}: every listed file is present with its hash")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
