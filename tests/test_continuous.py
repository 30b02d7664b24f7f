"""Continuous actions and normalisation: the Gaussian policy's math, VecNormalize semantics inside the
jitted rollout (checked against a plain-Python reference of SB3's ``RunningMeanStd`` / ``VecNormalize``),
and the NumPy policy that evaluates and serves a continuous, normalised agent exactly as trained."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

from ppo.config import ConfigError, build_config
from ppo.distributions import Categorical, DiagGaussian
from ppo.envs import env_spec, make_jax_env
from ppo.networks import PPONetwork, init_params
from ppo.normalize import RewardScale, init_stats, normalize_obs, update_stats
from ppo.rollout import EpisodeStats, make_rollout


# ---------------------------------------------------------------- distributions
def test_gaussian_log_prob_and_entropy_match_scipy():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(16, 3)).astype(np.float32)
    log_std = np.broadcast_to(np.array([-1.0, 0.0, 0.7], np.float32), mean.shape)
    actions = rng.normal(size=(16, 3)).astype(np.float32) * 2
    dist = DiagGaussian((-1.0,) * 3, (1.0,) * 3)
    got = np.asarray(dist.log_prob((jnp.asarray(mean), jnp.asarray(log_std)), jnp.asarray(actions)))
    want = sps.norm.logpdf(actions, mean, np.exp(log_std)).sum(-1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    ent = np.asarray(dist.entropy((jnp.asarray(mean), jnp.asarray(log_std))))
    np.testing.assert_allclose(ent, sps.norm(0, np.exp(log_std[0])).entropy().sum(), rtol=1e-6)


def test_gaussian_samples_are_unclipped_and_the_env_gets_them_clipped():
    dist = DiagGaussian((-2.0,), (2.0,))
    mean, log_std = jnp.zeros((20000, 1)), jnp.full((20000, 1), math.log(3.0))
    a = dist.sample(jax.random.PRNGKey(0), (mean, log_std))
    assert float(jnp.abs(a).max()) > 2.0  # the learner keeps (and scores) the unclipped sample
    assert abs(float(a.std()) - 3.0) < 0.1 and abs(float(a.mean())) < 0.1
    clipped = np.asarray(dist.env_action(a))
    assert clipped.min() == -2.0 and clipped.max() == 2.0
    assert np.asarray(dist.mode((mean + 5.0, log_std))).max() == 5.0  # the mode is the mean (clip later)


def test_categorical_is_the_softmax_policy():
    logits = jnp.asarray([[0.0, 1.0, -1.0], [2.0, 2.0, 2.0]])
    p = np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum(-1, keepdims=True)
    d = Categorical()
    np.testing.assert_allclose(
        np.asarray(d.log_prob(logits, jnp.asarray([1, 2]))), np.log([p[0, 1], p[1, 2]]), 1e-6
    )
    np.testing.assert_allclose(np.asarray(d.entropy(logits)), -(p * np.log(p)).sum(-1), 1e-6)


# ---------------------------------------------------------------- normalisation: plain-Python references
class RefRunningMeanStd:
    """stable_baselines3.common.running_mean_std.RunningMeanStd, in float64."""

    def __init__(self, shape=()):
        self.mean, self.var, self.count = np.zeros(shape), np.ones(shape), 1e-4

    def update(self, x):
        batch_mean, batch_var, batch_count = x.mean(0), x.var(0), x.shape[0]
        delta = batch_mean - self.mean
        tot = self.count + batch_count
        self.mean = self.mean + delta * batch_count / tot
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / tot
        self.var, self.count = m2 / tot, tot


def test_running_statistics_match_sb3_running_mean_std():
    rng = np.random.default_rng(1)
    ref, stats = RefRunningMeanStd((3,)), init_stats((3,))
    for n in (4, 1, 7, 16):
        batch = rng.normal([1.0, -5.0, 100.0], [0.1, 2.0, 30.0], size=(n, 3))
        ref.update(batch)
        stats = update_stats(stats, jnp.asarray(batch, jnp.float32))
    np.testing.assert_allclose(np.asarray(stats["mean"]), ref.mean, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(stats["var"]), ref.var, rtol=1e-4)
    assert float(stats["count"]) == pytest.approx(ref.count)


def _zero_actor(params):
    """An actor whose output ignores the observation (zero last kernel): the same actions whatever the
    policy sees, so a normalised and a raw rollout with the same keys step the same trajectory."""
    actor = dict(params["params"]["actor"])
    last = max((n for n in actor if n.startswith("Dense_")), key=lambda n: int(n.split("_")[1]))
    actor[last] = {**actor[last], "kernel": np.zeros_like(actor[last]["kernel"])}
    return {"params": {**params["params"], "actor": actor}}


def test_rollout_normalises_like_vecnormalize():
    """Pendulum, 3 envs, 12 steps, time limit 5 (so episodes end inside the rollout): the observations the
    policy saw, the true next observations, the rewards the learner got and the final statistics equal
    SB3 VecNormalize's (reference below) applied to the raw trajectory of the same actions."""
    env_id, num_envs, num_steps, limit, gamma = "Pendulum-v1", 3, 12, 5, 0.9
    env, env_params = make_jax_env(env_id, limit)
    spec = env_spec(env_id)
    network = PPONetwork(action_dim=1, hidden_sizes=(8,), continuous=True, log_std_init=-0.5)
    params = _zero_actor(init_params(network, spec.observation_dim, 0))
    dist = DiagGaussian((-2.0,), (2.0,))
    obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(
        jax.random.split(jax.random.PRNGKey(3), num_envs), env_params
    )
    stats = EpisodeStats(jnp.zeros(num_envs), jnp.zeros(8), jnp.int32(0), jnp.int32(0), jnp.float32(0.0))
    rollout = jax.jit(make_rollout(network, env, env_params, num_envs, num_steps, dist))
    key = jax.random.PRNGKey(7)
    raw_out = rollout(params, env_state, obs, stats, None, key, gamma)
    raw = raw_out[-1]
    # what the envs returned after each step: the next step's observations, then the rollout's end ones
    returned = np.concatenate([np.asarray(raw.obs[1:]), np.asarray(raw_out[2])[None]]).astype(np.float64)
    normed_vars = {**params, "obs_norm": update_stats(init_stats((3,)), obs)}
    out_vars, *_, scale, _, traj = rollout(
        normed_vars, env_state, obs, stats, RewardScale.create(num_envs), key, gamma
    )
    np.testing.assert_array_equal(np.asarray(traj.actions), np.asarray(raw.actions))  # same trajectory

    # the reference: VecNormalize's step_wait over the raw trajectory
    obs_rms, ret_rms = RefRunningMeanStd((3,)), RefRunningMeanStd(())
    obs_rms.update(np.asarray(obs, np.float64))  # reset
    returns = np.zeros(num_envs)

    def norm(x):
        return np.clip((x - obs_rms.mean) / np.sqrt(obs_rms.var + 1e-8), -10, 10)

    raw_obs = np.asarray(obs, np.float64)
    for t in range(num_steps):
        np.testing.assert_allclose(np.asarray(traj.obs[t]), norm(raw_obs), atol=2e-5, err_msg=f"obs {t}")
        rewards, dones = np.asarray(raw.rewards[t], np.float64), np.asarray(raw.dones[t])
        final = np.asarray(raw.next_obs[t], np.float64)  # the true successor (before an auto-reset)
        obs_rms.update(returned[t])
        np.testing.assert_allclose(np.asarray(traj.next_obs[t]), norm(final), atol=2e-5, err_msg=f"next {t}")
        returns = returns * gamma + rewards
        ret_rms.update(returns)
        scaled = np.clip(rewards / np.sqrt(ret_rms.var + 1e-8), -10, 10)
        np.testing.assert_allclose(np.asarray(traj.rewards[t]), scaled, rtol=1e-4, err_msg=f"reward {t}")
        returns[dones] = 0.0
        raw_obs = returned[t]
    assert np.asarray(raw.dones).sum() >= 6  # episodes ended (time limit 5) and were handled
    np.testing.assert_allclose(np.asarray(out_vars["obs_norm"]["mean"]), obs_rms.mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out_vars["obs_norm"]["var"]), obs_rms.var, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(scale.stats["var"]), ret_rms.var, rtol=1e-4)


