"""``ppo`` command line: train, evaluate (and, with MLflow/Prefect installed, serve and the pipeline).

Every command validates its config first and exits with status 2 and a message naming the field
before any training starts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="PPO in JAX: train, evaluate, serve and promote agents.")
console = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override, e.g. ppo.learning_rate=1e-3")]


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _load(config: Path | None, overrides: list[str] | None) -> Any:
    from ppo.config import ConfigError, load_config, parse_overrides

    try:
        return load_config(config, parse_overrides(overrides))
    except ConfigError as e:
        _fail(str(e))


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def summary_table(result: dict[str, Any], title: str = "Training summary") -> Table:
    table = Table(title=title, show_header=False)
    fe = result.get("final_eval") or {}
    rows = [
        ("converged", result.get("converged")), ("stop reason", result.get("stop_reason")),
        ("episodes (min over seeds)", result.get("episodes")), ("env steps / seed", result.get("env_steps")),
        ("best window avg reward", result.get("best_avg_reward")),
        ("final eval avg ± std", f"{fe.get('avg_reward', float('nan')):.1f} ± {fe.get('std_reward', float('nan')):.1f}"),
        ("final eval per seed", ", ".join(f"{x:.1f}" for x in fe.get("per_seed_avg", []))),
        ("compile s", result.get("compile_s")), ("train s (jitted chunks)", result.get("train_time_s")),
        ("env steps / s", result.get("env_steps_per_s")), ("wall s", result.get("wall_time_s")),
        ("checkpoint", result.get("checkpoint_dir")), ("mlflow run", result.get("run_id")),
    ]
    for k, v in rows:
        if v is not None:
            table.add_row(k, _fmt(v))
    return table


@app.command()
def train(config: ConfigOpt = None, set_: SetOpt = None, resume: Annotated[bool, typer.Option(
        "--resume", help="continue from the latest checkpoint of this config")] = False,
          mlflow: Annotated[bool | None, typer.Option("--mlflow/--no-mlflow", help="default: tracking.enabled")] = None,
          json_out: Annotated[Path | None, typer.Option("--json", help="write the result (no history) here")] = None,
          ) -> None:
    """Train PPO on a config; progress bar while training, summary table at the end."""
    cfg = _load(config, set_)
    from ppo.trainer import NonFiniteLossError, PPOTrainer

    enable = cfg.tracking.enabled if mlflow is None else mlflow
    trainer = PPOTrainer(config=cfg, enable_mlflow=enable)
    console.print(f"[bold]training[/] {cfg.env.id}, seeds {list(cfg.train.seeds)}, {cfg.env.num_envs} envs x "
                  f"{cfg.num_steps} steps per update, config {cfg.config_hash()}", highlight=False)
    progress = Progress(TextColumn("[bold blue]{task.description}"), BarColumn(),
                        TextColumn("ep {task.completed:.0f}/{task.total:.0f}"),
                        TextColumn("{task.fields[steps]} steps"), TextColumn("avg {task.fields[avg]}"),
                        TextColumn("{task.fields[sps]} steps/s"), TimeElapsedColumn(), console=console)
    task = progress.add_task("train", total=cfg.train.max_episodes, steps=0, avg="-", sps="-")

    def on_chunk(info: dict[str, Any]) -> None:
        m = info["step_metrics"]
        progress.update(task, completed=min(info["episode"], cfg.train.max_episodes), steps=f"{info['env_steps']:,}",
                        avg=_fmt(m.get("avg_reward")), sps=_fmt(m.get("env_steps_per_s")))
        if "eval_metrics" in info:
            e = info["eval_metrics"]
            progress.console.print(f"  eval @ episode {info['episode']}: {e['avg_reward']:.1f} ± {e['std_reward']:.1f}",
                                   highlight=False)

    from ppo.checkpoint import CheckpointError
    from ppo.net import ServiceUnavailableError

    try:
        with progress:
            result = trainer.train(callback=on_chunk, resume=resume)
    except NonFiniteLossError as e:
        _fail(str(e), code=3)
    except CheckpointError as e:
        _fail(f"{e}; delete it or train without --resume", code=1)
    except ServiceUnavailableError as e:
        _fail(str(e), code=1)
    console.print(summary_table(result))
    if json_out:
        json_out.write_text(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))


@app.command()
def evaluate(config: ConfigOpt = None, set_: SetOpt = None,
             episodes: Annotated[int, typer.Option(min=1, help="episodes per seed")] = 100,
             backend: Annotated[str, typer.Option(help="gymnasium (real env) or jax (gymnax twin)")] = "gymnasium",
             seed: int = 0, all_seeds: Annotated[bool, typer.Option("--all-seeds")] = False) -> None:
    """Evaluate the latest checkpoint of a config (greedy policy); prints JSON."""
    cfg = _load(config, set_)
    if backend not in ("gymnasium", "jax"):
        _fail(f"--backend: {backend!r} is not allowed; expected 'gymnasium' or 'jax'")
    from ppo.trainer import PPOTrainer

    trainer = PPOTrainer(config=cfg)
    try:
        trainer.restore()
    except FileNotFoundError as e:
        _fail(str(e), code=1)
    out = trainer.evaluate(episodes, backend=backend, seed=seed, all_seeds=all_seeds)
    out.pop("returns")
    sys.stdout.write(json.dumps(out) + "\n")


@app.command()
def serve(model: Annotated[str | None, typer.Option(help="model URI; default models:/<model>@champion")] = None,
          config: ConfigOpt = None, host: str = "127.0.0.1",
          port: Annotated[int, typer.Option(min=1, max=65535)] = 5001) -> None:
    """Serve a registered model over HTTP (``mlflow models serve --env-manager local``)."""
    import os
    import shutil

    cfg = _load(config, None)
    from ppo.tracking import check_reachable, default_tracking_uri

    uri = model or f"models:/{cfg.model_name}@champion"
    tracking = default_tracking_uri()
    try:
        check_reachable(tracking)
    except RuntimeError as e:
        _fail(str(e), code=1)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    mlflow_bin = shutil.which("mlflow", path=env["PATH"]) or "mlflow"
    console.print(f"serving {uri} on http://{host}:{port}/invocations (store {tracking})", highlight=False)
    os.execvpe(mlflow_bin, [mlflow_bin, "models", "serve", "-m", uri, "--env-manager", "local",
                            "-h", host, "-p", str(port)], env)


def _prefect_env() -> None:
    """Embedded defaults for Prefect (before it is imported): state under $PPO_HOME, no telemetry."""
    import os

    from ppo.config import ppo_home

    os.environ.setdefault("PREFECT_HOME", str(ppo_home() / "prefect"))
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)  # Prefect won't make parents
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    api = os.environ.get("PREFECT_API_URL")
    if api:
        from ppo.net import ServiceUnavailableError, probe

        try:
            probe(api.rstrip("/") + "/health", f"Prefect API {api}",
                  "Start it (make serve) or unset PREFECT_API_URL to run on an embedded API.")
        except ServiceUnavailableError as e:
            _fail(str(e), code=1)


def _run_flow(fn: Any, **kwargs: Any) -> dict[str, Any]:
    from prefect.exceptions import PrefectException

    try:
        state = fn(return_state=True, **kwargs)
    except PrefectException as e:
        _fail(f"Prefect: {e}", code=1)
    if not state.is_completed():
        try:
            state.result()
        except Exception as e:  # the task's own error, e.g. a ConfigError naming the field
            codes = {"ConfigError": 2, "NonFiniteLossError": 3}
            _fail(f"flow {state.name}: {type(e).__name__}: {e}", code=codes.get(type(e).__name__, 1))
        _fail(f"flow ended in state {state.name}", code=1)
    return state.result()


#: what ``ppo pipeline`` / ``ppo promote`` exit with for each outcome of the gate and promotion
OUTCOME_EXIT = {"promoted": 0, "already_champion": 0, "gated_out": 4, "older_than_champion": 4, "lost_race": 5}


@app.command()
def pipeline(config: Annotated[Path | None, typer.Option("--config", "-c")] = Path("configs/cartpole.yaml"),
             set_: SetOpt = None,
             retrain: Annotated[bool, typer.Option("--retrain", help="train a challenger on fresh seeds and gate "
                                                   "it against the champion (what the weekly schedule does)")] = False,
             ) -> None:
    """Run the whole ``train-ppo`` Prefect flow in this process (embedded Prefect API unless
    PREFECT_API_URL is set): validate, train, evaluate, gate, report, register, promote.

    Exit status: 0 promoted (or already the champion), 4 gated out or older than the champion, 5 lost a
    promotion race, 1 a failed task or service, 2 a bad config, 3 a non-finite loss."""
    from ppo.config import parse_overrides

    _load(config, set_)  # fail fast, before Prefect starts, on a bad config
    _prefect_env()
    from flows.train_ppo import train_ppo

    summary = _run_flow(train_ppo, config_path=str(config) if config else None, overrides=parse_overrides(set_),
                        retrain=retrain)
    table = Table(title="train-ppo", show_header=False)
    for k, v in summary.items():
        table.add_row(k, _fmt(v) if not isinstance(v, list) else ", ".join(_fmt(x) for x in v))
    console.print(table)
    console.print(f"report: {summary['report']}", highlight=False)
    sys.stdout.write(json.dumps(summary) + "\n")
    raise typer.Exit(OUTCOME_EXIT[summary["outcome"]])


@app.command()
def sweep(spec: Annotated[Path, typer.Option("--spec", "-s", help="sweep file (search space)")] = Path(
        "configs/sweep-cartpole.yaml")) -> None:
    """Run the ``sweep-ppo`` flow in this process: trials in parallel on Ray (local, or ``$RAY_ADDRESS``),
    each a nested MLflow run; ends with the comparison table and the best config's path."""
    from ppo.config import ConfigError
    from ppo.sweep import load_sweep, trial_configs

    try:
        trials = trial_configs(load_sweep(spec), root=Path.cwd())
    except ConfigError as e:
        _fail(str(e))
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
        table.add_row(*(_fmt(v) for v in row.values()))
    console.print(table)
    console.print(f"best config: {summary['best_config']}\nplot: {summary['plot']}", highlight=False)
    sys.stdout.write(json.dumps(summary) + "\n")


