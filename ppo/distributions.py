"""The policy's action distribution in JAX, chosen by the env's action space.

``Categorical`` (discrete): the actor outputs logits. ``DiagGaussian`` (continuous): the actor outputs the
mean and a state-independent log standard deviation (a learned vector, as in PureJaxRL's
``ppo_continuous_action.py``, CleanRL and SB3). A sampled action is unbounded; the env receives it clipped
to the action bounds (:meth:`DiagGaussian.env_action`), and its log-probability is that of the unclipped
sample, as SB3 and CleanRL compute it.

Each distribution is a stateless object with the same five methods, so the rollout and the loss are
written once for both.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ppo.spaces import ActionSpace


class Categorical(NamedTuple):
    """Discrete actions from logits ``[..., n]``."""

    def sample(self, key: jax.Array, pi: jnp.ndarray) -> jnp.ndarray:
        return jax.random.categorical(key, pi)

    def log_prob(self, pi: jnp.ndarray, actions: jnp.ndarray) -> jnp.ndarray:
        log_p = jax.nn.log_softmax(pi)
        return jnp.take_along_axis(log_p, actions[..., None].astype(jnp.int32), axis=-1)[..., 0]

    def entropy(self, pi: jnp.ndarray) -> jnp.ndarray:
        log_p = jax.nn.log_softmax(pi)
        return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)

    def log_prob_entropy(self, pi: jnp.ndarray, actions: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Both from one log-softmax (what the loss needs; the same rounding as one shared softmax)."""
        log_p = jax.nn.log_softmax(pi)
        chosen = jnp.take_along_axis(log_p, actions[..., None].astype(jnp.int32), axis=-1)[..., 0]
        return chosen, -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)

    def mode(self, pi: jnp.ndarray) -> jnp.ndarray:
        return jnp.argmax(pi, axis=-1)

    def env_action(self, actions: jnp.ndarray) -> jnp.ndarray:
        return actions


class DiagGaussian(NamedTuple):
    """Continuous actions from ``pi = (mean [..., d], log_std [..., d])``; bounds for stepping the env."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    def sample(self, key: jax.Array, pi: Any) -> jnp.ndarray:
        mean, log_std = pi
        return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)

    def log_prob(self, pi: Any, actions: jnp.ndarray) -> jnp.ndarray:
        mean, log_std = pi
        z = (actions - mean) * jnp.exp(-log_std)
        return jnp.sum(-0.5 * z**2 - log_std - 0.5 * math.log(2.0 * math.pi), axis=-1)

    def entropy(self, pi: Any) -> jnp.ndarray:
        _, log_std = pi
        return jnp.sum(log_std + 0.5 * math.log(2.0 * math.pi * math.e), axis=-1)

    def log_prob_entropy(self, pi: Any, actions: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        return self.log_prob(pi, actions), self.entropy(pi)

    def mode(self, pi: Any) -> jnp.ndarray:
        return pi[0]

    def env_action(self, actions: jnp.ndarray) -> jnp.ndarray:
        return jnp.clip(actions, jnp.asarray(self.low, actions.dtype), jnp.asarray(self.high, actions.dtype))


Distribution = Categorical | DiagGaussian


def distribution(action: ActionSpace) -> Distribution:
    """The distribution family for an action space."""
    if action.discrete:
        return Categorical()
    assert action.low is not None and action.high is not None  # ActionSpace checks it
    return DiagGaussian(tuple(action.low), tuple(action.high))
