"""The training program for gymnasium envs without a JAX twin (e.g. LunarLander-v3): host-side vector envs,
jitted policy steps and a jitted PPO update.

Same interface as :func:`ppo.program.make_program` (``init``, ``run_chunk``, ``state_shapes``), same
:class:`~ppo.program.TrainState` (its ``env_state`` is ``None``: the envs live on the host), same
learner (:func:`ppo.program.make_learner`), same step books (:func:`ppo.rollout.after_step`: episode
returns, observation/reward normalisation), same budgets; so the trainer, checkpoints, tracking, the
pipeline and the gate do not know which program ran.

Per seed, ``env.num_envs`` real envs with same-step autoreset (:mod:`ppo.host_envs`: gymnasium
``SyncVectorEnv`` objects, split over this process and worker processes so that every core steps envs):
a finished episode's true final observation comes back in ``info["final_obs"]`` and is what a truncated
step bootstraps from. One policy step for all seeds at once is one jitted call (the previous step's
books, then the policy); the envs then step on the host; after ``num_steps`` steps one jitted call runs
GAE and the epochs for every seed. The rollout's rows stay on the device, written in place step by step:
each step the host reads only the env actions (per array read ~13 us here: for LunarLander this made the
host path ~12% faster).

Resuming: gymnasium envs cannot be saved, so after a restore the envs start fresh episodes (seeded from
the seed and the update count); the learner state (parameters, optimiser, statistics, books) is restored
exactly. Such a resumed run is therefore not bit-identical to an uninterrupted one (the JAX path is).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ppo.config import Config
from ppo.distributions import distribution
from ppo.envs import env_spec
from ppo.host_envs import HostEnvs, default_workers
from ppo.networks import init_params
from ppo.normalize import RewardScale, init_stats, update_stats
from ppo.program import (
    HParams,
    Program,
    TrainState,
    UpdateMetrics,
    make_budget,
    make_learner,
    make_network,
    make_optimizer,
    new_episode_stats,
)
from ppo.rollout import Transition, act, after_step


def _env_seeds(seed: int, update: int, num_envs: int) -> list[int]:
    """Distinct gymnasium seeds for a seed's envs (fresh ones after a resume at ``update``)."""
    sequence = np.random.SeedSequence([int(seed), int(update), 0x454E56])  # "ENV"
    return [int(x) for x in sequence.generate_state(num_envs, np.uint32)]


