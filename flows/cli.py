"""The ``ppo`` command: the core's commands (train, evaluate, serve: :mod:`ppo.cli`) and the orchestration
commands that run the Prefect flows in this process (pipeline, sweep, promote).

Dependencies point one way: this module imports ``ppo``; ``ppo`` never imports Prefect or ``flows``.
Prefect and the flows are imported inside the commands that need them, after :func:`_prefect_env` (so
``ppo train`` imports no Prefect).

Exit status of ``ppo pipeline`` and ``ppo promote``: 0 promoted (or already the champion), 4 gated out or
older than the champion, 5 lost a promotion race, 1 a failed task or service, 2 a bad config, 3 a
non-finite loss (as the README documents), 130 interrupted by Ctrl-C (SIGINT), 143 by SIGTERM.

Without ``PREFECT_API_URL`` each command starts its own embedded Prefect API server
(:func:`_start_embedded_api`): in its own session, so a terminal's Ctrl-C does not stop it before the
command has reported its runs' final states, and (on Linux) killed by the kernel when the command dies,
even of ``kill -9``. Every flow run a command starts is tagged with its process (:func:`_process_tag`);
the next command marks the runs of a process that is provably gone Crashed (:func:`_crash_dead_runs`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ppo import cli as core
from ppo.cli import Interrupted, SetOpt, console, fail, fmt, interruptible, load_or_exit

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="PPO in JAX: train, evaluate, serve and promote agents.",
)
# the core's commands first (train, evaluate, serve), in their order, then the orchestration ones
app.registered_commands.extend(core.app.registered_commands)


def _prefect_env() -> None:
    """Embedded defaults for Prefect (before it is imported): state under $PPO_HOME, no telemetry; the
    embedded API server when no ``PREFECT_API_URL`` is set."""
    from ppo.config import ppo_home

    os.environ.setdefault("PREFECT_HOME", str(ppo_home() / "prefect"))
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(
        parents=True, exist_ok=True
    )  # Prefect won't make parents
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    api = os.environ.get("PREFECT_API_URL")
    if api:
        from ppo.tracking.probe import ServiceUnavailableError, probe

        try:
            probe(
                api.rstrip("/") + "/health",
                f"Prefect API {api}",
                "Start it (make serve) or unset PREFECT_API_URL to run on an embedded API.",
            )
        except ServiceUnavailableError as e:
            fail(str(e), code=1)
    else:
        _start_embedded_api()


#: set to the embedded server's API URL while this process runs one (tasks.promotion reads it: a lock on an
#: embedded API is a file lock in $PREFECT_HOME, which dies with its holder)
EMBEDDED_API_ENV = "PPO_EMBEDDED_PREFECT_API"


def _start_embedded_api() -> None:
    """Start this command's Prefect API server and point ``PREFECT_API_URL`` at it (before Prefect is
    imported, which reads its settings once).

    Why not Prefect's own temporary server (which its client starts on first use, the same uvicorn
    command): that is a plain child in the command's process group. A terminal's Ctrl-C reached it too,
    so it was gone before the command could report its runs' final states, and the client retried for
    minutes; ``kill -9`` of the command left it running, orphaned, for good. This one runs in its own
    session and, on Linux, asks the kernel to SIGKILL it when its parent dies (``PR_SET_PDEATHSIG``);
    a normal exit stops it (atexit).
    """
    import atexit
    import importlib.util
    import socket
    import urllib.request

    spec = importlib.util.find_spec("prefect")
    assert spec is not None and spec.origin is not None
    app_dir = str(Path(spec.origin).parent.parent)
    env = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90"))
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    for _attempt in range(3):  # another process may take the free port before the server binds it
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", app_dir, "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "error", "--lifespan", "on"],
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )  # fmt: skip
        atexit.register(_stop, server)
        url = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + timeout
        while server.poll() is None and time.monotonic() < deadline:
            try:
                with direct.open(url + "/health", timeout=2) as answer:
                    if answer.status == 200:
                        os.environ["PREFECT_API_URL"] = os.environ[EMBEDDED_API_ENV] = url
                        # no "View at http://127.0.0.1:<port>/runs/..." lines: it serves no UI, and it
                        # ends with this command
                        os.environ.setdefault("PREFECT_UI_URL", "")
                        return
            except OSError:
                time.sleep(0.1)
        _stop(server)
        if time.monotonic() >= deadline:
            break
    fail(
        f"the embedded Prefect API server did not start within {timeout:.0f} s (exit {server.returncode}); "
        "see its messages above, or start one (make serve) and set PREFECT_API_URL",
        code=1,
    )


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when this process dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork: nothing to load in the child
    parent = os.getpid()

    def arm() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)

    return arm


def _stop(server: subprocess.Popen[Any]) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _process_start(pid: int) -> str | None:
    """An identity of process ``pid`` that a reused pid does not share: boot id and start time in clock
    ticks (Linux ``/proc``); None where it cannot be read, or the process is gone or a zombie."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else f"{boot}.{fields[19]}"


