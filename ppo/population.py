"""Populations: configs that differ only in hyperparameters that shape no array train as ONE program.

A population is a base config and P members, each a set of overrides of :data:`ppo.program.HPARAM_FIELDS`
(learning rate, clip epsilon, gamma, GAE lambda, entropy/value coefficients, max grad norm, Adam epsilon,
the annealing flag). Every member trains every seed of the config: P x S training rows, each carrying its
own hyperparameters in its state (:class:`ppo.program.HParams`), vmapped in one compiled program and split
over devices like seeds are (:mod:`ppo.sharding`). PureJaxRL vmaps ``make_train`` over hyperparameters the
same way; a sweep of 8 trials then costs one compile and one dispatch per chunk instead of 8 processes.

Members train their whole step budget (``train.max_env_steps``): a population is for comparing members at
equal cost, so nobody stops early. A population of one is plain training: same program, same numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ppo.config import Config, ConfigError, build_config


def _field(key: str) -> str:
    """``ppo.learning_rate`` or ``learning_rate`` -> ``learning_rate``; anything else is refused."""
    from ppo.program import HPARAM_FIELDS

    name = key.removeprefix("ppo.")
    if name not in HPARAM_FIELDS:
        raise ConfigError(
            f"population member key {key!r}: a member may only change hyperparameters that shape no array "
            f"({', '.join('ppo.' + f for f in HPARAM_FIELDS)}); configs that differ in others (num_envs, "
            "network sizes, minibatch layout, epochs) train as separate groups"
        )
    return name


def member_config(config: Config, member: dict[str, Any]) -> Config:
    """The config of one member: ``config`` with the member's overrides, validated as any config is (so a
    member with ``ppo.gamma: 1.5`` is refused with the field named)."""
    overrides = {f"ppo.{_field(k)}": v for k, v in member.items()}
    return build_config(config.to_dict(), overrides)


@dataclass
class PopulationResult:
    """What a population trained: per member and seed, the final variables and the learning curve."""

    members: list[dict[str, Any]]
    seeds: list[int]
    params: list[list[Any]]  # [member][seed]: the agent's variables (NumPy)
    #: [member, seed, update]: the mean return of the episodes each update completed (NaN: none completed)
    returns: np.ndarray
    env_steps: int  # per row (member x seed)
    wall_s: float
    compile_s: float
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def env_steps_per_s(self) -> float:
        """Env steps of all rows per second of training (compilation excluded)."""
        train = self.wall_s - self.compile_s
        return self.env_steps * len(self.members) * len(self.seeds) / train if train > 0 else float("nan")

    def final_return(self, window: int = 10) -> np.ndarray:
        """[member, seed]: the mean of the last ``window`` updates that completed episodes."""
        out = np.full(self.returns.shape[:2], np.nan)
        for m, s in np.ndindex(*out.shape):
            done = self.returns[m, s][~np.isnan(self.returns[m, s])]
            if done.size:
                out[m, s] = done[-window:].mean()
        return out


def train_population(
    config: Config,
    members: list[dict[str, Any]],
    callback: Any = None,
) -> PopulationResult:
    """Train every member of the population on every seed of ``config`` for ``train.max_env_steps`` env
    steps per row, as one compiled program; ``callback(updates_done, total_updates)`` after each chunk."""
    import jax
    import jax.numpy as jnp

    from ppo.program import HParams, make_program
    from ppo.runtime import enable_compilation_cache, uses_host_envs
    from ppo.sharding import configure_cpu_devices, plan_for

    if not members:
        raise ConfigError("a population needs at least one member")
    if uses_host_envs(config):
        raise ConfigError(f"{config.env.id} trains on host-side envs: populations need a JAX env")
    total_updates = config.total_updates()
    if total_updates is None:
        raise ConfigError("a population trains to train.max_env_steps: set it")
    member_configs = [member_config(config, m) for m in members]  # each validated
    seeds = [int(s) for s in config.train.seeds]
    rows = len(members) * len(seeds)
    configure_cpu_devices()
    enable_compilation_cache()
    t0 = time.perf_counter()
    program = make_program(config, rows=rows)
    # the plan of a config with one seed per row: rows split over devices as seeds are
    layout = build_config(config.to_dict(), {"train.seeds": list(range(rows))})
    plan = plan_for(layout)
    hparams = [HParams.of(c.ppo) for c in member_configs for _ in seeds]
    row_seeds = jnp.asarray([s for _ in members for s in seeds], dtype=jnp.uint32)
    state = program.init(row_seeds, hparams)
    active = jnp.ones(rows, bool)
    fn = program.run_chunk
    if plan is not None:
        state_sh = plan.state(state, config.env.num_envs)
        state = jax.device_put(state, state_sh)
        active = jax.device_put(active, plan.per_seed())
        fn = jax.jit(
            fn.__wrapped__,
            static_argnums=2,
            in_shardings=(state_sh, plan.per_seed()),
            out_shardings=(state_sh, plan.per_seed()),
        )
    chunk = config.train.updates_per_chunk
    compiled: dict[int, Any] = {}
    compile_s = 0.0
    curves = []
    done = 0
    while done < total_updates:
        k = min(chunk, total_updates - done)
        if k not in compiled:
            t = time.perf_counter()
            compiled[k] = fn.lower(state, active, k).compile()
            compile_s += time.perf_counter() - t
        state, metrics = compiled[k](state, active)  # k is static: part of the compiled program
        completed = np.asarray(metrics.episodes_completed, np.float64)  # [rows, k]
        total = np.asarray(metrics.completed_return, np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            curves.append(np.where(completed > 0, total / completed, np.nan))
        done += k
        if callback is not None:
            callback(done, total_updates)
    host = jax.device_get(state.params)
    params = [
        [jax.tree.map(lambda x, r=m * len(seeds) + s: np.asarray(x[r]), host) for s in range(len(seeds))]
        for m in range(len(members))
    ]
    returns = np.concatenate(curves, axis=1).reshape(len(members), len(seeds), -1)
    return PopulationResult(
        members=[dict(m) for m in members],
        seeds=seeds,
        params=params,
        returns=returns,
        env_steps=total_updates * config.ppo.batch_size,
        wall_s=time.perf_counter() - t0,
        compile_s=compile_s,
    )
