"""Caching of the pipeline's tasks (README, "The pipeline"): the code version and the cache keys.

Every cached task's key includes the code version, a digest of the sources of ``ppo`` and ``tasks``, so
changing the code invalidates every cache. Results are persisted as JSON (paths, hashes and ids, never
arrays).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CacheKeyFnPolicy

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


_CODE = CacheKeyFnPolicy(cache_key_fn=lambda ctx, params: code_version())
CACHED = INPUTS + TASK_SOURCE + _CODE
RESULTS = {"persist_result": True, "result_serializer": "json"}


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
