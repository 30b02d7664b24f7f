"""Hold Ctrl-C and SIGTERM off a short critical section: their handler runs right after it instead.

Why: a Python signal handler runs, and raises, at the main thread's next bytecode, wherever that is. One
that lands inside a write to MLflow's SQLite store can leave SQLAlchemy holding the database's lock with a
half-done transaction (measured: 4 of 12 interrupts of a ``log_batch`` loop). The writes that then end the
runs (KILLED) each wait out SQLite's busy timeout, 20 s, and fail with "database is locked": an
interrupted sweep took over a minute to exit and left its runs RUNNING. :func:`held` makes such a write
all or nothing with respect to a signal; :func:`ppo.tracking.store.connect` puts every transaction on a
local store under it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: the signals a user or a CI runner stops a command with
STOPS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def held() -> Iterator[None]:
    """Run the block with SIGINT/SIGTERM held: one that arrives meanwhile is handled when the block ends,
    by the handler that was installed (ours, Prefect's or Python's ``KeyboardInterrupt``), as if it had
    arrived then. A signal whose disposition is not a Python function (the default for SIGTERM: the
    process dies at once, its locks with it) is left alone, and so is every other thread (Python runs
    handlers in the main thread only). Nested blocks hand the signal outwards. Keep the block short: a
    stop waits for it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        arrived.append(signum)

    previous: dict[int, Any] = {}
    for s in map(int, STOPS):
        handler = signal.getsignal(s)
        if callable(handler):
            previous[s] = handler
            signal.signal(s, hold)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if arrived:
            signum = arrived[0]
            previous[signum](signum, None)  # raises here, after the block, what it would have raised in it
