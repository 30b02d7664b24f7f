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

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from ppo import cli as core
from ppo.cli import Interrupted, SetOpt, console, fail, fmt, interruptible, load_or_exit

if TYPE_CHECKING:
    from ppo.config import Config

app = typer.Typer(
    rich_markup_mode=None,  # plain help, as ppo.cli's
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="PPO in JAX: train, evaluate, serve and promote agents.",
)
# the core's commands first (train, evaluate, serve), in their order, then the orchestration ones
app.registered_commands.extend(core.app.registered_commands)


#: Prefect's home under $PPO_HOME: the embedded API of ``ppo pipeline`` / ``make run``, ``make serve``'s
#: server and ``ppo ui`` all keep their runs in this one database, so each shows the others' history
PREFECT_DIR = "prefect"


def _served_env() -> dict[str, str] | None:
    """The settings of the servers running for this $PPO_HOME, if their Prefect API answers, else None:
    ``make serve``'s (``run/serve.env``, and ``auth.env``'s credentials when it runs with PPO_AUTH=1), or
    ``ppo ui``'s (``run/ui.env``: its Prefect API; MLflow stays the store itself). Each file counts only
    while the process that wrote it (its pid file) still runs: a file left behind by a crash, or an
    address now served by someone else, is not trusted."""
    import urllib.request

    from ppo.config import ppo_home

    run = ppo_home() / "run"
    for env_file, pid_file in (("serve.env", "prefect-server.pid"), ("ui.env", "ui.pid")):
        found = _read_env_file(run / env_file)
        if not found.get("PREFECT_API_URL") or not _alive(run / pid_file):
            continue
        if env_file == "serve.env" and (run / "auth").is_file() and (run / "auth").read_text().strip() == "1":
            found.update(_read_env_file(ppo_home() / "auth.env"))
        api = found["PREFECT_API_URL"]
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with direct.open(api.rstrip("/") + "/health", timeout=2) as answer:
                if answer.status == 200:
                    return found
        except OSError:
            continue
    return None


def _read_env_file(path: Path) -> dict[str, str]:
    """``export KEY=VALUE`` lines (what serve.sh and ppo ui write); {} when the file is not there."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    found = {}
    for line in lines:
        key, sep, value = line.removeprefix("export ").partition("=")
        if sep and not key.startswith("#"):
            found[key.strip()] = value.strip()
    return found


def _alive(pid_file: Path) -> bool:
    """Whether the process named in ``pid_file`` runs (and is not a zombie)."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    if sys.platform.startswith("linux"):
        return _process_start(pid) is not None
    from ppo.tracking.store import pid_alive

    return pid_alive(pid)


def _prefect_env(meanwhile: Callable[[], None] | None = None) -> None:
    """Defaults for Prefect (before it is imported): state under $PPO_HOME, no telemetry; the servers of
    ``make serve`` when they run for this $PPO_HOME, else an embedded API server, when no
    ``PREFECT_API_URL`` is set. ``meanwhile()`` is called once the MLflow store is settled, while an
    embedded API starts (or after a configured one answered)."""
    from ppo.config import ppo_home

    os.environ.setdefault("PREFECT_HOME", str(ppo_home() / PREFECT_DIR))
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(
        parents=True, exist_ok=True
    )  # Prefect won't make parents
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    api = os.environ.get("PREFECT_API_URL")
    served = None if api else _served_env()
    if served:
        # two API servers on one sqlite database would contend for it; and the run belongs in the UI the
        # user has open: use make serve's servers, both of them (with PPO_DB=postgres its MLflow store is
        # not the sqlite file under $PPO_HOME)
        for key, value in served.items():
            if key != "PPO_HOME":
                os.environ.setdefault(key, value)
        api = os.environ["PREFECT_API_URL"]
        os.environ.setdefault("PREFECT_UI_URL", api.removesuffix("/api"))  # its UI: where links point
        by = "make serve" if "MLFLOW_TRACKING_URI" in served else "ppo ui"
        mlflow_store = os.environ.get("MLFLOW_TRACKING_URI") or "the store in $PPO_HOME"
        console.print(
            f"using the servers {by} started: Prefect {api.removesuffix('/api')}, MLflow {mlflow_store}",
            highlight=False,
        )
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
        if meanwhile is not None:  # only once the API answers: a failed probe exits at once
            meanwhile()
    else:
        _start_embedded_api(meanwhile)


