"""Brax envs (``env.id: brax/<name>``, the optional ``brax`` extra): the adapter steps exactly as Brax does,
adds the time limit as a truncation, and a CPU smoke test trains ``inverted_pendulum`` and the locomotion
env ``ant`` a few updates through the same trainer, then evaluates them on the Brax env itself.

Brax compiles slowly on CPU (tens of seconds per program), so the budgets here are tiny; learning curves
are a benchmark's job (README, "Brax").
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from ppo.config import ConfigError, build_config

try:
    import brax  # noqa: F401
except ImportError:
    if os.environ.get("CI"):  # CI installs through make install, which has the extra: missing is a failure
        raise
    pytest.skip("the optional extra: pip install -e '.[brax]' (make install has it)", allow_module_level=True)

IP = "brax/inverted_pendulum"


def test_the_adapter_steps_exactly_as_brax_and_truncates_at_the_time_limit():
    import jax
    import jax.numpy as jnp

    from ppo.envs import make_jax_env

    env, params = make_jax_env(IP, max_steps_per_episode=6)
    brax_env = env.brax_env
    key = jax.random.PRNGKey(3)
    obs, state = env.reset(key, params)
    reference = brax_env.reset(key)  # reset_env draws from the key it is given, as Brax's reset does
    np.testing.assert_array_equal(np.asarray(obs), np.asarray(reference.obs))
    step, brax_step = jax.jit(env.step), jax.jit(brax_env.step)
    actions = jnp.asarray([[0.05], [-0.1], [0.1], [0.0], [-0.05], [0.02]], jnp.float32)  # pole stays up
    for t, action in enumerate(actions):
        obs, state, reward, terminated, truncated, info = step(jax.random.PRNGKey(t), state, action, params)
        reference = brax_step(reference, action)
        np.testing.assert_array_equal(np.asarray(info["final_observation"]), np.asarray(reference.obs))
        assert float(reward) == float(reference.reward) == 1.0
        assert bool(terminated) == bool(reference.done) is False
        assert bool(truncated) == (t == 5)  # the 6th step hits the limit: cut, not terminated
    # after the cut the env auto-reset to a fresh start (observations near 0), not the final state
    assert np.abs(np.asarray(obs)).max() <= 0.011
    assert int(state.time) == 0


def test_brax_ids_are_checked_with_clear_errors():
    from ppo.envs import env_spec

    spec = env_spec(IP)
    assert spec.observation_shape == (4,) and spec.action.kind == "continuous" and spec.action.n == 1
    assert spec.evaluates_on_jax and spec.slug == "brax-inverted-pendulum"
    assert spec.reward_threshold() == 950.0 and spec.max_episode_steps() == 1000
    cfg = build_config({"env": {"id": IP}})
    assert cfg.gate.min_return == 950.0 and cfg.registry.model_name in (None, "ppo-brax-inverted-pendulum")
    with pytest.raises(ConfigError, match="unknown Brax env 'no_such_env'.*inverted_pendulum"):
        build_config({"env": {"id": "brax/no_such_env"}})
    with pytest.raises(ConfigError, match="is not 'brax/<name>'"):
        build_config({"env": {"id": "brax/../../etc"}})


@pytest.mark.slow
@pytest.mark.parametrize("env_id", [IP, "brax/ant"])
def test_a_brax_env_trains_through_the_same_code_and_evaluates_on_itself(tmp_path, monkeypatch, env_id):
    from ppo import PPOTrainer
    from ppo.envs import env_spec
    from ppo.evaluate import evaluate_params_list

    monkeypatch.setenv("PPO_HOME", str(tmp_path))
    cfg = build_config(
        {
            "env": {"id": env_id, "num_envs": 4, "normalize_observations": True, "max_steps_per_episode": 50},
            "ppo": {"batch_size": 64, "minibatch_size": 32, "epochs_per_update": 2},
            "train": {"max_env_steps": 128, "seeds": [0], "updates_per_chunk": 2, "eval_episodes": 2},
            "tracking": {"enabled": False},
        }
    )
    trainer = PPOTrainer(config=cfg, enable_mlflow=False)
    result = trainer.train()
    assert result["env_steps"] == 128 and result["stop_reason"] == "max_env_steps"
    act_dim = env_spec(env_id).action.n
    assert trainer.agent.params["params"]["actor"]["log_std"].shape == (act_dim,)
    assert np.all(np.isfinite(result["final_eval"]["per_seed_avg"]))  # greedy episodes on the Brax env
    if env_id != IP:
        return  # ant: each further Brax program costs a minute of compile on CPU; the trainer evaluated it
    returns = evaluate_params_list([trainer.agent.params], env_id, 3, seed=7, max_steps_per_episode=50)
    # +1 per upright step: a return is the episode's length, at most the limit
    assert returns.shape == (1, 3) and np.all((returns >= 1) & (returns <= 50))
