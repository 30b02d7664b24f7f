"""The gymnax envs used for training equal their gymnasium twins (CartPole-v1, Acrobot-v1) step by step."""

from __future__ import annotations

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
                x=jnp.float32(x),
                x_dot=jnp.float32(x_dot),
                theta=jnp.float32(theta),
                theta_dot=jnp.float32(theta_dot),
            )
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


def test_jax_acrobot_matches_gymnasium_step_by_step_through_terminations():
    """gymnax's Acrobot against gymnasium's, one step at a time from gymnasium's own state.

    Both implement the "book" dynamics with ONE classic RK4 step of dt=0.2 (gymnasium calls
    ``rk4(_dsdt, s, [0, dt])``: a single step), wrap the angles, clip the velocities to 4pi / 9pi,
    terminate when ``-cos(t1) - cos(t1 + t2) > 1`` and reward -1 per step, 0 on termination.
    Differences: gymnasium integrates in float64 (its state becomes float64 after the first step), gymnax
    in float32 from a float32 copy of that state; gymnax always draws torque noise, uniform in
    [-torque_noise_max, torque_noise_max] = [0, 0] by default, gymnasium only when torque_noise_max > 0;
    gymnax wraps angles into [-pi, pi), gymnasium into [-pi, pi]: only an angle of exactly +pi differs,
    and not in the observation (cos/sin).
    Tolerance: float32 rounding of the state (|v| <= 9pi ~ 28, eps 1.2e-7: ~3e-6) plus float32 arithmetic
    in one RK4 step gave max errors of ~3e-7 (cos/sin) and ~1.5e-6 (velocities) over these episodes;
    atol 2e-5 leaves >10x headroom while a dynamics slip is far above it (the "nips" variant of the
    equations differs by ~0.5 in cos/sin and ~10 in velocity on these steps).
    """
    env, params = make_jax_env("Acrobot-v1")
    assert float(params.torque_noise_max) == 0.0 and float(params.dt) == 0.2
    genv = gym.make("Acrobot-v1").unwrapped
    assert genv.torque_noise_max == 0.0 and genv.book_or_nips == "book" and genv.dt == 0.2
    rng = np.random.default_rng(0)
    step = jax.jit(env.step_env)
    key = jax.random.PRNGKey(0)
    template = env.reset_env(key, params)[1]
    checked = terminations = near_boundary = 0
    actions_seen = set()
    for episode in range(10):
        genv.reset(seed=episode)
        for t in range(500):
            s = np.asarray(genv.state, dtype=np.float64)
            state = template.replace(
                joint_angle1=jnp.float32(s[0]),
                joint_angle2=jnp.float32(s[1]),
                velocity_1=jnp.float32(s[2]),
                velocity_2=jnp.float32(s[3]),
                time=jnp.int32(t),
            )
            # energy pumping: torque along the second joint's angular velocity swings the tip up in ~100
            # steps (random actions rarely reach the line); one action in five is random (zero torque too)
            action = (2 if s[3] > 0 else 0) if rng.random() >= 0.2 else int(rng.integers(3))
            actions_seen.add(action)
            g_obs, g_reward, g_term, _, _ = genv.step(action)
            j_obs, _, j_reward, j_term, _ = step(key, state, action, params)
            np.testing.assert_allclose(
                np.asarray(j_obs),
                g_obs,
                rtol=0,
                atol=2e-5,
                err_msg=f"episode {episode} step {t} action {action}",
            )
            ns = genv.state
            height = -np.cos(ns[0]) - np.cos(ns[0] + ns[1])
            if abs(height - 1.0) < 1e-5:  # float32 vs float64 may legitimately disagree on the line itself
                near_boundary += 1
            else:
                assert bool(j_term) == bool(g_term), (episode, t, height)
                assert float(j_reward) == g_reward, (episode, t, float(j_reward), g_reward)
            checked += 1
            if g_term:
                terminations += 1
                break
    assert terminations >= 8 and checked > 500 and near_boundary <= 1, (terminations, checked, near_boundary)
    assert actions_seen == {0, 1, 2}


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