#: the tag on every flow run a ppo command starts: ppo-proc:<host>:<pid>:<boot id>.<start ticks>
PROC_TAG = "ppo-proc"


def _process_tag() -> str | None:
    import socket

    start = _process_start(os.getpid())
    return f"{PROC_TAG}:{socket.gethostname()}:{os.getpid()}:{start}" if start else None


def _crash_dead_runs() -> None:
    """Mark Crashed the flow runs (and their task runs) that a ppo command on this machine left Running
    or Pending and whose process is provably gone: killed (``kill -9``, the OOM killer) before it could
    report a final state. Proof: the run's :data:`PROC_TAG` names a pid that no longer runs, or runs with
    another start time (a reused pid). Runs of other machines, of workers and deployments are not
    touched. Housekeeping: a failure here is a warning, never the command's failure."""
    import socket

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterState,
        FlowRunFilterStateType,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    live = [StateType.RUNNING, StateType.PENDING]
    host = socket.gethostname()
    try:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=live))
                )
            )
            for run in runs:
                owner = next((t.split(":") for t in run.tags if t.startswith(PROC_TAG + ":")), None)
                if owner is None or len(owner) != 4 or owner[1] != host or not owner[2].isdigit():
                    continue
                if _process_start(int(owner[2])) == owner[3]:
                    continue  # still running
                message = (
                    f"its process (pid {owner[2]} on {host}) ended without reporting a final state "
                    "(killed: kill -9, out of memory, power); marked by the next ppo command"
                )
                client.set_flow_run_state(run.id, Crashed(message=message), force=True)
                tasks = client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])),
                    task_run_filter=TaskRunFilter(
                        state=TaskRunFilterState(type=TaskRunFilterStateType(any_=live))
                    ),
                )
                for task_run in tasks:
                    client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
                console.print(f"flow run {run.name} ({run.id}) marked Crashed: {message}", highlight=False)
    except Exception as e:  # housekeeping must not stop the command
        console.print(f"warning: could not check for flow runs left Running by killed commands: {e}")


def _run_flow(flow: str, interrupted: str, **kwargs: Any) -> dict[str, Any]:
    """Run ``flow`` (``module:function``) in this process on the embedded or configured Prefect API; its
    result, or exit with the code of what went wrong. On Ctrl-C or SIGTERM: one line, ``interrupted:
    <signal>; <interrupted>``, and exit 130 / 143 once the runs' final states are reported."""
    with interruptible(lambda: interrupted):
        _prefect_env()
        import importlib

        module, name = flow.split(":")
        fn = getattr(importlib.import_module(module), name)
        return _run(fn, **kwargs)


class _QuietWhileInterrupted(logging.Filter):
    """Drops the records logged while a stop from outside unwinds (Ctrl-C, or SIGTERM as Prefect's
    ``TerminationSignal``), and every record after the first: Prefect logs each crashed task and flow run
    at ERROR, and the user asked for the stop. :func:`ppo.cli.interruptible` prints the one line instead.

    Why a filter: Prefect's own SIGTERM handler, not ours, gets SIGTERM while a flow runs (it marks the
    runs Crashed, then passes the signal on), so ours cannot silence logging before Prefect logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        from prefect.exceptions import TerminationSignal

        if isinstance(sys.exc_info()[1], KeyboardInterrupt | TerminationSignal):
            logging.disable(logging.CRITICAL)
            return False
        return True


def _quiet_when_interrupted() -> None:
    """:class:`_QuietWhileInterrupted` on every handler Prefect's logging set-up made."""
    quiet = _QuietWhileInterrupted()
    loggers = [logging.getLogger(), *(v for v in logging.root.manager.loggerDict.values())]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if quiet not in handler.filters:
                handler.addFilter(quiet)


def _run(fn: Any, **kwargs: Any) -> dict[str, Any]:
    from prefect import tags
    from prefect.exceptions import PrefectException, TerminationSignal

    _quiet_when_interrupted()
    _crash_dead_runs()
    mine = _process_tag()
    try:
        with tags(*([mine] if mine else [])):
            state = fn(return_state=True, **kwargs)
    except TerminationSignal as e:  # SIGTERM, when Prefect did not pass it on to interruptible's handler
        raise Interrupted(e.signal) from None
    except PrefectException as e:
        fail(f"Prefect: {e}", code=1)
    if not state.is_completed():
        try:
            state.result()
        except Exception as e:  # the task's own error, e.g. a ConfigError naming the field
            codes = {"ConfigError": 2, "NonFiniteLossError": 3}
            fail(f"flow {state.name}: {type(e).__name__}: {e}", code=codes.get(type(e).__name__, 1))
        fail(f"flow ended in state {state.name}", code=1)
    return state.result()


