"""Atomic file writes: a reader (or a resume after a crash or a full disk) sees the old file or the new
one, never a torn one.

The bytes go to a temporary file beside the target, are fsynced, and the temporary file is renamed over
the target (``os.replace`` is atomic on POSIX), then the folder is fsynced so the rename survives a power
cut. A failed write (``ENOSPC``, say) removes its temporary file and leaves the target as it was.

A full disk (``ENOSPC``), a spent quota (``EDQUOT``) or a file size limit (``EFBIG``, ``ulimit -f``) raise
:class:`DiskFullError`, an :class:`OSError` whose message says which file, how much it needed and what
was free, so the command line prints one ``error:`` line instead of a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

#: the errors of a write that did not fit: disk full, quota spent, file size limit
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class DiskFullError(OSError):
    """A write did not fit (see :data:`NO_SPACE`); the previous file, if any, is intact."""

    def __str__(self) -> str:  # the message alone: it is what the command line prints after ``error:``
        return str(self.strerror)


def no_space_message(path: Path, needed: int, err: OSError) -> str:
    """What did not fit where, and what to do (the target was left as it was)."""
    where = path.parent
    if err.errno == errno.EFBIG:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        why = f"it is larger than the file size limit ({limit:,} bytes, ulimit -f)"
    else:
        try:
            free = f"{shutil.disk_usage(where).free:,} bytes free"
        except OSError:
            free = "free space unknown"
        kind = "disk quota exceeded" if err.errno == errno.EDQUOT else "no space left on device"
        why = f"{kind}: {needed:,} bytes needed, {free} in {where}"
    return (
        f"could not write {path} ({why}); the previous {path.name} is kept. Free some space (or point "
        "PPO_HOME at a larger disk) and run the command again (ppo train --resume continues from the last "
        "checkpoint)"
    )


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
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and e.errno in NO_SPACE and not isinstance(e, DiskFullError):
            raise DiskFullError(e.errno, no_space_message(target, len(data), e)) from e
        raise
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return target


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))
