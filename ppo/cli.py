"""The core of the ``ppo`` command line: train, evaluate, serve.

The ``ppo`` command itself is :mod:`flows.cli`: these commands plus the orchestration ones (pipeline,
sweep, promote), which run the Prefect flows; this module imports neither Prefect nor ``flows``.

Every command validates its config first and exits with status 2 and a message naming the field
before any training starts. Ctrl-C (SIGINT) and SIGTERM stop ``train`` within seconds with one line,
``interrupted: <signal>; ...``, and exit 130 / 143 (:func:`interruptible`): the MLflow run ends KILLED,
the last checkpoint is kept for ``--resume``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(
    # plain help (click's): Rich's panels labelled every flag "<bool>" and kept the docstrings' line breaks
    rich_markup_mode=None,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="PPO in JAX: train, evaluate and serve agents.",
)
console = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", metavar="FILE", help="YAML config file (default: the embedded CartPole config)"
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        metavar="KEY=VALUE",
        help="override a config field, e.g. ppo.learning_rate=1e-3 (repeatable)",
    ),
]


def fail(message: str, code: int = 2) -> None:
    """Print ``error: <message>`` on stderr and exit with ``code`` (2: a bad config or argument)."""
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised in the main thread by :func:`interruptible`'s handler.

    A ``KeyboardInterrupt`` so that SIGTERM is handled everywhere Ctrl-C is: the trainer ends its MLflow
    run KILLED and keeps its checkpoint, Prefect's engines end their runs Crashed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_interrupted: list[int] = []  # the signals seen by _on_signal, in this process
_redelivering: list[int] = []  # swallowed interrupts sent again by _redeliver_swallowed, not yet handled
_resends: list[Any] = []  # their timers (threading.Timer), to cancel when the command ends first


def _on_signal(signum: int, frame: Any) -> None:
    """The first SIGINT/SIGTERM: silence logging (what unwinds would log is tracebacks of the interrupt
    itself) and raise :class:`Interrupted`. A second one while the first unwinds: leave at once (unless it
    is the first one again, re-sent by :func:`_redeliver_swallowed`)."""
    if signum in _redelivering:
        _redelivering.remove(signum)
    elif _interrupted:
        os._exit(128 + signum)
    else:
        _interrupted.append(signum)
    logging.disable(logging.CRITICAL)
    raise Interrupted(signum)


def _swallowed_signal(exc: BaseException | None) -> int | None:
    """The signal behind ``exc`` if it is an interrupt a signal handler raised: ours (``signum``),
    Prefect's ``TerminationSignal`` (``signal``; this module does not import Prefect) or Python's own
    ``KeyboardInterrupt`` (SIGINT)."""
    if exc is None or isinstance(exc, Exception):
        return None
    for name in ("signum", "signal"):
        value = getattr(exc, name, None)
        if isinstance(value, int):
            return value
    return signal.SIGINT if isinstance(exc, KeyboardInterrupt) else None


def _redeliver_swallowed(previous: Callable[[Any], None]) -> Callable[[Any], None]:
    """A ``sys.unraisablehook`` that sends a swallowed interrupt again.

    Why: a Python signal handler runs at the main thread's next bytecode boundary, wherever that is. Inside
    a garbage-collector callback (JAX runs one, ``_xla_gc_callback``, at every collection) or a ``__del__``
    the exception it raises cannot propagate: CPython hands it to this hook (by default it prints
    ``Exception ignored in ...``) and carries on, and the command ran on after Ctrl-C or SIGTERM (seen in
    CI). The signal is sent again to the main thread (:func:`_resend`) a moment later, so that the handler
    now installed, ours or Prefect's, runs once the main thread is back in ordinary code (if that lands in
    such a place again, this hook sends it once more). Every other unraisable exception goes to
    ``previous``."""
    import threading

    def hook(unraisable: Any) -> None:
        signum = _swallowed_signal(unraisable.exc_value)
        if signum is None:
            previous(unraisable)
            return
        if signal.getsignal(signum) is _on_signal:
            _redelivering.append(signum)
        # after a pause: a signal sent at once would run its handler inside this hook (which waits for
        # the thread to start), where what it raises is swallowed again, and for good
        resend = threading.Timer(0.05, _resend, args=(signum,))
        resend.daemon = True
        _resends.append(resend)
        resend.start()

    return hook


def _resend(signum: int) -> None:
    """Send ``signum`` to the main thread: a real signal (it wakes a blocking wait, where a simulated one
    would wait for the next bytecode) when a Python handler is there to take it."""
    import threading

    if callable(signal.getsignal(signum)):
        signal.pthread_kill(threading.main_thread().ident or 0, signum)


def _cancel_resends() -> list[int]:
    """Cancel the re-sends not sent yet; their signals (the command ended before they were)."""
    pending = []
    for timer in _resends:
        if not timer.finished.is_set():
            timer.cancel()
            pending.append(timer.args[0])
    _resends.clear()
    return pending


@contextmanager
def interruptible(explain: Callable[[], str]) -> Iterator[None]:
    """Run a command so that Ctrl-C (SIGINT, to the whole process group from a terminal) and SIGTERM
    (``kill PID``, a CI runner's cancel) stop it within seconds and print one line,
    ``interrupted: SIGINT; <explain()>``, then exit 128 + the signal: 130 for SIGINT, 143 for SIGTERM
    (what a shell reports for a process the signal killed, so a CI job sees it was interrupted).
    An interrupt raised where Python cannot propagate it is sent again (:func:`_redeliver_swallowed`)."""
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _redeliver_swallowed(previous_hook)
    try:
        yield
        pending = _cancel_resends()  # an interrupt swallowed just before the end is still an interrupt
        if pending:
            raise Interrupted(pending[0])
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        logging.disable(logging.CRITICAL)
        console.print(f"interrupted: {signal.Signals(signum).name}; {explain()}", highlight=False)
        raise typer.Exit(128 + signum) from None
    finally:
        _cancel_resends()
        sys.unraisablehook = previous_hook
        for s, handler in previous.items():
            signal.signal(s, handler)
        _interrupted.clear()
        _redelivering.clear()


def load_or_exit(config: Path | None, overrides: list[str] | None) -> Any:
    """The validated config, or exit 2 with the message naming the field."""
    from ppo.config import ConfigError, load_config, parse_overrides

    try:
        return load_config(config, parse_overrides(overrides))
    except ConfigError as e:
        fail(str(e))


def fmt(v: Any) -> str:
    """A table cell: ``-`` for None, floats to 4 significant digits (whole numbers from 1000)."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def summary_table(result: dict[str, Any], title: str = "Training summary") -> Table:
    table = Table(title=title, show_header=False)
    fe = result.get("final_eval") or {}
    rows = [
        ("converged", result.get("converged")),
        ("stop reason", result.get("stop_reason")),
        ("episodes (min over seeds)", result.get("episodes")),
        ("env steps / seed", result.get("env_steps")),
        ("best window avg reward", result.get("best_avg_reward")),
        (
            "final eval avg ± std",
            f"{fe.get('avg_reward', float('nan')):.1f} ± {fe.get('std_reward', float('nan')):.1f}",
        ),
        ("final eval per seed", ", ".join(f"{x:.1f}" for x in fe.get("per_seed_avg", []))),
        ("compile s", result.get("compile_s")),
        ("train s (jitted chunks)", result.get("train_time_s")),
        ("env steps / s", result.get("env_steps_per_s")),
        ("wall s", result.get("wall_time_s")),
        ("checkpoint", result.get("checkpoint_dir")),
        ("mlflow run", result.get("run_id")),
    ]
    for k, v in rows:
        if v is not None:
            table.add_row(k, fmt(v))
    return table


@app.command(short_help="train PPO on a config (progress bar, summary table)")
def train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue from the latest checkpoint of this config")
    ] = False,
    mlflow: Annotated[
        bool | None,
        typer.Option(
            "--mlflow/--no-mlflow", help="log the run to MLflow (default: the config's tracking.enabled)"
        ),
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="also write the result (without the history) to this JSON file"),
    ] = None,
) -> None:
    """Train PPO on a config; progress bar while training, summary table at the end."""
    cfg = load_or_exit(config, set_)
    from ppo.trainer import NonFiniteLossError, PPOTrainer

    enable = cfg.tracking.enabled if mlflow is None else mlflow
    trainer = PPOTrainer(config=cfg, enable_mlflow=enable)
    console.print(
        f"[bold]training[/] {cfg.env.id}, seeds {list(cfg.train.seeds)}, {cfg.env.num_envs} envs x "
        f"{cfg.num_steps} steps per update, config {cfg.config_hash()}",
        highlight=False,
    )
    # the bar counts env steps per seed against the budget that stops the run (train.max_env_steps); a
    # config without one stops on train.max_episodes, and then the bar counts episodes
    by_steps = cfg.train.max_env_steps is not None
    total = cfg.train.max_env_steps if by_steps else cfg.train.max_episodes
    unit = "steps" if by_steps else "episodes"
    progress = Progress(
        TextColumn("[bold blue]{task.description:<9}"),
        BarColumn(),
        TextColumn("{task.fields[done]}"),
        TextColumn("return {task.fields[avg]}"),
        TextColumn("{task.fields[sps]} steps/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )
    # "compiling" until the first chunk arrives: JAX compiles the program first (seconds)
    task = progress.add_task("compiling", total=total, done=f"0/{total:,} {unit}", avg="-", sps="-")
    # no terminal (CI, a log file): the bar is drawn once at the end, so a plain line every 30 s meanwhile
    plain: dict[str, Any] = {"last": time.monotonic()}

    def show(done: int, info: dict[str, Any] | None, description: str) -> None:
        m = info["step_metrics"] if info else {}
        done = min(int(done), total)
        fields = {
            "done": f"{done:,}/{total:,} {unit}",
            "avg": fmt(m.get("avg_reward")),
            "sps": fmt(m.get("env_steps_per_s")),
        }
        progress.update(
            task,
            description=description,
            completed=done,
            done=fields["done"],
            avg=fields["avg"],
            sps=fields["sps"],
        )
        if not progress.console.is_terminal and info and time.monotonic() - plain["last"] >= 30:
            plain["last"] = time.monotonic()
            line = f"{fields['done']}  return {fields['avg']}  {fields['sps']} steps/s"
            progress.console.print(f"  {100 * done / total:.0f}%  {line}", highlight=False)

    def on_chunk(info: dict[str, Any]) -> None:
        plain["info"] = info
        show(info["env_steps"] if by_steps else info["episode"], info, "train")
        if "eval_metrics" in info:
            e = info["eval_metrics"]
            progress.console.print(
                f"  eval @ episode {info['episode']}: {e['avg_reward']:.1f} ± {e['std_reward']:.1f}",
                highlight=False,
            )

    from ppo import atomic
    from ppo.atomic import DiskFullError
    from ppo.checkpoint import CheckpointError
    from ppo.tracking.probe import ServiceUnavailableError

    def explain() -> str:
        run = getattr(trainer.logger, "run_id", None)
        return (
            (f"MLflow run {run} marked KILLED; " if run else "")
            + f"the last checkpoint in {trainer.checkpoint_dir} is kept: run the same command with --resume "
            + "to continue"
        )

    try:
        with interruptible(explain), progress:
            result = trainer.train(callback=on_chunk, resume=resume)
            # where the run ended (also for --resume of a finished run, which trains no chunk)
            done = result.get("env_steps", 0) if by_steps else result.get("episodes", 0)
            show(done, plain.get("info"), "converged" if result.get("converged") else "done")
    except NonFiniteLossError as e:
        fail(str(e), code=3)
    except CheckpointError as e:
        fail(f"{e}; delete it or train without --resume", code=1)
    except ServiceUnavailableError as e:
        fail(str(e), code=1)
    except DiskFullError as e:  # the write did not fit; the previous file is kept, the run marked FAILED
        fail(str(e), code=1)
    except OSError as e:  # a full disk under a write that is not ours (MLflow's, a temporary file)
        if e.errno not in atomic.NO_SPACE:
            raise
        fail(f"{e}; the last checkpoint is kept: free some space and run again with --resume", code=1)
    console.print(summary_table(result))
    if json_out:
        atomic.write_text(json_out, json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))


@app.command(short_help="evaluate a config's latest checkpoint greedily (JSON)")
def evaluate(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    episodes: Annotated[int, typer.Option(min=1, help="episodes per seed")] = 100,
    backend: Annotated[str, typer.Option(help="gymnasium (real env) or jax (gymnax twin)")] = "gymnasium",
    seed: Annotated[int, typer.Option(help="seed of the evaluation episodes (held out from training's)")] = 0,
    all_seeds: Annotated[
        bool, typer.Option("--all-seeds", help="evaluate every trained seed, not only the best one")
    ] = False,
) -> None:
    """Evaluate the latest checkpoint of a config (greedy policy); prints JSON."""
    cfg = load_or_exit(config, set_)
    if backend not in ("gymnasium", "jax"):
        fail(f"--backend: {backend!r} is not allowed; expected 'gymnasium' or 'jax'")
    from ppo.checkpoint import CheckpointError, checkpoint_folder
    from ppo.trainer import PPOTrainer

    # the folder `ppo train` and `ppo pipeline` trained into (or, after a code change, the newest one of
    # this config): one rule, ppo.checkpoint.checkpoint_folder
    folder = str(checkpoint_folder(cfg, existing=True))
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"checkpoint_dir": folder})})
    trainer = PPOTrainer(config=cfg)
    try:
        trainer.restore()
    except FileNotFoundError as e:
        fail(str(e), code=1)
    except CheckpointError as e:
        fail(f"{e}; train this config again (ppo train) or delete the file", code=1)
    out = trainer.evaluate(episodes, backend=backend, seed=seed, all_seeds=all_seeds)
    out.pop("returns")
    sys.stdout.write(json.dumps(out) + "\n")


