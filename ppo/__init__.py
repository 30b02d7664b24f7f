"""ppo: pure-JAX PPO with the reference training module's API.

>>> from ppo import PPOTrainer, PPOAgent, CartPoleWrapper

Importing ``ppo`` (or any submodule) does no work: the names below are imported on first use, and JAX's
CPU devices are configured by :func:`ppo.sharding.configure_cpu_devices` when training or evaluation
first needs JAX. ``ppo.policy`` (the served model's forward pass) imports neither JAX nor Flax.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it; MLflowLogger costs ~1 s of MLflow import, the rest pull in JAX
_EXPORTS = {
    "PPOTrainer": "ppo.trainer",
    "NonFiniteLossError": "ppo.trainer",
    "PPOAgent": "ppo.agent",
    "CartPoleWrapper": "ppo.envs",
    "Config": "ppo.config",
    "ConfigError": "ppo.config",
    "load_config": "ppo.config",
    "MLflowLogger": "ppo.tracking.logger",
}

__all__ = [
    "PPOTrainer",
    "PPOAgent",
    "CartPoleWrapper",
    "Config",
    "ConfigError",
    "load_config",
    "NonFiniteLossError",
    "MLflowLogger",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ppo' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
