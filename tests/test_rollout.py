"""The rollout -> GAE wiring on real gymnax rollouts with short time limits.

Everything the rollout records is checked against an independent host-side replay: each step's successor is
recomputed with ``env.step_env`` from the state that the recorded observation encodes (CartPole's observation
IS its state; Acrobot's is (cos, sin) of the angles plus the velocities), episode lengths are counted by hand
for the time limit, and the advantages are recomputed by the plain-Python GAE of tests/test_math.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppo.advantages import gae
from ppo.distributions import Categorical
from ppo.envs import env_spec, make_jax_env
from ppo.networks import PPONetwork, init_params
from ppo.rollout import EpisodeStats, make_rollout
from tests.test_math import gae_reference

GAMMA, LAMBDA = 0.99, 0.95


def _state_from_obs(env_id, template, obs):
    """The env state an observation encodes (batched over the leading axis)."""
    obs = jnp.asarray(obs)
    time = jnp.zeros(obs.shape[0], jnp.int32)  # step_env's dynamics do not read the time
    if env_id == "CartPole-v1":
        return template.replace(x=obs[:, 0], x_dot=obs[:, 1], theta=obs[:, 2], theta_dot=obs[:, 3], time=time)
    return template.replace(
        joint_angle1=jnp.arctan2(obs[:, 1], obs[:, 0]),
        joint_angle2=jnp.arctan2(obs[:, 3], obs[:, 2]),
        velocity_1=obs[:, 4],
        velocity_2=obs[:, 5],
        time=time,
    )


def _is_reset_obs(env_id, obs):
    if env_id == "CartPole-v1":
        return np.all(np.abs(obs) <= 0.05 + 1e-7, axis=-1)
    angles = np.stack([np.arctan2(obs[..., 1], obs[..., 0]), np.arctan2(obs[..., 3], obs[..., 2])], -1)
    return np.all(np.abs(angles) <= 0.1 + 1e-6, axis=-1) & np.all(np.abs(obs[..., 4:]) <= 0.1 + 1e-7, axis=-1)


def _rollout(env_id, limit, num_envs, num_steps, window=256, seed=0, ep_return=None, episodes=0):
    env, env_params = make_jax_env(env_id, max_steps_per_episode=limit)
    spec = env_spec(env_id)
    network = PPONetwork(action_dim=spec.action_dim, hidden_sizes=(16, 16))
    params = init_params(network, spec.observation_dim, seed)
    key, k_env = jax.random.split(jax.random.PRNGKey(seed))
    obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_env, num_envs), env_params)
    assert EpisodeStats._fields == ("ep_return", "window", "episodes", "completed", "completed_return")
    # as ppo.program's init_one builds it; ep_return / episodes: as if earlier updates had run
    ep_return = np.zeros(num_envs) if ep_return is None else ep_return
    stats = EpisodeStats(
        ep_return=jnp.asarray(ep_return, jnp.float32),
        window=jnp.zeros(window, jnp.float32),
        episodes=jnp.int32(episodes),
        completed=jnp.int32(0),
        completed_return=jnp.float32(0.0),
    )
    rollout = jax.jit(make_rollout(network, env, env_params, num_envs, num_steps, Categorical()))
    _, end_state, end_obs, end_stats, _, _, traj = rollout(params, env_state, obs, stats, None, key, 0.99)
    return env, env_params, network, params, traj, end_state, end_obs, end_stats


def _replay(env_id, limit, env, env_params, traj):
    """Host-side expectations: true successors, rewards, terminations, truncations, dones."""
    T, N = traj.rewards.shape
    obs, actions = np.asarray(traj.obs), np.asarray(traj.actions)
    template = env.reset_env(jax.random.PRNGKey(0), env_params)[1]
    states = _state_from_obs(env_id, template, obs.reshape(T * N, -1))
    step = jax.jit(jax.vmap(env.step_env, in_axes=(None, 0, 0, None)))
    next_obs, _, rewards, terminated, _ = step(
        jax.random.PRNGKey(0), states, jnp.asarray(actions.reshape(-1)), env_params
    )
    terminated = np.asarray(terminated).reshape(T, N)
    truncated = np.zeros((T, N), bool)
    length = np.zeros(N, int)  # steps taken in the current episode (every env starts from a reset)
    for t in range(T):
        length += 1
        truncated[t] = length >= limit
        length[terminated[t] | truncated[t]] = 0
    return (
        np.asarray(next_obs).reshape(T, N, -1),
        np.asarray(rewards).reshape(T, N),
        terminated,
        truncated,
        length,
    )


CASES = [  # env, time limit, envs, steps; what the trajectory must contain
    pytest.param("CartPole-v1", 5, 8, 15, id="cartpole-limit5"),  # truncations only, also at t = T-1
    pytest.param("CartPole-v1", 25, 8, 40, id="cartpole-limit25"),  # terminations and truncations
    pytest.param("Acrobot-v1", 7, 4, 20, id="acrobot-limit7"),
]


@pytest.mark.parametrize("env_id,limit,num_envs,num_steps", CASES)
def test_rollout_records_true_successors_and_gae_bootstraps_truncations_only(
    env_id, limit, num_envs, num_steps
):
    env, env_params, network, params, traj, end_state, end_obs, _ = _rollout(
        env_id, limit, num_envs, num_steps
    )
    T = num_steps
    exp_next, exp_rewards, exp_term, exp_trunc, length = _replay(env_id, limit, env, env_params, traj)
    obs, next_obs = np.asarray(traj.obs), np.asarray(traj.next_obs)
    dones, terminated = np.asarray(traj.dones), np.asarray(traj.terminated)
    truncated_only = exp_trunc & ~exp_term
    assert truncated_only.any(), "no truncation in this rollout: the case tests nothing"
    if env_id == "CartPole-v1" and limit == 5:
        assert not exp_term.any() and truncated_only[T - 1].all()  # every env truncates on the last step
    if limit == 25:
        assert exp_term.sum() >= 3 and truncated_only.sum() >= 3, (exp_term.sum(), truncated_only.sum())

    # flags: terminated as the env dynamics say, dones = terminated | truncated (the time limit counted
    # by hand)
    np.testing.assert_array_equal(terminated, exp_term)
    np.testing.assert_array_equal(dones, exp_term | exp_trunc)
    np.testing.assert_array_equal(np.asarray(traj.rewards), exp_rewards)
    np.testing.assert_array_equal(np.asarray(end_state.time), length)  # the env's own clock agrees

    # next_obs is the true successor of obs under the action taken, at every step (done or not) ...
    np.testing.assert_allclose(next_obs, exp_next, rtol=0, atol=1e-5)
    # ... which is the next step's obs while the episode goes on ...
    following = np.concatenate([obs[1:], np.asarray(end_obs)[None]])
    np.testing.assert_array_equal(next_obs[~dones], following[~dones])
    # ... and, where the episode ended, not the reset observation that the next step starts from
    assert _is_reset_obs(env_id, following[dones]).all()
    assert (np.abs(next_obs[dones] - following[dones]).max(axis=-1) > 1e-3).all()
    assert not _is_reset_obs(env_id, next_obs[truncated_only]).all()

    # the network's outputs recorded by the rollout
    logits, values = network.apply(params, jnp.asarray(obs))
    np.testing.assert_allclose(np.asarray(traj.values), np.asarray(values), rtol=0, atol=1e-5)
    log_probs = np.take_along_axis(
        np.asarray(jax.nn.log_softmax(logits)), np.asarray(traj.actions)[..., None], axis=-1
    )[..., 0]
    np.testing.assert_allclose(np.asarray(traj.log_probs), log_probs, rtol=0, atol=1e-5)

    # GAE as the update wires it (next values from traj.next_obs) equals the plain-Python reference fed with
    # independently computed successors: truncation bootstraps from V(final obs), termination does not
    next_values = network.apply(params, traj.next_obs, method=PPONetwork.value)
    adv, ret = gae(traj.rewards, traj.values, next_values, traj.terminated, traj.dones, GAMMA, LAMBDA)
    v = np.asarray(values, np.float64)
    v_next_true = np.asarray(
        network.apply(params, jnp.asarray(exp_next), method=PPONetwork.value), np.float64
    )
    ref_adv, ref_ret = gae_reference(
        exp_rewards, v, v_next_true, exp_term, exp_term | exp_trunc, GAMMA, LAMBDA
    )
    np.testing.assert_allclose(np.asarray(adv), ref_adv, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(ret), ref_ret, rtol=1e-4, atol=1e-4)
    # the test can tell: bootstrapping a truncation from the reset observation (obs[t+1]) gives other values
    v_following = np.asarray(
        network.apply(params, jnp.asarray(following), method=PPONetwork.value), np.float64
    )
    wrong_adv, _ = gae_reference(exp_rewards, v, v_following, exp_term, exp_term | exp_trunc, GAMMA, LAMBDA)
    assert np.abs(wrong_adv - ref_adv)[truncated_only].max() > 1e-3


def test_terminated_and_truncated_on_the_same_step_does_not_bootstrap():
    """An episode that terminates exactly on the time limit's last step (gymnax reports both flags)."""
    # a long limit first, to find a CartPole episode that terminates; then the same rollout (same keys, so
    # the same actions up to there) with the limit set to that episode's length
    env, env_params, *_, traj, _, _, _ = _rollout("CartPole-v1", 200, 8, 40)
    terminated = np.asarray(traj.terminated)
    first_t = np.where(terminated.any(axis=0), terminated.argmax(axis=0), 10**9)
    n = int(first_t.argmin())
    assert first_t[n] < 40
    limit = int(first_t[n]) + 1  # steps in env n's first episode
    env, env_params, network, params, traj, *_ = _rollout("CartPole-v1", limit, 8, 40)
    _, exp_rewards, exp_term, exp_trunc, _ = _replay("CartPole-v1", limit, env, env_params, traj)
    t = limit - 1
    assert exp_term[t, n] and exp_trunc[t, n]
    assert bool(traj.terminated[t, n]) and bool(traj.dones[t, n])
    next_values = network.apply(params, traj.next_obs, method=PPONetwork.value)
    adv, _ = gae(traj.rewards, traj.values, next_values, traj.terminated, traj.dones, GAMMA, LAMBDA)
    # the episode's last advantage is r - V(s): no bootstrap, nothing from the next episode
    assert float(adv[t, n]) == pytest.approx(float(traj.rewards[t, n] - traj.values[t, n]), abs=1e-5)
    ref_adv, _ = gae_reference(
        np.asarray(traj.rewards),
        np.asarray(traj.values, np.float64),
        np.asarray(next_values, np.float64),
        exp_term,
        exp_term | exp_trunc,
        GAMMA,
        LAMBDA,
    )
    np.testing.assert_allclose(np.asarray(adv), ref_adv, rtol=1e-4, atol=1e-4)