@app.command(short_help="serve a registered model over HTTP (MLflow's contract)")
def serve(
    model: Annotated[str | None, typer.Option(help="model URI; default models:/<model>@champion")] = None,
    config: ConfigOpt = None,
    host: Annotated[str, typer.Option(help="address to bind (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="port to listen on")] = 5001,
    max_body_mb: Annotated[
        float, typer.Option(min=0.001, help="largest request body accepted (MiB); larger ones get 413")
    ] = 8.0,
) -> None:
    """Serve a registered model over HTTP: MLflow's scoring contract (/ping, /version, /invocations) from a
    lean ASGI app (ppo.tracking.server), after checking the model's files against the digest recorded at
    registration (a mismatch: one error line, exit 1, nothing served)."""
    import tempfile

    cfg = load_or_exit(config, None)
    from ppo.config import ppo_home
    from ppo.tracking.model import ModelIntegrityError
    from ppo.tracking.registry import download_verified
    from ppo.tracking.server import serve as serve_app
    from ppo.tracking.store import check_reachable, default_tracking_uri

    uri = model or f"models:/{cfg.model_name}@champion"
    tracking = default_tracking_uri()
    try:
        check_reachable(tracking)
    except RuntimeError as e:
        fail(str(e), code=1)
    (ppo_home() / "serve").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ppo_home() / "serve") as tmp:
        try:
            # the files checked are the files served: downloaded once, verified, then loaded from here
            local = download_verified(uri, tmp)
            console.print(
                f"serving {uri} on http://{host}:{port}/invocations (store {tracking})", highlight=False
            )
            serve_app(str(local), host, port, max_body=int(max_body_mb * 1024 * 1024))
        except ModelIntegrityError as e:
            fail(str(e), code=1)
        except FileNotFoundError as e:  # no such model, alias or version; or its files are gone
            fail(str(e), code=1)


@app.command(short_help="record a registered model's greedy episodes as an MP4")
def record(
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="model URI; default models:/<model>@champion")
    ] = None,
    config: ConfigOpt = None,
    episodes: Annotated[int, typer.Option(min=1, help="greedy episodes to record, one after another")] = 3,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="MP4 to write (default $PPO_HOME/videos/<model>-v<version>.mp4)"),
    ] = None,
    seed: Annotated[int, typer.Option(help="reset seed of the first episode (the next ones count up)")] = 0,
    fps: Annotated[int | None, typer.Option(min=1, help="frames per second (default: the env's)")] = None,
) -> None:
    """Record a registered model's greedy episodes in the real gymnasium env as an MP4 (RL Zoo's
    record_video): the files served by ppo serve, checked against their registered digest, and the env's
    own rendering. Prints the episodes' returns as JSON."""
    cfg = load_or_exit(config, None)
    from ppo.config import ppo_home
    from ppo.record import RecordError
    from ppo.record import record as record_model
    from ppo.tracking.model import ModelIntegrityError
    from ppo.tracking.registry import resolve_version
    from ppo.tracking.store import check_reachable, default_tracking_uri

    uri = model or f"models:/{cfg.model_name}@champion"
    try:
        check_reachable(default_tracking_uri())
        if out is None:
            target = resolve_version(uri)
            name = f"{target[0]}-v{target[1]}" if target else "".join(c if c.isalnum() else "-" for c in uri)
            out = ppo_home() / "videos" / f"{name}.mp4"
        console.print(f"recording {episodes} episode(s) of {uri} ...", highlight=False)
        result = record_model(uri, out, episodes=episodes, seed=seed, fps=fps)
    except (RecordError, ModelIntegrityError, RuntimeError) as e:
        fail(str(e), code=1)
    console.print(
        f"wrote {result['path']}: {result['env']}, returns {', '.join(f'{r:g}' for r in result['returns'])} "
        f"({result['frames']} frames at {result['fps']} fps)",
        highlight=False,
    )
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":  # pragma: no cover
    app()