def _twin_episodes(env_id, set_state, action_of, episodes, atol, reward_atol=1e-4):
    """Step gymnax's ``env_id`` from gymnasium's own state each step (so float32/float64 drift never
    accumulates) with the same action, comparing observation, reward and termination. Returns (steps,
    terminations)."""
    env, params = make_jax_env(env_id)
    genv = gym.make(env_id).unwrapped
    step = jax.jit(env.step_env)
    key = jax.random.PRNGKey(0)
    template = env.reset_env(key, params)[1]
    rng = np.random.default_rng(0)
    checked = terminations = 0
    for episode in range(episodes):
        genv.reset(seed=episode)
        for t in range(gym.spec(env_id).max_episode_steps):
            state = set_state(template, np.asarray(genv.state, dtype=np.float64), t)
            action = action_of(rng, np.asarray(genv.state))
            g_obs, g_reward, g_term, _, _ = genv.step(action)
            j_obs, _, j_reward, j_term, _ = step(key, state, jnp.asarray(action), params)
            np.testing.assert_allclose(np.asarray(j_obs), g_obs, rtol=0, atol=atol, err_msg=f"{episode}/{t}")
            np.testing.assert_allclose(float(j_reward), g_reward, rtol=1e-5, atol=reward_atol)
            assert bool(j_term) == bool(g_term), (episode, t)
            checked += 1
            if g_term:
                terminations += 1
                break
    return checked, terminations


def test_jax_mountaincar_matches_gymnasium_step_by_step():
    """Both clip the velocity to 0.07 and the position to [-1.2, 0.6] (velocity zeroed at the left wall),
    reward -1 per step, terminate at position >= 0.5. A policy pushing along the velocity reaches the flag
    in ~100 steps, so terminations are checked too."""

    def set_state(template, s, t):
        return template.replace(position=jnp.float32(s[0]), velocity=jnp.float32(s[1]), time=jnp.int32(t))

    def action_of(rng, s):
        return (2 if s[1] >= 0 else 0) if rng.random() >= 0.2 else int(rng.integers(3))

    checked, terminations = _twin_episodes("MountainCar-v0", set_state, action_of, 10, atol=1e-6)
    assert checked > 500 and terminations >= 8, (checked, terminations)


def test_jax_continuous_mountaincar_matches_gymnasium_step_by_step():
    """Force clipped to [-1, 1]; reward -0.1 a^2 per step (of the action as given, which PPO clips
    first) and +100 at the flag."""

    def set_state(template, s, t):
        return template.replace(position=jnp.float32(s[0]), velocity=jnp.float32(s[1]), time=jnp.int32(t))

    def action_of(rng, s):
        push = 1.0 if s[1] >= 0 else -1.0
        return np.array([push if rng.random() >= 0.2 else rng.uniform(-1, 1)], np.float32)

    checked, terminations = _twin_episodes("MountainCarContinuous-v0", set_state, action_of, 8, atol=1e-6)
    assert checked > 400 and terminations >= 6, (checked, terminations)


def test_jax_pendulum_matches_gymnasium_step_by_step():
    """Torque clipped to +-2, speed to +-8, reward -(angle^2 + 0.1 thetadot^2 + 0.001 u^2) of the state
    before the step; observation (cos, sin, thetadot). Never terminates (time limit 200 only)."""

    def set_state(template, s, t):
        return template.replace(theta=jnp.float32(s[0]), theta_dot=jnp.float32(s[1]), time=jnp.int32(t))

    def action_of(rng, s):
        return np.array([rng.uniform(-2.5, 2.5)], np.float32)  # some beyond the bounds: both clip

    checked, terminations = _twin_episodes(
        "Pendulum-v1", set_state, action_of, 3, atol=2e-5, reward_atol=1e-3
    )
    assert checked == 600 and terminations == 0


def test_every_env_in_the_table_has_a_gymnax_twin_with_the_same_spaces():
    from ppo.envs import ENV_SPECS, make_gymnasium_env
    from ppo.spaces import ActionSpace

    for env_id, spec in ENV_SPECS.items():
        if spec.host:  # no JAX implementation (LunarLander): tests/test_host_envs.py
            continue
        env, params = make_jax_env(env_id)
        genv = make_gymnasium_env(env_id)
        assert spec.observation_shape == genv.observation_space.shape == env.observation_space(params).shape
        assert ActionSpace.from_gymnasium(genv.action_space) == spec.action, env_id
        assert int(params.max_steps_in_episode) == genv.spec.max_episode_steps == spec.max_episode_steps()
        genv.close()