def _returns_by_hand(rewards, dones, running=None):
    """Completed episode returns in the order the rollout finishes them (time, then env index)."""
    running = np.zeros(rewards.shape[1]) if running is None else np.array(running, np.float64)
    completed = []
    for t in range(rewards.shape[0]):
        running += rewards[t]
        for n in np.flatnonzero(dones[t]):
            completed.append(running[n])
            running[n] = 0.0
    return np.array(completed), running


@pytest.mark.parametrize("env_id,limit", [("CartPole-v1", 15), ("Acrobot-v1", 7)])
def test_episode_returns_in_the_window_are_the_trajectory_sums(env_id, limit):
    *_, traj, _, _, stats = _rollout(env_id, limit, 8, 40, window=256)
    rewards, dones = np.asarray(traj.rewards, np.float64), np.asarray(traj.dones)
    completed, running = _returns_by_hand(rewards, dones)
    k = len(completed)
    assert k >= 8
    if env_id == "CartPole-v1":
        # episodes of different lengths (terminations and truncations): returns are not all equal
        assert len(np.unique(completed)) >= 2
    assert int(stats.episodes) == int(stats.completed) == k
    np.testing.assert_allclose(np.asarray(stats.window[:k]), completed, rtol=0, atol=1e-4)
    assert not np.asarray(stats.window[k:]).any()
    np.testing.assert_allclose(np.asarray(stats.ep_return), running, rtol=0, atol=1e-4)
    assert float(stats.completed_return) == pytest.approx(completed.sum(), abs=1e-3)


