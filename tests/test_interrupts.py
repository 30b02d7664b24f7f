"""An interrupt that Python would swallow still stops the command (``ppo.cli.interruptible``).

A Python signal handler runs at the next bytecode boundary of the main thread, wherever that is. When it is
inside a garbage-collector callback (JAX registers one, ``_xla_gc_callback``, run at every collection) or a
``__del__``, the exception the handler raises cannot propagate: CPython prints ``Exception ignored in ...``
and carries on. That is how ``kill -INT`` of ``ppo train`` once left the training running (CI, 2026-12-02:
``Exception ignored in: <function _xla_gc_callback ...> ... ppo.cli.Interrupted: SIGINT``, then two more
progress lines). These tests put the handler inside such a callback on purpose, for our handler and for
Prefect's (``TerminationSignal`` on SIGTERM while a flow runs).

The same boundary can fall inside a transaction on MLflow's SQLite store, which SQLAlchemy then leaves
holding the database's lock: the writes that end the runs KILLED wait 20 s each and fail (``ppo sweep``,
2026-12-02, "still running 60 s after the signal"). :func:`ppo.interrupts.held` keeps it out of them.
"""

from __future__ import annotations

import contextlib
import gc
import signal
import sqlite3
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


def test_a_redelivered_interrupt_is_not_taken_for_a_second_ctrl_c() -> None:
    """Re-delivering a swallowed interrupt must not look like the user's second Ctrl-C (which exits at
    once, without the one line): the command ends with its ``interrupted:`` exit code."""
    from ppo import cli

    def run() -> None:
        with _signal_inside_next_gc(signal.SIGINT):
            _work_until_interrupted()

    assert _exit_code(run) == 130
    assert not cli._redelivering and not cli._resends, "a re-delivery left pending"


_BLOCKING_WAIT = """
import gc, signal, sys, threading
sys.path.insert(0, {root!r})
from ppo.cli import interruptible
from tests.test_interrupts import _signal_inside_next_gc

import typer

try:
    with interruptible(lambda: "test"):
        with _signal_inside_next_gc(signal.SIGINT):
            gc.collect()
        threading.Event().wait(30)
except typer.Exit as e:
    sys.exit(e.exit_code)
"""


def test_a_swallowed_interrupt_wakes_a_blocking_wait() -> None:
    """The re-delivery is a real signal to the main thread: a wait in a lock (as in a future's
    ``result()`` or a thread's ``join()``) ends at once, not when the wait would have (a simulated one,
    ``_thread.interrupt_main``, waited the 30 s). In a fresh interpreter: what a test imported before
    (Prefect) can change how a wait is woken."""
    started = time.monotonic()
    out = _python(_BLOCKING_WAIT, timeout=60)
    assert out.returncode == 130, out.stderr
    assert "interrupted: SIGINT; test" in out.stderr
    assert time.monotonic() - started < 15.0  # the interpreter's start and imports, not the 30 s wait


