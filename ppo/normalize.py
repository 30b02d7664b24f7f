"""Running observation normalisation and reward scaling inside the jitted rollout (SB3 ``VecNormalize``).

Semantics, as Stable-Baselines3's ``VecNormalize`` (and PureJaxRL's normalisation wrappers):

- observations: running mean/variance over every observation the envs return (the reset observations
  included); the policy sees ``clip((obs - mean) / sqrt(var + 1e-8), -10, 10)``. The statistics start at
  mean 0, variance 1, count 1e-4 and are updated with each step's batch (Chan et al.'s parallel formula).
- rewards: a per-env discounted return ``R = gamma * R + r`` (reset to 0 when the episode ends) feeds a
  running variance; the learner sees ``clip(r / sqrt(var + 1e-8), -10, 10)``. Episode returns (logs,
  convergence) stay in raw reward units.

The observation statistics live in the agent's variables as the ``"obs_norm"`` collection (beside
``"params"``), so they are saved in checkpoints, ``agent.save`` files and the registered model, and the
NumPy policy (:mod:`ppo.policy`) applies them, frozen, at evaluation and when serving. The reward
statistics are training state only.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
from jax.typing import ArrayLike

from ppo.policy import NORM_CLIP, NORM_EPS

#: the count the statistics start from (SB3's ``epsilon``): the first batch all but replaces the prior
INITIAL_COUNT = 1e-4


def init_stats(shape: tuple[int, ...]) -> dict[str, jnp.ndarray]:
    """Statistics before any data: mean 0, variance 1."""
    return {
        "mean": jnp.zeros(shape, jnp.float32),
        "var": jnp.ones(shape, jnp.float32),
        "count": jnp.float32(INITIAL_COUNT),
    }


def update_stats(stats: dict[str, jnp.ndarray], batch: ArrayLike) -> dict[str, jnp.ndarray]:
    """Fold a batch (leading axis = samples) into the running mean and (population) variance."""
    batch = jnp.asarray(batch, jnp.float32)
    n = jnp.float32(batch.shape[0])
    batch_mean = batch.mean(axis=0)
    batch_var = batch.var(axis=0)
    delta = batch_mean - stats["mean"]
    total = stats["count"] + n
    mean = stats["mean"] + delta * n / total
    m2 = stats["var"] * stats["count"] + batch_var * n + delta**2 * stats["count"] * n / total
    return {"mean": mean, "var": m2 / total, "count": total}


def normalize_obs(stats: dict[str, jnp.ndarray], obs: ArrayLike) -> jnp.ndarray:
    """What the networks see: standardised and clipped (the NumPy twin is :func:`ppo.policy.normalized`)."""
    z = (jnp.asarray(obs, jnp.float32) - stats["mean"]) / jnp.sqrt(stats["var"] + NORM_EPS)
    return jnp.clip(z, -NORM_CLIP, NORM_CLIP)


class RewardScale(NamedTuple):
    """Reward scaling state: each env's running discounted return and the statistics of those returns."""

    returns: jnp.ndarray  # [num_envs]
    stats: dict[str, jnp.ndarray]  # scalar mean/var/count

    @classmethod
    def create(cls, num_envs: int) -> RewardScale:
        return cls(jnp.zeros(num_envs, jnp.float32), init_stats(()))


def scale_rewards(
    scale: RewardScale, rewards: jnp.ndarray, dones: jnp.ndarray, gamma: float
) -> tuple[RewardScale, jnp.ndarray]:
    """Update the return statistics with this step and return the scaled rewards (SB3's order: update,
    scale, then reset the returns of finished episodes)."""
    returns = scale.returns * gamma + rewards
    stats = update_stats(scale.stats, returns)
    scaled = jnp.clip(rewards / jnp.sqrt(stats["var"] + NORM_EPS), -NORM_CLIP, NORM_CLIP)
    return RewardScale(jnp.where(dones, 0.0, returns), stats), scaled


def observe(variables: dict[str, Any], obs: ArrayLike) -> jnp.ndarray:
    """``obs`` as the networks see it under ``variables``: normalised when they carry ``obs_norm``."""
    obs = jnp.asarray(obs, jnp.float32)
    return normalize_obs(variables["obs_norm"], obs) if "obs_norm" in variables else obs