@pytest.mark.parametrize(
    "limit,num_steps",
    [
        pytest.param(15, 40, id="staggered-ends"),
        pytest.param(5, 5, id="8-envs-end-together"),  # more episodes end on one step than the window holds
    ],
)
def test_the_window_is_a_ring_of_the_latest_returns(limit, num_steps):
    # episodes already in progress (distinct returns so far) and 7 recorded before: returns differ even
    # where all envs end together, and the ring does not start at slot 0
    start, before = 100.0 * np.arange(8), 7
    *_, traj, _, _, stats = _rollout(
        "CartPole-v1", limit, 8, num_steps, window=5, ep_return=start, episodes=before
    )
    dones = np.asarray(traj.dones)
    completed, _ = _returns_by_hand(np.asarray(traj.rewards, np.float64), dones, running=start)
    k = len(completed)
    assert k > 5 and int(stats.episodes) == before + k and int(stats.completed) == k
    if limit == 5:
        assert (dones.sum(axis=1) == 8).any()
    expected = np.full(5, np.nan)
    for i in range(k - 5, k):  # the episode numbered n sits in slot n % 5; the older ones were overwritten
        expected[(before + i) % 5] = completed[i]
    np.testing.assert_allclose(np.asarray(stats.window), expected, rtol=0, atol=1e-3)
