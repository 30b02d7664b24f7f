"""Your own environment: a gymnax-style JAX env named by import path trains fully jitted, is evaluated on
its gymnasium twin (or, without one, on itself), and goes through the same pipeline and gate; a config
cannot make the trainer import modules it was not allowed to."""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from examples.point_env import PointEnv, PointGymEnv
from ppo.config import ConfigError, build_config
from ppo.envs import env_spec, make_gymnasium_env
from tests.helpers import ROOT, run_pipeline

EXAMPLE = "examples.point_env:PointEnv"


def test_example_env_matches_its_gymnasium_twin_step_by_step():
    env, params = PointEnv(), PointEnv().default_params
    step = jax.jit(env.step_env)
    template = env.reset_env(jax.random.PRNGKey(0), params)[1]
    genv = PointGymEnv()
    rng = np.random.default_rng(0)
    checked = reached = 0
    for episode in range(20):
        obs, _ = genv.reset(seed=episode)
        for t in range(100):
            state = template.replace(
                position=jnp.asarray(genv.position),
                velocity=jnp.asarray(genv.velocity),
                goal=jnp.asarray(genv.goal),
                time=t,
            )
            np.testing.assert_allclose(np.asarray(env.get_obs(state)), obs, atol=1e-6)
            # half the time push towards the goal, so that episodes also end by reaching it
            action = np.clip(obs[:2] * 5, -1, 1) if rng.random() < 0.5 else rng.uniform(-1.5, 1.5, 2)
            j_obs, _, j_reward, j_term, _ = step(jax.random.PRNGKey(t), state, jnp.asarray(action), params)
            obs, reward, terminated, _, _ = genv.step(action)
            np.testing.assert_allclose(np.asarray(j_obs), obs, atol=1e-6)
            assert float(j_reward) == pytest.approx(reward, abs=1e-5) and bool(j_term) == terminated
            checked += 1
            if terminated:
                reached += 1
                break
    assert checked > 400 and reached >= 5, (checked, reached)


def test_the_spec_is_read_off_the_class():
    spec = env_spec(EXAMPLE)
    assert spec.observation_shape == (4,) and spec.action.n == 2 and not spec.action.discrete
    assert (spec.action.low, spec.action.high) == ((-1.0, -1.0), (1.0, 1.0))
    assert spec.max_episode_steps() == 100 and spec.reward_threshold() == 0.0
    assert spec.return_range(100) == 100.0 and not spec.evaluates_on_jax
    cfg = build_config({"env": {"id": EXAMPLE}})
    assert cfg.gate.min_return == 0.0 and cfg.model_name == "ppo-pointenv"
    real = make_gymnasium_env(EXAMPLE)
    assert real.spec is None or real.spec.max_episode_steps in (None, 100)
    obs, _ = real.reset(seed=3)
    assert obs.shape == (4,)


def test_a_config_cannot_import_modules_it_is_not_allowed_to(monkeypatch):
    monkeypatch.setenv("PPO_USER_ENV_MODULES", "examples")
    for env_id, words in [
        ("os:system", ["os", "not allowed", "PPO_USER_ENV_MODULES"]),
        ("antigravity:x", ["antigravity", "not allowed"]),
        ("examples.point_env:PointGymEnv", ["not a gymnax Environment"]),
        ("examples.point_env:Nope", ["has no 'Nope'"]),
        ("examples.nothing_here:Env", ["cannot import"]),
        ("examples/point_env.py:PointEnv", ["not '<module>:<Class>'"]),
    ]:
        with pytest.raises(ConfigError) as e:
            build_config({"env": {"id": env_id}})
        assert all(w in str(e.value) for w in words), (env_id, str(e.value))
    assert "antigravity" not in sys.modules  # refused before importing anything


class NoTwinPointEnv(PointEnv):
    """The example env without a gymnasium twin: evaluated (and gated) on itself."""

    gymnasium_twin = None


def test_an_env_without_a_twin_is_evaluated_on_itself(monkeypatch, tmp_path):
    from ppo import PPOTrainer
    from ppo.evaluate import evaluate_params_list

    monkeypatch.setenv("PPO_USER_ENV_MODULES", "examples,tests.test_user_env")
    monkeypatch.setenv("PPO_HOME", str(tmp_path))
    env_id = "tests.test_user_env:NoTwinPointEnv"
    assert env_spec(env_id).evaluates_on_jax
    cfg = build_config(
        {
            "env": {"id": env_id, "num_envs": 8},
            "ppo": {"batch_size": 256, "minibatch_size": 128, "epochs_per_update": 2},
            "train": {"max_env_steps": 1024, "seeds": [0], "updates_per_chunk": 2, "eval_episodes": 3},
            "tracking": {"enabled": False},
        }
    )
    trainer = PPOTrainer(config=cfg, enable_mlflow=False)
    trainer.train()
    a = evaluate_params_list([trainer.agent.params], env_id, 6, seed=40)
    b = evaluate_params_list([trainer.agent.params], env_id, 6, seed=40)
    c = evaluate_params_list([trainer.agent.params], env_id, 6, seed=46)
    np.testing.assert_array_equal(a, b)  # seeds name episodes, as on gymnasium
    assert a.shape == (1, 6) and not np.array_equal(a, c)
    assert np.all(a < 15) and np.all(a > -400)


@pytest.mark.slow
def test_the_example_env_goes_through_the_pipeline_to_a_champion(tmp_path):
    env = {**os.environ, "PPO_HOME": str(tmp_path), "PREFECT_HOME": str(tmp_path / "prefect")}
    _, summary = run_pipeline(ROOT / "examples" / "point.yaml", env)
    assert summary["outcome"] == "promoted" and summary["model_name"] == "ppo-pointenv", summary
