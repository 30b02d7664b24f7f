"""Spread training over several JAX devices with ``jax.sharding`` (no ``pmap``).

The state of N seeds is an array tree with a leading seed axis, and each seed's work is independent, so
the seed axis is the natural one to split: every device trains N / D seeds and nothing crosses devices
(results equal the single-device run bit for bit). With fewer seeds than devices (one seed on a GPU
pair, say), the env axis of the observations and env states is split instead, and XLA inserts the
reductions a PPO update needs (advantage normalisation, loss means) across devices.

``jit`` follows the shardings of its arguments, so the hot path itself is unchanged: the trainer puts
the state on the mesh once and compiles the chunk with matching in/out shardings.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ppo.config import Config


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one config's training is laid out: ``axis`` is ``"seed"`` or ``"env"``."""

    mesh: Mesh
    axis: str

    @property
    def devices(self) -> int:
        return self.mesh.size

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def per_seed(self) -> NamedSharding:
        """For arrays whose leading axis is the seed (the chunk's metrics, the active mask)."""
        return NamedSharding(self.mesh, P(self.axis)) if self.axis == "seed" else self.replicated()

    def state(self, state: Any, num_envs: int) -> Any:
        """A sharding for every leaf of a stacked train state."""
        if self.axis == "seed":
            return jax.tree.map(lambda _: NamedSharding(self.mesh, P("seed")), state)
        split_envs = NamedSharding(self.mesh, P(None, "env"))

        def env_leaf(x: Any) -> NamedSharding:
            return split_envs if np.ndim(x) >= 2 and np.shape(x)[1] == num_envs else self.replicated()

        rep = jax.tree.map(lambda _: self.replicated(), state)
        return rep.replace(env_state=jax.tree.map(env_leaf, state.env_state), obs=env_leaf(state.obs))


def plan_for(config: Config, devices: list[Any] | None = None) -> Plan | None:
    """The layout for ``config`` on ``devices`` (default: all of JAX's), or ``None`` for one device."""
    devices = list(devices if devices is not None else jax.devices())
    n, seeds, envs = len(devices), len(config.train.seeds), config.env.num_envs
    if n == 1:
        return None
    if seeds > 1 and seeds % n == 0:
        return Plan(Mesh(np.array(devices), ("seed",)), "seed")
    if envs % n == 0:
        return Plan(Mesh(np.array(devices), ("env",)), "env")
    warnings.warn(f"{n} devices but neither the {seeds} seeds nor the {envs} envs divide among them: "
                  "training runs on one device (choose train.seeds or env.num_envs as a multiple of the "
                  "device count)", RuntimeWarning, stacklevel=2)
    return None