def _python(script: str, timeout: float) -> Any:
    import subprocess
    import sys

    from tests.helpers import ROOT

    return subprocess.run(
        [sys.executable, "-c", script.format(root=str(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_an_interrupt_swallowed_as_the_command_ends_still_sets_its_exit_code() -> None:
    """A command that finishes before the re-delivery (50 ms) was interrupted all the same: exit 130, and
    nothing is sent after it (a stray SIGINT would hit whatever runs next in the process)."""
    from ppo import cli

    def run() -> None:
        with _signal_inside_next_gc(signal.SIGINT):
            gc.collect()

    assert _exit_code(run) == 130
    time.sleep(0.2)  # past the re-send's delay: nothing arrives
    assert not cli._resends


_SECOND_CTRL_C = """
import signal, sys, time
sys.path.insert(0, {root!r})
from ppo.cli import interruptible
from tests.test_interrupts import _signal_inside_next_gc, _work_until_interrupted

def run():
    try:
        with _signal_inside_next_gc(signal.SIGINT):
            _work_until_interrupted()
    finally:
        print("unwinding", flush=True)
        time.sleep(30)  # a slow clean-up, and the user presses Ctrl-C again

with interruptible(lambda: "test"):
    run()
"""


def test_a_second_ctrl_c_after_a_redelivered_one_still_leaves_at_once() -> None:
    import subprocess
    import sys

    from tests.helpers import ROOT

    proc = subprocess.Popen(
        [sys.executable, "-c", _SECOND_CTRL_C.format(root=str(ROOT))],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "unwinding", proc.stderr.read() if proc.stderr else ""
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 130
        assert time.monotonic() - sent < 5.0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_inside_a_store_write_lands_after_it_and_leaves_the_store_usable(
    tmp_path: Any, signum: int
) -> None:
    """A signal that arrives half-way through a write to the local store (here: right after its first
    INSERT) is raised when the write is done: the write is whole, and the write that marks the run
    KILLED goes through at once (before: "database is locked" after SQLite's 20 s busy timeout)."""
    from mlflow.entities import Metric
    from sqlalchemy import event

    from ppo.cli import Interrupted, _on_signal
    from ppo.tracking.store import connect, get_or_create_experiment

    client = connect(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(get_or_create_experiment(client, "interrupts")).info.run_id
    engine = client._tracking_client.store.engine
    armed = [True]

    def interrupt(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if armed and statement.lstrip().upper().startswith("INSERT"):
            armed.clear()
            signal.raise_signal(signum)

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    event.listen(engine, "after_cursor_execute", interrupt)
    # no collection may free what a broken transaction left behind (the traceback keeps it) before the check
    gc.disable()
    try:
        with pytest.raises(Interrupted):
            client.log_batch(run_id, metrics=[Metric("m", float(i), 0, i) for i in range(10)])
        assert not armed, "the write ran no INSERT: the test interrupted nothing"
        with contextlib.closing(sqlite3.connect(tmp_path / "mlflow.db", timeout=0.5)) as db:
            db.execute("BEGIN IMMEDIATE")  # before: "database is locked" (a write lock left held)
            db.rollback()
    finally:
        gc.enable()
        event.remove(engine, "after_cursor_execute", interrupt)
        for s, handler in previous.items():
            signal.signal(s, handler)
        from ppo import cli

        cli._interrupted.clear()
    started = time.monotonic()
    client.set_terminated(run_id, "KILLED")
    assert time.monotonic() - started < 5.0
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert len(client.get_metric_history(run_id, "m")) == 10  # the interrupted write is whole


def test_held_hands_a_signal_of_the_block_to_its_handler_after_the_block() -> None:
    """The block runs to its end; the signal then raises what its handler raises, and the handlers are
    the ones from before."""
    from ppo.interrupts import held

    done = []
    with pytest.raises(KeyboardInterrupt):
        with held():
            signal.raise_signal(signal.SIGINT)
            for _ in range(1000):  # bytecode boundaries, where a handler runs
                pass
            done.append(True)
    assert done
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_held_hands_a_second_signal_on_at_once_and_the_first_after_an_error_of_the_block() -> None:
    """A second signal is the user insisting: it is handled at once, inside the block; the held first one
    is still handled when the block ends, even though the block ended with an error."""
    from ppo.interrupts import held

    seen: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        seen.append(signum)
        if len(seen) == 2:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(KeyboardInterrupt) as caught:
            with held():
                signal.raise_signal(signal.SIGTERM)  # held
                signal.raise_signal(signal.SIGTERM)  # handled now: seen == [15]
                for _ in range(1000):
                    pass
                assert seen == [signal.SIGTERM]
                raise RuntimeError("the block's own error")
        assert seen == [signal.SIGTERM, signal.SIGTERM]  # the held one, after the block
        assert isinstance(caught.value.__context__, RuntimeError)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_hold_left_installed_passes_signals_on() -> None:
    """A signal during the restore can leave ``hold`` installed; it must then pass every signal straight
    to the real handler, never keep one for a block that is over."""
    from ppo.interrupts import held

    with held():
        left = signal.getsignal(signal.SIGINT)
    assert callable(left) and left is not signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        left(signal.SIGINT, None)
