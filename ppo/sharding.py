"""Spread training over several JAX devices with ``jax.sharding`` (no ``pmap``).

The state of N seeds is an array tree with a leading seed axis, and each seed's work is independent, so
the seed axis is the natural one to split: every device trains N / D seeds and nothing crosses devices
(results equal the single-device run bit for bit). With fewer seeds than devices (one seed on a GPU
pair, say), the env axis of the observations and env states is split instead, and XLA inserts the
reductions a PPO update needs (advantage normalisation, loss means) across devices.

``jit`` follows the shardings of its arguments, so the hot path itself is unchanged: the trainer puts
the state on the mesh once and compiles the chunk with matching in/out shardings.

On a CPU, XLA runs one device's work mostly on one core, so :func:`configure_cpu_devices` splits the
CPU into one device per core (up to 8) before JAX starts: seeds trained together then use every core
(8 seeds on 2 cores: 2.2 s of training instead of 4.3 s). Only the seed axis is split there; splitting
one seed's envs over CPU devices costs more in reductions than it gains (measured: 136k vs 290k
env-steps/s on 2 cores). Seeds that no device count divides are padded there (``Plan.rows``): 5 seeds on
2 cores train as 6 rows, 3 per core, the 6th an idle copy of the 5th that
:class:`ppo.runtime.Runtime` adds before a chunk and drops after it (before this, the 5 seeds every
shipped config trains ran on one core: 204k against 301k env-steps/s on CartPole).
"""

from __future__ import annotations

import dataclasses
import functools
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
    #: the rows the devices train when the seeds do not divide among them (the rest are idle padding
    #: rows, see :class:`ppo.runtime.Runtime`); ``None``: the seeds themselves
    rows: int | None = None

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
    """The layout for ``config`` on ``devices`` (default: all of JAX's), or ``None`` for one device.

    Seeds go to as many devices as divide them evenly (6 seeds on 4 devices: 3 devices, 2 seeds each).
    On CPU devices, seeds that no device count divides as well are padded to the fewest rows per device
    (5 seeds on 2 devices: 3 rows each, ``rows=6``; 7 on 2: 4 each, not 7 on one). On accelerators, a
    seed count that no device count > 1 divides splits the envs instead.
    """
    from ppo.runtime import uses_host_envs

    devices = list(devices if devices is not None else jax.devices())
    n, seeds, envs = len(devices), len(config.train.seeds), config.env.num_envs
    if n == 1 or uses_host_envs(config):  # host envs: the policy steps stay on one device
        return None
    use = max(d for d in range(1, n + 1) if seeds % d == 0)
    if devices[0].platform == "cpu":
        if seeds == 1:
            return None  # one seed: its envs stay on one CPU device (see the module docstring)
        per_device = -(-seeds // n)  # the fewest rows any device must train
        if seeds // use > per_device:  # padding to per_device rows on fewer devices beats dividing
            padded = -(-seeds // per_device)
            return Plan(Mesh(np.array(devices[:padded]), ("seed",)), "seed", rows=padded * per_device)
    if use > 1:
        return Plan(Mesh(np.array(devices[:use]), ("seed",)), "seed")
    if envs % n == 0:
        return Plan(Mesh(np.array(devices), ("env",)), "env")
    warnings.warn(
        f"{n} devices but neither the {seeds} seeds nor the {envs} envs divide among them: "
        "training runs on one device (choose train.seeds or env.num_envs as a multiple of the "
        "device count)",
        RuntimeWarning,
        stacklevel=2,
    )
    return None


@functools.cache
def configure_cpu_devices() -> int | None:
    """Before JAX's backends start: one CPU device per core (``$PPO_CPU_DEVICES`` overrides; 1 = off).

    Called where ``ppo`` first needs JAX (:class:`~ppo.trainer.PPOTrainer`, :class:`~ppo.agent.PPOAgent`,
    :func:`ppo.program.make_program`, the benchmarks), never at import; the first call decides, later
    calls return its result. Leaves an explicit ``--xla_force_host_platform_device_count`` in
    ``$XLA_FLAGS`` alone, and does nothing once JAX is running (the count cannot change then). Returns
    the count it set, if any.
    """
    import os

    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return None
    setting = os.environ.get("PPO_CPU_DEVICES", "")
    count = int(setting) if setting.isdigit() and int(setting) > 0 else min(os.cpu_count() or 1, 8)
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # backends already initialised (JAX was used before ppo needed it)
        return None
    return count
