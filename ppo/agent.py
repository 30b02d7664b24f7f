"""PPOAgent: the reference API's agent, holding the actor-critic parameters.

Inference (``predict``) runs the actor in NumPy: exact same math as the Flax module, no JAX dispatch per
call, and the same function the served MLflow model uses, so served and local actions are identical.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ppo.policy import actor_layers, numpy_logits


class PPOAgent:
    """Actor-critic agent for discrete actions.

    Args:
        observation_dim: size of the observation vector.
        action_dim: number of discrete actions.
        hidden_sizes: hidden layer widths of both actor and critic.
        seed: initialises ``params`` (the trainer re-initialises from ``train.seeds``).
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        hidden_sizes: Sequence[int] = (64, 64),
        seed: int = 0,
        params: Any | None = None,
    ) -> None:
        from ppo.sharding import configure_cpu_devices

        configure_cpu_devices()  # the network is Flax (JAX): configure the CPU devices before JAX starts
        from ppo.networks import PPONetwork

        self.observation_dim = int(observation_dim)
        self.action_dim = int(action_dim)
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        self.network = PPONetwork(action_dim=self.action_dim, hidden_sizes=self.hidden_sizes)
        if params is None:
            from ppo.networks import init_params

            params = init_params(self.network, self.observation_dim, seed)
        self.params = params

    @property
    def params(self) -> Any:
        return self._params

    @params.setter
    def params(self, value: Any) -> None:
        self._params = value
        self._layers = actor_layers(value)

    def _check(self, observations: Any) -> np.ndarray:
        obs = np.asarray(observations, dtype=np.float32)
        if obs.ndim == 1:
            obs = obs[None]
        if obs.ndim != 2 or obs.shape[1] != self.observation_dim:
            raise ValueError(f"observations must have shape (n, {self.observation_dim}), got {obs.shape}")
        return obs

    def logits(self, observations: Any) -> np.ndarray:
        return numpy_logits(self._layers, self._check(observations))

    def predict(
        self, observations: Any, deterministic: bool = True, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """Actions (int64, shape (n,)) for float observations of shape (n, obs_dim)."""
        logits = self.logits(observations)
        if deterministic:
            return logits.argmax(-1).astype(np.int64)
        rng = rng or np.random.default_rng()
        z = logits - logits.max(-1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        return np.array([rng.choice(self.action_dim, p=p) for p in probs], dtype=np.int64)

    def act(self, observations: Any, key: Any) -> tuple[Any, Any, Any]:
        """JAX sampling: (actions, log_probs, values) for a batch of observations."""
        import jax

        logits, values = self.network.apply(self.params, self._check(observations))
        actions = jax.random.categorical(key, logits)
        log_probs = jax.nn.log_softmax(logits)[np.arange(len(actions)), actions]
        return actions, log_probs, values

    def value(self, observations: Any) -> np.ndarray:
        return np.asarray(self.network.apply(self.params, self._check(observations))[1])

    # ---- persistence: flax msgpack + JSON, never pickle ----
    def save(self, directory: str | os.PathLike[str]) -> Path:
        from flax import serialization

        from ppo import atomic

        d = Path(directory)
        atomic.write_bytes(
            d / "params.msgpack",
            serialization.msgpack_serialize(serialization.to_state_dict(_to_numpy(self.params))),
        )
        atomic.write_text(
            d / "agent.json",
            json.dumps(
                {
                    "observation_dim": self.observation_dim,
                    "action_dim": self.action_dim,
                    "hidden_sizes": list(self.hidden_sizes),
                }
            ),
        )
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> PPOAgent:
        from flax import serialization

        d = Path(directory)
        meta = json.loads((d / "agent.json").read_text())
        params = serialization.msgpack_restore((d / "params.msgpack").read_bytes())
        return cls(meta["observation_dim"], meta["action_dim"], meta["hidden_sizes"], params=params)


def _to_numpy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)
