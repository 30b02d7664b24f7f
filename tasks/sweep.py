"""Prefect tasks of the ``sweep-ppo`` flow: plan (validate every trial, group them, open the parent MLflow
run), one group of trials (trained as one population; each trial a nested MLflow run with its selection
score), the chosen trial's held-out score, and the report (table, plot, best config). Which episodes each
score uses, and how trials are grouped: ``ppo/sweep.py``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

if TYPE_CHECKING:
    from ppo.config import Config

RESULTS = {"persist_result": True, "result_serializer": "json", "cache_policy": NO_CACHE}


@task(name="plan-sweep", retries=1, **RESULTS)
def plan_sweep(sweep_path: str) -> dict[str, Any]:
    """Expand and validate every trial (a bad one fails here, before any training), open the parent run."""
    from ppo import tracking
    from ppo.sweep import eval_seeds, group_trials, load_sweep, pbt_of, trial_configs

    spec = load_sweep(sweep_path)
    trials = trial_configs(spec)
    groups = group_trials([cfg for _, cfg in trials], spec.populations)
    first = trials[0][1]
    client = tracking.client()
    experiment_id = tracking.get_or_create_experiment(client, first.experiment_name)
    parent = client.create_run(
        experiment_id,
        run_name=f"sweep-{Path(sweep_path).stem}",
        tags={"sweep": "true", "sweep.method": spec.method},
    )
    run_id = parent.info.run_id
    client.log_param(run_id, "sweep.trials", len(trials))
    client.log_param(run_id, "sweep.space", json.dumps(spec.model_dump(mode="json")["space"])[:6000])
    client.log_artifact(run_id, sweep_path)
    client.log_param(run_id, "sweep.eval_seeds", json.dumps(eval_seeds(spec.eval_episodes)))
    client.log_param(run_id, "sweep.groups", len(groups))
    get_run_logger().info(
        "sweep %s: %d trials (%s) in %d group(s) trained as populations, MLflow parent run %s",
        sweep_path,
        len(trials),
        spec.method,
        len(groups),
        run_id,
    )
    return {
        "parent_run_id": run_id,
        "eval_episodes": spec.eval_episodes,
        "trials": [
            {"trial": i, "params": point, "config": cfg.to_dict()} for i, (point, cfg) in enumerate(trials)
        ],
        "groups": groups,
        "pbt": pbt_of(spec),
    }


def _trial_config(trial: dict[str, Any], parent_run_id: str) -> Config:
    """The trial's config with its own checkpoint directory (``sweeps/<parent run>/trial-<i>`` in $PPO_HOME),
    where the held-out evaluation finds the trained seeds again."""
    from ppo.config import build_config

    checkpoint_dir = f"sweeps/{parent_run_id}/trial-{trial['trial']}"
    return build_config(trial["config"], {"train.checkpoint_dir": checkpoint_dir})


@task(name="trial-group", retries=1, **RESULTS)
def run_group(
    trials: list[dict[str, Any]], parent_run_id: str, eval_episodes: int, pbt: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Train a group of trials as one population (:func:`ppo.population.train_together`): each trial is
    still its own trainer, with its own nested MLflow run and checkpoint, and gets its selection score
    (real gymnasium episodes of the ``sweep_select`` stream, the same for every trial, so the trials
    compare fairly).

    Each trial also plays the ``sweep_heldout`` episodes here, where its trained seeds are (on a Ray
    cluster, the worker's disk); that score chooses nothing and is reported only for the chosen trial.

    A trial whose loss diverges (NaN/inf: a legitimate outcome of, say, a too-high learning rate) is
    reported as diverged, not retried, and does not stop the other trials of its group.

    With ``pbt`` (:func:`ppo.sweep.pbt_of`) the group is trained with population-based training
    (:class:`ppo.pbt.Schedule`); each trial's run gets its lineage and final values.
    """
    from ppo.population import train_together
    from ppo.sweep import eval_seeds, trial_score
    from ppo.tracking import MLflowLogger
    from ppo.trainer import PPOTrainer

    log = get_run_logger()
    trainers, loggers = [], []
    for trial in trials:
        cfg = _trial_config(trial, parent_run_id)
        logger = MLflowLogger.from_config(
            cfg, run_name=f"trial-{trial['trial']}", parent_run_id=parent_run_id
        )
        trainers.append(PPOTrainer(config=cfg, logger=logger))
        loggers.append(logger)
    log.info(
        "training trials %s as one population (%d rows)",
        [t["trial"] for t in trials],
        len(trials) * len(trainers[0].config.train.seeds),
    )
    schedule = None
    if pbt is not None:
        from ppo.pbt import PBT, Schedule

        first = trainers[0].config
        rule = PBT(**{**pbt, "fields": tuple(pbt["fields"]), "factors": tuple(pbt["factors"])})
        schedule = Schedule(rule, len(trainers), len(first.train.seeds), first.train.convergence_window)
    outcomes = train_together(trainers, between=schedule)
    if trainers[0].timings.get("compiled_ahead"):  # ppo sweep's warm-up (flows.cli._warm_up) compiled it
        log.info("the group's program was compiled ahead, while the Prefect API started")
    seeds = eval_seeds(eval_episodes)
    out = []
    for trial, trainer, logger, outcome in zip(trials, trainers, loggers, outcomes, strict=True):
        common = {
            "trial": trial["trial"],
            "params": trial["params"],
            "run_id": logger.run_id,
            "pid": os.getpid(),
        }
        if not isinstance(outcome, dict):  # diverged: the run is already marked FAILED in MLflow
            log.warning("trial %d %s diverged: %s", trial["trial"], trial["params"], outcome)
            out.append(
                {
                    **common,
                    "score_selection": float("nan"),
                    "std_selection": float("nan"),
                    "env_steps": 0,
                    "converged": False,
                    "wall_s": 0.0,
                    "error": str(outcome),
                }
            )
            continue

        def score(start: int, trainer: PPOTrainer = trainer) -> tuple[float, float]:
            ev = trainer.evaluate(num_episodes=eval_episodes, backend="gymnasium", all_seeds=True, seed=start)
            return trial_score(ev)

        selection, held = score(seeds["selection"][0]), score(seeds["heldout"][0])
        logger.client.log_metric(logger.run_id, "sweep/score_selection", selection[0])
        for key, value in trial["params"].items():
            logger.client.set_tag(logger.run_id, f"sweep.{key}", value)
        pbt_result = {} if schedule is None else _log_lineage(schedule, len(out), trainer, trial, logger)
        log.info(
            "trial %d %s: selection score %.1f after %d env steps",
            trial["trial"],
            trial["params"],
            selection[0],
            outcome["env_steps"],
        )
        out.append(
            {
                **common,
                "score_selection": selection[0],
                "std_selection": selection[1],
                "env_steps": outcome["env_steps"],
                "converged": outcome["converged"],
                "wall_s": outcome["wall_time_s"],
                "heldout": {"score": held[0], "std": held[1]},
                **pbt_result,
            }
        )
    return out


