"""An interrupt that Python would swallow still stops the command (``ppo.cli.interruptible``).

A Python signal handler runs at the next bytecode boundary of the main thread, wherever that is. When it is
inside a garbage-collector callback (JAX registers one, ``_xla_gc_callback``, run at every collection) or a
``__del__``, the exception the handler raises cannot propagate: CPython prints ``Exception ignored in ...``
and carries on. That is how ``kill -INT`` of ``ppo train`` once left the training running (CI, 2026-12-02:
``Exception ignored in: <function _xla_gc_callback ...> ... ppo.cli.Interrupted: SIGINT``, then two more
progress lines). These tests put the handler inside such a callback on purpose, for our handler and for
Prefect's (``TerminationSignal`` on SIGTERM while a flow runs).
"""

from __future__ import annotations

import gc
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import typer

from ppo.cli import interruptible


@contextmanager
def _signal_inside_next_gc(signum: int) -> Iterator[None]:
    """Deliver ``signum`` to this process inside the next garbage collection's callback, so that its
    Python handler runs there (at the loop's backward jump) and what it raises is swallowed."""
    armed = [True]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and armed:
            armed.clear()
            signal.raise_signal(signum)
            for _ in range(1000):  # bytecode boundaries, where the handler runs
                pass

    gc.callbacks.append(callback)
    try:
        yield
    finally:
        gc.callbacks.remove(callback)


def _work_until_interrupted(seconds: float = 30.0) -> None:
    """A collection (the signal arrives inside it), then work; returns only if nothing stopped it."""
    gc.collect()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)


def _exit_code(run: Callable[[], None]) -> int | None:
    try:
        with interruptible(lambda: "test"):
            run()
    except typer.Exit as e:
        return e.exit_code
    return None


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_swallowed_by_a_gc_callback_still_stops_the_command(
    signum: int, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    def run() -> None:
        with _signal_inside_next_gc(signum):
            _work_until_interrupted()

    started = time.monotonic()
    assert _exit_code(run) == code
    assert time.monotonic() - started < 10.0  # gc.collect() of a whole suite's heap takes ~2 s; not 30
    assert f"interrupted: {signal.Signals(signum).name}; test" in capsys.readouterr().err


def test_prefects_termination_signal_swallowed_by_a_gc_callback_still_stops_the_flow() -> None:
    """Inside a flow run Prefect's handler, not ours, gets SIGTERM: it raises ``TerminationSignal``, and
    on the way out Prefect passes the signal on to the handler it replaced (ours: exit 143)."""
    from prefect.exceptions import TerminationSignal
    from prefect.utilities.engine import capture_sigterm

    stopped_by: list[BaseException] = []

    def run() -> None:
        try:
            with capture_sigterm(), _signal_inside_next_gc(signal.SIGTERM):
                assert signal.getsignal(signal.SIGTERM).__module__.startswith("prefect")
                _work_until_interrupted()
        except BaseException as e:
            stopped_by.append(e)
            raise

    started = time.monotonic()
    assert _exit_code(run) == 143
    assert time.monotonic() - started < 10.0  # gc.collect() of a whole suite's heap takes ~2 s; not 30
    first = stopped_by[0]
    assert isinstance(first, TerminationSignal) or isinstance(first.__context__, TerminationSignal)


def test_a_second_interrupt_after_a_swallowed_one_still_leaves_at_once() -> None:
    """Re-delivering a swallowed interrupt must not look like the user's second Ctrl-C (which exits)."""
    from ppo import cli

    def run() -> None:
        with _signal_inside_next_gc(signal.SIGINT):
            _work_until_interrupted()

    assert _exit_code(run) == 130
    assert not cli._redelivering, "a re-delivery left pending"
