"""The pipeline's Prefect tasks. Each is retryable, persists its (JSON) result, and, where DESIGN.md
says so, is cached on its inputs + its source + the code version of ``ppo``/``tasks`` (so changing the
code invalidates every cache). They pass paths, hashes and ids, never arrays.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE, CacheKeyFnPolicy
from prefect.tasks import exponential_backoff

_ROOT = Path(__file__).resolve().parents[1]


def _code_version() -> str:
    h = hashlib.sha256()
    for pkg in ("ppo", "tasks"):
        for f in sorted((_ROOT / pkg).glob("*.py")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


CODE_VERSION = _code_version()
class InjectedFault(RuntimeError):
    """Raised by :func:`_fault` (fault-injection drills and tests only)."""


def _fault(task_name: str) -> None:
    """Fault injection for drills: ``PPO_FAULTS="train=1,register=permanent"`` makes ``train`` fail its
    first attempt (a transient error, counted in ``$PPO_HOME/faults``) and ``register`` fail always;
    ``promote=delay:5`` makes promotion hold its lock 5 s (a slow registry, to drill concurrent promotions)."""
    spec = dict(item.split("=", 1) for item in os.environ.get("PPO_FAULTS", "").split(",") if "=" in item)
    if task_name not in spec:
        return
    if spec[task_name].startswith("delay:"):
        import time

        time.sleep(float(spec[task_name].split(":", 1)[1]))
        return
    if spec[task_name] == "permanent":
        raise InjectedFault(f"injected permanent fault in task {task_name!r}")
    from ppo.config import ppo_home

    counter = ppo_home() / "faults" / task_name
    counter.parent.mkdir(parents=True, exist_ok=True)
    seen = int(counter.read_text()) if counter.is_file() else 0
    if seen < int(spec[task_name]):
        counter.write_text(str(seen + 1))
        raise InjectedFault(f"injected transient fault in task {task_name!r} (attempt {seen + 1})")


_CODE = CacheKeyFnPolicy(cache_key_fn=lambda ctx, params: CODE_VERSION)
CACHED = INPUTS + TASK_SOURCE + _CODE
RESULTS = {"persist_result": True, "result_serializer": "json"}


def _file_key(ctx: Any, params: dict[str, Any]) -> str:
    """validate-config's key: the config file's bytes + the overrides + the code version."""
    path = params.get("config_path")
    data = Path(path).read_bytes() if path and Path(path).is_file() else b"<none>"
    blob = data + json.dumps(params.get("overrides") or {}, sort_keys=True).encode() + CODE_VERSION.encode()
    return hashlib.sha256(blob).hexdigest()


@task(name="validate-config", cache_policy=CacheKeyFnPolicy(cache_key_fn=_file_key), **RESULTS)
def validate_config(config_path: str | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load + validate; a bad config fails here, before any training, with the field named."""
    from ppo.config import load_config

    cfg = load_config(config_path, overrides or {})
    get_run_logger().info("config %s valid: %s, seeds %s", cfg.config_hash(), cfg.env.id, list(cfg.train.seeds))
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


@task(name="train", cache_policy=CACHED, retries=2, retry_delay_seconds=exponential_backoff(2), **RESULTS)
def train(config: dict[str, Any], config_hash: str) -> dict[str, Any]:
    """Train with MLflow tracking; resumes from the latest checkpoint when retried or re-run after a crash."""
    _fault("train")
    from ppo.config import confined_path, ppo_home
    from ppo.trainer import PPOTrainer

    log = get_run_logger()
    cfg = _config(config)
    # one folder per config and code version (under the config's checkpoint_dir when it names one): a
    # re-run after a code change trains afresh instead of resuming a checkpoint of other code
    base = confined_path(cfg.train.checkpoint_dir) if cfg.train.checkpoint_dir else ppo_home() / "checkpoints"
    ck = str(base / f"{config_hash}-{CODE_VERSION[:8]}")
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"checkpoint_dir": ck}),
                                 "registry": cfg.registry.model_copy(update={"auto_register": False})})
    trainer = PPOTrainer(config=cfg, enable_mlflow=True)
    every = max(1, cfg.train.log_frequency)

    def progress(info: dict[str, Any]) -> None:
        m = info["step_metrics"]
        if m["chunk"] % every == 0 or "eval_metrics" in info:
            log.info("episodes %d  env steps %d  avg reward %s  %s steps/s", info["episode"], info["env_steps"],
                     None if m["avg_reward"] is None else round(m["avg_reward"], 1),
                     None if m["env_steps_per_s"] is None else round(m["env_steps_per_s"]))

    result = trainer.train(callback=progress, resume=True)
    log.info("trained: converged=%s episodes=%d env_steps=%d wall %.1f s (resumed from chunk %s)",
             result["converged"], result["episodes"], result["env_steps"], result["wall_time_s"],
             result.get("resumed_from_chunk"))
    return {k: result.get(k) for k in ("run_id", "checkpoint_dir", "config_hash", "converged", "stop_reason",
                                       "episodes", "env_steps", "best_avg_reward", "wall_time_s", "best_seed")} | {
        "final_eval": {k: v for k, v in result["final_eval"].items() if k != "returns"}}


