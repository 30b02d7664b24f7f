"""Tasks of the training half of the pipeline:
validate-config → (challenger) → train → evaluate → report.

Each persists its (JSON) result; all but challenger are cached (:mod:`tasks._cache`): validate-config on
the config file's bytes, train and report on their inputs and source, evaluate on the checkpoint's digest,
each also on the code version. They pass paths, hashes and ids, never arrays.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE, TASK_SOURCE, CacheKeyFnPolicy
from prefect.tasks import exponential_backoff

from tasks._cache import CACHED, RESULTS, TRAIN_CACHE, checkpoint_key, file_key
from tasks._faults import fault
from tasks.promotion import NO_OP
from tasks.summary import artifact_key


@task(name="validate-config", cache_policy=CacheKeyFnPolicy(cache_key_fn=file_key), **RESULTS)
def validate_config(config_path: str | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load + validate; a bad config fails here, before any training, with the field named."""
    from ppo.config import load_config, require_gate_threshold

    cfg = require_gate_threshold(load_config(config_path, overrides or {}))
    get_run_logger().info(
        "config %s valid: %s, seeds %s", cfg.config_hash(), cfg.env.id, list(cfg.train.seeds)
    )
    return {"config": cfg.to_dict(), "config_hash": cfg.config_hash(), "model_name": cfg.model_name}


def _config(d: dict[str, Any]) -> Any:
    from ppo.config import build_config

    return build_config(d)


def _restored(config: dict[str, Any], checkpoint_dir: str) -> tuple[Any, Any, dict[str, Any]]:
    """(config, trainer holding the checkpoint's trained seeds, checkpoint metadata)."""
    from ppo.trainer import PPOTrainer

    cfg = _config(config)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"checkpoint_dir": checkpoint_dir})})
    trainer = PPOTrainer(config=cfg)
    return cfg, trainer, trainer.restore()


@task(name="challenger", cache_policy=NO_CACHE, **RESULTS)
def challenger(config: dict[str, Any], flow_run_id: str) -> dict[str, Any]:
    """A retraining's config: the same recipe on fresh training seeds derived from the flow run.

    Why: a scheduled run has the same parameters every week, so without fresh seeds its train task would
    come back cached and the schedule would do nothing. The seeds are a function of the flow run id (so a
    retried flow run trains the same challenger) and are recorded as the run's ``train.seeds`` param and
    ``challenger.*`` tags.
    """
    from ppo.config import build_config

    cfg = _config(config)
    n = len(cfg.train.seeds)
    draw = int.from_bytes(hashlib.sha256(f"challenger:{flow_run_id}".encode()).digest()[:8], "big")
    first = draw % (2**31 - n)
    data = cfg.to_dict()
    data["train"]["seeds"] = list(range(first, first + n))
    new = build_config(data)
    get_run_logger().info(
        "retraining: challenger seeds %s (from flow run %s)", list(new.train.seeds), flow_run_id
    )
    return {
        "config": new.to_dict(),
        "config_hash": new.config_hash(),
        "run_tags": {
            "challenger": "true",
            "challenger.flow_run_id": flow_run_id,
            "challenger.seeds": json.dumps(list(new.train.seeds)),
        },
    }


class _LiveProgress:
    """The training's live progress artifact, updated from a thread of its own (the latest figures win).

    Why not update it from the training loop: each update is an API round trip (Prefect's client), and
    the loop would wait for one every chunk. (This was first written for a lost SIGTERM; that turned out to
    be the signal handler's exception swallowed inside a garbage-collector callback, which
    :func:`ppo.cli.interruptible` now sends again.)
    """

    def __init__(self, artifact_id: Any, log: Any) -> None:
        self._id, self._log = artifact_id, log
        self._latest: tuple[float, str] | None = None
        self._closed, self._warned = False, False
        self._cond = threading.Condition()
        context = contextvars.copy_context()  # the task run's: its API client settings and logger
        self._thread = threading.Thread(
            target=context.run, args=(self._run,), name="ppo-progress", daemon=True
        )
        self._thread.start()

    def send(self, progress: float, description: str) -> None:
        with self._cond:
            self._latest = (progress, description)
            self._cond.notify()

    def close(self, wait: bool) -> None:
        """No more updates; with ``wait``, the last one sent is written before this returns."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if wait:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._latest is None and not self._closed:
                    self._cond.wait()
                latest, self._latest = self._latest, None
            if latest is None:
                return
            try:
                update_progress_artifact(self._id, latest[0], description=latest[1])
            except Exception as e:  # live progress only: the run's log lines say the same
                if not self._warned:
                    self._warned = True
                    self._log.warning("could not update the live progress artifact: %s", e)


def _worth_retrying(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a failed ``train`` unless its disk is full: a retry would fail on the same write (the error
    says how much space is needed and where; the last checkpoint is kept for the re-run)."""
    from ppo.atomic import DiskFullError

    try:
        error = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - an unreadable state: retry as before
        return True
    return not isinstance(error, DiskFullError)


