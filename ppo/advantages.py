"""Generalised advantage estimation (GAE) by reverse scan.

The TD error is ``δ_t = r_t + γ (1 − terminated_t) V(s_{t+1}) − V(s_t)`` where ``s_{t+1}`` is the true
next observation (for a time-limit truncation: the final observation, not the reset one). The GAE trace
is cut at every episode end (terminated or truncated); only termination zeroes the bootstrap.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gae(
    rewards: jnp.ndarray,
    values: jnp.ndarray,
    next_values: jnp.ndarray,
    terminated: jnp.ndarray,
    dones: jnp.ndarray,
    gamma: float,
    gae_lambda: float,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Advantages and returns, time on axis 0.

    Args:
        rewards, values: r_t and V(s_t).
        next_values: V(s_{t+1}) of the true next observation of step t.
        terminated: 1 where s_{t+1} is terminal (no bootstrap).
        dones: 1 where the episode ended at step t (terminated or truncated): cuts the trace.
    """
    terminated = terminated.astype(values.dtype)
    dones = dones.astype(values.dtype)
    deltas = rewards + gamma * (1.0 - terminated) * next_values - values

    def backward(next_advantage, x):
        delta, done = x
        advantage = delta + gamma * gae_lambda * (1.0 - done) * next_advantage
        return advantage, advantage

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(deltas[0]), (deltas, dones), reverse=True)
    return advantages, advantages + values
