"""The compiled training program (the hot path, PureJaxRL style): pure functions closed over a frozen config.

``make_program(config)`` returns ``init(seeds) -> state`` and
``run_chunk(state, active, num_updates) -> (state, metrics)``.
One call of ``run_chunk`` performs ``train.updates_per_chunk`` PPO updates (rollout → GAE → epochs of
minibatch steps) for every seed at once: ``lax.scan`` over updates inside ``vmap`` over seeds, one
compiled program for N seeds. Metrics come back per seed and per update, already reduced.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from ppo.advantages import gae
from ppo.config import HPARAM_FIELDS, Config
from ppo.distributions import distribution
from ppo.envs import env_spec, make_jax_env
from ppo.losses import ppo_loss
from ppo.networks import PPONetwork, init_params, param_shapes
from ppo.normalize import RewardScale, init_stats, update_stats
from ppo.rollout import EpisodeStats, make_rollout
from ppo.sharding import configure_cpu_devices


class HParams(struct.PyTreeNode):
    """One row's values of :data:`HPARAM_FIELDS` (float32 scalars; ``anneal_lr`` a bool), part of its
    :class:`TrainState`: traced values, not constants of the program, so rows may differ (and PBT may
    change them between chunks) without compiling anything again."""

    learning_rate: Any
    clip_epsilon: Any
    gamma: Any
    gae_lambda: Any
    entropy_coef: Any
    value_coef: Any
    max_grad_norm: Any
    adam_eps: Any
    anneal_lr: Any

    @classmethod
    def of(cls, ppo: Any, **overrides: Any) -> HParams:
        """The values of a config's ``ppo`` section (and ``overrides`` by field name), as NumPy scalars."""
        values = {f: overrides.get(f, getattr(ppo, f)) for f in HPARAM_FIELDS}
        return cls(
            **{f: np.float32(v) for f, v in values.items() if f != "anneal_lr"},
            anneal_lr=np.bool_(values["anneal_lr"]),
        )


class TrainState(struct.PyTreeNode):
    """Everything one seed's training needs to continue exactly: params, optimizer, envs, rng, counters,
    and its hyperparameters (:class:`HParams`)."""

    params: Any  # the agent's variables: "params", and "obs_norm" when observations are normalised
    opt_state: Any  # of params["params"] only (the observation statistics are not learned)
    env_state: Any
    obs: jnp.ndarray  # raw, as the envs returned it
    key: jnp.ndarray
    stats: EpisodeStats
    update: jnp.ndarray  # int32 updates done
    reward_scale: RewardScale | None  # when rewards are scaled
    hp: HParams  # this row's hyperparameters


class Program(NamedTuple):
    """What :func:`make_program` builds for one config."""

    init: Any  # seeds -> stacked TrainState (on the host's default device)
    run_chunk: Any  # jitted (state, active, num_updates) -> (state, metrics)
    network: PPONetwork
    state_shapes: Any  # n_seeds -> the stacked TrainState as ShapeDtypeStructs (to compile before init)
    host: bool = False  # run_chunk steps host envs in Python (ppo.host_program): nothing to compile ahead
    close: Any = None  # releases what the program holds (the host envs), if anything


class UpdateMetrics(NamedTuple):
    policy: jnp.ndarray
    value: jnp.ndarray
    entropy: jnp.ndarray
    approx_kl: jnp.ndarray
    clip_fraction: jnp.ndarray
    grad_norm: jnp.ndarray
    total_loss: jnp.ndarray
    episodes_completed: jnp.ndarray
    completed_return: jnp.ndarray
    ran: jnp.ndarray  # bool: this update was applied (the seed was active and within its budgets)


def make_network(config: Config) -> PPONetwork:
    """The actor-critic for ``config``'s env: its head follows the env's action space."""
    action = env_spec(config.env.id).action
    return PPONetwork(
        action_dim=action.n,
        hidden_sizes=tuple(config.ppo.hidden_sizes),
        continuous=not action.discrete,
        log_std_init=config.ppo.log_std_init,
        conv_channels=tuple(config.ppo.conv_channels),
        obs_rank=len(env_spec(config.env.id).observation_shape),
        activation=config.ppo.activation,
    )


def _adam_chain(learning_rate: Any, max_grad_norm: Any, eps: Any) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adam(learning_rate, eps=eps))


def make_optimizer(hp: HParams) -> optax.GradientTransformation:
    """clip_by_global_norm → Adam(eps), with ``hp``'s values held in the optimiser state
    (``optax.inject_hyperparams``): one program serves rows with different rates, norms and epsilons."""
    # as arrays: inject_hyperparams keeps only array (and Python number) values in the state, and a NumPy
    # scalar would be taken for a static argument
    return optax.inject_hyperparams(_adam_chain)(
        learning_rate=jnp.asarray(hp.learning_rate, jnp.float32),
        max_grad_norm=jnp.asarray(hp.max_grad_norm, jnp.float32),
        eps=jnp.asarray(hp.adam_eps, jnp.float32),
    )