def _log_lineage(
    schedule: Any, member: int, trainer: Any, trial: dict[str, Any], logger: Any
) -> dict[str, Any]:
    """A PBT member's lineage on its MLflow run (``pbt.lineage`` and ``pbt.final.*`` tags, ``pbt/<field>``
    curves over env steps) and in its result (``lineage``, ``final_params``, ``last_update``)."""
    import time

    import numpy as np
    from mlflow.entities import Metric

    from ppo.pbt import values_over_updates

    lineage = schedule.lineage(member)
    batch = trainer.config.ppo.batch_size
    last_update = int(np.max(np.asarray(trainer.state.update)))
    hp = trainer.state.hp  # the member's rows: every seed holds the same values
    final = {f"ppo.{field}": float(np.asarray(getattr(hp, field))[0]) for field in schedule.pbt.fields}
    initial = {field: trial["params"][f"ppo.{field}"] for field in schedule.pbt.fields}
    now = int(time.time() * 1000)
    metrics = [
        Metric(f"pbt/{field}", value, now, update * batch)
        for field, (updates, values) in values_over_updates(initial, lineage, last_update).items()
        for update, value in zip(updates, values, strict=True)
    ]
    client, run_id = logger.client, logger.run_id
    client.log_batch(run_id, metrics=metrics)
    client.set_tag(run_id, "pbt.lineage", json.dumps(lineage)[:5000])
    client.set_tag(run_id, "pbt.exploits", len(lineage))
    for key, value in final.items():
        client.set_tag(run_id, f"pbt.final.{key}", value)
    return {"lineage": lineage, "final_params": final, "last_update": last_update}


def abandon_sweep(parent_run_id: str, error: BaseException) -> None:
    """End the sweep's parent MLflow run after ``error`` stopped the sweep: KILLED for a stop from outside
    (Ctrl-C, SIGTERM: not an ``Exception``), FAILED otherwise; a run already ended keeps its status.
    Not a task: it runs while the flow unwinds, where no new task run should start. Why: the parent run
    stayed RUNNING for ever after an interrupted sweep (its trials' runs were already marked)."""
    from ppo import tracking

    client = tracking.client()
    if client.get_run(parent_run_id).info.status == "RUNNING":
        client.set_terminated(parent_run_id, "FAILED" if isinstance(error, Exception) else "KILLED")


