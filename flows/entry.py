"""The ``ppo`` console script: run the command (:data:`flows.cli.app`), then leave without the
interpreter's teardown.

Why: once a command is done, Python's shutdown still tears down every module it imported, and with
JAX, MLflow and Prefect loaded that took 0.5-1.5 s on this 2-core machine (measured: 1.5 s after the
last exit handler of ``ppo pipeline``) during which the user, a CI job or a test waits for nothing.
The exit handlers still run, all of them (the embedded Prefect API's stop, Prefect's log and event
workers, Ray's shutdown, MLflow's async logging): this one is registered before anything else is
imported, so it runs after them; then stdout and stderr are flushed and the process ends with the
command's exit status (``os._exit``). What is skipped is only the freeing of memory the kernel frees
anyway. So a training program still compiling ahead when the command ends (a Ctrl-C during ppo
pipeline's start-up) is abandoned, not waited for (:data:`ppo.runtime.ABANDON_COMPILES_AT_EXIT`).
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


def _leave(status: list[int]) -> None:
    import logging

    logging.shutdown()  # registered before this handler when logging came first: run it here
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (ppo ... | head), or a stream closed already
            pass
    os._exit(status[0])


def main(app: Callable[[], Any] | None = None) -> None:
    """Run ``ppo`` (``app``, default :data:`flows.cli.app`; ``python -m flows.cli`` passes its own); the
    exit status is the command's (uncaught errors: 1, Ctrl-C outside a command's own handling: 130)."""
    from ppo import runtime

    status = [1]
    atexit.register(_leave, status)  # registered before the command runs, so it runs after its handlers
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
