"""Jitted environment stepping: ``num_steps`` steps of ``num_envs`` envs in one ``lax.scan``.

gymnax auto-resets on episode end; ``info["final_observation"]`` keeps the pre-reset observation, which
is what a truncated step bootstraps from. Each completed episode's return is written into a fixed-size
ring buffer (the convergence window) inside the jitted code, so the host never sees per-step data.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class Transition(NamedTuple):
    obs: jnp.ndarray
    actions: jnp.ndarray
    log_probs: jnp.ndarray
    values: jnp.ndarray
    rewards: jnp.ndarray
    terminated: jnp.ndarray
    dones: jnp.ndarray
    next_obs: jnp.ndarray  # true next observation (pre-reset)


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


def make_rollout(network: Any, env: Any, env_params: Any, num_envs: int, num_steps: int):
    """Return ``rollout(params, env_state, obs, stats, key) -> (env_state, obs, stats, key, traj)``."""
    step_envs = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def rollout(params, env_state, obs, stats: EpisodeStats, key):
        def one_step(carry, _):
            env_state, obs, stats, key = carry
            key, k_action, k_step = jax.random.split(key, 3)
            logits, values = network.apply(params, obs)
            actions = jax.random.categorical(k_action, logits)
            log_probs = jnp.take_along_axis(jax.nn.log_softmax(logits), actions[:, None], axis=-1)[:, 0]
            next_obs, env_state, rewards, terminated, truncated, info = step_envs(
                jax.random.split(k_step, num_envs), env_state, actions, env_params
            )
            dones = jnp.logical_or(terminated, truncated)
            stats = record_episodes(stats, rewards, dones)
            transition = Transition(
                obs,
                actions,
                log_probs,
                values,
                rewards.astype(jnp.float32),
                terminated,
                dones,
                info["final_observation"],
            )
            return (env_state, next_obs, stats, key), transition

        (env_state, obs, stats, key), traj = jax.lax.scan(
            one_step, (env_state, obs, stats, key), None, length=num_steps
        )
        return env_state, obs, stats, key, traj

    return rollout
