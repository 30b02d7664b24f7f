"""Caching of the pipeline's tasks (README, "The pipeline"): the code version and the cache keys.

Every cached task's key includes the code version, a digest of the sources of ``ppo`` and ``tasks``, so
changing the code invalidates every cache. Results are persisted as JSON (paths, hashes and ids, never
arrays).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CacheKeyFnPolicy, CachePolicy

# the digest of the sources of ppo and tasks (sub-packages included), computed on a task's first cache key,
# once per process; the same function names the checkpoint folder (ppo.checkpoint owns it)
from ppo.checkpoint import code_version

_CODE = CacheKeyFnPolicy(cache_key_fn=lambda ctx, params: code_version())
CACHED = INPUTS + TASK_SOURCE + _CODE
RESULTS = {"persist_result": True, "result_serializer": "json"}


def stale_train_result(result: Any, config: dict[str, Any]) -> str | None:
    """Why a cached ``train`` result can no longer be used, or ``None`` when it can.

    Valid only while what it points to exists and matches: its checkpoint loads (digest checked) and is
    finished, the folder's ``result.json`` names the same run, and that run is live in the store the
    config logs to. An unreachable server raises instead: an outage is not lost state.
    """
    from ppo.checkpoint import RESULT_NAME, CheckpointError, verify_checkpoint
    from ppo.config import build_config

    if not isinstance(result, dict) or not result.get("checkpoint_dir") or not result.get("run_id"):
        return "it names no checkpoint or run"
    folder = Path(result["checkpoint_dir"])
    try:
        meta = verify_checkpoint(folder)
    except (FileNotFoundError, CheckpointError) as e:
        return str(e)
    if not meta.get("finished"):
        return f"the checkpoint in {folder} is not a finished run's"
    try:
        recorded = json.loads((folder / RESULT_NAME).read_text()).get("run_id")
    except (OSError, ValueError):
        recorded = None
    if recorded != result["run_id"]:
        return f"{folder / RESULT_NAME} no longer names run {result['run_id']}"
    from ppo.tracking.store import client, config_store_uri, run_exists

    uri = config_store_uri(build_config(config))
    if not run_exists(client(uri), result["run_id"]):
        return f"MLflow run {result['run_id']} is not in the store {uri or 'of $PPO_HOME'}"
    return None


@dataclass
class ValidResult(CachePolicy):
    """``inner``'s key, as long as the result cached under it is still valid (``check(result, inputs)``
    returns ``None``); a stale one is passed over to the key derived from it and the task runs again.

    Why not a plain key: a Prefect cache key is computed before the task runs and cannot see the result,
    so a cached ``train`` result kept pointing at a run or checkpoint that was lost (an emptied
    ``mlflow.db``, a deleted checkpoint folder) and every re-run failed. The chain of keys (K, then
    sha256(K + the stale result), ...) is deterministic, so the result of the re-run is found again by
    the next run, and nothing in Prefect's storage is deleted or rewritten.
    """

    inner: CachePolicy = field(default_factory=lambda: CACHED)
    check: Callable[[Any, dict[str, Any]], str | None] = lambda result, inputs: None
    max_links: int = 64

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        key = self.inner.compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        if key is None:
            return None
        store = task_ctx.result_store
        for _ in range(self.max_links):
            if not store.exists(key):
                return key
            cached = store.read(key).result
            why = self.check(cached, inputs)
            if why is None:
                return key
            logging.getLogger("ppo.cache").warning(
                "cached %s result is stale (%s): running it again", task_ctx.task.name, why
            )
            blob = key + "|stale|" + json.dumps(cached, sort_keys=True, default=str)
            key = hashlib.sha256(blob.encode()).hexdigest()
        return None  # never cache again rather than loop: the task runs


TRAIN_CACHE = ValidResult(
    inner=CACHED, check=lambda result, inputs: stale_train_result(result, inputs["config"])
)


def file_key(ctx: Any, params: dict[str, Any]) -> str:
    """validate-config's key: the config file's bytes + the overrides + the code version."""
    path = params.get("config_path")
    data = Path(path).read_bytes() if path and Path(path).is_file() else b"<none>"
    blob = data + json.dumps(params.get("overrides") or {}, sort_keys=True).encode() + code_version().encode()
    return hashlib.sha256(blob).hexdigest()


def checkpoint_key(ctx: Any, params: dict[str, Any]) -> str:
    """evaluate's key: the checkpoint file's digest + the run + the eval settings + the code version."""
    from ppo.checkpoint import checkpoint_digest

    gate_cfg = json.dumps(params["config"].get("gate", {}), sort_keys=True)
    env_cfg = json.dumps(params["config"].get("env", {}), sort_keys=True)
    digest = checkpoint_digest(params["checkpoint_dir"])
    blob = f"{digest}|{params['run_id']}|{gate_cfg}|{env_cfg}|{code_version()}"
    return hashlib.sha256(blob.encode()).hexdigest()
