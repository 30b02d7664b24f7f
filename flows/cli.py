"""The ``ppo`` command: the core's commands (train, evaluate, serve: :mod:`ppo.cli`) and the orchestration
commands that run the Prefect flows in this process (pipeline, sweep, promote).

Dependencies point one way: this module imports ``ppo``; ``ppo`` never imports Prefect or ``flows``.
Prefect and the flows are imported inside the commands that need them, after :func:`_prefect_env` (so
``ppo train`` imports no Prefect).

Exit status of ``ppo pipeline`` and ``ppo promote``: 0 promoted (or already the champion), 4 gated out or
older than the champion, 5 lost a promotion race, 1 a failed task or service, 2 a bad config, 3 a
non-finite loss (as the README documents).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ppo import cli as core
from ppo.cli import SetOpt, console, fail, fmt, load_or_exit

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="PPO in JAX: train, evaluate, serve and promote agents.",
)
# the core's commands first (train, evaluate, serve), in their order, then the orchestration ones
app.registered_commands.extend(core.app.registered_commands)


def _prefect_env() -> None:
    """Embedded defaults for Prefect (before it is imported): state under $PPO_HOME, no telemetry."""
    import os

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


def _run_flow(fn: Any, **kwargs: Any) -> dict[str, Any]:
    from prefect.exceptions import PrefectException

    try:
        state = fn(return_state=True, **kwargs)
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
    promotion race, 1 a failed task or service, 2 a bad config, 3 a non-finite loss."""
    from ppo.config import parse_overrides

    load_or_exit(config, set_)  # fail fast, before Prefect starts, on a bad config
    _prefect_env()
    from flows.train_ppo import train_ppo

    summary = _run_flow(
        train_ppo,
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
    _prefect_env()
    from flows.sweep import sweep_ppo

    summary = _run_flow(sweep_ppo, sweep_path=str(spec))
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
    _prefect_env()
    from flows.promote import promote_model

    summary = _run_flow(
        promote_model,
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
