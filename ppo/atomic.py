"""Atomic file writes: a reader (or a resume after a crash or a full disk) sees the old file or the new
one, never a torn one.

The bytes go to a temporary file beside the target, are fsynced, and the temporary file is renamed over
the target (``os.replace`` is atomic on POSIX), then the folder is fsynced so the rename survives a power
cut. A failed write (``ENOSPC``, say) removes its temporary file and leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return target


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))
