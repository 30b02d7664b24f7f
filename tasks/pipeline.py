"""The pipeline's Prefect tasks. Each is retryable, persists its (JSON) result, and, where DESIGN.md
says so, is cached on its inputs + its source + the code version of ``ppo``/``tasks`` (so changing the
code invalidates every cache). They pass paths, hashes and ids, never arrays.
"""

from __future__ import annotations

import functools
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


@functools.cache
def code_version() -> str:
    """A digest of every source file of ``ppo`` and ``tasks``, sub-packages (``ppo/tracking/``) included: part
    of every cache key, so changing the code invalidates every cache. Computed on first use (a task's cache
    key), once per process."""
    h = hashlib.sha256()
    for pkg in ("ppo", "tasks"):
        for f in sorted((_ROOT / pkg).rglob("*.py")):
            h.update(f.relative_to(_ROOT).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def __getattr__(name: str) -> Any:
    if name == "CODE_VERSION":  # the former module constant, now computed on first access
        return code_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
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


_CODE = CacheKeyFnPolicy(cache_key_fn=lambda ctx, params: code_version())
CACHED = INPUTS + TASK_SOURCE + _CODE
RESULTS = {"persist_result": True, "result_serializer": "json"}
#: gate outcomes that are not a gate at all: the candidate is the champion, or older than it
NO_OP = ("is_champion", "older_than_champion")


def _file_key(ctx: Any, params: dict[str, Any]) -> str:
    """validate-config's key: the config file's bytes + the overrides + the code version."""
    path = params.get("config_path")
    data = Path(path).read_bytes() if path and Path(path).is_file() else b"<none>"
    blob = data + json.dumps(params.get("overrides") or {}, sort_keys=True).encode() + code_version().encode()
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
    get_run_logger().info("retraining: challenger seeds %s (from flow run %s)", list(new.train.seeds), flow_run_id)
    return {"config": new.to_dict(), "config_hash": new.config_hash(),
            "run_tags": {"challenger": "true", "challenger.flow_run_id": flow_run_id,
                         "challenger.seeds": json.dumps(list(new.train.seeds))}}


@task(name="train", cache_policy=CACHED, retries=2, retry_delay_seconds=exponential_backoff(2), **RESULTS)
def train(config: dict[str, Any], config_hash: str, run_tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Train with MLflow tracking; resumes from the latest checkpoint when retried or re-run after a crash."""
    _fault("train")
    from ppo import tracking
    from ppo.config import confined_path, ppo_home
    from ppo.trainer import PPOTrainer

    log = get_run_logger()
    cfg = _config(config)
    # one folder per config and code version (under the config's checkpoint_dir when it names one): a
    # re-run after a code change trains afresh instead of resuming a checkpoint of other code
    base = confined_path(cfg.train.checkpoint_dir) if cfg.train.checkpoint_dir else ppo_home() / "checkpoints"
    ck = str(base / f"{config_hash}-{code_version()[:8]}")
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"checkpoint_dir": ck})})
    trainer = PPOTrainer(config=cfg, enable_mlflow=True)
    every = max(1, cfg.train.log_frequency)

    def progress(info: dict[str, Any]) -> None:
        m = info["step_metrics"]
        if m["chunk"] % every == 0 or "eval_metrics" in info:
            log.info("episodes %d  env steps %d  avg reward %s  %s steps/s", info["episode"], info["env_steps"],
                     None if m["avg_reward"] is None else round(m["avg_reward"], 1),
                     None if m["env_steps_per_s"] is None else round(m["env_steps_per_s"]))

    result = trainer.train(callback=progress, resume=True)
    if run_tags:
        tracking.set_run_tags(result["run_id"], run_tags)
    log.info("trained: converged=%s episodes=%d env_steps=%d wall %.1f s (resumed from chunk %s)",
             result["converged"], result["episodes"], result["env_steps"], result["wall_time_s"],
             result.get("resumed_from_chunk"))
    return {k: result.get(k) for k in ("run_id", "checkpoint_dir", "config_hash", "converged", "stop_reason",
                                       "episodes", "env_steps", "best_avg_reward", "wall_time_s", "best_seed")} | {
        "final_eval": {k: v for k, v in result["final_eval"].items() if k != "returns"}}


def _checkpoint_key(ctx: Any, params: dict[str, Any]) -> str:
    """evaluate's key: the checkpoint file's digest + the run + the eval settings + the code version."""
    from ppo.checkpoint import checkpoint_digest

    gate_cfg = json.dumps(params["config"].get("gate", {}), sort_keys=True)
    env_cfg = json.dumps(params["config"].get("env", {}), sort_keys=True)
    blob = f"{checkpoint_digest(params['checkpoint_dir'])}|{params['run_id']}|{gate_cfg}|{env_cfg}|{code_version()}"
    return hashlib.sha256(blob.encode()).hexdigest()


@task(name="evaluate", cache_policy=CacheKeyFnPolicy(cache_key_fn=_checkpoint_key) + TASK_SOURCE, retries=1,
      **RESULTS)
def evaluate_candidate(config: dict[str, Any], checkpoint_dir: str, run_id: str) -> dict[str, Any]:
    """Every trained seed on the gate's fresh held-out start states (drawn from the candidate's run id).

    The deployed policy is the seed the trainer picked on its final evaluation (other episodes); the
    other seeds' returns feed the gate's recipe check.
    """
    from ppo.evaluate import evaluate_params_list, gate_seed

    cfg, trainer, meta = _restored(config, checkpoint_dir)
    seed = gate_seed(run_id, cfg.gate.episodes)
    returns = evaluate_params_list(trainer.seed_params, cfg.env.id, cfg.gate.episodes, seed,
                                   cfg.env.max_steps_per_episode)
    best = int(meta.get("best_seed_index", 0))
    get_run_logger().info("evaluated %d seeds x %d fresh episodes (gymnasium seeds from %d): deployed seed %s, "
                          "mean %.1f", *returns.shape, seed, cfg.train.seeds[best], returns[best].mean())
    return {"returns": returns.tolist(), "seeds": list(cfg.train.seeds), "candidate_index": best,
            "eval_seed": seed, "run_id": run_id}


@task(name="fetch-version", cache_policy=NO_CACHE, retries=1, **RESULTS)
def fetch_version(model_name: str, version: str, env_id: str) -> dict[str, Any]:
    """A registered version's run: its training config and final checkpoint (every seed), from MLflow.

    Why the whole checkpoint: re-gating a version checks its recipe (all training seeds), not only the
    one policy that was registered.
    """
    from ppo import tracking
    from ppo.config import ConfigError

    fetched = tracking.fetch_version_run(model_name, version)
    if fetched["config"]["env"]["id"] != env_id:  # the gate's thresholds are the given config's env's
        raise ConfigError(f"{model_name} version {version} was trained on {fetched['config']['env']['id']}, but "
                          f"the gate config is for {env_id}: pass the config of the version's env (-c)")
    get_run_logger().info("%s version %s: run %s, checkpoint in %s", model_name, version, fetched["run_id"],
                          fetched["checkpoint_dir"])
    return fetched


@task(name="gate", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=exponential_backoff(1), **RESULTS)
def gate(config: dict[str, Any], evaluation: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The promotion gate (README, "Promotion rules"); never cached, since the champion moves.

    The candidate's deployed policy and the champion's deployed policy play the same fresh start states;
    a candidate that is the champion's own run, or older than it, is not gated at all (the champion
    never moves backwards).
    """
    import numpy as np

    from ppo import tracking
    from ppo.envs import env_spec
    from ppo.evaluate import evaluate_params_list
    from ppo.stats import gate_decision

    log = get_run_logger()
    cfg = _config(config)
    g = cfg.gate
    margin = g.margin * env_spec(cfg.env.id).return_range(cfg.env.max_steps_per_episode)
    champion = tracking.champion_info(cfg.model_name)
    seed, returns = evaluation["eval_seed"], np.asarray(evaluation["returns"])
    base = {"mode": g.mode, "min_return": g.min_return, "margin": margin, "eval_seed": seed,
            "champion_version": champion["version"] if champion else None}
    if champion is not None and champion["run_id"] == run_id:
        log.info("the candidate is the champion's own run (version %s): nothing to gate", champion["version"])
        return {**base, **_figures(returns, evaluation["candidate_index"]), "passed": False, "status": "is_champion",
                "reason": f"the candidate is already the champion (version {champion['version']})"}
    if champion is not None and tracking.run_start_ms(run_id) < tracking.run_start_ms(champion["run_id"]):
        reason = (f"the candidate's run {run_id} is older than the champion's (version {champion['version']}, run "
                  f"{champion['run_id']}): the champion never moves to an older run")
        log.warning("not gated: %s", reason)
        return {**base, **_figures(returns, evaluation["candidate_index"]), "passed": False,
                "status": "older_than_champion", "reason": reason}
    champion_returns = None
    if champion is not None:
        params, _ = tracking.version_params(cfg.model_name, champion["version"])
        champion_returns = evaluate_params_list([params], cfg.env.id, g.episodes, seed,
                                                cfg.env.max_steps_per_episode)[0]
    decision = gate_decision(returns, evaluation["candidate_index"], champion_returns, min_return=g.min_return,
                             margin=margin, mode=g.mode, min_seeds=g.min_seeds, confidence=g.confidence,
                             n_boot=g.bootstrap_samples, seed=seed)
    decision.update({**base, "status": "passed" if decision["passed"] else "failed",
                     "champion_returns": None if champion_returns is None else champion_returns.tolist()})
    log.info("gate %s: deployed IQM %.1f CI [%.1f, %.1f], mean CI low %.1f, %d/%d seeds reach %g%s",
             "passed" if decision["passed"] else "FAILED", decision["iqm"], decision["ci_low"], decision["ci_high"],
             decision["mean_ci_low"], decision["seeds_reaching"], decision["seeds"], g.min_return,
             "" if decision["passed"] else f" ({decision['reason']})")
    return decision


def _figures(returns: Any, candidate_index: int) -> dict[str, Any]:
    """Plain figures of the deployed policy, for a candidate that is not gated (report and summary)."""
    import numpy as np

    from ppo.stats import iqm

    deployed = np.asarray(returns)[candidate_index]
    return {"iqm": float(iqm(deployed)), "mean": float(deployed.mean()), "ci_low": None, "ci_high": None,
            "episodes": int(deployed.size), "seeds": int(np.asarray(returns).shape[0]),
            "candidate_index": int(candidate_index)}


@task(name="report", cache_policy=CACHED, retries=1, **RESULTS)
def report(config: dict[str, Any], trained: dict[str, Any], evaluation: dict[str, Any],
           decision: dict[str, Any]) -> dict[str, str]:
    """Plots, GIF, report.md/.html → $PPO_HOME/reports/<run id>/, the MLflow run, and Prefect artifacts."""
    import numpy as np

    from ppo import tracking
    from ppo.config import ppo_home
    from ppo.report import write_report

    run_id = trained["run_id"]
    directory = ppo_home() / "reports" / run_id
    if decision.get("status") in NO_OP:
        # not a gate (the run is the champion, or older): its report stays the one written at its own gate
        # (here, or in the MLflow run's report/ folder when this $PPO_HOME never had it)
        get_run_logger().info("report of run %s kept as written at its gate: %s", run_id, directory / "report.html")
        return {"report_md": str(directory / "report.md"), "report_html": str(directory / "report.html")}
    cfg, trainer, full = _restored(config, trained["checkpoint_dir"])
    result = {**trained, "history": full.get("history", [])}
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


def _round(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else ("none" if value is None else value)


@task(name="register", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=exponential_backoff(1), **RESULTS)
def register(model_name: str, run_id: str, decision: dict[str, Any], version: str | None = None) -> str | None:
    """Register the run's model (idempotent per run id) with the gate's figures as version tags.

    The only place that writes model versions. ``version``: the existing version that was re-gated
    (promote-model), which gets the tags. A candidate that was not gated (it is the champion, or older
    than it) changes nothing: its existing version, if any, keeps the tags of its own gate.
    """
    _fault("register")
    from ppo import tracking

    log = get_run_logger()
    if decision.get("status") in NO_OP:
        version = version or tracking.find_version(model_name, run_id)
        log.info("not registered again (%s); its version: %s", decision["reason"], version or "none")
        return version
    version = version or tracking.register_model(run_id, model_name)
    keys = ("passed", "status", "reason", "mode", "iqm", "ci_low", "ci_high", "mean", "mean_ci_low", "min_return",
            "margin", "seeds", "seeds_reaching", "min_seeds", "episodes", "eval_seed", "champion_version", "diff",
            "diff_ci_low", "diff_ci_high")
    tracking.tag_version(model_name, version, {f"gate.{k}": _round(decision.get(k)) for k in keys})
    log.info("registered %s version %s (gate %s)", model_name, version, decision["status"])
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
def promote(model_name: str, version: str | None, decision: dict[str, Any]) -> dict[str, Any]:
    """Move the ``champion`` alias to ``version`` only if the gate passed and the champion is still the one
    the gate compared against (compare-and-set under :func:`promotion_lock`); otherwise report why not."""
    from ppo import tracking

    log = get_run_logger()
    if not decision["passed"] or version is None:
        before = tracking.get_champion(model_name)
        if decision.get("status") == "is_champion":
            log.info("%s@champion stays at version %s (this run)", model_name, before)
        else:
            log.warning("not promoted (%s): %s@champion stays at %s", decision["reason"], model_name,
                        before or "none (no champion yet)")
        return {"promoted": False, "champion": before, "lost_race": False}
    # the champion the gate compared against; None: there was none
    expected = decision.get("champion_version")
    with promotion_lock(model_name):
        before = tracking.get_champion(model_name)
        _fault("promote")
        if before == str(version):  # a concurrent run of the same promotion, or a retry after it succeeded
            return {"promoted": False, "champion": before, "lost_race": False, "already": True}
        if before != expected:
            log.warning("lost the race: %s@champion moved from %s to %s while version %s was gated; "
                        "run promote-model again to gate it against the new champion",
                        model_name, expected, before, version)
            tracking.tag_version(model_name, version, {"promote.lost_race_to": before})
            return {"promoted": False, "champion": before, "lost_race": True}
        tracking.set_champion(model_name, version)
    log.info("%s@champion = version %s (was %s)", model_name, version, before or "none")
    return {"promoted": True, "champion": str(version), "lost_race": False}


def outcome(decision: dict[str, Any], promotion: dict[str, Any]) -> str:
    """One word for what happened, which ``ppo pipeline`` / ``ppo promote`` turn into the exit code:
    promoted, already_champion (0); gated_out, older_than_champion (4); lost_race (5)."""
    if promotion["promoted"]:
        return "promoted"
    if promotion["lost_race"]:
        return "lost_race"
    if decision.get("status") == "is_champion" or promotion.get("already"):
        return "already_champion"
    if decision.get("status") == "older_than_champion":
        return "older_than_champion"
    return "gated_out"