def make_host_program(config: Config) -> Program:
    """Build ``init`` / ``run_chunk`` for a host-env config (see the module docstring)."""
    spec = env_spec(config.env.id)
    network, hp = make_network(config), HParams.of(config.ppo)  # host envs: one member, the config's values
    tx = make_optimizer(hp)
    dist = distribution(spec.action)
    ppo = config.ppo
    num_envs, num_steps, window = config.env.num_envs, config.num_steps, config.train.convergence_window
    seeds = [int(s) for s in config.train.seeds]
    max_steps = config.env.max_steps_per_episode or spec.max_episode_steps()
    within_budget, learn = make_budget(config), make_learner(config, network, dist)
    envs: list[HostEnvs] = []  # every seed's envs, made on the first init or chunk of this process

    def policy_step(variables: Any, obs: jnp.ndarray, key: jax.Array) -> tuple:
        """``((seen, actions, log_probs, values), env_actions, key)`` for one seed's envs."""
        key, k_action = jax.random.split(key)
        seen, actions, log_probs, values = act(network, dist, variables, obs, k_action)
        return (seen, actions, log_probs, values), dist.env_action(actions), key

    def write(rows: tuple, t: jnp.ndarray, values: tuple) -> tuple:
        """``rows[i][t] = values[i]``: the rollout's rows are filled in place on the device (donated)."""
        return tuple(
            jax.lax.dynamic_update_index_in_dim(r, v, t, 0) for r, v in zip(rows, values, strict=True)
        )

    def first_step(variables: Any, obs: jnp.ndarray, key: jax.Array, rows: tuple) -> tuple:
        """The policy on the rollout's first observations, written to row 0: ``(rows, env_actions, key)``."""
        policy, to_env, key = policy_step(variables, obs, key)
        return (*write(rows[:4], jnp.int32(0), policy), *rows[4:]), to_env, key

    def books_then_policy(
        variables: Any,
        stats: Any,
        scale: Any,
        key: jax.Array,
        rows: tuple,
        t: jnp.ndarray,
        step: tuple,
        act_next: bool,
    ) -> tuple:
        """The books of step ``t`` just taken (its learner rewards and bootstrap observations written to
        row ``t``), then (``act_next``) the policy on its observations (written to row ``t + 1``): one
        jitted call per env step whose only output the host reads is the next env actions. The host path
        is bound by dispatches and transfers, not FLOPs: the rows stay on the device until the update."""
        rewards, dones, next_obs, final = step
        variables, stats, scale, learner_rewards, seen_final = after_step(
            variables, stats, scale, rewards, dones, next_obs, final, ppo.gamma
        )
        policy_rows, book_rows = rows[:4], rows[4:]
        book_rows = write(book_rows, t, (learner_rewards, seen_final))
        to_env = None
        if act_next:
            policy, to_env, key = policy_step(variables, next_obs, key)
            policy_rows = write(policy_rows, t + 1, policy)
        return variables, stats, scale, (*policy_rows, *book_rows), to_env, key

    # the rows ([seeds, steps, envs, ...] per field) are donated: each step updates them in place
    first_policy = jax.jit(jax.vmap(first_step), donate_argnums=3)
    after_env_step = jax.jit(
        jax.vmap(books_then_policy, in_axes=(0, 0, 0, 0, 0, None, 0, None)),
        static_argnums=7,
        donate_argnums=4,
    )

    @functools.cache
    def row_shapes() -> tuple:
        """One step's row per field: the policy's four outputs (their shapes and dtypes traced once, not
        compiled), then the learner rewards and the bootstrap observations (float32, as
        :func:`ppo.rollout.after_step` returns them: a wrong one fails the donated write's trace)."""
        obs = jax.ShapeDtypeStruct((num_envs, *spec.observation_shape), jnp.float32)
        variables = jax.eval_shape(lambda: init_params(network, spec.observation_shape, 0))
        policy = jax.eval_shape(policy_step, variables, obs, jax.random.PRNGKey(0))[0]
        return (*policy, jax.ShapeDtypeStruct((num_envs,), jnp.float32), obs)

    def new_rows() -> tuple:
        """Zeroed rollout rows ``[seeds, steps, envs, ...]`` for one update (donated, so fresh each time)."""
        return tuple(jnp.zeros((len(seeds), num_steps, *x.shape), x.dtype) for x in row_shapes())

    def learn_masked(
        state: TrainState,
        active: jnp.ndarray,
        traj: Transition,
        variables: Any,
        stats: Any,
        scale: Any,
        key: jax.Array,
        obs: jnp.ndarray,
    ) -> tuple[TrainState, UpdateMetrics]:
        go = within_budget(state, active)
        variables, opt_state, key, metrics = learn(variables, state.opt_state, key, traj, stats, state.hp)
        new = TrainState(variables, opt_state, None, obs, key, stats, state.update + 1, scale, state.hp)
        new = jax.tree.map(lambda n, o: jnp.where(go, n, o), new, state)
        metrics = jax.tree.map(lambda m: jnp.where(go, m, jnp.zeros_like(m)), metrics)
        return new, metrics._replace(ran=go)

    learn_all = jax.jit(jax.vmap(learn_masked))
    budgets = jax.jit(jax.vmap(within_budget))

    def open_envs(update: np.ndarray) -> np.ndarray:
        """Make and reset every seed's envs; their first observations ``[seeds, envs, ...]``."""
        close()
        total = len(seeds) * num_envs
        host_envs = HostEnvs(config.env.id, len(seeds), num_envs, max_steps, default_workers(total))
        try:
            first = host_envs.reset(
                [_env_seeds(s, int(u), num_envs) for s, u in zip(seeds, update, strict=True)]
            )
        except BaseException:
            host_envs.close()  # kept only once reset: a retry must not find half-made envs
            raise
        envs.append(host_envs)
        return first

    def init_one(seed: int, obs: np.ndarray) -> TrainState:
        variables: dict[str, Any] = init_params(network, spec.observation_shape, seed)
        if config.env.normalize_observations:  # the reset observations count, as in VecNormalize.reset
            variables = {**variables, "obs_norm": update_stats(init_stats(spec.observation_shape), obs)}
        scale = RewardScale.create(num_envs) if config.env.normalize_rewards else None
        key = jax.random.split(jax.random.PRNGKey(seed), 3)[0]
        return TrainState(
            variables,
            tx.init(variables["params"]),
            None,
            jnp.asarray(obs),
            key,
            new_episode_stats(num_envs, window),
            jnp.int32(0),
            scale,
            hp,
        )

    def init(seed_array: Any) -> TrainState:
        first = open_envs(np.zeros(len(seeds), np.int64))
        states = jax.device_get([init_one(int(s), first[i]) for i, s in enumerate(np.asarray(seed_array))])
        return jax.tree.map(lambda *xs: jnp.asarray(np.stack(xs)), *states)

    def state_shapes(n_seeds: int) -> Any:
        one = jax.eval_shape(
            lambda obs: init_one(0, obs),
            jax.ShapeDtypeStruct((num_envs, *spec.observation_shape), jnp.float32),
        )
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct((n_seeds, *x.shape), x.dtype), one)

    def run_chunk(state: TrainState, active: Any, num_updates: int) -> tuple[TrainState, UpdateMetrics]:
        active = jnp.asarray(active)
        if not envs:  # a restored state: fresh episodes, the books' episode in progress is dropped
            obs = open_envs(np.asarray(state.update))
            state = state.replace(
                obs=jnp.asarray(obs),
                stats=state.stats._replace(ep_return=jnp.zeros_like(state.stats.ep_return)),
            )
        try:
            return updates(state, active, num_updates)
        except BaseException:
            close()  # stopped mid-rollout or a worker failed: the next chunk starts from fresh episodes
            raise

    def updates(state: TrainState, active: jnp.ndarray, num_updates: int) -> tuple[TrainState, UpdateMetrics]:
        """``num_updates`` rollouts of every seed's envs, each followed by its PPO update."""
        history = []
        for _ in range(num_updates):
            go = np.asarray(budgets(state, active))
            variables, key, scale = state.params, state.key, state.reward_scale
            stats = state.stats._replace(
                completed=jnp.zeros_like(state.stats.completed),
                completed_return=jnp.zeros_like(state.stats.completed_return),
            )
            obs = np.asarray(state.obs)
            rows, to_env, key = first_policy(variables, jnp.asarray(obs), key, new_rows())
            terminated, dones = (np.zeros((len(seeds), num_steps, num_envs), bool) for _ in range(2))
            for t in range(num_steps):
                next_obs, final, rewards, terminated[:, t], truncated = envs[0].step(
                    np.asarray(to_env), obs, go
                )
                dones[:, t] = terminated[:, t] | truncated
                variables, stats, scale, rows, to_env, key = after_env_step(
                    variables,
                    stats,
                    scale,
                    key,
                    rows,
                    t,
                    (rewards, dones[:, t], next_obs, final),
                    t + 1 < num_steps,
                )
                obs = next_obs
            seen, actions, log_probs, values, learner_rewards, seen_final = rows
            traj = Transition(
                seen,
                actions,
                log_probs,
                values,
                learner_rewards,
                jnp.asarray(terminated),
                jnp.asarray(dones),
                seen_final,
            )
            state, metrics = learn_all(state, active, traj, variables, stats, scale, key, jnp.asarray(obs))
            history.append(metrics)
        return state, jax.tree.map(lambda *xs: jnp.stack(xs, axis=1), *history)

    def close() -> None:
        for host_envs in envs:
            host_envs.close()
        envs.clear()

    return Program(init, run_chunk, network, state_shapes, host=True, close=close)
