"""Flow ``sweep-ppo``: plan the trials, run them in parallel on Ray, compare them, and score the chosen
one on held-out episodes (the score it reports; ``ppo/sweep.py`` says which episodes each score uses).

Trials that differ only in shape-free hyperparameters form a group, trained as one population: each Ray
task trains a group (a cluster spreads groups over nodes, a node's devices take the group's rows).
Trials run on ``RayTaskRunner``: a local Ray started for the flow, or the cluster in ``$RAY_ADDRESS``
(Ray reads it). Without the ``ray`` extra the flow says so and runs the trials one at a time on
Prefect's local runner. The flow object ``sweep_ppo`` is made (and Ray imported) on first access, not
when this module is imported.

``sweep_ppo_here`` is the same flow (same name, same tasks and records) with its groups trained in this
process, one after another: ``ppo sweep`` runs it when the sweep is one group and no ``$RAY_ADDRESS``
names a cluster (:func:`ppo.sweep.trains_here` says why).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

from prefect import Flow, flow, unmapped
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.sweep import abandon_sweep, plan_sweep, run_group, score_heldout, sweep_report


def task_runner() -> tuple[Any, str | None]:
    """RayTaskRunner when ``prefect-ray`` is installed, else Prefect's local runner and a message why."""
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:
        return ThreadPoolTaskRunner(max_workers=1), (
            "Ray is not installed (pip install 'ppo-pipeline[ray]'): trials run one at a time on Prefect's "
            "local task runner"
        )
    import os

    if not os.environ.get("RAY_ADDRESS"):
        # the local cluster this flow starts requires Ray's token (generated once into ~/.ray/auth_token,
        # as `ray get-auth-token --generate` would): otherwise anyone who can reach its ports can run code
        # in it, which Ray warned about on every sweep. A cluster in $RAY_ADDRESS keeps its own settings.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    return RayTaskRunner(init_kwargs={"include_dashboard": False, "log_to_driver": False}), None


@functools.cache
def _runner() -> tuple[Any, str | None]:
    """The sweep's task runner and note, chosen on first use (this is where Ray is imported), once."""
    return task_runner()


def sweep_ppo_fn(sweep_path: str = "configs/sweep-cartpole.yaml") -> dict[str, Any]:
    """Train every trial of the sweep file as a nested MLflow run; report the best config and its held-out
    score."""
    note = _runner()[1]
    if note:
        print(note)
    return _sweep(sweep_path, here=False)


def sweep_here_fn(sweep_path: str = "configs/sweep-cartpole.yaml") -> dict[str, Any]:
    """:func:`sweep_ppo_fn` with the groups trained in this process, one after another (no Ray)."""
    return _sweep(sweep_path, here=True)


def _sweep(sweep_path: str, here: bool) -> dict[str, Any]:
    plan = plan_sweep(sweep_path)
    trials, groups = plan["trials"], plan["groups"]
    how = "population-based training" if plan["pbt"] else "each trained as one program"
    where = ", in this process" if here else ""
    print(f"{len(trials)} trials in {len(groups)} group(s), {how}{where}")
    kwargs = {
        "parent_run_id": plan["parent_run_id"],
        "eval_episodes": plan["eval_episodes"],
        "pbt": plan["pbt"],
    }
    by_group = [[trials[i] for i in group] for group in groups]
    done = 0

    def finished(group_results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One line per trial as its group finishes (on Ray, the trials' own logs stay on the workers)."""
        nonlocal done
        for r in group_results:
            done += 1
            score = "diverged" if r.get("error") else f"selection score {r['score_selection']:.1f}"
            print(
                f"trial {r['trial']} finished ({done}/{len(trials)}): {r['params']} -> {score}, "
                f"{r['wall_s']:.0f} s"
            )
        return group_results

    try:
        if here:  # a direct task call runs in this thread: Ctrl-C stops the training itself
            results = [r for g in by_group for r in finished(run_group(g, **kwargs))]
        else:
            futures = run_group.map(by_group, **{k: unmapped(v) for k, v in kwargs.items()})
            results = [r for future in as_completed(futures) for r in finished(future.result())]
        results.sort(key=lambda r: r["trial"])
        heldout = score_heldout(plan["parent_run_id"], results)
        return sweep_report(plan["parent_run_id"], results, plan["trials"], heldout, plan["eval_episodes"])
    except BaseException as e:
        with contextlib.suppress(Exception):  # (MLflow down, say): the sweep's own error is what to report
            abandon_sweep(plan["parent_run_id"], e)
        raise


@functools.cache
def _sweep_flow() -> Flow[..., dict[str, Any]]:
    """The ``sweep-ppo`` flow on :func:`_runner`'s task runner, made once."""
    return flow(name="sweep-ppo", task_runner=_runner()[0], log_prints=True)(sweep_ppo_fn)


@functools.cache
def _sweep_here_flow() -> Flow[..., dict[str, Any]]:
    """The ``sweep-ppo`` flow that trains its groups in this process: Prefect's local runner, no Ray."""
    return flow(name="sweep-ppo", task_runner=ThreadPoolTaskRunner(max_workers=1), log_prints=True)(
        sweep_here_fn
    )


def __getattr__(name: str) -> Any:
    """``sweep_ppo`` (the flow, prefect.yaml's entrypoint ``flows/sweep.py:sweep_ppo``), ``sweep_ppo_here``,
    ``RUNNER`` and ``RUNNER_NOTE`` are made on first access, so importing this module imports no Ray: a
    flow's task runner is fixed when the flow object is made, and ``RayTaskRunner`` comes with
    ``import ray``."""
    if name == "sweep_ppo":
        return _sweep_flow()
    if name == "sweep_ppo_here":
        return _sweep_here_flow()
    if name in ("RUNNER", "RUNNER_NOTE"):
        return _runner()[name == "RUNNER_NOTE"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    import sys

    print(_sweep_flow()(*sys.argv[1:2]))
