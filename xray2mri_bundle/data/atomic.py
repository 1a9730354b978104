"""Temporary files and folders for atomic writes, created with the usual modes.

``tempfile.mkstemp`` / ``mkdtemp`` create 0600 files and 0700 folders (private), so outputs renamed into place
kept those modes while the DICOM series got 0644. These create them as ``open`` and ``mkdir`` do (0666 / 0777
minus the process umask: 0644 / 0755 with the common umask 022), without touching the process-wide umask.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_dir", "replace_dir", "temp_dir", "temp_file", "write_atomic", "write_bytes_atomic"]

_ATTEMPTS = 100


def _create(folder: str | os.PathLike, prefix: str, suffix: str, make: Callable[[Path], None]) -> Path:
    """``make`` a new entry under a random free name in ``folder`` (exclusive creation: no race, no reuse)."""
    for _ in range(_ATTEMPTS):
        name = Path(folder) / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            make(name)
        except FileExistsError:
            continue
        return name
    raise FileExistsError(f"no free temporary name {prefix}*{suffix} in {folder}")


def temp_file(folder: str | os.PathLike, prefix: str = ".", suffix: str = ".tmp") -> Path:
    """A new empty file in ``folder`` (created exclusively, mode 0666 minus the umask); the caller renames it."""
    return _create(folder, prefix, suffix,
                   lambda name: os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)))


def temp_dir(folder: str | os.PathLike, prefix: str = ".", suffix: str = ".tmp") -> Path:
    """A new empty folder in ``folder`` (mode 0777 minus the umask); the caller renames it."""
    return _create(folder, prefix, suffix, lambda name: os.mkdir(name, 0o777))


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(fh)`` on a temporary file in ``path``'s folder, fsync, then ``os.replace`` it over ``path``: a
    crash leaves the old file or the new one, never half of either; a failed ``write`` leaves no temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file(path.parent, prefix=f".{path.name}.")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`write_atomic`)."""
    return write_atomic(path, lambda fh: fh.write(data))


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Move the finished folder ``tmp`` to ``final``; an existing ``final`` is moved aside first and removed only
    after the new one is in place, so ``final`` is always the old folder or the new one, complete."""
    tmp, final = Path(tmp), Path(final)
    if not final.exists():
        os.replace(tmp, final)
        return final
    old = temp_dir(final.parent, prefix=f".{final.name}.", suffix=".old")
    os.replace(final, old / "previous")
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temporary folder beside ``final``; on success it replaces ``final`` (:func:`replace_dir`), on
    failure it is removed and ``final`` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(final.parent, prefix=f".{final.name}.")
    try:
        yield tmp
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
