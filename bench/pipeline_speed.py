"""Pipeline start-up benchmark: prints one JSON line.

``ppo pipeline -c configs/cartpole.yaml`` (what ``make run`` runs once the venv exists), timed from
process start to exit, in a fresh process each time:

* ``cold``: an empty ``$PPO_HOME`` (no JAX compilation cache, no Prefect database, no MLflow store, no
  checkpoint), with the start-up overlapped (the default: compile, MLflow store and plotting imports run
  while the embedded Prefect API starts);
* ``cold_serial``: the same with ``PPO_OVERLAP=0`` (everything after the API is up, one after another):
  the anchor, measured in the same run;
* ``cold_no_templates``: ``cold`` with ``PPO_STORE_TEMPLATES=0``: the Prefect database and the MLflow
  store are created by their migrations instead of copied from the venv's templates (ppo/store_templates.py),
  as on the very first run in a new venv;
* ``warm``: ``cold``'s command again in the same ``$PPO_HOME`` (Prefect's task cache, the checkpoint and
  the compilation cache all there): a cached re-run.

When the venv has no store templates yet, one run builds them first; its figures are on the line as
``first_in_venv`` (and ``cold`` is measured after it, from the templates).

Per-task seconds come from the run's own Prefect database (its task runs' start and end times); ``to_flow_s``
is process start to the flow run's start (interpreter, imports, the API). Each run's outcome and champion
version are on the line too: the overlap must not change what the pipeline decides. Each arm runs
``--repeat`` times (interleaved with the others); its line holds the median run and every run's wall time.

    python bench/pipeline_speed.py [--config configs/cartpole.yaml] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
from datetime import datetime
from pathlib import Path

from _cli import timed_ppo  # bench/ is on the path of `python bench/pipeline_speed.py`


def _when(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def breakdown(home: Path) -> dict:
    """The latest flow run's start (epoch seconds) and its task runs' seconds, from Prefect's database."""
    db = sqlite3.connect(home / "prefect" / "prefect.db")
    try:
        flow_id, flow_start = db.execute(
            "SELECT id, start_time FROM flow_run WHERE start_time IS NOT NULL "
            "ORDER BY start_time DESC LIMIT 1"
        ).fetchone()
        tasks = db.execute(
            "SELECT name, start_time, end_time FROM task_run WHERE flow_run_id = ? ORDER BY start_time",
            (flow_id,),
        ).fetchall()
    finally:
        db.close()
    seconds: dict[str, float] = {}
    for name, start, end in tasks:
        key = name.rsplit("-", 1)[0]  # "train-0" -> "train"
        # a cached task run has no start: it took no time of its own
        took = _when(end) - _when(start) if start and end else 0.0
        seconds[key] = round(seconds.get(key, 0.0) + took, 2)
    return {"flow_start": _when(flow_start), "tasks_s": seconds}


def templates_present() -> bool:
    """Whether this venv holds both store templates of the installed Prefect and MLflow."""
    import importlib.metadata

    import mlflow

    from ppo import store_templates

    # the versions their owners key templates by (flows/cli.py, ppo/tracking/store.py)
    versions = {"prefect": importlib.metadata.version("prefect"), "mlflow": mlflow.__version__}
    paths = [store_templates.template_path(kind, version) for kind, version in versions.items()]
    return all(path is not None and path.is_file() for path in paths)


def run(home: Path, config: str, overlap: bool, templates: bool = True) -> dict:
    env = {**os.environ, "PPO_HOME": str(home), "PPO_OVERLAP": "1" if overlap else "0"}
    for key in ("PREFECT_API_URL", "PREFECT_HOME", "MLFLOW_TRACKING_URI", "PPO_JAX_CACHE"):
        env.pop(key, None)  # everything under this $PPO_HOME, embedded API
    env.pop("PPO_STORE_TEMPLATES", None)  # the venv's templates (or none, below)
    if not templates:
        env["PPO_STORE_TEMPLATES"] = "0"
    start = time.time()
    wall, summary = timed_ppo(["pipeline", "-c", config], env, ok=(0, 4))
    parts = breakdown(home)
    return {
        "wall_s": round(wall, 2),
        "to_flow_s": round(parts["flow_start"] - start, 2),
        "tasks_s": parts["tasks_s"],
        "outcome": summary["outcome"],
        "version": summary.get("model_version"),
    }


def median_run(runs: list[dict]) -> dict:
    """The run with the median wall time (the lower middle one of an even count), with every run's wall
    time beside it: one run of each arm varies by a second or more on this shared 2-core machine."""
    ordered = sorted(runs, key=lambda r: r["wall_s"])
    return {**ordered[(len(ordered) - 1) // 2], "wall_s_all": [r["wall_s"] for r in runs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/cartpole.yaml")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each arm, interleaved; the median is kept")
    args = ap.parse_args()
    os.environ.pop("PPO_STORE_TEMPLATES", None)
    arms: dict[str, list[dict]] = {"cold": [], "warm": [], "cold_serial": [], "cold_no_templates": []}
    with tempfile.TemporaryDirectory(prefix="pipeline-speed-") as tmp:
        first = None if templates_present() else run(Path(tmp) / "first", args.config, overlap=True)
        for i in range(args.repeat):  # interleaved: a slow spell of the machine hits every arm alike
            home = Path(tmp) / str(i)
            arms["cold"].append(run(home / "overlap", args.config, overlap=True))
            arms["warm"].append(run(home / "overlap", args.config, overlap=True))
            arms["cold_serial"].append(run(home / "serial", args.config, overlap=False))
            arms["cold_no_templates"].append(run(home / "bare", args.config, overlap=True, templates=False))
    line = {"bench": "pipeline_speed", "config": args.config, "repeat": args.repeat}
    line.update({arm: median_run(runs) for arm, runs in arms.items()})
    cold = line["cold"]["wall_s"]
    line.update(
        {
            "first_in_venv": first,
            "cold_saving_s": round(line["cold_serial"]["wall_s"] - cold, 2),
            "templates_saving_s": round(line["cold_no_templates"]["wall_s"] - cold, 2),
            "cpus": os.cpu_count(),
        }
    )
    print(json.dumps(line))


if __name__ == "__main__":
    main()
