"""``ppo.activation``: tanh (the default, PureJaxRL's and SB3's) or ReLU (gymnax-blines' MinAtar agents).

The NumPy forward (evaluation, the gate, the served model) reads the activation from the agent's variables,
which travel alone (checkpoints, registered models); a tanh agent's variables and config hash are exactly
what they were before the option existed."""

from __future__ import annotations

import numpy as np
import pytest

from ppo.agent import PPOAgent
from ppo.config import ConfigError, build_config
from ppo.networks import PPONetwork, init_params
from ppo.policy import GreedyPolicy
from ppo.spaces import ActionSpace


@pytest.mark.parametrize("continuous", [False, True])
def test_the_numpy_policy_applies_the_networks_activation(continuous):
    action = (
        ActionSpace("continuous", 2, (-1.0, -1.0), (1.0, 1.0)) if continuous else ActionSpace("discrete", 3)
    )
    obs = np.random.default_rng(0).uniform(-3, 3, (64, 10, 10, 4)).astype(np.float32)
    out = {}
    for activation in ("tanh", "relu"):
        net = PPONetwork(3 if not continuous else 2, (32, 32), continuous, obs_rank=3, activation=activation)
        variables = init_params(net, (10, 10, 4), seed=1)
        assert ("activation" in variables) == (activation == "relu")  # tanh trees are as before
        pi, _ = net.apply({"params": variables["params"]}, obs)
        jax_head = np.asarray(pi[0] if continuous else pi)
        policy = GreedyPolicy(variables, action)
        np.testing.assert_allclose(policy.head(obs), jax_head, rtol=1e-5, atol=1e-5)
        out[activation] = jax_head
    assert not np.allclose(out["tanh"], out["relu"])  # the option changes the function


def test_a_relu_agent_saves_and_loads_its_activation(tmp_path):
    agent = PPOAgent(400, 3, (32,), seed=2, observation_shape=(10, 10, 4), activation="relu")
    obs = np.random.default_rng(1).integers(0, 2, (16, 10, 10, 4)).astype(np.float32)
    loaded = PPOAgent.load(agent.save(tmp_path / "agent"))
    assert loaded.activation == "relu" and int(loaded.params["activation"]) == 1
    np.testing.assert_array_equal(loaded.predict(obs), agent.predict(obs))


def test_the_default_keeps_the_config_hash_and_a_bad_value_is_named():
    # the hashes of the defaults and of configs/cartpole.yaml before ppo.activation existed (commit fb1d3fe)
    assert build_config({}).config_hash() == "0df9976822ebf3c2"
    assert build_config({"ppo": {"activation": "relu"}}).config_hash() != "0df9976822ebf3c2"
    with pytest.raises(ConfigError, match="ppo.activation.*sigmoid"):
        build_config({"ppo": {"activation": "sigmoid"}})


def test_relu_trains_through_the_program_and_its_variables_reach_evaluation(tmp_path, monkeypatch):
    from ppo import PPOTrainer

    monkeypatch.setenv("PPO_HOME", str(tmp_path))
    cfg = build_config(
        {
            "env": {"id": "CartPole-v1", "num_envs": 4},
            "ppo": {"batch_size": 64, "minibatch_size": 64, "epochs_per_update": 1, "activation": "relu"},
            "train": {"max_env_steps": 256, "seeds": [0, 1], "updates_per_chunk": 2, "eval_episodes": 2},
            "tracking": {"enabled": False},
        }
    )
    trainer = PPOTrainer(config=cfg, enable_mlflow=False)
    trainer.train()
    params = trainer.seed_params[0]
    assert int(np.asarray(params["activation"])) == 1  # carried through vmap, sharding and the chunks
    assert (
        trainer.agent.activation == "relu"
        and GreedyPolicy(params, ActionSpace("discrete", 2)).activation == "relu"
    )
    restored = PPOTrainer(config=cfg, enable_mlflow=False)
    restored.restore()  # the checkpoint holds it too
    assert int(np.asarray(restored.seed_params[1]["activation"])) == 1