#: where make serve (scripts/serve.sh) and ppo ui put the Prefect UI unless $PREFECT_PORT says otherwise
DEFAULT_PREFECT_PORT = 4200

#: set to the embedded server's API URL while this process runs one (tasks.promotion reads it: a lock on an
#: embedded API is a file lock in $PREFECT_HOME, which dies with its holder)
EMBEDDED_API_ENV = "PPO_EMBEDDED_PREFECT_API"


def _start_embedded_api(meanwhile: Callable[[], None] | None = None) -> None:
    """Start this command's Prefect API server and point ``PREFECT_API_URL`` at it (before Prefect is
    imported, which reads its settings once).

    Why not Prefect's own temporary server (which its client starts on first use, the same uvicorn
    command): that is a plain child in the command's process group. A terminal's Ctrl-C reached it too,
    so it was gone before the command could report its runs' final states, and the client retried for
    minutes; ``kill -9`` of the command left it running, orphaned, for good. This one runs in its own
    session and, on Linux, asks the kernel to SIGKILL it when its parent dies (``PR_SET_PDEATHSIG``);
    a normal exit stops it (atexit). ``meanwhile()`` is called once the server process is launched, while
    it starts, with ``PREFECT_API_URL`` already pointing at it (this process binds its port).
    """
    import atexit
    import importlib.metadata
    import importlib.util
    import socket
    import urllib.request

    from ppo import store_templates

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
    # a new database starts as a copy of the installed Prefect's empty one (ppo.store_templates): creating
    # it takes ~10 s; the first one created for a version becomes that template once the server answers
    db = store_templates.prefect_database(Path(os.environ["PREFECT_HOME"]).expanduser())
    version = importlib.metadata.version("prefect")
    fresh = db is not None and not db.exists()
    copied = fresh and db is not None and store_templates.copy_template("prefect", version, db)
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    # this process binds the port and hands the socket to uvicorn (--fd): no other process can take it
    # between choosing and binding, so the API's address is known before the server starts and Prefect
    # can be imported (it reads its settings once) while the server starts
    with socket.socket() as sock:
        # uvicorn takes an inherited socket for a unix one and sets no TCP_NODELAY on what it accepts:
        # set here, inherited by every accepted connection (no Nagle delay on the API's small answers)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", app_dir, "--factory",
             "prefect.server.api.server:create_app", "--fd", str(sock.fileno()),
             "--log-level", "error", "--lifespan", "on"],
            env=env,
            stdin=subprocess.DEVNULL,
            pass_fds=(sock.fileno(),),
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )  # fmt: skip
    atexit.register(_stop, server)
    url = f"http://127.0.0.1:{port}/api"
    os.environ["PREFECT_API_URL"] = os.environ[EMBEDDED_API_ENV] = url
    # it serves no UI and ends with this command; its runs are in the shared database that make serve's
    # and ppo ui's Prefect UI show, on this address
    ui_port = os.environ.get("PREFECT_PORT", "").strip() or str(DEFAULT_PREFECT_PORT)
    os.environ.setdefault("PREFECT_UI_URL", f"http://127.0.0.1:{ui_port}")
    if meanwhile is not None:
        meanwhile()
    deadline = time.monotonic() + timeout
    while server.poll() is None and time.monotonic() < deadline:
        try:
            with direct.open(url + "/health", timeout=2) as answer:
                if answer.status == 200:
                    if fresh and not copied and db is not None:  # before any run is written to it
                        store_templates.save_template("prefect", version, db)
                    return
        except OSError:
            time.sleep(0.1)
    _stop(server)
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


