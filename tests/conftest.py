"""Shared test set-up: CPU JAX, a per-test $PPO_HOME, one persistent JAX compilation cache per checkout.

The session's environment is set in :func:`pytest_configure` (before the test modules, and so JAX, are
imported) and restored in :func:`pytest_unconfigure`. Helpers live in ``tests/helpers.py``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.helpers import ROOT

_SAVED_ENV: dict[str, str | None] = {}
_PREFECT_HOME: list[str] = []


def _set_env(key: str, value: str | None, *, default: bool = False) -> None:
    """Set (``value``) or unset (None) ``key`` for the session, remembering the value it had before;
    ``default=True`` leaves a value already set alone (the caller's choice wins)."""
    if default and key in os.environ:
        return
    _SAVED_ENV.setdefault(key, os.environ.get(key))
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


def pytest_configure(config: pytest.Config) -> None:
    _set_env("JAX_PLATFORMS", "cpu", default=True)
    # one CPU device in the test session (its own numbers are the single-device baseline);
    # tests/test_sharding.py runs the default split (one device per core) in a subprocess
    _set_env("PPO_CPU_DEVICES", "1", default=True)
    _set_env("PPO_JAX_CACHE", str(ROOT / ".ppo" / "jax-cache-tests"), default=True)
    _set_env("PREFECT_SERVER_ANALYTICS_ENABLED", "false", default=True)
    _set_env("MLFLOW_TRACKING_URI", None)
    _set_env("PREFECT_API_URL", None)
    # fresh Prefect state (results, cache records) per test session: a "first run" is really a first run
    _PREFECT_HOME.append(tempfile.mkdtemp(prefix="ppo-prefect-tests-"))
    _set_env("PREFECT_HOME", _PREFECT_HOME[-1])
    # the session's own store templates (ppo/store_templates.py): its first new MLflow store and Prefect
    # database become the templates of the ones after, as in a fresh venv; nothing is left in the venv
    _set_env("PPO_STORE_TEMPLATES", str(Path(_PREFECT_HOME[-1]) / "store-templates"), default=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Give the process back its environment as it was before the session (and drop the Prefect state)."""
    for key, value in _SAVED_ENV.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _SAVED_ENV.clear()
    for path in _PREFECT_HOME:
        shutil.rmtree(path, ignore_errors=True)
    _PREFECT_HOME.clear()


@pytest.fixture
def ppo_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "ppo-home"
    monkeypatch.setenv("PPO_HOME", str(home))
    return home


def _watched_env() -> dict[str, str]:
    """The variables that point the code under test at its state and services: a test module that changes
    one must give it back (``monkeypatch`` or ``pytest.MonkeyPatch.context()``), or the next module runs
    against the wrong ``$PPO_HOME`` or server."""
    keys = ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME")
    return {k: v for k, v in os.environ.items() if k.startswith("PPO_") or k in keys}


@pytest.fixture(scope="module", autouse=True)
def _module_restores_environment(request: pytest.FixtureRequest):
    """Fails a module (an error at its teardown) whose tests or fixtures leave ``$PPO_HOME``, ``PPO_*`` or
    the MLflow/Prefect addresses changed: set up before, and torn down after, every module fixture."""
    before = _watched_env()
    yield
    after = _watched_env()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"{request.module.__name__} left the environment changed: {changed}"