def test_normalised_observation_is_frozen_and_equal_in_numpy_and_jax():
    from ppo.policy import GreedyPolicy

    rng = np.random.default_rng(0)
    stats = update_stats(init_stats((3,)), jnp.asarray(rng.normal(5.0, 3.0, (64, 3)), jnp.float32))
    x = rng.normal(5.0, 30.0, (10, 3)).astype(np.float32)  # some beyond the clip range
    network = PPONetwork(action_dim=1, hidden_sizes=(8, 8), continuous=True)
    variables = {**init_params(network, 3, 1), "obs_norm": jax.tree.map(np.asarray, stats)}
    (mean_jax, _), _ = network.apply({"params": variables["params"]}, normalize_obs(stats, jnp.asarray(x)))
    policy = GreedyPolicy(variables, env_spec("Pendulum-v1").action)
    np.testing.assert_allclose(policy.head(x), np.asarray(mean_jax), atol=1e-5)
    acts = policy(x * 100)
    assert acts.dtype == np.float32 and acts.shape == (10, 1) and np.abs(acts).max() <= 2.0


# ---------------------------------------------------------------- agent, config
def test_continuous_agent_predicts_bounded_floats_and_round_trips(tmp_path):
    from ppo.agent import PPOAgent

    spec = env_spec("MountainCarContinuous-v0")
    agent = PPOAgent(2, 1, (16,), seed=3, action_space=spec.action, log_std_init=-1.0)
    obs = np.random.default_rng(0).normal(size=(5, 2))
    acts = agent.predict(obs)
    assert acts.shape == (5, 1) and acts.dtype == np.float32 and np.abs(acts).max() <= 1.0
    sampled = agent.predict(obs, deterministic=False, rng=np.random.default_rng(1))
    assert sampled.shape == (5, 1) and not np.allclose(sampled, acts)
    np.testing.assert_allclose(np.asarray(agent.params["params"]["actor"]["log_std"]), [-1.0])
    loaded = PPOAgent.load(agent.save(tmp_path / "a"))
    assert loaded.action_space == spec.action and loaded.log_std_init == -1.0
    np.testing.assert_array_equal(loaded.predict(obs), acts)


