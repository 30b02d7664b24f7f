"""Champions of other action and observation spaces over HTTP, served by ``ppo serve``:

- Pendulum-v1 (continuous actions, normalised observations) answers float32 torques of shape (n, 1)
  within the bounds, equal to ``PPOAgent.predict`` (so the served model applies the frozen observation
  statistics exactly as in training), and its signature says so;
- Breakout-MinAtar (a CNN on 10x10x4 grids) takes image observations and answers int64 actions."""

from __future__ import annotations

import json
import sys
import urllib.request

import numpy as np
import pytest

from ppo import PPOTrainer, tracking
from ppo.config import build_config
from tests.helpers import Background, free_port, register_passed, tiny_breakout_config, venv_env, wait_http

pytestmark = pytest.mark.integration


def test_served_pendulum_answers_float_actions_like_the_agent(tmp_path, monkeypatch):
    monkeypatch.setenv("PPO_HOME", str(tmp_path))
    cfg = build_config(
        {
            "env": {
                "id": "Pendulum-v1",
                "num_envs": 8,
                "normalize_observations": True,
                "normalize_rewards": True,
            },
            "ppo": {"batch_size": 256, "minibatch_size": 128, "epochs_per_update": 2, "gamma": 0.9},
            "train": {"max_env_steps": 256 * 6, "seeds": [0], "updates_per_chunk": 3, "eval_episodes": 2},
        }
    )
    trainer = PPOTrainer(config=cfg, enable_mlflow=True)
    run_id = trainer.train()["run_id"]
    assert "obs_norm" in trainer.agent.params  # the statistics travel with the model
    version = register_passed(run_id, "ppo-pendulum")
    uri = f"models:/ppo-pendulum/{version}"
    tracking.client()
    import mlflow

    outputs = mlflow.models.get_model_info(uri).signature.outputs.to_dict()
    assert outputs == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, 1)}}]

    obs = _pendulum_obs()
    predictions = np.asarray(_serve_and_ask(uri, tmp_path, obs), np.float32)
    assert predictions.shape == (6, 1) and np.abs(predictions).max() <= 2.0
    np.testing.assert_allclose(predictions, trainer.agent.predict(obs), rtol=1e-6)


def _pendulum_obs() -> np.ndarray:
    return (np.random.default_rng(0).normal(size=(6, 3)) * [1, 1, 5]).astype(np.float32)


def test_served_breakout_takes_image_observations(tmp_path, monkeypatch):
    monkeypatch.setenv("PPO_HOME", str(tmp_path))
    trainer = PPOTrainer(config=tiny_breakout_config(), enable_mlflow=True)
    version = register_passed(trainer.train()["run_id"], "ppo-breakout-minatar")
    obs = (np.random.default_rng(2).random((5, 10, 10, 4)) < 0.2).astype(np.float32)
    predictions = _serve_and_ask(f"models:/ppo-breakout-minatar/{version}", tmp_path, obs)
    assert predictions == trainer.agent.predict(obs).tolist() and all(isinstance(a, int) for a in predictions)


def _serve_and_ask(uri: str, home, obs: np.ndarray) -> list:
    """Start ``ppo serve`` for ``uri``, POST ``obs`` to /invocations, stop it; the predictions."""
    port = free_port()
    server = Background(
        [sys.executable, "-m", "ppo.cli", "serve", "--model", uri, "--port", str(port)],
        home / "serve.log",
        env=venv_env(PPO_HOME=str(home)),
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", timeout=120, proc=server.proc)
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": obs.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())["predictions"]
    finally:
        server.stop()
