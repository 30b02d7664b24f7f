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
    """Run the block with SIGINT/SIGTERM held: the first that arrives meanwhile is handled when the block
    ends, by the handler that was installed (ours, Prefect's or Python's ``KeyboardInterrupt``), as if it
    had arrived then; a second one is handled at once (ours then leaves at once: the user insists). A
    signal whose disposition is not a Python function (the default for SIGTERM: the process dies at once,
    its locks with it) is left alone, and so is every other thread (Python runs handlers in the main thread
    only). Nested blocks hand the signal outwards. Keep the block short: a stop waits for it.

    A signal can land between any two bytecodes, the handler swaps included: one that lands before a swap
    meets the real handler (and the block does not run); ``hold`` left installed by one that lands during
    the restore passes every signal straight on, so none is ever kept."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous: dict[int, Any] = {}
    holding = [True]

    def hold(signum: int, frame: Any) -> None:
        if holding and not arrived:
            arrived.append(signum)
        else:
            previous[signum](signum, frame)

    try:
        with _prefect_bridge_lock():
            try:
                for s in map(int, STOPS):
                    handler = signal.getsignal(s)
                    if callable(handler):
                        previous[s] = handler
                        signal.signal(s, hold)
                yield
            finally:
                holding.clear()
                for s, handler in previous.items():
                    if signal.getsignal(s) is hold:
                        signal.signal(s, handler)
    finally:
        if arrived:  # raised here, after the block (and whatever it raised), as it would have been in it
            previous[arrived[0]](arrived[0], None)


def _prefect_bridge_lock() -> Any:
    """Prefect's lock around its SIGTERM handler, when Prefect is imported, else nothing to hold.

    Why: a Prefect runner cancels a flow run only after a thread of the run's process checks, under this
    lock, that Prefect's own SIGTERM handler is installed (``can_ack_control_intent``); in a block ``hold``
    is, and the cancel would turn into a crash. Holding the lock makes that check wait for the block
    (milliseconds)."""
    import contextlib
    import sys

    engine = sys.modules.get("prefect.utilities.engine")
    lock = getattr(engine, "_prefect_sigterm_bridge_lock", None)
    return lock if lock is not None else contextlib.nullcontext()
