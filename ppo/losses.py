"""PPO math on one minibatch: clipped surrogate, value loss, entropy, diagnostics, advantage normalisation.

The advantages come from :func:`ppo.advantages.gae`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from ppo.distributions import Categorical, Distribution


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


def ppo_loss(
    pi: Any,
    values: jnp.ndarray,
    actions: jnp.ndarray,
    old_log_probs: jnp.ndarray,
    advantages: jnp.ndarray,
    returns: jnp.ndarray,
    clip_eps: float,
    value_coef: float,
    entropy_coef: float,
    normalize_advantages: bool = True,
    dist: Distribution = Categorical(),  # stateless: safe as a default
) -> LossInfo:
    """``L = −L^CLIP + c1·L^VF − c2·H`` on one minibatch (advantages normalised per minibatch).

    ``pi`` is the actor's output for the minibatch (logits, or a Gaussian's ``(mean, log_std)``), read
    through ``dist``; ``old_log_probs`` are the log-probabilities of ``actions`` when they were taken.
    """
    log_probs, entropies = dist.log_prob_entropy(pi, actions)
    if normalize_advantages:
        advantages = normalize(advantages)
    log_ratio = log_probs - old_log_probs
    ratio = jnp.exp(log_ratio)
    surrogate = jnp.minimum(ratio * advantages, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages)
    policy_loss = -surrogate.mean()
    value_loss = jnp.mean((values - returns) ** 2)
    entropy = entropies.mean()
    approx_kl = jnp.mean((ratio - 1.0) - log_ratio)
    clip_fraction = jnp.mean((jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32))
    total = policy_loss + value_coef * value_loss - entropy_coef * entropy
    return LossInfo(total, policy_loss, value_loss, entropy, approx_kl, clip_fraction)