def _breakout_state(template, g, t):
    return template.replace(
        ball_y=jnp.int32(g.ball_y),
        ball_x=jnp.int32(g.ball_x),
        ball_dir=jnp.int32(g.ball_dir),
        pos=jnp.int32(g.pos),
        brick_map=jnp.asarray(g.brick_map, jnp.float32),
        strike=jnp.bool_(g.strike),
        last_y=jnp.int32(g.last_y),
        last_x=jnp.int32(g.last_x),
        time=jnp.int32(t),
        terminal=jnp.bool_(g.terminal),
    )


def _space_invaders_state(template, g, t):
    return template.replace(
        pos=jnp.int32(g.pos),
        f_bullet_map=jnp.asarray(g.f_bullet_map, jnp.float32),
        e_bullet_map=jnp.asarray(g.e_bullet_map, jnp.float32),
        alien_map=jnp.asarray(g.alien_map, jnp.float32),
        alien_dir=jnp.int32(g.alien_dir),
        enemy_move_interval=jnp.int32(g.enemy_move_interval),
        alien_move_timer=jnp.int32(g.alien_move_timer),
        alien_shot_timer=jnp.int32(g.alien_shot_timer),
        ramp_index=jnp.int32(g.ramp_index),
        shot_timer=jnp.int32(g.shot_timer),
        ramping=jnp.bool_(g.ramping),
        time=jnp.int32(t),
        terminal=jnp.bool_(g.terminal),
    )


@pytest.mark.parametrize(
    "env_id,set_state,episodes",
    [("Breakout-MinAtar", _breakout_state, 8), ("SpaceInvaders-MinAtar", _space_invaders_state, 8)],
)
def test_jax_minatar_matches_the_real_minatar_step_by_step(env_id, set_state, episodes):
    """gymnax's MinAtar game against the real ``minatar`` package, exactly the env evaluation plays
    (``make_gymnasium_env``: MinAtar/<game>-v1, minimal action set, no sticky actions): before every step
    gymnax's state is set from the real game object, then both take the same action; observation
    (gymnax float 0/1 vs minatar bool), reward and game over must agree. Random actions, with the paddle
    following the ball 95% of the time in Breakout so that bricks are hit and episodes run long. (Asterix
    and Freeway draw their random spawns from numpy in minatar and from JAX keys in gymnax: the same
    distributions, not the same draws; their dynamics are checked by the research script noted in the
    README's Environments section.)"""
    from ppo.envs import make_gymnasium_env

    env, params = make_jax_env(env_id)
    real = make_gymnasium_env(env_id)
    game = real.unwrapped.game
    step = jax.jit(env.step_env)
    template = env.reset_env(jax.random.PRNGKey(0), params)[1]
    rng = np.random.default_rng(0)
    checked = rewards = ends = 0
    for episode in range(episodes):
        obs, _ = real.reset(seed=episode)
        np.testing.assert_array_equal(np.asarray(env.get_obs(set_state(template, game.env, 0))), obs)
        for t in range(1000):
            g = game.env
            if env_id == "Breakout-MinAtar" and rng.random() < 0.95:
                target = min(9, max(0, g.ball_x + (1 if g.ball_dir in (1, 2) else -1)))
                action = 1 if target < g.pos else (2 if target > g.pos else 0)
            else:
                action = int(rng.integers(real.action_space.n))
            state = set_state(template, g, t)
            j_obs, _, j_reward, j_term, _ = step(jax.random.PRNGKey(t), state, action, params)
            obs, reward, terminated, truncated, _ = real.step(action)
            np.testing.assert_array_equal(np.asarray(j_obs), obs.astype(np.float32), err_msg=f"{episode}/{t}")
            assert float(j_reward) == reward and bool(j_term) == terminated, (episode, t)
            checked += 1
            rewards += reward > 0
            if terminated or truncated:
                ends += 1
                break
    assert checked > 250 and rewards > 15 and ends == episodes, (checked, rewards, ends)
