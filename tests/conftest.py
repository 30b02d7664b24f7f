"""Shared test set-up: CPU JAX, a per-test $PPO_HOME, one persistent JAX compilation cache per checkout.
Helpers live in ``tests/helpers.py`` (``from tests.helpers import ...``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import ROOT

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# one CPU device in the test session (its own numbers are the single-device baseline); tests/test_sharding.py
# runs the default split (one device per core) in a subprocess
os.environ.setdefault("PPO_CPU_DEVICES", "1")
os.environ.setdefault("PPO_JAX_CACHE", str(ROOT / ".ppo" / "jax-cache-tests"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)
# fresh Prefect state (results, cache records) per test session: a "first run" is really a first run
os.environ["PREFECT_HOME"] = __import__("tempfile").mkdtemp(prefix="ppo-prefect-tests-")


@pytest.fixture
def ppo_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "ppo-home"
    monkeypatch.setenv("PPO_HOME", str(home))
    return home
