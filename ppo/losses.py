"""PPO math: GAE by reverse scan, clipped surrogate, value loss, entropy, diagnostics.

The TD error is ``δ_t = r_t + γ (1 − terminated_t) V(s_{t+1}) − V(s_t)`` where ``s_{t+1}`` is the true
next observation (for a time-limit truncation: the final observation, not the reset one). The GAE trace
is cut at every episode end (terminated or truncated); only termination zeroes the bootstrap.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


def gae(rewards: jnp.ndarray, values: jnp.ndarray, next_values: jnp.ndarray,
        terminated: jnp.ndarray, dones: jnp.ndarray, gamma: float, gae_lambda: float
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


def normalize(x: jnp.ndarray) -> jnp.ndarray:
    """``(x − mean) / std``, and exactly 0 where the spread is only rounding noise.

    Why not ``/ (std + 1e-8)``: in float32 the mean of equal values differs from them by rounding, so the
    centred values and the std are both ~1e-7·|x| and their ratio is ~±1, not 0: a minibatch whose
    advantages are all equal would push the policy as hard as a real signal. A std below float32's
    resolution of the values (relative 1e-5 of their magnitude) counts as zero spread.
    """
    centred = x - x.mean()
    std = jnp.sqrt(jnp.mean(centred**2))
    noise = 1e-5 * jnp.maximum(jnp.max(jnp.abs(x)), 1e-8)
    return jnp.where(std > noise, centred / jnp.where(std > noise, std, 1.0), 0.0)


class LossInfo(NamedTuple):
    total: jnp.ndarray
    policy: jnp.ndarray
    value: jnp.ndarray
    entropy: jnp.ndarray
    approx_kl: jnp.ndarray
    clip_fraction: jnp.ndarray


def ppo_loss(logits: jnp.ndarray, values: jnp.ndarray, actions: jnp.ndarray, old_log_probs: jnp.ndarray,
             advantages: jnp.ndarray, returns: jnp.ndarray, clip_eps: float, value_coef: float,
             entropy_coef: float, normalize_advantages: bool = True) -> LossInfo:
    """``L = −L^CLIP + c1·L^VF − c2·H`` on one minibatch (advantages normalised per minibatch)."""
    log_probs_all = jax.nn.log_softmax(logits)
    log_probs = jnp.take_along_axis(log_probs_all, actions[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if normalize_advantages:
        advantages = normalize(advantages)
    log_ratio = log_probs - old_log_probs
    ratio = jnp.exp(log_ratio)
    surrogate = jnp.minimum(ratio * advantages, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages)
    policy_loss = -surrogate.mean()
    value_loss = jnp.mean((values - returns) ** 2)
    entropy = -jnp.sum(jnp.exp(log_probs_all) * log_probs_all, axis=-1).mean()
    approx_kl = jnp.mean((ratio - 1.0) - log_ratio)
    clip_fraction = jnp.mean((jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32))
    total = policy_loss + value_coef * value_loss - entropy_coef * entropy
    return LossInfo(total, policy_loss, value_loss, entropy, approx_kl, clip_fraction)