def _run_flow(flow: str, interrupted: str, warm: list[Config] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run ``flow`` (``module:function``) in this process on the embedded or configured Prefect API; its
    result, or exit with the code of what went wrong. On Ctrl-C or SIGTERM: one line, ``interrupted:
    <signal>; <interrupted>``, and exit 130 / 143 once the runs' final states are reported. While the
    Prefect API starts, :func:`_warm_up` imports the flow's module and, given ``warm`` (the configs the
    flow will train in this process: one, or a population's members), prepares their training."""
    with interruptible(lambda: interrupted):
        module, name = flow.split(":")
        warming: list[threading.Thread] = []
        _prefect_env(lambda: warming.extend(_warm_up(module, warm)))
        for thread in warming:  # before anything is imported here: no two threads importing at once
            thread.join()
        import importlib

        fn = getattr(importlib.import_module(module), name)
        return _run(fn, **kwargs)


#: ``PPO_OVERLAP=0``: no warm-up while the Prefect API starts (the start-up benchmark's serial baseline)
OVERLAP_ENV = "PPO_OVERLAP"


def _warm_up(module: str, configs: list[Config] | None) -> list[threading.Thread]:
    """Start, in a background thread, what the flow would otherwise do after the Prefect API is up, one
    thing after another: given ``configs`` (``train-ppo``'s one config, or the members of the population
    a one-group ``sweep-ppo`` trains here), compiling the training program
    (:meth:`ppo.runtime.Runtime.compile_ahead`, whose result the training picks up instead of compiling),
    creating the MLflow store and the experiment, and importing the report's plotting stack; then
    importing the flow's ``module`` (Prefect with it: ``PREFECT_API_URL`` is set by now).

    Why: the embedded API takes seconds to start in its own process, and the compiler runs with the GIL
    released on the other core. Nothing changes what runs: the tasks do the same work and find it done
    (a cached or finished training compiles nothing here). A failure here is dropped; the task doing the
    same work meets it and reports it. ``PPO_OVERLAP=0`` turns this off.
    """
    if os.environ.get(OVERLAP_ENV, "1") == "0":
        return []

    def warm() -> None:
        import importlib

        steps = [] if not configs else [_compile_ahead, _mlflow_store, _plotting]
        for step in steps:
            try:
                step(configs)
            except Exception:  # noqa: S112 - the task that does this for real reports it
                continue
        try:
            importlib.import_module(module)
        except Exception:  # noqa: S110 - the command imports it again and reports what is wrong
            pass

    thread = threading.Thread(target=warm, name="ppo-warm-up", daemon=True)
    thread.start()
    return [thread]


def _compile_ahead(configs: list[Config]) -> None:
    """Compile the training chunk in the background: one config's, unless its training is already
    finished (a re-run whose train task is cached or finds a finished checkpoint compiles nothing, and
    does not even import JAX: its tasks may not need it); or the population program of several members
    (:func:`ppo.population.train_together` picks it up: the program depends on the members' shapes and
    number, not on their hyperparameter values)."""
    from ppo.checkpoint import RESULT_NAME, checkpoint_folder
    from ppo.runtime import uses_host_envs

    config = configs[0]
    if uses_host_envs(config):
        return
    if len(configs) > 1:
        from ppo.population import compile_ahead

        compile_ahead(configs)
        return
    if (checkpoint_folder(config) / RESULT_NAME).is_file():
        return
    from ppo.trainer import PPOTrainer

    PPOTrainer(config=config).runtime.compile_ahead(config.train.updates_per_chunk)


def _mlflow_store(configs: list[Config]) -> None:
    """Open (creating its tables if new) the MLflow store the flow will log to, and its experiment."""
    from ppo import tracking

    tracking.get_or_create_experiment(tracking.client(), configs[0].experiment_name)


def _plotting(configs: list[Config]) -> None:
    """Import the report's plotting stack (matplotlib, on its file-only backend)."""
    from ppo.report import _plt

    _plt()


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


class _SummaryPrintedByCommand(logging.Filter):
    """Drops the summary task's log record from this process's console: the command prints the same
    summary itself, laid out for a terminal, once. The record still reaches the Prefect API (the flow
    run's logs, what ``prefect deployment run --watch`` streams)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "task_name", None) != "summary"


def _console_shows_summary_once() -> None:
    from prefect.logging.handlers import PrefectConsoleHandler

    quiet = _SummaryPrintedByCommand()
    loggers = [logging.getLogger(), *(v for v in logging.root.manager.loggerDict.values())]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler) and quiet not in handler.filters:
                handler.addFilter(quiet)


def _quiet_when_interrupted() -> None:
    """:class:`_QuietWhileInterrupted` on every handler Prefect's logging set-up made."""
    quiet = _QuietWhileInterrupted()
    loggers = [logging.getLogger(), *(v for v in logging.root.manager.loggerDict.values())]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if quiet not in handler.filters:
                handler.addFilter(quiet)


def _heartbeats() -> contextlib.AbstractContextManager[Any]:
    """Prefect's flow-run heartbeats as configured, except on this command's embedded API: off there.

    Why: the heartbeat thread sleeps in 1 s steps and a flow run's end waits for it (0.5 s on average,
    up to 1 s, on every run). Heartbeats exist so that a server's proactive trigger can mark a silent run
    Crashed; an embedded API runs no such service and ends with this process, whose dead runs the next
    command marks Crashed itself (:func:`_crash_dead_runs`).
    """
    if not os.environ.get(EMBEDDED_API_ENV):
        return contextlib.nullcontext()
    from prefect.settings import temporary_settings

    return temporary_settings(updates={"flows.heartbeat_frequency": None})


def _run_tagged(fn: Any, run_tags: list[str], kwargs: dict[str, Any]) -> Any:
    """Run flow ``fn`` with ``kwargs`` in this process, its flow run created with ``run_tags``; its end state.

    Why not ``with tags(...): fn(...)``: every task run then inherits the tags too, and Prefect asks the
    API for a concurrency slot of each tag before every tagged task run starts (one more round trip per
    task, ~2 s of a cold ``ppo pipeline`` on this 2-core machine). The process tag only has to be on the
    flow run (:func:`_crash_dead_runs` finds the task runs through it). This creates the flow run (Pending,
    as the engine would, with the tags of any enclosing ``tags()`` too) and hands it to the engine, as
    Prefect's own runner does for a deployment's run. (A subflow run would not carry the tag: no flow of
    this project runs one.)
    """
    from prefect.client.orchestration import get_client
    from prefect.context import TagsContext
    from prefect.flow_engine import run_flow
    from prefect.states import Pending
    from prefect.utilities.callables import get_call_parameters

    parameters = get_call_parameters(fn.fn, (), kwargs)
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(
            flow=fn,
            parameters=fn.serialize_parameters(parameters),
            state=Pending(),
            tags=sorted(set(run_tags) | set(TagsContext.get().current_tags or ())),
        )
    return run_flow(flow=fn, flow_run=flow_run, parameters=parameters, return_type="state")


def _run(fn: Any, **kwargs: Any) -> dict[str, Any]:
    from prefect.exceptions import PrefectException, TerminationSignal

    _quiet_when_interrupted()
    _console_shows_summary_once()
    _crash_dead_runs()
    mine = _process_tag()
    try:
        with _heartbeats():
            state = _run_tagged(fn, [mine] if mine else [], kwargs)
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


#: ``--json``: the command's result as one JSON line on stdout (always when stdout is not a terminal)
JsonOpt = Annotated[
    bool, typer.Option("--json", help="also print the result as one JSON line on stdout (always when piped)")
]

#: what ``ppo pipeline`` / ``ppo promote`` exit with for each outcome of the gate and promotion
OUTCOME_EXIT = {
    "promoted": 0,
    "already_champion": 0,
    "gated_out": 4,
    "older_than_champion": 4,
    "lost_race": 5,
}


@app.command(short_help="train, gate, register and promote: the train-ppo flow")
def pipeline(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", metavar="FILE", help="YAML config file")
    ] = Path("configs/cartpole.yaml"),
    set_: SetOpt = None,
    retrain: Annotated[
        bool,
        typer.Option(
            "--retrain",
            help="train a challenger on fresh seeds and gate "
            "it against the champion (what the weekly schedule does)",
        ),
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Run the whole train-ppo Prefect flow in this process (embedded Prefect API unless
    PREFECT_API_URL is set, or make serve's servers when they run): validate, train, evaluate, gate,
    register, promote, report; then one summary with links.

    Exit status: 0 promoted (or already the champion), 4 gated out or older than the champion, 5 lost a
    promotion race, 1 a failed task or service, 2 a bad config, 3 a non-finite loss, 130 Ctrl-C (SIGINT),
    143 SIGTERM."""
    from ppo.config import ConfigError, parse_overrides, require_gate_threshold

    try:  # fail fast, before Prefect starts, on a bad config
        checked = require_gate_threshold(load_or_exit(config, set_))
    except ConfigError as e:
        fail(str(e))
    # the first thing a person sees: the flow's own lines start only once its Prefect API answers and the
    # start-up work is done (~9 s on a cold 2-core machine)
    seeds = "fresh seeds (a challenger)" if retrain else f"seeds {list(checked.train.seeds)}"
    console.print(f"pipeline {config}: {checked.env.id}, {seeds}; starting Prefect", highlight=False)
    summary = _run_flow(
        "flows.train_ppo:train_ppo",
        "the flow run is marked Crashed, its MLflow run KILLED and the last checkpoint kept: run the same "
        "command again to resume training where it stopped",
        warm=None if retrain else [checked],  # a retrain trains fresh seeds: another program
        config_path=str(config) if config else None,
        overrides=parse_overrides(set_),
        retrain=retrain,
    )
    _print_summary(summary)
    if json_ or not sys.stdout.isatty():  # piped or captured: the result for a program, one JSON line
        sys.stdout.write(json.dumps(summary) + "\n")
    raise typer.Exit(OUTCOME_EXIT[summary["outcome"]])


def _print_summary(summary: dict[str, Any]) -> None:
    """The pipeline's result for a person (stderr), once: the headline, the gate's figures, and where to
    look next. Links to the MLflow and Prefect UIs open while ``make serve`` or ``ppo ui`` runs."""
    links = summary["links"]
    style = "green" if summary["outcome"] in ("promoted", "already_champion") else "yellow"
    console.print(f"[bold {style}]{summary['headline']}[/]")
    rows = [
        ("gate", summary["gate"]),
        ("trained", f"seeds {', '.join(map(str, summary['seeds']))}; {summary['env_steps']:,} env steps"),
        ("MLflow run", links["mlflow_run"] or summary["run_id"]),
        ("model", links["model_version"] or "not registered"),
        ("report", links["report"] or f"not written: {summary.get('report_error')}"),
        ("flow run", links["flow_run"] or "-"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:  # plain lines, never folded: a link must stay one piece to click or copy
        console.print(f"  [dim]{k:<{width}}[/]  {v}", highlight=False, soft_wrap=True)
    console.print("browse runs, models and reports: ppo ui  (or make serve)", highlight=False)


@app.command(short_help="random search over a config's hyperparameters (Ray)")
def sweep(
    spec: Annotated[Path, typer.Option("--spec", "-s", help="sweep file (search space)")] = Path(
        "configs/sweep-cartpole.yaml"
    ),
    json_: JsonOpt = False,
) -> None:
    """Run the sweep-ppo flow in this process: trials in parallel on Ray (local, or $RAY_ADDRESS),
    each a nested MLflow run; ends with the comparison table and the best config's path. A sweep whose
    trials form one population trains it in this process (a local Ray would only add its start-up)."""
    from ppo.config import ConfigError
    from ppo.sweep import group_trials, load_sweep, trains_here, trial_configs

    try:
        loaded = load_sweep(spec)
        # a relative base resolves as in the flow's plan-sweep task (ppo.sweep.trial_configs), so what
        # this command checks, groups and compiles ahead is what the flow trains
        trials = trial_configs(loaded)
    except ConfigError as e:
        fail(str(e))
    here = trains_here(len(group_trials([cfg for _, cfg in trials], loaded.populations)))
    where = "one population, trained in this process" if here else "on Ray"
    console.print(f"sweep {spec}: {len(trials)} trials, {where}", highlight=False)
    summary = _run_flow(
        "flows.sweep:sweep_ppo_here" if here else "flows.sweep:sweep_ppo",
        "the flow run is marked Crashed; run the same command again to start the sweep over",
        warm=[cfg for _, cfg in trials] if here else None,  # on Ray, the workers compile
        sweep_path=str(spec),
    )
    _print_sweep(summary)
    if json_ or not sys.stdout.isatty():  # piped or captured: the result for a program, one JSON line
        sys.stdout.write(json.dumps(summary) + "\n")


def _print_sweep(summary: dict[str, Any]) -> None:
    """The sweep's table for a terminal: the swept values (by their last name), the scores, env steps
    and wall time (the full table, with standard deviations and MLflow run ids, is sweep.csv, the
    ``ppo-sweep`` artifact and the parent run's artifact), then how the best trial was chosen."""
    import pandas as pd

    rows = pd.read_csv(summary["table"]).to_dict("records")
    fixed = {"trial", "status", "score_selection", "std_selection", "score_heldout", "std_heldout"}
    fixed |= {"env_steps", "converged", "wall_s", "mlflow_run"}
    swept = [k for k in rows[0] if k not in fixed and not k.startswith("final.")]  # pbt's: in the csv
    from rich import box

    # compact: no outer border, and each header's words on lines of their own (learning / rate): with
    # one-line headers the shipped sweep's four keys made the table wider than 80 columns and rich then
    # folded the values themselves (0.0043 over 35)
    table = Table(
        title=f"sweep-ppo: {len(rows)} trials, best first",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    names = [k.rsplit(".", 1)[-1].replace("_", "\n") for k in swept]
    for col in ["trial", *names, "score", "held-\nout", "env\nsteps", "wall s"]:
        table.add_column(col, justify="right", overflow="fold")
    table.caption = "score: selection score (it ranks); held-out: the chosen trial on unseen episodes"
    for row in rows:
        selection = "diverged" if row["status"] != "ok" else fmt(row["score_selection"])
        held = "" if pd.isna(row["score_heldout"]) else fmt(row["score_heldout"])
        table.add_row(
            str(row["trial"]),
            *(fmt(row[k]) for k in swept),
            selection,
            held,
            f"{int(row['env_steps']):,}",
            fmt(row["wall_s"]),
        )
    console.print(table)
    best = next(r for r in rows if r["trial"] == summary["best_trial"])
    # ties on the exact scores (the flow's), not the table's rounded ones
    tied = summary.get("tied_trials") or [
        r["trial"] for r in rows if r["status"] == "ok" and r["score_selection"] == best["score_selection"]
    ]
    rule = "chosen: the highest selection score (greedy returns on the selection episodes)"
    if len(tied) > 1:
        at = fmt(best["score_selection"])
        rule += f"; trials {', '.join(map(str, tied))} tie at {at}: the fewest env steps wins"
    console.print(
        f"{rule}. Best: trial {summary['best_trial']}, held-out score {fmt(summary['best_score_heldout'])} "
        "(episodes no trial was chosen on)",
        highlight=False,
        soft_wrap=False,
    )
    console.print(f"best config: {summary['best_config']}\nplot: {summary['plot']}", highlight=False)
    if summary.get("lineage_plot"):
        console.print(f"PBT lineage: {summary['lineage_plot']}", highlight=False)


@app.command(short_help="gate a registered version and promote it if it passes")
def promote(
    version: Annotated[int, typer.Option("--version", "-v", min=1, help="model version to gate")],
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", metavar="FILE", help="the config whose gate settings apply"),
    ] = Path("configs/cartpole.yaml"),
    set_: SetOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Run the promote-model flow for a registered version (for CI without a Prefect worker).

    Exit status as ppo pipeline: 0 promoted (or already the champion), 4 gated out or older than the
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
    style = "green" if summary["outcome"] in ("promoted", "already_champion") else "yellow"
    console.print(f"[bold {style}]{summary['headline']}[/]")
    console.print(f"  [dim]gate[/]   {summary['gate']}", highlight=False, soft_wrap=True)
    console.print(f"  [dim]model[/]  {summary['links']['model_version']}", highlight=False, soft_wrap=True)
    if json_ or not sys.stdout.isatty():  # piped or captured: the result for a program, one JSON line
        sys.stdout.write(json.dumps(summary) + "\n")
    if summary["outcome"] == "lost_race":
        console.print(
            f"lost the race: another promotion moved {summary['model_name']}@champion to version "
            f"{summary['champion']} while version {version} was gated; run promote again to gate it "
            "against the new champion",
            highlight=False,
        )
    raise typer.Exit(OUTCOME_EXIT[summary["outcome"]])


def _port(preferred: int) -> int:
    """``preferred`` when nothing listens there (the address links in reports and artifacts assume),
    else a free port."""
    import socket

    for candidate in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port")  # pragma: no cover: binding port 0 does not fail


def _background(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[Any]:
    """A server in its own session (a terminal's Ctrl-C reaches this command, which stops it), its output
    in ``log``, killed by the kernel if this command dies."""
    with log.open("w") as out:
        return subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )


def _wait_healthy(name: str, url: str, proc: subprocess.Popen[Any], log: Path, timeout: float = 120) -> None:
    import urllib.request

    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            fail(f"{name} exited (status {proc.returncode}); last lines of {log}:\n{tail}", code=1)
        try:
            with direct.open(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    fail(f"{name} did not answer at {url} within {timeout:.0f} s (log {log})", code=1)


@app.command(short_help="open the MLflow and Prefect UIs on this $PPO_HOME")
def ui(
    mlflow_port: Annotated[
        int | None, typer.Option(help="MLflow UI port (default $MLFLOW_PORT or 5000, else a free one)")
    ] = None,
    prefect_port: Annotated[
        int | None, typer.Option(help="Prefect UI port (default $PREFECT_PORT or 4200, else a free one)")
    ] = None,
) -> None:
    """Open this $PPO_HOME's results: the MLflow UI (runs, models, reports, with their artifacts) and the
    Prefect UI (flow runs, artifacts) on 127.0.0.1, until Ctrl-C.

    Shows the runs of ppo pipeline / make run and of make serve alike (one MLflow store, one Prefect
    database). When make serve already runs for this $PPO_HOME, prints its addresses instead."""
    from ppo import atomic, tracking
    from ppo.config import ppo_home

    served = _served_env()
    if served:
        api = served["PREFECT_API_URL"].removesuffix("/api")
        by = "make serve" if "MLFLOW_TRACKING_URI" in served else "another ppo ui"
        mlflow_ui = served.get("MLFLOW_TRACKING_URI") or _read_env_file(ppo_home() / "run" / "ui.env").get(
            "MLFLOW_UI", "-"
        )
        console.print(
            f"{by} is running for {ppo_home()}:\n  MLflow UI   {mlflow_ui}\n  Prefect UI  {api}",
            highlight=False,
        )
        return
    home = ppo_home()
    logs = home / "run"
    logs.mkdir(parents=True, exist_ok=True)
    for asked, name in ((mlflow_port, "--mlflow-port"), (prefect_port, "--prefect-port")):
        if asked is not None and _port(asked) != asked:
            fail(f"{name} {asked}: something already listens there; pick another port", code=2)
    mport = _port(mlflow_port or int(os.environ.get("MLFLOW_PORT") or tracking.DEFAULT_UI_PORT))
    pport = _port(prefect_port or int(os.environ.get("PREFECT_PORT") or DEFAULT_PREFECT_PORT))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PREFECT_HOME": os.environ.get("PREFECT_HOME") or str(home / PREFECT_DIR)}
    env.pop("PREFECT_API_URL", None)
    env.update(
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_API_URL=f"http://127.0.0.1:{pport}/api",
        PREFECT_SERVER_CORS_ALLOWED_ORIGINS=f"http://127.0.0.1:{pport},http://localhost:{pport}",
        PREFECT_SERVER_CSRF_PROTECTION_ENABLED="true",
        PPO_ALLOWED_HOSTS="127.0.0.1,localhost",
        # MLflow 3's server runs a job queue (six huey consumers) for its GenAI features: nothing a viewer
        # of training runs uses, and a lot of processes on a small machine
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION=os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"),
    )
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    started: list[subprocess.Popen[Any]] = []

    def stop_on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwind through the finally below, which stops the servers' sessions

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    store = tracking.default_tracking_uri()
    remote = store.startswith("http")
    try:
        if not remote:
            # mlflow server, not mlflow ui: it serves the artifacts of runs logged through a server
            # (mlflow-artifacts:/ URIs) from the same folder, which `mlflow ui` showed as "No Artifacts"
            mlog = logs / "ui-mlflow.log"
            mlflow_cmd = [
                str(bin_dir / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mport),
                "--workers", "1", "--backend-store-uri", store,
                "--artifacts-destination", str(home / "mlartifacts"),
            ]  # fmt: skip
            started.append(_background(mlflow_cmd, env, mlog))
            _wait_healthy("mlflow server", f"http://127.0.0.1:{mport}/health", started[-1], mlog)
        plog = logs / "ui-prefect.log"
        # the Host-checked server make serve runs (scripts/prefect_server.py: API, UI and services)
        from ppo.checkpoint import SOURCE_ROOT

        script = SOURCE_ROOT / "scripts" / "prefect_server.py"
        prefect_cmd = [sys.executable, str(script), "--host", "127.0.0.1", "--port", str(pport)]
        started.append(_background(prefect_cmd, env, plog))
        _wait_healthy("prefect server", f"http://127.0.0.1:{pport}/api/health", started[-1], plog)
        mlflow_ui = store if remote else f"http://127.0.0.1:{mport}"
        console.print(
            f"results of {home}:\n  MLflow UI   {mlflow_ui}\n  Prefect UI  http://127.0.0.1:{pport}\n"
            "Ctrl-C stops both",
            highlight=False,
        )
        if (
            not remote
            and mport != tracking.DEFAULT_UI_PORT
            and not (mlflow_port or os.environ.get("MLFLOW_PORT"))
        ):
            console.print(
                f"note: port {tracking.DEFAULT_UI_PORT} was taken; links written into reports point there",
                highlight=False,
            )
        # ppo pipeline / promote run on this API while it is up (not a second API on the same database)
        atomic.write_text(
            logs / "ui.env",
            f"export PREFECT_API_URL=http://127.0.0.1:{pport}/api\nexport MLFLOW_UI={mlflow_ui}\n",
        )
        atomic.write_text(logs / "ui.pid", str(os.getpid()))
        if not sys.stdout.isatty():  # for a program that started it: the addresses, one JSON line
            sys.stdout.write(
                json.dumps({"mlflow_ui": mlflow_ui, "prefect_ui": f"http://127.0.0.1:{pport}"}) + "\n"
            )
            sys.stdout.flush()
        while all(p.poll() is None for p in started):
            time.sleep(0.5)
        fail("a UI server stopped; see " + str(logs), code=1)
    except KeyboardInterrupt:
        console.print("stopped", highlight=False)
    finally:
        for name in ("ui.env", "ui.pid"):
            (logs / name).unlink(missing_ok=True)
        for proc in started:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for proc in started:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":  # pragma: no cover - python -m flows.cli: the console script's way out
    from flows.entry import main

    main(app)