def anneal_steps(config: Config) -> int | None:
    """Optimiser steps over which ``anneal_lr`` decays the rate to 0: those of the last update that
    ``train.max_env_steps`` allows (every step uses a rate > 0); None without a step budget."""
    total_updates = config.total_updates()
    return (
        None
        if total_updates is None
        else total_updates * config.num_minibatches * config.ppo.epochs_per_update
    )


def scheduled(opt_state: Any, hp: HParams, steps: int | None) -> Any:
    """``opt_state`` with this step's learning rate: ``hp.learning_rate``, linearly decayed to 0 over
    ``steps`` optimiser steps when ``hp.anneal_lr`` (optax.linear_schedule's formula)."""
    if steps is None:
        return opt_state
    count = jnp.clip(opt_state.count, 0, steps)
    decayed = hp.learning_rate * (1 - count / steps)
    rate = jnp.where(hp.anneal_lr, decayed, hp.learning_rate).astype(jnp.float32)
    return opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": rate})


def new_episode_stats(num_envs: int, window: int) -> EpisodeStats:
    """Episode books before any step: no returns, an empty convergence window."""
    return EpisodeStats(
        jnp.zeros(num_envs, jnp.float32),
        jnp.zeros(window, jnp.float32),
        jnp.int32(0),
        jnp.int32(0),
        jnp.float32(0.0),
    )


def make_budget(config: Config):
    """``within_budget(state, active) -> bool``: whether a seed may take one more update: active on the
    host, and neither budget spent. Checked before every update, so budgets hold to one update (the update
    that completes episode ``max_episodes`` is the last) instead of to one chunk."""
    max_episodes, total_updates = config.train.max_episodes, config.total_updates()

    def within_budget(state: TrainState, active: jnp.ndarray) -> jnp.ndarray:
        go = active & (state.stats.episodes < max_episodes)
        return go if total_updates is None else go & (state.update < total_updates)

    return within_budget