@pytest.mark.parametrize(
    "env_id,steps,threshold,name",
    [
        ("MountainCar-v0", 200, -110.0, "ppo-mountaincar"),
        ("MountainCarContinuous-v0", 999, 90.0, "ppo-mountaincar-continuous"),
        ("Pendulum-v1", 200, -200.0, "ppo-pendulum"),
        ("CartPole-v1", 500, 475.0, "ppo-cartpole"),
    ],
)
def test_per_env_defaults_follow_the_env(env_id, steps, threshold, name):
    cfg = build_config({"env": {"id": env_id}})
    assert cfg.env.max_steps_per_episode == steps
    assert cfg.gate.min_return == threshold == cfg.train.target_reward
    assert cfg.model_name == name == cfg.experiment_name
    own = build_config(
        {"env": {"id": env_id, "max_steps_per_episode": 50}, "registry": {"model_name": "mine"}}
    )
    assert own.env.max_steps_per_episode == 50 and own.model_name == "mine"


def test_unknown_env_lists_the_supported_ones():
    with pytest.raises(ConfigError) as e:
        build_config({"env": {"id": "Pendulum-v0"}})
    msg = str(e.value)
    assert "env.id" in msg and "Pendulum-v0" in msg and "Pendulum-v1" in msg and "MountainCar-v0" in msg
