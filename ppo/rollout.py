"""Jitted environment stepping: ``num_steps`` steps of ``num_envs`` envs in one ``lax.scan``.

gymnax auto-resets on episode end; ``info["final_observation"]`` keeps the pre-reset observation, which
is what a truncated step bootstraps from. Each completed episode's return is written into a fixed-size
ring buffer (the convergence window) inside the jitted code, so the host never sees per-step data.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ppo.distributions import Distribution
from ppo.normalize import observe, scale_rewards, update_stats


class Transition(NamedTuple):
    obs: jnp.ndarray  # as the networks saw it (normalised when observations are)
    actions: jnp.ndarray
    log_probs: jnp.ndarray
    values: jnp.ndarray
    rewards: jnp.ndarray  # as the learner sees them (scaled when rewards are)
    terminated: jnp.ndarray
    dones: jnp.ndarray
    next_obs: jnp.ndarray  # true next observation (pre-reset), as the networks see it


class EpisodeStats(NamedTuple):
    ep_return: jnp.ndarray  # [num_envs] running return of the current episode
    window: jnp.ndarray  # [convergence_window] ring buffer of completed returns
    episodes: jnp.ndarray  # int32 scalar, completed episodes so far (ring write pointer)
    completed: jnp.ndarray  # int32, episodes completed during the current update
    completed_return: jnp.ndarray  # float, sum of their returns


def ring_slots(episodes: jnp.ndarray, dones: jnp.ndarray, window_size: int) -> jnp.ndarray:
    """Ring-buffer index for each env's finished episode this step; an index >= ``window_size`` (dropped,
    and distinct like the written ones, as ``unique_indices`` promises XLA) otherwise.

    Episodes ending on one step are numbered in env order after the ``episodes`` already recorded. Only
    the last ``window_size`` of them are written: when more episodes end in one step than the window
    holds, the earlier ones would wrap onto the same slots, and XLA leaves the result of a scatter with
    colliding indices undefined. The written indices are therefore always distinct.
    """
    number = episodes + jnp.cumsum(dones.astype(jnp.int32)) - 1
    newest = episodes + dones.sum(dtype=jnp.int32) - 1
    keep = dones & (number > newest - window_size)
    dropped = window_size + jnp.arange(dones.shape[0], dtype=number.dtype)  # out of bounds, and distinct too
    return jnp.where(keep, number % window_size, dropped)


def record_episodes(stats: EpisodeStats, rewards: jnp.ndarray, dones: jnp.ndarray) -> EpisodeStats:
    """Add one step's rewards; push the returns of envs whose episode ended into the ring buffer."""
    ep_return = stats.ep_return + rewards
    window_size = stats.window.shape[0]
    index = ring_slots(stats.episodes, dones, window_size)
    window = stats.window.at[index].set(ep_return, mode="drop", unique_indices=True)
    n_done = dones.sum(dtype=jnp.int32)
    return EpisodeStats(
        ep_return=jnp.where(dones, 0.0, ep_return),
        window=window,
        episodes=stats.episodes + n_done,
        completed=stats.completed + n_done,
        completed_return=stats.completed_return + jnp.sum(jnp.where(dones, ep_return, 0.0)),
    )


def after_step(
    variables: dict[str, Any],
    stats: EpisodeStats,
    reward_scale: Any,
    rewards: jnp.ndarray,
    dones: jnp.ndarray,
    next_obs: jnp.ndarray,
    final_obs: jnp.ndarray,
    gamma: float,
) -> tuple[dict[str, Any], EpisodeStats, Any, jnp.ndarray, jnp.ndarray]:
    """The books of one env step, shared by the jitted rollout and the host-env path
    (:mod:`ppo.host_program`): episode returns (raw rewards), the observation statistics (with the
    observations the envs returned), the reward scale. Returns ``(variables, stats, reward_scale,
    learner_rewards, final_obs as the networks see it)``."""
    rewards = rewards.astype(jnp.float32)
    stats = record_episodes(stats, rewards, dones)  # raw rewards: returns in the env's units
    if "obs_norm" in variables:
        variables = {**variables, "obs_norm": update_stats(variables["obs_norm"], next_obs)}
    learner_rewards = rewards
    if reward_scale is not None:
        reward_scale, learner_rewards = scale_rewards(reward_scale, rewards, dones, gamma)
    return variables, stats, reward_scale, learner_rewards, observe(variables, final_obs)


def act(network: Any, dist: Any, variables: dict[str, Any], obs: jnp.ndarray, key: jax.Array) -> tuple:
    """One policy step on a batch of raw observations: ``(seen, actions, log_probs, values)``, where
    ``seen`` is what the networks saw (normalised when observations are)."""
    seen = observe(variables, obs)
    pi, values = network.apply({"params": variables["params"]}, seen)
    actions = dist.sample(key, pi)
    return seen, actions, dist.log_prob(pi, actions), values


def make_rollout(
    network: Any,
    env: Any,
    env_params: Any,
    num_envs: int,
    num_steps: int,
    dist: Distribution,
):
    """Return ``rollout(variables, env_state, obs, stats, reward_scale, key, gamma) -> (variables,
    env_state, obs, stats, reward_scale, key, traj)`` (``gamma``: the row's discount, for reward scaling).

    ``variables`` are the agent's (``params``, and ``obs_norm`` when observations are normalised: its
    statistics are updated with every step's observations, so they come back changed). ``reward_scale`` is
    a :class:`ppo.normalize.RewardScale` when rewards are scaled, else ``None``. The trajectory holds what
    the learner needs: observations as the networks saw them, the scaled rewards, and each step's true
    next observation, normalised with the statistics of that step (what SB3's VecNormalize hands over).
    """
    step_envs = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def rollout(variables, env_state, obs, stats: EpisodeStats, reward_scale, key, gamma):
        def one_step(carry, _):
            variables, env_state, obs, stats, reward_scale, key = carry
            key, k_action, k_step = jax.random.split(key, 3)
            seen, actions, log_probs, values = act(network, dist, variables, obs, k_action)
            next_obs, env_state, rewards, terminated, truncated, info = step_envs(
                jax.random.split(k_step, num_envs), env_state, dist.env_action(actions), env_params
            )
            dones = jnp.logical_or(terminated, truncated)
            variables, stats, reward_scale, learner_rewards, seen_final = after_step(
                variables, stats, reward_scale, rewards, dones, next_obs, info["final_observation"], gamma
            )
            transition = Transition(
                seen, actions, log_probs, values, learner_rewards, terminated, dones, seen_final
            )
            return (variables, env_state, next_obs, stats, reward_scale, key), transition

        carry = (variables, env_state, obs, stats, reward_scale, key)
        carry, traj = jax.lax.scan(one_step, carry, None, length=num_steps)
        return (*carry, traj)

    return rollout
