"""Shared test set-up: CPU JAX, a per-test $PPO_HOME, one persistent JAX compilation cache per checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("PPO_JAX_CACHE", str(ROOT / ".ppo" / "jax-cache-tests"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture
def ppo_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "ppo-home"
    monkeypatch.setenv("PPO_HOME", str(home))
    return home


def small_config(**overrides):
    """A tiny CartPole config shared by the fast tests (one compile per module)."""
    from ppo.config import build_config

    base = {
        "env": {"id": "CartPole-v1", "num_envs": 8},
        "ppo": {"batch_size": 128, "minibatch_size": 64, "epochs_per_update": 2, "learning_rate": 1e-3},
        "train": {"max_episodes": 10**6, "max_env_steps": 128 * 5 * 6, "target_reward": 1e9,
                  "convergence_window": 10, "eval_frequency": 40, "eval_episodes": 3,
                  "updates_per_chunk": 5, "checkpoint_every": 1, "seeds": [0, 1]},
        "tracking": {"enabled": False},
    }
    return build_config(base, overrides)
