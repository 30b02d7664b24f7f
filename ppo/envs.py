"""Environments: gymnax (JAX, the training fast path) and gymnasium (real envs, for evaluation).

``import gymnax`` executes every env family's module, and two of them import seaborn/matplotlib: 2.5 s
of a 4 s cold-start budget. :func:`make_jax_env` therefore loads only the classic-control modules by
placing temporary package stubs for ``gymnax`` and ``gymnax.environments`` in ``sys.modules`` while the
submodules import, then removing them, so a later ``import gymnax`` elsewhere still gets the real
package (and the very same env classes, which stay cached as submodules).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from dataclasses import dataclass
from typing import Any

import numpy as np

_GYMNAX_CLASSES = {
    "CartPole-v1": ("gymnax.environments.classic_control.cartpole", "CartPole"),
    "Acrobot-v1": ("gymnax.environments.classic_control.acrobot", "Acrobot"),
}
_lock = threading.Lock()


def _import_gymnax_module(module: str) -> types.ModuleType:
    if module in sys.modules:
        return sys.modules[module]
    with _lock:
        if "gymnax.environments" in sys.modules:  # real package already imported by someone
            return importlib.import_module(module)
        spec = importlib.util.find_spec("gymnax")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("gymnax is not installed: pip install gymnax")
        root = list(spec.submodule_search_locations)[0]
        stubs = {"gymnax": [root], "gymnax.environments": [f"{root}/environments"]}
        for name, path in stubs.items():
            stub = types.ModuleType(name)
            stub.__path__ = path
            sys.modules[name] = stub
        try:
            return importlib.import_module(module)
        finally:
            for name in stubs:
                if sys.modules.get(name) is not None and not hasattr(sys.modules[name], "__file__"):
                    del sys.modules[name]


@dataclass(frozen=True)
class EnvSpec:
    """What the networks and evaluators need to know about an env."""

    env_id: str
    observation_dim: int
    action_dim: int
    reward_per_step: tuple[float, float]  # (lowest, highest) reward of one step

    def return_range(self, max_steps_per_episode: int) -> float:
        """Width of the span of episode returns under a time limit: what the gate's relative margin scales."""
        low, high = self.reward_per_step
        return (high - low) * max_steps_per_episode


ENV_SPECS = {
    "CartPole-v1": EnvSpec("CartPole-v1", 4, 2, (0.0, 1.0)),
    "Acrobot-v1": EnvSpec("Acrobot-v1", 6, 3, (-1.0, 0.0)),
}


def env_spec(env_id: str) -> EnvSpec:
    try:
        return ENV_SPECS[env_id]
    except KeyError:
        raise ValueError(f"unknown env id {env_id!r}; supported: {', '.join(ENV_SPECS)}") from None


def make_jax_env(env_id: str, max_steps_per_episode: int | None = None) -> tuple[Any, Any]:
    """Return ``(env, env_params)`` for the gymnax implementation of ``env_id``."""
    env_spec(env_id)
    module, cls = _GYMNAX_CLASSES[env_id]
    env = getattr(_import_gymnax_module(module), cls)()
    params = env.default_params
    if max_steps_per_episode is not None:
        params = params.replace(max_steps_in_episode=int(max_steps_per_episode))
    return env, params


class CartPoleWrapper:
    """A real gymnasium environment (default ``CartPole-v1``) behind the reference API.

    ``PPOTrainer`` trains on the gymnax twin of ``env_id`` (same dynamics, tested step by step) and
    evaluates on this one. ``reset(seed)`` → observation; ``step(action)`` → (obs, reward,
    terminated, truncated, info), all as gymnasium defines them.
    """

    def __init__(
        self,
        env_id: str = "CartPole-v1",
        max_steps_per_episode: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        import gymnasium as gym

        spec = env_spec(env_id)
        self.env_id = env_id
        self.observation_dim = spec.observation_dim
        self.action_dim = spec.action_dim
        self.max_steps_per_episode = max_steps_per_episode
        kwargs: dict[str, Any] = {"render_mode": render_mode}
        if max_steps_per_episode is not None:
            kwargs["max_episode_steps"] = max_steps_per_episode
        self.env = gym.make(env_id, **kwargs)

    def reset(self, seed: int | None = None) -> np.ndarray:
        obs, _ = self.env.reset(seed=seed)
        return np.asarray(obs, dtype=np.float32)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(int(action))
        return np.asarray(obs, dtype=np.float32), float(reward), bool(terminated), bool(truncated), info

    def render(self) -> Any:
        return self.env.render()

    def close(self) -> None:
        self.env.close()