def _checkpoint_key(ctx: Any, params: dict[str, Any]) -> str:
    """evaluate's key: the checkpoint file's digest + the eval settings (gate section) + the code version."""
    from ppo.checkpoint import checkpoint_digest

    gate_cfg = json.dumps(params["config"].get("gate", {}), sort_keys=True)
    env_cfg = json.dumps(params["config"].get("env", {}), sort_keys=True)
    blob = f"{checkpoint_digest(params['checkpoint_dir'])}|{gate_cfg}|{env_cfg}|{CODE_VERSION}"
    return hashlib.sha256(blob.encode()).hexdigest()


@task(name="evaluate", cache_policy=CacheKeyFnPolicy(cache_key_fn=_checkpoint_key) + TASK_SOURCE, retries=1,
      **RESULTS)
def evaluate_candidate(config: dict[str, Any], checkpoint_dir: str) -> dict[str, Any]:
    """Every trained seed × ``gate.episodes`` greedy episodes on real gymnasium (fixed eval seed)."""
    from ppo.evaluate import evaluate_params_list

    cfg, trainer, _ = _restored(config, checkpoint_dir)
    returns = evaluate_params_list(trainer.seed_params, cfg.env.id, cfg.gate.episodes, cfg.gate.eval_seed,
                                   cfg.env.max_steps_per_episode)
    get_run_logger().info("evaluated %d seeds x %d episodes: mean %.1f", *returns.shape, returns.mean())
    return {"returns": returns.tolist(), "seeds": list(cfg.train.seeds)}


@task(name="evaluate-version", cache_policy=INPUTS + TASK_SOURCE + _CODE, retries=1, **RESULTS)
def evaluate_version(config: dict[str, Any], model_name: str, version: str) -> dict[str, Any]:
    """A registered version's policy on ``gate.episodes`` x its run's seed count, same eval seeds."""
    from ppo import tracking
    from ppo.evaluate import evaluate_params_list

    cfg = _config(config)
    params, meta = tracking.version_params(model_name, version)
    returns = evaluate_params_list([params], cfg.env.id, cfg.gate.episodes, cfg.gate.eval_seed,
                                   cfg.env.max_steps_per_episode)
    get_run_logger().info("%s v%s: mean %.1f over %d episodes", model_name, version, returns.mean(), returns.size)
    return {"returns": returns.tolist(), "seeds": [0], "run_id": meta["run_id"]}


@task(name="gate", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=exponential_backoff(1), **RESULTS)
def gate(config: dict[str, Any], evaluation: dict[str, Any], run_id: str | None) -> dict[str, Any]:
    """Statistical promotion gate vs ``gate.min_return`` and the current champion (never cached)."""
    import numpy as np

    from ppo import tracking
    from ppo.evaluate import evaluate_params_list
    from ppo.stats import gate_decision

    cfg = _config(config)
    g = cfg.gate
    champion = tracking.champion_info(cfg.model_name)
    champion_returns = None
    if champion is not None and champion["run_id"] != run_id:
        params, _ = tracking.version_params(cfg.model_name, champion["version"])
        champion_returns = evaluate_params_list([params], cfg.env.id, g.episodes, g.eval_seed,
                                                cfg.env.max_steps_per_episode)[0]
    decision = gate_decision(np.asarray(evaluation["returns"]), champion_returns, g.min_return, g.margin, g.mode,
                             g.confidence, g.bootstrap_samples, seed=g.eval_seed)
    # the champion compared against; None when there is none or it is this very run (then nothing to pair)
    decision["champion_version"] = champion["version"] if champion_returns is not None else None
    decision["champion_returns"] = None if champion_returns is None else champion_returns.tolist()
    get_run_logger().info("gate %s: IQM %.1f CI [%.1f, %.1f] (%s)", "PASSED" if decision["passed"] else "FAILED",
                          decision["iqm"], decision["ci_low"], decision["ci_high"], decision["reason"])
    return decision