@task(
    name="train",
    cache_policy=TRAIN_CACHE,
    retries=2,
    retry_delay_seconds=exponential_backoff(2),
    retry_condition_fn=_worth_retrying,
    **RESULTS,
)
def train(config: dict[str, Any], config_hash: str, run_tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Train with MLflow tracking; resumes from the latest checkpoint when retried or re-run after a crash.

    The MLflow run carries ``run_tags`` and the flow run's ``prefect.flow_run_id``, ``prefect.flow_run_name``
    and ``prefect.flow_run_url`` (when a Prefect UI serves it) from its creation: from the run in the MLflow
    UI, a user finds the flow run that trained it (its logs, the other tasks), failed runs included.
    """
    fault("train")
    from prefect.runtime import flow_run
    from prefect.utilities.urls import url_for

    from ppo import tracking
    from ppo.trainer import PPOTrainer

    log = get_run_logger()
    cfg = _config(config)
    tags = dict(run_tags or {})
    if flow_run.id:  # a resumed run is tagged with the flow run that resumes it
        tags["prefect.flow_run_id"] = str(flow_run.id)
        tags["prefect.flow_run_name"] = str(flow_run.name)
        # the UI's route (prefect.runtime's ui_url names an older one); None without a UI address
        url = url_for("flow-run", obj_id=flow_run.id)
        if url and url.startswith(("http://", "https://")):
            tags["prefect.flow_run_url"] = url
    # the folder is the trainer's (ppo.checkpoint.checkpoint_folder: per config and code version), so
    # `ppo evaluate -c` and `ppo train --resume` find what this task trained
    logger = tracking.MLflowLogger.from_config(cfg, tags=tags)
    trainer = PPOTrainer(config=cfg, enable_mlflow=True, logger=logger)
    every = max(1, cfg.train.log_frequency)
    # live progress in the Prefect UI (the flow run's Artifacts tab), per chunk: env steps per seed against
    # the budget that stops the run (or episodes against max_episodes when there is no step budget)
    budget = cfg.train.max_env_steps or cfg.train.max_episodes
    unit = "env steps" if cfg.train.max_env_steps else "episodes"
    live = create_progress_artifact(
        0.0,
        key=artifact_key("training", cfg.model_name),
        description=f"{cfg.env.id}: compiling the training program ({len(cfg.train.seeds)} seeds)",
    )
    log.info(
        "training %s: %d seed(s), up to %s %s each (compiling first, unless a finished checkpoint is found)",
        cfg.env.id,
        len(cfg.train.seeds),
        f"{budget:,}",
        unit,
    )

    updates = _LiveProgress(live, log)

    def progress(info: dict[str, Any]) -> None:
        m = info["step_metrics"]
        done = info["env_steps"] if cfg.train.max_env_steps else info["episode"]
        avg = "-" if m["avg_reward"] is None else f"{m['avg_reward']:.1f}"
        updates.send(
            min(100.0, 100.0 * done / budget),
            f"{cfg.env.id}: {done:,}/{budget:,} {unit} per seed, average return {avg}",
        )
        if m["chunk"] % every == 0 or "eval_metrics" in info:
            log.info(
                "episodes %d  env steps %d  avg reward %s  %s steps/s",
                info["episode"],
                info["env_steps"],
                None if m["avg_reward"] is None else round(m["avg_reward"], 1),
                None if m["env_steps_per_s"] is None else round(m["env_steps_per_s"]),
            )

    try:
        result = trainer.train(callback=progress, resume=True)
    except BaseException:
        updates.close(wait=False)  # a failure or a signal: no waiting on the Prefect API
        raise
    # finished, whatever stopped it (converged early, a budget, or an earlier attempt that had finished)
    updates.send(
        100.0,
        f"{cfg.env.id}: finished ({result.get('stop_reason') or 'done'}) after "
        f"{result['env_steps']:,} env steps per seed",
    )
    updates.close(wait=True)
    if tags:  # also on a run finished before (a retry after training): handed back without being reopened
        tracking.set_run_tags(result["run_id"], tags)
    resumed = result.get("resumed_from_chunk")
    log.info(
        "trained %s: %s episodes, %s env steps in %.1f s%s%s",
        "to convergence" if result["converged"] else f"until {result.get('stop_reason') or 'its budget'}",
        f"{result['episodes']:,}",
        f"{result['env_steps']:,}",
        result["wall_time_s"],
        f" (resumed from the checkpoint after chunk {resumed})" if resumed is not None else "",
        # ppo pipeline's warm-up (flows.cli._warm_up) compiled it while the Prefect API started
        "; its program was compiled ahead, while the Prefect API started"
        if trainer.timings.get("compiled_ahead")
        else "",
    )
    return {
        k: result.get(k)
        for k in (
            "run_id",
            "checkpoint_dir",
            "config_hash",
            "converged",
            "stop_reason",
            "episodes",
            "env_steps",
            "best_avg_reward",
            "wall_time_s",
            "best_seed",
        )
    } | {"final_eval": {k: v for k, v in result["final_eval"].items() if k != "returns"}}


@task(
    name="evaluate",
    cache_policy=CacheKeyFnPolicy(cache_key_fn=checkpoint_key) + TASK_SOURCE,
    retries=1,
    **RESULTS,
)
def evaluate_candidate(config: dict[str, Any], checkpoint_dir: str, run_id: str) -> dict[str, Any]:
    """Every trained seed on the gate's fresh held-out start states (drawn from the candidate's run id).

    The deployed policy is the seed the trainer picked on its final evaluation (other episodes); the
    other seeds' returns feed the gate's recipe check.
    """
    from ppo.evaluate import evaluate_params_list, gate_seed

    cfg, trainer, meta = _restored(config, checkpoint_dir)
    seed = gate_seed(run_id, cfg.gate.episodes)
    returns = evaluate_params_list(
        trainer.seed_params, cfg.env.id, cfg.gate.episodes, seed, cfg.env.max_steps_per_episode
    )
    best = int(meta.get("best_seed_index", 0))
    get_run_logger().info(
        "evaluated %d seeds x %d fresh episodes (gymnasium seeds from %d): deployed seed %s, mean %.1f",
        *returns.shape,
        seed,
        cfg.train.seeds[best],
        returns[best].mean(),
    )
    return {
        "returns": returns.tolist(),
        "seeds": list(cfg.train.seeds),
        "candidate_index": best,
        "eval_seed": seed,
        "run_id": run_id,
    }


def _has_report(run_id: str, directory: Path) -> bool:
    """Whether the run's report exists: in this $PPO_HOME, or in its MLflow run's ``report/`` folder."""
    from ppo import tracking

    if (directory / "report.html").is_file():
        return True
    try:
        return any(a.path.endswith("report.html") for a in tracking.client().list_artifacts(run_id, "report"))
    except Exception:  # unknown: keep what there may be rather than overwrite it
        return True


@task(name="report", cache_policy=CACHED, retries=1, **RESULTS)
def report(
    config: dict[str, Any],
    trained: dict[str, Any],
    evaluation: dict[str, Any],
    decision: dict[str, Any],
    registry: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Plots, GIF, report.md/.html → $PPO_HOME/reports/<run id>/, the MLflow run, and Prefect artifacts
    keyed per registered model (``ppo-report-<model>``, ``ppo-eval-per-seed-<model>``): each model's
    latest report, never another model's. The report artifact inlines its plots (the Prefect UI cannot
    load the report folder's files) and links to report.html in the MLflow UI."""
    fault("report")
    import numpy as np

    from ppo import tracking
    from ppo.config import ppo_home
    from ppo.report import prefect_markdown, write_report

    run_id = trained["run_id"]
    directory = ppo_home() / "reports" / run_id
    if decision.get("status") in NO_OP and _has_report(run_id, directory):
        # not a gate (the run is the champion, or older): its report stays the one written at its own gate
        # (here, or in the MLflow run's report/ folder when this $PPO_HOME never had it). A run whose
        # report was never written (its report task failed after the promotion) gets one now.
        get_run_logger().info(
            "report of run %s kept as written at its gate: %s", run_id, directory / "report.html"
        )
        return {"report_md": str(directory / "report.md"), "report_html": str(directory / "report.html")}
    cfg, trainer, full = _restored(config, trained["checkpoint_dir"])
    result = {**trained, "history": full.get("history", [])}
    champion = decision.get("champion_returns")
    url = tracking.run_url(run_id)
    files = write_report(
        directory,
        config=cfg,
        result=result,
        gate=decision,
        candidate_returns=np.asarray(evaluation["returns"]),
        champion_returns=None if champion is None else np.asarray(champion),
        agent=trainer.agent,
        run_id=run_id,
        mlflow_url=url,
        registry=registry,
    )
    tracking.log_report(run_id, directory)
    model = cfg.model_name
    full_report = tracking.artifact_url(run_id, "report/report.html")
    create_markdown_artifact(
        prefect_markdown(directory)
        + f"\n\nFull report: [report.html in the MLflow UI]({full_report}) (opens while `make serve` or "
        f"`ppo ui` runs; local file `{files['report_html']}`)",
        key=artifact_key("report", model),
        description=f"PPO report of {model}, run {run_id}",
    )
    rows = [
        {
            "seed": s,
            "mean": round(float(np.mean(r)), 2),
            "min": float(np.min(r)),
            "max": float(np.max(r)),
            "episodes": len(r),
        }
        for s, r in zip(evaluation["seeds"], evaluation["returns"], strict=True)
    ]
    create_table_artifact(
        rows, key=artifact_key("eval-per-seed", model), description=f"{model}: greedy evaluation per seed"
    )
    create_link_artifact(
        url,
        link_text=f"MLflow run {run_id}",
        key=artifact_key("mlflow-run", model),
        description=f"MLflow store: {tracking.default_tracking_uri()}",
    )
    return files
