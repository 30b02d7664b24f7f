"""The gymnax CartPole used for training equals gymnasium's CartPole-v1 step by step."""

from __future__ import annotations

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

from ppo.envs import CartPoleWrapper, make_jax_env


def test_jax_cartpole_matches_gymnasium_step_by_step():
    env, params = make_jax_env("CartPole-v1")
    genv = gym.make("CartPole-v1").unwrapped
    rng = np.random.default_rng(0)
    step = jax.jit(env.step_env)
    key = jax.random.PRNGKey(0)
    checked = terminations = 0
    for episode in range(20):
        genv.reset(seed=episode)
        for _ in range(500):
            x, x_dot, theta, theta_dot = (float(v) for v in genv.state)
            state = env.reset_env(key, params)[1].replace(
                x=jnp.float32(x), x_dot=jnp.float32(x_dot), theta=jnp.float32(theta),
                theta_dot=jnp.float32(theta_dot))
            action = int(rng.integers(2))
            g_obs, _, g_term, _, _ = genv.step(action)
            j_obs, _, _, j_term, _ = step(key, state, action, params)
            np.testing.assert_allclose(np.asarray(j_obs), g_obs, atol=1e-5)
            assert bool(j_term) == bool(g_term)
            checked += 1
            if g_term:
                terminations += 1
                break
    assert checked > 200 and terminations == 20


def test_truncation_keeps_final_observation_and_is_not_termination():
    env, params = make_jax_env("CartPole-v1", max_steps_per_episode=5)
    key = jax.random.PRNGKey(1)
    obs, state = env.reset(key, params)
    for t in range(5):
        pre = state
        obs, state, reward, terminated, truncated, info = env.step(key, state, 1 if t % 2 else 0, params)
    assert bool(truncated) and not bool(terminated)
    expected = env.step_env(key, pre, 0, params)[0]
    np.testing.assert_allclose(np.asarray(info["final_observation"]), np.asarray(expected))
    assert int(state.time) == 0  # auto-reset happened; obs is the new episode's


def test_cartpole_wrapper_is_real_gymnasium():
    w = CartPoleWrapper()
    obs = w.reset(seed=3)
    assert obs.shape == (4,) and obs.dtype == np.float32
    total, done = 0.0, False
    while not done:
        obs, r, term, trunc, _ = w.step(0)
        total += r
        done = term or trunc
    assert 5 <= total < 100
    assert (w.observation_dim, w.action_dim) == (4, 2)
