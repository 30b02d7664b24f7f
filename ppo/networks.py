"""Flax actor-critic: separate actor and critic torsos (tanh MLPs) with orthogonal initialisation.

Separate torsos (no shared layers) are what CleanRL and PureJaxRL use for classic control: the value
loss cannot distort the policy features. Orthogonal init with gain sqrt(2) for hidden layers, 0.01 for
the policy head (near-uniform initial policy) and 1.0 for the value head.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def _dense(features: int, gain: float) -> nn.Dense:
    return nn.Dense(features, kernel_init=nn.initializers.orthogonal(gain),
                    bias_init=nn.initializers.constant(0.0))


class ActorNetwork(nn.Module):
    """Observations → action logits."""

    action_dim: int
    hidden_sizes: Sequence[int] = (64, 64)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        for h in self.hidden_sizes:
            x = nn.tanh(_dense(h, np.sqrt(2.0))(x))
        return _dense(self.action_dim, 0.01)(x)


class CriticNetwork(nn.Module):
    """Observations → state value V(s)."""

    hidden_sizes: Sequence[int] = (64, 64)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        for h in self.hidden_sizes:
            x = nn.tanh(_dense(h, np.sqrt(2.0))(x))
        return jnp.squeeze(_dense(1, 1.0)(x), axis=-1)


class PPONetwork(nn.Module):
    """Both heads in one module so one ``params`` tree holds the whole agent."""

    action_dim: int
    hidden_sizes: Sequence[int] = (64, 64)

    def setup(self) -> None:
        self.actor = ActorNetwork(self.action_dim, tuple(self.hidden_sizes))
        self.critic = CriticNetwork(tuple(self.hidden_sizes))

    def __call__(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        return self.actor(x), self.critic(x)

    def value(self, x: jnp.ndarray) -> jnp.ndarray:
        return self.critic(x)