@task(name="heldout-score", retries=1, **RESULTS)
def score_heldout(parent_run_id: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Choose the best trial by selection score and report its score on held-out episodes (the
    ``sweep_heldout`` stream, played by the trial itself): the best of several noisy selection scores
    overstates the chosen trial (a winner's curse), so the held-out score is the one the sweep reports."""
    from ppo import tracking
    from ppo.sweep import best_trial

    if not any(r.get("error") is None for r in results):
        tracking.client().set_terminated(parent_run_id, "FAILED")
        raise RuntimeError(f"every trial of the sweep failed; first: {results[0].get('error')}")
    best = best_trial(results)
    score, std = best["heldout"]["score"], best["heldout"]["std"]
    tracking.client().log_metric(best["run_id"], "sweep/score_heldout", score)
    get_run_logger().info(
        "best trial %d %s: held-out score %.1f (selection score %.1f)",
        best["trial"],
        best["params"],
        score,
        best["score_selection"],
    )
    return {"trial": best["trial"], "score_heldout": score, "std_heldout": std}


@task(name="sweep-report", retries=1, **RESULTS)
def sweep_report(
    parent_run_id: str,
    results: list[dict[str, Any]],
    trials: list[dict[str, Any]],
    heldout: dict[str, Any],
    eval_episodes: int,
) -> dict[str, Any]:
    """Comparison table (CSV + Prefect table), plot, and the best trial's full config, on the parent run.

    The best trial's reported score is its held-out one; its selection score is logged beside it, labelled.
    """
    import pandas as pd
    import yaml

    from ppo import tracking
    from ppo.config import build_config, ppo_home
    from ppo.sweep import comparison_table, eval_seeds, plot_lineage, plot_sweep, seeds_note

    best = next(r for r in results if r["trial"] == heldout["trial"])
    directory = ppo_home() / "sweeps" / parent_run_id
    directory.mkdir(parents=True, exist_ok=True)
    rows = comparison_table(results, heldout)
    from ppo import atomic  # every file written whole or not at all (a full disk keeps the old one)

    atomic.write_text(directory / "sweep.csv", pd.DataFrame(rows).to_csv(index=False))
    plot_sweep(results, directory / "sweep.png", title=f"PPO sweep {parent_run_id[:8]}", heldout=heldout)
    best_config = next(t["config"] for t in trials if t["trial"] == best["trial"])
    lineage_plot = None
    if best.get("final_params"):  # pbt: the best trial's values at the end, and everyone's lineage
        best_config = build_config(best_config, best["final_params"]).to_dict()
        lineage_plot = plot_lineage(
            results, directory / "pbt_lineage.png", best["trial"], title=f"PBT lineage {parent_run_id[:8]}"
        )
    atomic.write_text(directory / "best_config.yaml", yaml.safe_dump(best_config, sort_keys=False))
    client = tracking.client()
    client.log_artifacts(parent_run_id, str(directory))
    client.log_metric(parent_run_id, "sweep/best_score_heldout", heldout["score_heldout"])
    client.log_metric(parent_run_id, "sweep/best_score_selection", best["score_selection"])
    client.set_tag(parent_run_id, "sweep.best_trial", best["trial"])
    client.set_tag(parent_run_id, "sweep.best_run_id", best["run_id"])
    client.set_terminated(parent_run_id, "FINISHED")
    note = seeds_note(eval_episodes)
    from tasks.summary import artifact_key

    lineage_note = "" if lineage_plot is None else f"\n\nPBT lineage: `{lineage_plot}`"

    model_name = build_config(best_config).model_name  # the sweep's env: one key per model, like train-ppo
    create_table_artifact(
        rows, key=artifact_key("sweep", model_name), description=f"sweep trials, best first. {note}"
    )
    create_markdown_artifact(
        f"# PPO sweep\n\nBest trial {best['trial']} {best['params']}: held-out score "
        f"{heldout['score_heldout']:.1f} (selection score {best['score_selection']:.1f}, "
        f"which chose it).\n\n{note}.\n\nBest config: `{directory / 'best_config.yaml'}`"
        f"\n\nPlot: `{directory / 'sweep.png'}`{lineage_note}\n",
        key=artifact_key("sweep-summary", model_name),
    )
    return {
        "parent_run_id": parent_run_id,
        "best_trial": best["trial"],
        "best_params": best["params"],
        "best_score_heldout": heldout["score_heldout"],
        "best_score_selection": best["score_selection"],
        "eval_seeds": {k: list(v) for k, v in eval_seeds(eval_episodes).items()},
        "best_config": str(directory / "best_config.yaml"),
        "plot": str(directory / "sweep.png"),
        "lineage_plot": None if lineage_plot is None else str(lineage_plot),
        "table": str(directory / "sweep.csv"),
        "trial_pids": sorted({r["pid"] for r in results}),
        # trials whose selection score equals the best's exactly (the table rounds): fewer env steps won
        "tied_trials": sorted(
            r["trial"]
            for r in results
            if r.get("error") is None and r["score_selection"] == best["score_selection"]
        ),
    }