@app.command()
def promote(version: Annotated[int, typer.Option("--version", "-v", min=1, help="model version to gate")],
            config: Annotated[Path | None, typer.Option("--config", "-c")] = Path("configs/cartpole.yaml"),
            set_: SetOpt = None) -> None:
    """Run the ``promote-model`` flow for a registered version (for CI without a Prefect worker).

    Exit status as ``ppo pipeline``: 0 promoted (or already the champion), 4 gated out or older than the
    champion, 5 lost a promotion race."""
    from ppo.config import parse_overrides

    _load(config, set_)
    _prefect_env()
    from flows.promote import promote_model

    summary = _run_flow(promote_model, version=version, config_path=str(config) if config else None,
                        overrides=parse_overrides(set_))
    console.print(f"{summary['outcome']}: {summary['gate_reason']}; "
                  f"{summary['model_name']}@champion = {summary['champion']}", highlight=False)
    sys.stdout.write(json.dumps(summary) + "\n")
    if summary["outcome"] == "lost_race":
        console.print(f"lost the race: another promotion moved {summary['model_name']}@champion to version "
                      f"{summary['champion']} while version {version} was gated; run promote again to gate it "
                      "against the new champion", highlight=False)
    raise typer.Exit(OUTCOME_EXIT[summary["outcome"]])


if __name__ == "__main__":  # pragma: no cover
    app()
