"""Flow ``sweep-ppo``: plan the trials, run them in parallel on Ray, compare them, and score the chosen
one on held-out episodes (the score it reports; ``ppo/sweep.py`` says which episodes each score uses).

Trials run on ``RayTaskRunner``: a local Ray started for the flow, or the cluster in ``$RAY_ADDRESS``
(Ray reads it). Without the ``ray`` extra the flow says so and runs the trials one at a time on
Prefect's local runner.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.sweep import plan_sweep, run_trial, score_heldout, sweep_report


def task_runner() -> tuple[Any, str | None]:
    """RayTaskRunner when ``prefect-ray`` is installed, else Prefect's local runner and a message why."""
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:
        return ThreadPoolTaskRunner(max_workers=1), (
            "Ray is not installed (pip install 'ppo-pipeline[ray]'): trials run one at a time on Prefect's "
            "local task runner")
    return RayTaskRunner(init_kwargs={"include_dashboard": False, "log_to_driver": False}), None


RUNNER, RUNNER_NOTE = task_runner()


@flow(name="sweep-ppo", task_runner=RUNNER, log_prints=True)
def sweep_ppo(sweep_path: str = "configs/sweep-cartpole.yaml") -> dict[str, Any]:
    """Train every trial of the sweep file as a nested MLflow run; report the best config and its held-out
    score."""
    if RUNNER_NOTE:
        print(RUNNER_NOTE)
    plan = plan_sweep(sweep_path)
    results = run_trial.map(plan["trials"], parent_run_id=unmapped(plan["parent_run_id"]),
                            eval_episodes=unmapped(plan["eval_episodes"]))
    heldout = score_heldout(plan["parent_run_id"], results)
    return sweep_report(plan["parent_run_id"], results, plan["trials"], heldout, plan["eval_episodes"])


if __name__ == "__main__":
    import sys

    print(sweep_ppo(*sys.argv[1:2]))
