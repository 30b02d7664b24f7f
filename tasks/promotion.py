"""Tasks of the promotion half of the pipeline: (fetch-version) → gate → register → promote, and the
outcome that ``ppo pipeline`` / ``ppo promote`` turn into an exit code (README, "Promotion rules").

Never cached: the champion moves. Only :func:`register` writes model versions, only :func:`promote`
moves the ``champion`` alias (under :func:`promotion_lock`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from tasks._cache import RESULTS
from tasks._faults import fault

#: gate outcomes that are not a gate at all: the candidate is the champion, or older than it
NO_OP = ("is_champion", "older_than_champion")


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
        raise ConfigError(
            f"{model_name} version {version} was trained on {fetched['config']['env']['id']}, but "
            f"the gate config is for {env_id}: pass the config of the version's env (-c)"
        )
    get_run_logger().info(
        "%s version %s: run %s, checkpoint in %s",
        model_name,
        version,
        fetched["run_id"],
        fetched["checkpoint_dir"],
    )
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
    from ppo.config import build_config
    from ppo.envs import env_spec
    from ppo.evaluate import evaluate_params_list
    from ppo.stats import gate_decision

    log = get_run_logger()
    cfg = build_config(config)
    g = cfg.gate
    margin = g.margin * env_spec(cfg.env.id).return_range(cfg.env.max_steps_per_episode)
    champion = tracking.champion_info(cfg.model_name)
    seed, returns = evaluation["eval_seed"], np.asarray(evaluation["returns"])
    base = {
        "mode": g.mode,
        "min_return": g.min_return,
        "margin": margin,
        "eval_seed": seed,
        "champion_version": champion["version"] if champion else None,
    }
    not_gated = None  # (status, reason): the champion never moves to its own run or an older one
    if champion is not None and champion["run_id"] == run_id:
        not_gated = ("is_champion", f"the candidate is already the champion (version {champion['version']})")
        log.info("nothing to gate: %s", not_gated[1])
    elif champion is not None and tracking.run_start_ms(run_id) < tracking.run_start_ms(champion["run_id"]):
        not_gated = (
            "older_than_champion",
            f"the candidate's run {run_id} is older than the champion's (version {champion['version']}, run "
            f"{champion['run_id']}): the champion never moves to an older run",
        )
        log.warning("not gated: %s", not_gated[1])
    if not_gated is not None:
        status, reason = not_gated
        return {
            **base,
            **_figures(returns, evaluation["candidate_index"]),
            "passed": False,
            "status": status,
            "reason": reason,
        }
    champion_returns = None
    if champion is not None:
        from ppo.tracking.registry import BrokenVersionError

        try:
            params, _ = tracking.version_params(cfg.model_name, champion["version"])
        except BrokenVersionError as e:  # its artifacts were deleted: it cannot be played, so not compared
            log.warning(
                "the champion is broken: %s; the candidate is gated on its own (it replaces it if it passes)",
                e,
            )
            base["champion_broken"] = str(e)
        else:
            champion_returns = evaluate_params_list(
                [params], cfg.env.id, g.episodes, seed, cfg.env.max_steps_per_episode
            )[0]
    decision = gate_decision(
        returns,
        evaluation["candidate_index"],
        champion_returns,
        min_return=g.min_return,
        margin=margin,
        mode=g.mode,
        min_seeds=g.min_seeds,
        confidence=g.confidence,
        n_boot=g.bootstrap_samples,
        seed=seed,
    )
    decision.update(
        {
            **base,
            "status": "passed" if decision["passed"] else "failed",
            "champion_returns": None if champion_returns is None else champion_returns.tolist(),
        }
    )
    log.info(
        "gate %s: deployed IQM %.1f CI [%.1f, %.1f], mean CI low %.1f, %d/%d seeds reach %g%s",
        "passed" if decision["passed"] else "FAILED",
        decision["iqm"],
        decision["ci_low"],
        decision["ci_high"],
        decision["mean_ci_low"],
        decision["seeds_reaching"],
        decision["seeds"],
        g.min_return,
        "" if decision["passed"] else f" ({decision['reason']})",
    )
    return decision


def _figures(returns: Any, candidate_index: int) -> dict[str, Any]:
    """Plain figures of the deployed policy, for a candidate that is not gated (report and summary)."""
    import numpy as np

    from ppo.stats import iqm

    deployed = np.asarray(returns)[candidate_index]
    return {
        "iqm": float(iqm(deployed)),
        "mean": float(deployed.mean()),
        "ci_low": None,
        "ci_high": None,
        "episodes": int(deployed.size),
        "seeds": int(np.asarray(returns).shape[0]),
        "candidate_index": int(candidate_index),
    }


def _round(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else ("none" if value is None else value)


@task(
    name="register", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=exponential_backoff(1), **RESULTS
)
def register(
    model_name: str, run_id: str, decision: dict[str, Any], version: str | None = None
) -> str | None:
    """Register the run's model (idempotent per run id) with the gate's figures as version tags.

    The only place that writes model versions. ``version``: the existing version that was re-gated
    (promote-model), which gets the tags. A candidate that was not gated (it is the champion, or older
    than it) changes nothing: its existing version, if any, keeps the tags of its own gate.
    """
    fault("register")
    from ppo import tracking

    log = get_run_logger()
    if decision.get("status") in NO_OP:
        version = version or tracking.find_version(model_name, run_id)
        log.info("not registered again (%s); its version: %s", decision["reason"], version or "none")
        return version
    version = version or tracking.register_model(run_id, model_name)
    keys = (
        "passed",
        "status",
        "reason",
        "mode",
        "iqm",
        "ci_low",
        "ci_high",
        "mean",
        "mean_ci_low",
        "min_return",
        "margin",
        "seeds",
        "seeds_reaching",
        "min_seeds",
        "episodes",
        "eval_seed",
        "champion_version",
        "diff",
        "diff_ci_low",
        "diff_ci_high",
    )
    tracking.tag_version(model_name, version, {f"gate.{k}": _round(decision.get(k)) for k in keys})
    log.info("registered %s version %s (gate %s)", model_name, version, decision["status"])
    return version


#: the lease of a promotion's slot on a Prefect server, renewed while held (the server's minimum)
LEASE_S = 60.0


@contextmanager
def promotion_lock(model_name: str, timeout_s: float = 600.0) -> Iterator[None]:
    """Serialise alias moves for one model across processes and machines; the lock ends with its holder.

    MLflow has no compare-and-set on aliases, hence this lock. Two kinds, by where the Prefect API is:

    - an embedded API (``ppo pipeline`` / ``ppo promote`` without ``PREFECT_API_URL``; every process
      that shares its database shares ``$PREFECT_HOME`` on this machine): an exclusive ``flock`` on
      ``$PREFECT_HOME/locks/promote-<model>.lock``. The kernel releases it when its holder dies, even of
      ``kill -9``. A Prefect concurrency slot would not do here: its lease lives in the memory of the
      dead process's own API server, and no service of an embedded server ever reclaims the slot.
    - a Prefect server (``make serve``, a worker): a global concurrency limit of one slot in the server's
      database, created on first use, held under a lease of :data:`LEASE_S` that the holder renews; when
      the holder dies the lease runs out and the server's repossessor frees the slot.
    """
    if _embedded_api():
        with _file_lock(model_name, timeout_s):
            yield
        return
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
    with concurrency(name, occupy=1, timeout_seconds=timeout_s, lease_duration=LEASE_S, strict=True):
        yield


def _embedded_api() -> bool:
    """Whether this process talks to an embedded Prefect API: Prefect's own temporary one (no API URL)
    or the one ``flows.cli`` started (it names it in ``$PPO_EMBEDDED_PREFECT_API``)."""
    import os

    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    return not api or api == os.environ.get("PPO_EMBEDDED_PREFECT_API")


@contextmanager
def _file_lock(model_name: str, timeout_s: float) -> Iterator[None]:
    """An exclusive ``flock`` on ``$PREFECT_HOME/locks/promote-<model>.lock``, waited for up to
    ``timeout_s`` (polled: a blocking flock could not time out); released on exit or when this process
    dies. The model name is a validated name (letters, digits, '.', '_', '-'), so a safe file name."""
    import fcntl
    import os
    import time

    from prefect.settings import PREFECT_HOME

    path = PREFECT_HOME.value() / "locks" / f"promote-{model_name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"another promotion of {model_name} has held {path} for over {timeout_s:.0f} s"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


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
            log.warning(
                "not promoted (%s): %s@champion stays at %s",
                decision["reason"],
                model_name,
                before or "none (no champion yet)",
            )
        return {"promoted": False, "champion": before, "lost_race": False}
    # the champion the gate compared against; None: there was none
    expected = decision.get("champion_version")
    with promotion_lock(model_name):
        before = tracking.get_champion(model_name)
        fault("promote")
        if before == str(version):  # a concurrent run of the same promotion, or a retry after it succeeded
            return {"promoted": False, "champion": before, "lost_race": False, "already": True}
        if before != expected:
            log.warning(
                "lost the race: %s@champion moved from %s to %s while version %s was gated; "
                "run promote-model again to gate it against the new champion",
                model_name,
                expected,
                before,
                version,
            )
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