@task(name="report", cache_policy=CACHED, retries=1, **RESULTS)
def report(config: dict[str, Any], trained: dict[str, Any], evaluation: dict[str, Any],
           decision: dict[str, Any]) -> dict[str, str]:
    """Plots, GIF, report.md/.html → $PPO_HOME/reports/<run id>/, the MLflow run, and Prefect artifacts."""
    import numpy as np

    from ppo import tracking
    from ppo.config import ppo_home
    from ppo.report import write_report

    cfg, trainer, full = _restored(config, trained["checkpoint_dir"])
    result = {**trained, "history": full.get("history", [])}
    run_id = trained["run_id"]
    directory = ppo_home() / "reports" / run_id
    champion = decision.get("champion_returns")
    url = tracking.run_url(run_id)
    files = write_report(directory, config=cfg, result=result, gate=decision,
                         candidate_returns=np.asarray(evaluation["returns"]),
                         champion_returns=None if champion is None else np.asarray(champion),
                         agent=trainer.agent, run_id=run_id, mlflow_url=url)
    tracking.log_report(run_id, directory)
    md = Path(files["report_md"]).read_text().split("## Config")[0]
    create_markdown_artifact(md + f"\n\nFull report: `{files['report_html']}`", key="ppo-report",
                             description=f"PPO report for run {run_id}")
    rows = [{"seed": s, "mean": round(float(np.mean(r)), 2), "min": float(np.min(r)), "max": float(np.max(r)),
             "episodes": len(r)} for s, r in zip(evaluation["seeds"], evaluation["returns"], strict=True)]
    create_table_artifact(rows, key="ppo-eval-per-seed", description="greedy evaluation per trained seed")
    create_link_artifact(url, link_text=f"MLflow run {run_id}", key="ppo-mlflow-run",
                         description=f"MLflow store: {tracking.default_tracking_uri()}")
    return files


@task(name="register", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=exponential_backoff(1), **RESULTS)
def register(model_name: str, run_id: str, decision: dict[str, Any]) -> str:
    """Register the run's model (idempotent per run id) and write the gate's figures as version tags."""
    _fault("register")
    from ppo import tracking

    version = tracking.register_model(run_id, model_name)
    tracking.tag_version(model_name, version, {
        "gate.passed": decision["passed"], "gate.iqm": round(decision["iqm"], 3),
        "gate.ci_low": round(decision["ci_low"], 3), "gate.ci_high": round(decision["ci_high"], 3),
        "gate.champion_version": decision.get("champion_version") or "none",
        "gate.diff_ci_low": round(decision["diff_ci_low"], 3) if "diff_ci_low" in decision else "none",
        "gate.mode": decision["mode"], "gate.reason": decision["reason"]})
    get_run_logger().info("registered %s version %s", model_name, version)
    return version


@contextmanager
def promotion_lock(model_name: str, timeout_s: float = 600.0) -> Iterator[None]:
    """Serialise alias moves for one model across processes and machines.

    A Prefect global concurrency limit (one slot) lives in the Prefect API's database, so every process
    and worker talking to the same API (or sharing an embedded one's database) takes turns; the limit is
    created on first use. MLflow has no compare-and-set on aliases, hence this lock.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = f"promote-{model_name}"
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:  # created by a concurrent promotion
                pass
    with concurrency(name, occupy=1, timeout_seconds=timeout_s, strict=True):
        yield


@task(name="promote", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=exponential_backoff(1), **RESULTS)
def promote(model_name: str, version: str, decision: dict[str, Any]) -> dict[str, Any]:
    """Move the ``champion`` alias to ``version`` only if the gate passed and the champion is still the one
    the gate compared against (compare-and-set under :func:`promotion_lock`); otherwise report the lost race."""
    from ppo import tracking

    log = get_run_logger()
    if not decision["passed"]:
        before = tracking.get_champion(model_name)
        log.warning("gate failed (%s): %s@champion stays at %s", decision["reason"], model_name, before)
        return {"promoted": False, "champion": before, "lost_race": False}
    # the champion the gate compared against; None: there was none, or it is this very version
    expected = decision.get("champion_version")
    with promotion_lock(model_name):
        before = tracking.get_champion(model_name)
        _fault("promote")
        if before == str(version):
            return {"promoted": False, "champion": before, "lost_race": False}
        if before != expected:
            log.warning("lost the race: %s@champion moved from %s to %s while version %s was gated; "
                        "run promote-model again to gate it against the new champion",
                        model_name, expected, before, version)
            tracking.tag_version(model_name, version, {"promote.lost_race_to": before})
            return {"promoted": False, "champion": before, "lost_race": True}
        tracking.set_champion(model_name, version)
    log.info("%s@champion = version %s (was %s)", model_name, version, before)
    return {"promoted": True, "champion": str(version), "lost_race": False}
