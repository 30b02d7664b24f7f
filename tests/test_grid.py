"""Grid observations (MinAtar): the CNN torso in JAX and in NumPy agree, the agent takes image batches,
and a logged Breakout-MinAtar model takes image observations ``(n, 10, 10, 4)`` (its signature) in a
process that never imports JAX."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppo.config import ConfigError, build_config
from ppo.envs import env_spec
from ppo.networks import PPONetwork, init_params
from ppo.policy import GreedyPolicy
from tests.helpers import tiny_breakout_config


def _breakout_obs(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, 10, 10, 4)) < 0.2).astype(np.float32)


def test_cnn_forward_is_the_same_in_numpy_and_jax():
    network = PPONetwork(action_dim=3, hidden_sizes=(32,), conv_channels=(8, 4), obs_rank=3)
    params = init_params(network, (10, 10, 4), seed=5)
    shapes = jax.tree.map(lambda x: x.shape, params)
    assert shapes["params"]["actor"]["Conv_0"]["kernel"] == (3, 3, 4, 8)
    assert shapes["params"]["actor"]["Dense_0"]["kernel"] == (6 * 6 * 4, 32)
    flax_shapes = jax.tree.map(
        lambda x: x.shape, network.init(jax.random.PRNGKey(0), jnp.zeros((1, 10, 10, 4)))
    )
    assert shapes == flax_shapes  # NumPy's initialisation builds Flax's tree
    obs = _breakout_obs(7)
    logits, values = network.apply(params, jnp.asarray(obs))
    policy = GreedyPolicy(params, env_spec("Breakout-MinAtar").action)
    np.testing.assert_allclose(policy.head(obs), np.asarray(logits), atol=1e-5)
    np.testing.assert_array_equal(policy(obs), np.asarray(logits).argmax(-1))
    # leading batch axes beyond one (the learner's [steps, envs, ...] trajectories) are kept
    stacked = network.apply(params, jnp.asarray(obs.reshape(1, 7, 10, 10, 4)), method=PPONetwork.value)
    np.testing.assert_allclose(np.asarray(stacked)[0], np.asarray(values), atol=1e-5)


def test_agent_takes_image_batches_and_round_trips(tmp_path):
    from ppo.agent import PPOAgent

    agent = PPOAgent(400, 3, (32,), observation_shape=(10, 10, 4), conv_channels=(8,))
    obs = _breakout_obs(4)
    actions = agent.predict(obs)
    assert actions.shape == (4,) and actions.dtype == np.int64
    np.testing.assert_array_equal(agent.predict(obs.reshape(4, -1)), actions)  # flattened grids too
    np.testing.assert_array_equal(agent.predict(obs[0]), actions[:1])  # one observation
    with pytest.raises(ValueError, match=r"\(n, 10, 10, 4\)"):
        agent.predict(np.zeros((4, 10, 10, 3)))
    loaded = PPOAgent.load(agent.save(tmp_path / "a"))
    assert loaded.observation_shape == (10, 10, 4) and loaded.conv_channels == (8,)
    np.testing.assert_array_equal(loaded.predict(obs), actions)


def test_convolutions_need_grid_observations():
    with pytest.raises(ConfigError, match="grid observations"):
        build_config({"env": {"id": "CartPole-v1"}, "ppo": {"conv_channels": [16]}})
    cfg = build_config({"env": {"id": "Breakout-MinAtar"}, "ppo": {"conv_channels": [16]}})
    assert cfg.env.max_steps_per_episode == 1000 and cfg.gate.min_return == 28.0
    assert cfg.model_name == "ppo-breakout-minatar"


def test_logged_breakout_model_takes_image_observations_without_jax(tmp_path, monkeypatch):
    """Trains a few updates, logs the model as the pipeline does, then loads and calls it in a fresh
    interpreter that fails if JAX or Flax is imported."""
    from ppo import PPOTrainer

    monkeypatch.setenv("PPO_HOME", str(tmp_path))
    trainer = PPOTrainer(config=tiny_breakout_config(), enable_mlflow=True)
    result = trainer.train()
    from mlflow.tracking import MlflowClient

    from ppo import tracking

    uri = tracking.default_tracking_uri()
    model_uri = MlflowClient(uri).get_run(result["run_id"]).data.tags["model_uri"]
    obs = _breakout_obs(5, seed=1)
    expected = trainer.agent.predict(obs).tolist()
    script = f"""
import json, sys
import numpy as np
import mlflow
model = mlflow.pyfunc.load_model({model_uri!r})
obs = np.asarray({obs.tolist()}, np.float32)
print(json.dumps({{
    "grid": model.predict(obs).tolist(),
    "inputs": model.metadata.signature.inputs.to_dict(),
    "jax": any(m.split(".")[0] in ("jax", "jaxlib", "flax") for m in sys.modules),
}}))
"""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "MLFLOW_TRACKING_URI": uri}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    reply = json.loads(out.stdout.strip().splitlines()[-1])
    assert reply["grid"] == expected
    assert list(reply["inputs"][0]["tensor-spec"]["shape"]) == [-1, 10, 10, 4]
    assert reply["jax"] is False


def test_the_matmul_convolution_equals_flax_conv():
    """Conv3x3 (im2col + one matmul, fast on CPU) computes exactly what nn.Conv(VALID) computes with the
    same parameters, over extra leading batch axes too."""
    import flax.linen as nn

    from ppo.networks import Conv3x3

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 10, 10, 4))
    ours = Conv3x3(7)
    params = ours.init(jax.random.PRNGKey(1), x)
    reference = nn.Conv(7, (3, 3), padding="VALID").apply(params, x)
    np.testing.assert_allclose(np.asarray(ours.apply(params, x)), np.asarray(reference), atol=1e-5)
