"""The ``ppo`` console script: run the command (:data:`flows.cli.app`), then leave without the
interpreter's teardown.

Why: once a command is done, Python's shutdown still tears down every module it imported, and with
JAX, MLflow and Prefect loaded that took 0.5-1.5 s on this 2-core machine (measured: 1.5 s after the
last exit handler of ``ppo pipeline``) during which the user, a CI job or a test waits for nothing.
What still runs, as before: the threads that are not daemons are joined (Prefect drains its log and
event workers there), and every exit handler runs (the embedded Prefect API's stop, Ray's shutdown,
MLflow's async logging, temporary directories' clean-up): this handler is registered before the command
imports anything, so it runs after them; then it flushes stdout and stderr and ends the process with the
command's exit status (``os._exit``). What is skipped: freeing the modules and their objects (no code of
this project relies on a finaliser then; its files are written atomically and closed where written).
Daemon threads are not waited for: among them a training program still compiling ahead when the command
ends (a Ctrl-C during ``ppo pipeline``'s start-up), see :data:`ppo.runtime.ABANDON_COMPILES_AT_EXIT`.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable
from typing import Any


def _status(code: object) -> int:
    """The exit status Python gives ``SystemExit(code)``: None 0, an int itself, anything else 1 (its
    message already printed)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    return 1


def _flushed(*streams: Any) -> bool:
    """Flush each distinct stream (a stream may be None, or closed); whether all of them flushed."""
    ok = True
    for stream in {id(s): s for s in streams if s is not None}.values():
        try:
            stream.flush()
        except (OSError, ValueError):
            ok = False
    return ok


def _leave(status: list[int]) -> None:
    """The last exit handler: logging's shutdown, the standard streams flushed, ``os._exit``; whatever
    happens on the way (a stream that is None or closed, a second Ctrl-C), the process ends here, never
    in a teardown under an abandoned compile."""
    code = status[0]
    try:
        import logging

        logging.shutdown()  # registered before this handler (logging is imported first): run it here
        if not _flushed(sys.stdout, sys.__stdout__):
            # as Python does when it cannot flush stdout at exit (a full disk, a closed pipe): 120, so a
            # JSON result that did not reach its file is not reported as a success
            code = code or 120
        _flushed(sys.stderr, sys.__stderr__)
    except BaseException:  # noqa: BLE001, S110 - leave anyway, with the command's status
        pass
    finally:
        os._exit(code)


def main(app: Callable[[], Any] | None = None) -> None:
    """Run ``ppo`` (``app``, default :data:`flows.cli.app`; ``python -m flows.cli`` passes its own); the
    exit status is the command's (uncaught errors: 1, Ctrl-C outside a command's own handling: 130)."""
    status = [1]
    atexit.register(_leave, status)  # registered before the command runs, so it runs after its handlers
    from ppo import runtime

    runtime.ABANDON_COMPILES_AT_EXIT = True  # safe: this process never finalises under a running compile
    try:
        if app is None:
            from flows.cli import app
        app()
        status[0] = 0
    except SystemExit as e:
        status[0] = _status(e.code)
        raise
    except KeyboardInterrupt:
        status[0] = 130
        raise
