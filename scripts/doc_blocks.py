"""Replace a marked block of a docs page: the measurement scripts write their figures between two HTML comments."""

from __future__ import annotations

from pathlib import Path


def replace_block(doc: Path, block: str) -> None:
    """Replace the part of ``doc`` between ``block``'s first and last lines (its start and end markers), or
    append ``block`` when the markers are not there yet."""
    lines = block.splitlines()
    start, end = lines[0], lines[-1]
    text = doc.read_text() if doc.exists() else ""
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)
