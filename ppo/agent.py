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

from ppo.policy import GreedyPolicy, observation_batch
from ppo.spaces import ActionSpace


class PPOAgent:
    """Actor-critic agent for discrete or continuous actions.

    Args:
        observation_dim: size of the observation vector.
        action_dim: number of discrete actions, or dims of a continuous action.
        hidden_sizes: hidden layer widths of both actor and critic.
        seed: initialises ``params`` (the trainer re-initialises from ``train.seeds``).
        params: the variables tree (``params``, and ``obs_norm`` when observations are normalised).
        action_space: the env's :class:`~ppo.spaces.ActionSpace`; default ``action_dim`` discrete actions.
        log_std_init: continuous actions: the Gaussian's initial log std.
        observation_shape: the shape of one observation when it is a grid, e.g. ``(10, 10, 4)`` for
            MinAtar Breakout (``observation_dim`` is then its size); default ``(observation_dim,)``.
        conv_channels: 3x3 convolutions of the torsos (grid observations only).
        activation: the MLP's activation, ``tanh`` or ``relu`` (``ppo.activation``).
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        hidden_sizes: Sequence[int] = (64, 64),
        seed: int = 0,
        params: Any | None = None,
        action_space: ActionSpace | None = None,
        log_std_init: float = 0.0,
        observation_shape: Sequence[int] | None = None,
        conv_channels: Sequence[int] = (),
        activation: str = "tanh",
    ) -> None:
        from ppo.sharding import configure_cpu_devices

        configure_cpu_devices()  # the network is Flax (JAX): configure the CPU devices before JAX starts
        from ppo.networks import PPONetwork

        self.observation_dim = int(observation_dim)
        self.observation_shape = tuple(int(d) for d in (observation_shape or (self.observation_dim,)))
        if int(np.prod(self.observation_shape)) != self.observation_dim:
            raise ValueError(
                f"observation_shape {self.observation_shape} does not hold "
                f"observation_dim {self.observation_dim} values"
            )
        self.conv_channels = tuple(int(c) for c in conv_channels)
        self.action_dim = int(action_dim)
        self.action_space = action_space or ActionSpace("discrete", self.action_dim)
        if self.action_space.n != self.action_dim:
            raise ValueError(
                f"action_dim {self.action_dim} does not match the action space's n={self.action_space.n}"
            )
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        self.log_std_init = float(log_std_init)
        self.activation = str(activation)
        self.network = PPONetwork(
            action_dim=self.action_dim,
            hidden_sizes=self.hidden_sizes,
            continuous=not self.action_space.discrete,
            log_std_init=self.log_std_init,
            conv_channels=self.conv_channels,
            obs_rank=len(self.observation_shape),
            activation=self.activation,
        )
        if params is None:
            from ppo.networks import init_params

            params = init_params(self.network, self.observation_shape, seed)
        self.params = params

    @property
    def params(self) -> Any:
        return self._params

    @params.setter
    def params(self, value: Any) -> None:
        self._params = value
        self._policy = GreedyPolicy(value, self.action_space)

    def _check(self, observations: Any) -> np.ndarray:
        return observation_batch(observations, self.observation_shape)

    def logits(self, observations: Any) -> np.ndarray:
        """The actor's output: logits (discrete) or the Gaussian's mean (continuous)."""
        return self._policy.head(self._check(observations))

    def predict(
        self, observations: Any, deterministic: bool = True, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """Actions for float observations of shape (n, obs_dim): int64 ``(n,)`` (discrete) or float32
        ``(n, action_dim)`` within the bounds (continuous). Greedy unless ``deterministic=False``."""
        obs = self._check(observations)
        if deterministic:
            return self._policy(obs)
        rng = rng or np.random.default_rng()
        head = self._policy.head(obs)
        if not self.action_space.discrete:
            log_std = np.asarray(self.params["params"]["actor"]["log_std"], np.float32)
            sample = head + np.exp(log_std) * rng.standard_normal(head.shape).astype(np.float32)
            return np.clip(sample, self._policy.low, self._policy.high).astype(np.float32)
        z = head - head.max(-1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        return np.array([rng.choice(self.action_dim, p=p) for p in probs], dtype=np.int64)

    def act(self, observations: Any, key: Any) -> tuple[Any, Any, Any]:
        """JAX sampling: (actions, log_probs, values) for a batch of observations (continuous actions
        unclipped, as the learner stores them)."""
        from ppo.distributions import distribution
        from ppo.normalize import observe

        dist = distribution(self.action_space)
        pi, values = self.network.apply(
            {"params": self.params["params"]}, observe(self.params, self._check(observations))
        )
        actions = dist.sample(key, pi)
        return actions, dist.log_prob(pi, actions), values

    def value(self, observations: Any) -> np.ndarray:
        from ppo.normalize import observe

        x = observe(self.params, self._check(observations))
        return np.asarray(self.network.apply({"params": self.params["params"]}, x)[1])

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
                    "action_space": self.action_space.to_dict(),
                    "log_std_init": self.log_std_init,
                    "observation_shape": list(self.observation_shape),
                    "conv_channels": list(self.conv_channels),
                    "activation": self.activation,
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
        action = meta.get("action_space")
        return cls(
            meta["observation_dim"],
            meta["action_dim"],
            meta["hidden_sizes"],
            params=params,
            action_space=None if action is None else ActionSpace.from_dict(action),
            log_std_init=float(meta.get("log_std_init", 0.0)),
            observation_shape=meta.get("observation_shape"),
            conv_channels=meta.get("conv_channels", ()),
            activation=meta.get("activation", "tanh"),
        )


def _to_numpy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)