#: what ``ppo pipeline`` / ``ppo promote`` exit with for each outcome of the gate and promotion
OUTCOME_EXIT = {
    "promoted": 0,
    "already_champion": 0,
    "gated_out": 4,
    "older_than_champion": 4,
    "lost_race": 5,
}


@app.command()
def pipeline(
    config: Annotated[Path | None, typer.Option("--config", "-c")] = Path("configs/cartpole.yaml"),
    set_: SetOpt = None,
    retrain: Annotated[
        bool,
        typer.Option(
            "--retrain",
            help="train a challenger on fresh seeds and gate "
            "it against the champion (what the weekly schedule does)",
        ),
    ] = False,
) -> None:
    """Run the whole ``train-ppo`` Prefect flow in this process (embedded Prefect API unless
    PREFECT_API_URL is set): validate, train, evaluate, gate, report, register, promote.

    Exit status: 0 promoted (or already the champion), 4 gated out or older than the champion, 5 lost a
    promotion race, 1 a failed task or service, 2 a bad config, 3 a non-finite loss, 130 Ctrl-C (SIGINT),
    143 SIGTERM."""
    from ppo.config import ConfigError, parse_overrides, require_gate_threshold

    try:  # fail fast, before Prefect starts, on a bad config
        require_gate_threshold(load_or_exit(config, set_))
    except ConfigError as e:
        fail(str(e))
    summary = _run_flow(
        "flows.train_ppo:train_ppo",
        "the flow run is marked Crashed, its MLflow run KILLED and the last checkpoint kept: run the same "
        "command again to resume training where it stopped",
        config_path=str(config) if config else None,
        overrides=parse_overrides(set_),
        retrain=retrain,
    )
    table = Table(title="train-ppo", show_header=False)
    for k, v in summary.items():
        table.add_row(k, fmt(v) if not isinstance(v, list) else ", ".join(fmt(x) for x in v))
    console.print(table)
    console.print(f"report: {summary['report']}", highlight=False)
    sys.stdout.write(json.dumps(summary) + "\n")
    raise typer.Exit(OUTCOME_EXIT[summary["outcome"]])


@app.command()
def sweep(
    spec: Annotated[Path, typer.Option("--spec", "-s", help="sweep file (search space)")] = Path(
        "configs/sweep-cartpole.yaml"
    ),
) -> None:
    """Run the ``sweep-ppo`` flow in this process: trials in parallel on Ray (local, or ``$RAY_ADDRESS``),
    each a nested MLflow run; ends with the comparison table and the best config's path."""
    from ppo.config import ConfigError
    from ppo.sweep import load_sweep, trial_configs

    try:
        trials = trial_configs(load_sweep(spec), root=Path.cwd())
    except ConfigError as e:
        fail(str(e))
    console.print(f"sweep {spec}: {len(trials)} trials", highlight=False)
    summary = _run_flow(
        "flows.sweep:sweep_ppo",
        "the flow run is marked Crashed; run the same command again to start the sweep over",
        sweep_path=str(spec),
    )
    import pandas as pd

    table = Table(title=f"sweep-ppo (best: trial {summary['best_trial']})")
    rows = pd.read_csv(summary["table"]).to_dict("records")
    for col in rows[0]:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(fmt(v) for v in row.values()))
    console.print(table)
    console.print(f"best config: {summary['best_config']}\nplot: {summary['plot']}", highlight=False)
    sys.stdout.write(json.dumps(summary) + "\n")


@app.command()
def promote(
    version: Annotated[int, typer.Option("--version", "-v", min=1, help="model version to gate")],
    config: Annotated[Path | None, typer.Option("--config", "-c")] = Path("configs/cartpole.yaml"),
    set_: SetOpt = None,
) -> None:
    """Run the ``promote-model`` flow for a registered version (for CI without a Prefect worker).

    Exit status as ``ppo pipeline``: 0 promoted (or already the champion), 4 gated out or older than the
    champion, 5 lost a promotion race."""
    from ppo.config import parse_overrides

    load_or_exit(config, set_)
    summary = _run_flow(
        "flows.promote:promote_model",
        "the flow run is marked Crashed; the champion alias moves in one registry call, so it is the old "
        "or the new version, never half-set: run the same command again",
        version=version,
        config_path=str(config) if config else None,
        overrides=parse_overrides(set_),
    )
    console.print(
        f"{summary['outcome']}: {summary['gate_reason']}; "
        f"{summary['model_name']}@champion = {summary['champion']}",
        highlight=False,
    )
    sys.stdout.write(json.dumps(summary) + "\n")
    if summary["outcome"] == "lost_race":
        console.print(
            f"lost the race: another promotion moved {summary['model_name']}@champion to version "
            f"{summary['champion']} while version {version} was gated; run promote again to gate it "
            "against the new champion",
            highlight=False,
        )
    raise typer.Exit(OUTCOME_EXIT[summary["outcome"]])


if __name__ == "__main__":  # pragma: no cover
    app()