def make_learner(config: Config, network: PPONetwork, dist: Any):
    """``learn(variables, opt_state, key, traj, stats, hp) -> (variables, opt_state, key, metrics)``: GAE
    over one rollout's trajectory ``[steps, envs, ...]``, then ``ppo.epochs_per_update`` epochs of shuffled
    minibatch steps, with the row's hyperparameters ``hp``. Shared by the fully jitted program and the
    host-env path (:mod:`ppo.host_program`)."""
    ppo = config.ppo
    batch, num_minibatches = ppo.batch_size, config.num_minibatches
    steps = anneal_steps(config)

    def minibatch_step(carry, minibatch, hp: HParams):
        params, opt_state = carry
        obs, actions, old_log_probs, advantages, returns = minibatch
        tx = make_optimizer(hp)

        def loss_fn(p):
            pi, values = network.apply({"params": p}, obs)
            info = ppo_loss(
                pi,
                values,
                actions,
                old_log_probs,
                advantages,
                returns,
                hp.clip_epsilon,
                hp.value_coef,
                hp.entropy_coef,
                ppo.normalize_advantages,
                dist,
            )
            return info.total, info

        (_, info), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, scheduled(opt_state, hp, steps), params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state), (info, grad_norm)

    def learn(variables: Any, opt_state: Any, key: jax.Array, traj: Any, stats: EpisodeStats, hp: HParams):
        next_values: jax.Array = network.apply(  # type: ignore[assignment]  # Flax types apply's output loosely
            {"params": variables["params"]}, traj.next_obs, method=PPONetwork.value
        )
        advantages, returns = gae(
            traj.rewards, traj.values, next_values, traj.terminated, traj.dones, hp.gamma, hp.gae_lambda
        )
        flat = jax.tree.map(
            lambda x: x.reshape((batch,) + x.shape[2:]),
            (traj.obs, traj.actions, traj.log_probs, advantages, returns),
        )

        def epoch(carry, _):
            params, opt_state, key = carry
            key, k_perm = jax.random.split(key)
            perm = jax.random.permutation(k_perm, batch)
            minibatches = jax.tree.map(
                lambda x: x[perm].reshape((num_minibatches, batch // num_minibatches) + x.shape[1:]), flat
            )
            (params, opt_state), out = jax.lax.scan(
                lambda carry, mb: minibatch_step(carry, mb, hp), (params, opt_state), minibatches
            )
            return (params, opt_state, key), out

        (params, opt_state, key), (info, grad_norm) = jax.lax.scan(
            epoch, (variables["params"], opt_state, key), None, length=ppo.epochs_per_update
        )
        metrics = UpdateMetrics(
            info.policy.mean(),
            info.value.mean(),
            info.entropy.mean(),
            info.approx_kl.mean(),
            info.clip_fraction.mean(),
            grad_norm.mean(),
            info.total.mean(),
            stats.completed,
            stats.completed_return,
            jnp.bool_(True),
        )
        return {**variables, "params": params}, opt_state, key, metrics

    return learn


def make_program(config: Config, rows: int | None = None) -> Program:
    """Build the jitted ``init`` and ``run_chunk`` for ``config`` (nothing is traced until first call),
    for ``rows`` training rows (default: the config's seeds; a population's members x seeds)."""
    configure_cpu_devices()  # a no-op after the first call (the trainer makes it)
    env, env_params = make_jax_env(config.env.id, config.env.max_steps_per_episode)
    spec = env_spec(config.env.id)
    network = make_network(config)
    ppo = config.ppo
    n_rows = len(config.train.seeds) if rows is None else rows
    num_envs, num_steps = config.env.num_envs, config.num_steps
    window = config.train.convergence_window
    dist = distribution(spec.action)
    rollout = make_rollout(network, env, env_params, num_envs, num_steps, dist)
    normalize_obs, scale_rewards = config.env.normalize_observations, config.env.normalize_rewards

    def init_one(seed: jnp.ndarray, params: Any, hp: HParams) -> TrainState:
        key = jax.random.PRNGKey(seed)
        key, _, k_env = jax.random.split(key, 3)
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_env, num_envs), env_params)
        if normalize_obs:  # the reset observations count, as in VecNormalize.reset
            params = {**params, "obs_norm": update_stats(init_stats(spec.observation_shape), obs)}
        scale = RewardScale.create(num_envs) if scale_rewards else None
        stats = new_episode_stats(num_envs, window)
        opt_state = make_optimizer(hp).init(params["params"])
        return TrainState(params, opt_state, env_state, obs, key, stats, jnp.int32(0), scale, hp)

    within_budget = make_budget(config)
    learn = make_learner(config, network, dist)

    def update_one(state: TrainState, active: jnp.ndarray) -> tuple[TrainState, UpdateMetrics]:
        go = within_budget(state, active)
        new_state, metrics = train_update(state)
        # a seed out of budget keeps its state exactly; its discarded update reports nothing
        # (zeros, ran=False)
        new_state = jax.tree.map(lambda new, old: jnp.where(go, new, old), new_state, state)
        metrics = jax.tree.map(lambda m: jnp.where(go, m, jnp.zeros_like(m)), metrics)
        return new_state, metrics._replace(ran=go)

    def train_update(state: TrainState) -> tuple[TrainState, UpdateMetrics]:
        stats = state.stats._replace(completed=jnp.int32(0), completed_return=jnp.float32(0.0))
        variables, env_state, obs, stats, reward_scale, key, traj = rollout(
            state.params, state.env_state, state.obs, stats, state.reward_scale, state.key, state.hp.gamma
        )
        variables, opt_state, key, metrics = learn(variables, state.opt_state, key, traj, stats, state.hp)
        new_state = TrainState(
            variables, opt_state, env_state, obs, key, stats, state.update + 1, reward_scale, state.hp
        )
        return new_state, metrics

    def chunk_one(state: TrainState, active: jnp.ndarray, num_updates: int):
        # a frozen seed (converged, or out of budget) keeps its state exactly: see update_one
        return jax.lax.scan(lambda s, _: update_one(s, active), state, None, length=num_updates)

    def chunk_single(state: TrainState, active: jnp.ndarray, num_updates: int):
        # One seed: vmap over a size-1 axis would turn every matmul into a batched dot; run it unbatched.
        out = chunk_one(jax.tree.map(lambda x: x[0], state), active[0], num_updates)
        return jax.tree.map(lambda x: x[None], out)

    # One small program (optimizer state, env reset) per seed, not vmapped: the seed is an argument, so it
    # compiles once whatever the seed count, and stacking happens on the host.
    init_single = jax.jit(init_one)

    def init(seeds: jnp.ndarray, hparams: list[HParams] | None = None) -> TrainState:
        """Stacked states of ``seeds`` (one row each), with ``hparams`` per row (default: the config's)."""
        rows_hp = hparams or [HParams.of(ppo)] * len(np.asarray(seeds))
        # the weights come from the host (ppo.networks.init_params: no initialiser to compile), drawn once
        # per seed: a population's members share their seeds' initial weights
        weights = {int(s): init_params(network, spec.observation_shape, int(s)) for s in np.asarray(seeds)}
        states = jax.device_get(
            [
                init_single(seed, weights[int(seed)], hp)
                for seed, hp in zip(np.asarray(seeds), rows_hp, strict=True)
            ]
        )
        # stack on the host: jnp.stack would compile a small program per leaf shape (~2 s cold)
        return jax.device_put(jax.tree.map(lambda *xs: np.stack(xs), *states))

    def state_shapes(n_seeds: int) -> Any:
        one = jax.eval_shape(
            init_one,
            jax.ShapeDtypeStruct((), jnp.uint32),
            param_shapes(network, spec.observation_shape),
            HParams.of(ppo),
        )
        # concrete states come from NumPy stacking: never weak-typed, so neither are these
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct((n_seeds, *x.shape), x.dtype), one)

    batched = chunk_single if n_rows == 1 else jax.vmap(chunk_one, in_axes=(0, 0, None))
    run_chunk = jax.jit(batched, static_argnums=2)
    return Program(init, run_chunk, network, state_shapes)
