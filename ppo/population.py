"""Populations: configs that differ only in hyperparameters that shape no array train as ONE program.

A population is P members whose configs are equal but for :data:`ppo.config.HPARAM_FIELDS` (learning
rate, clip epsilon, gamma, GAE lambda, entropy/value coefficients, max grad norm, Adam epsilon, the
annealing flag): :func:`group_key` says which configs may share a program. Every member trains every seed
of the config: P x S training rows, each carrying its own hyperparameters in its state
(:class:`ppo.program.HParams`), vmapped in one compiled program and split over devices like seeds are
(:mod:`ppo.sharding`). PureJaxRL vmaps ``make_train`` over hyperparameters the same way; a sweep of 8
trials then costs one compile and one dispatch per chunk instead of 8 processes.

Each member is a :class:`ppo.trainer.PPOTrainer` and keeps everything a trainer does between chunks
(:func:`train_together`): its own books, convergence and early stopping, periodic and final evaluation,
checkpoint folder, MLflow run and ``result.json``, so a member's result is the one it would get training
alone. A population of one is plain training: same program, same numbers.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ppo.config import Config, ConfigError, build_config

if TYPE_CHECKING:
    from ppo.trainer import PPOTrainer


def _field(key: str) -> str:
    """``ppo.learning_rate`` or ``learning_rate`` -> ``learning_rate``; anything else is refused."""
    from ppo.config import HPARAM_FIELDS

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


def _shape_fields(config: Config) -> dict[str, Any]:
    """The dotted config fields that make a program: all but the shape-free hyperparameters, where
    checkpoints go and where runs are logged (``tracking``, ``registry``, ``gate`` play no part)."""
    from ppo.config import HPARAM_FIELDS

    free = {f"ppo.{f}" for f in HPARAM_FIELDS} | {"train.checkpoint_dir"}
    return {
        k: v for k, v in config.flat().items() if k.split(".")[0] in ("env", "ppo", "train") and k not in free
    }


def group_key(config: Config) -> str:
    """Configs with the same key train together as one population (one compiled program)."""
    return json.dumps(_shape_fields(config), sort_keys=True, default=str)


@dataclass
class PopulationResult:
    """What a population trained: per member and seed, the final variables and the learning curve."""

    members: list[dict[str, Any]]
    seeds: list[int]
    params: list[list[Any]]  # [member][seed]: the agent's variables (NumPy)
    #: [member, seed, update]: the mean return of the episodes each update completed (NaN: none completed)
    returns: np.ndarray
    env_steps: int  # the most env steps of any row (member x seed)
    total_env_steps: int  # of all rows together
    wall_s: float
    compile_s: float
    train_s: float = float("nan")  # seconds inside the compiled chunks (the training program itself)
    results: list[dict[str, Any]] = field(default_factory=list)  # each member's trainer result

    @property
    def env_steps_per_s(self) -> float:
        """Env steps of all rows per second of the whole call but compilation (initialisation, the host's
        bookkeeping between chunks and the final evaluations included)."""
        train = self.wall_s - self.compile_s
        return self.total_env_steps / train if train > 0 else float("nan")

    @property
    def train_env_steps_per_s(self) -> float:
        """Env steps of all rows per second inside the compiled chunks: the program's own throughput, the
        figure ``bench/train_speed.py`` reports for seeds."""
        return self.total_env_steps / self.train_s if self.train_s > 0 else float("nan")

    def final_return(self, window: int = 10) -> np.ndarray:
        """[member, seed]: the mean of the last ``window`` updates that completed episodes."""
        out = np.full(self.returns.shape[:2], np.nan)
        for m, s in np.ndindex(*out.shape):
            done = self.returns[m, s][~np.isnan(self.returns[m, s])]
            if done.size:
                out[m, s] = done[-window:].mean()
        return out


def _rows(tree: Any, member: int, seeds: int) -> Any:
    """Member ``member``'s rows (``[member * seeds, (member + 1) * seeds)``) of a host pytree."""
    import jax

    return jax.tree.map(lambda x: x[member * seeds : (member + 1) * seeds], tree)


def _runtime(configs: list[Config], timings: dict[str, float]) -> Any:
    """The :class:`ppo.runtime.Runtime` of ``configs``' members (same shapes) as one population."""
    from ppo.program import HParams
    from ppo.runtime import Runtime
    from ppo.sharding import configure_cpu_devices

    configure_cpu_devices()  # before anything starts JAX: one CPU device per core
    return Runtime.population(configs[0], [HParams.of(c.ppo) for c in configs], timings)


def compile_ahead(configs: list[Config]) -> None:
    """Start compiling, in the background, the program :func:`train_together` will run for these members'
    trainers (it picks the compiled program up instead of compiling). Why: ``ppo sweep`` trains a
    one-group sweep in its own process and can compile while its Prefect API starts (the program depends
    on the members' number and shapes, not on their hyperparameter values, which are part of the state)."""
    _runtime(configs, {}).compile_ahead(configs[0].train.updates_per_chunk)


def train_together(
    trainers: list[PPOTrainer], on_chunk: Any = None, between: Any = None
) -> list[dict[str, Any] | FloatingPointError]:
    """Train ``trainers`` (one per member; their configs must share a :func:`group_key`) as one program.

    Each member keeps its own books, logger, evaluations and checkpoints, exactly as
    :meth:`ppo.trainer.PPOTrainer.train` would (without resume); a member stops when its seeds are frozen,
    the others train on. A member whose loss turns NaN/inf is stopped and its run marked FAILED; its entry
    in the returned list is the :class:`ppo.trainer.NonFiniteLossError` (a diverged member is a legitimate
    outcome of a sweep), the others are their results. Any other error stops every member's run and is
    raised. ``on_chunk(metrics, state)`` sees each chunk's metrics and the state after it, all rows, on
    the host. ``between(state, eligible, alive)``, after each chunk's bookkeeping, may return a new host
    state to train on (population-based training, :mod:`ppo.pbt`); ``eligible[m]``: every seed of member
    ``m`` still trains (its rows may change; a frozen seed's state never does); ``alive[m]``: member ``m``
    has not diverged (a diverged member's weights must never be copied).
    """
    import jax

    from ppo.progress import Books
    from ppo.runtime import uses_host_envs
    from ppo.trainer import NonFiniteLossError, _Run

    if not trainers:
        raise ConfigError("a population needs at least one member")
    first = trainers[0].config
    if uses_host_envs(first):
        if len(trainers) > 1 or between is not None:
            raise ConfigError(f"{first.env.id} trains on host-side envs: populations need a JAX env")
        try:  # host envs step in Python: a "population" of one is the trainer's own loop
            return [trainers[0].train()]
        except NonFiniteLossError as e:
            return [e]
    shape = _shape_fields(first)
    for i, trainer in enumerate(trainers[1:], 1):
        other = _shape_fields(trainer.config)
        if other != shape:
            diff = sorted(k for k in shape.keys() | other.keys() if shape.get(k) != other.get(k))
            raise ConfigError(
                f"population member {i} differs from member 0 in {', '.join(diff)}: only shape-free "
                "hyperparameters may differ within a population (train the others as separate groups)"
            )
    timings: dict[str, float] = {}
    runtime = _runtime([t.config for t in trainers], timings)
    chunk, n_seeds = first.train.updates_per_chunk, len(first.train.seeds)
    started = time.perf_counter()
    runtime.compile_ahead(chunk)
    state = runtime.init_state()
    host = jax.device_get(state)
    outcomes: list[dict[str, Any] | FloatingPointError | None] = [None] * len(trainers)
    runs: list[_Run] = []
    open_runs: set[int] = set()  # members whose logger run is open (to close on any error)
    try:
        for m, trainer in enumerate(trainers):
            trainer.timings = timings
            books = Books.new(n_seeds, trainer.config.train.eval_frequency, trainer.config.config_hash())
            runs.append(_Run(books, trainer._open_logger(resumed=False), None, started))
            open_runs.add(m)

        def seeds_to_train() -> list[np.ndarray]:
            """Per member, its seeds that train in the next chunk (none once it stopped or diverged)."""
            masks = []
            for m, (trainer, run) in enumerate(zip(trainers, runs, strict=True)):
                mask = None if outcomes[m] is not None else trainer._active(_rows(host, m, n_seeds), run)
                masks.append(np.zeros(n_seeds, bool) if mask is None else mask)
            return masks

        masks = seeds_to_train()
        while (active := np.concatenate(masks)).any():
            active_dev = runtime.place_active(active)
            chunk_fn = runtime.chunk_fn(state, active_dev, chunk)
            t = time.perf_counter()
            state, metrics = chunk_fn(state, active_dev)
            metrics = jax.device_get(metrics)
            dt = time.perf_counter() - t
            host = jax.device_get(state)
            if on_chunk is not None:
                on_chunk(metrics, host)
            for m, (trainer, run) in enumerate(zip(trainers, runs, strict=True)):
                if not masks[m].any():
                    continue
                try:
                    trainer._after_chunk(_rows(host, m, n_seeds), _rows(metrics, m, n_seeds), dt, run)
                except NonFiniteLossError as e:
                    outcomes[m] = e
                    trainer._abort(run.logger, e)
                    open_runs.discard(m)
            # after the bookkeeping: who trains next (an exploit step changes no episode or update count)
            masks = seeds_to_train()
            if between is not None:
                eligible = np.array([bool(mask.all()) for mask in masks])
                alive = np.array([o is None for o in outcomes])
                changed = between(host, eligible, alive)
                if changed is not None:
                    host = changed
                    state = runtime.place(jax.tree.map(np.asarray, changed))
        finishing = [m for m in range(len(trainers)) if outcomes[m] is None]
        final_evals = _final_evaluations(
            [trainers[m] for m in finishing], [_rows(host, m, n_seeds) for m in finishing]
        )
        for m, final_eval in zip(finishing, final_evals, strict=True):
            trainer, run = trainers[m], runs[m]
            result = trainer._finish(_rows(host, m, n_seeds), run, final_eval)
            result["resumed_from_chunk"] = None
            trainer._complete(result, run.logger)
            if run.logger is not None:
                run.logger.end(status="FINISHED")
            open_runs.discard(m)
            outcomes[m] = result
    except BaseException as e:
        for m in sorted(open_runs):
            trainers[m]._abort(runs[m].logger, e)
        raise
    return [o for o in outcomes if o is not None]


def _final_evaluations(trainers: list[PPOTrainer], states: list[Any]) -> list[dict[str, Any]]:
    """Each trainer's final evaluation of its seeds (``states``: each one's host state), played together.

    Why together: one evaluation per member, one after another, was a population's longest wait after its
    training (64 CartPole members: 2.2-2.7 s of 64 x 100 episodes); in one set of envs
    (:func:`ppo.evaluate.evaluate_params_list`) CartPole's vector env steps them all at once (1.1 s,
    measured 2026-12-02). The episodes
    are those each member's own final evaluation plays (:meth:`PPOTrainer.final_evaluation`), so the
    results are the same; members whose evaluation differs from the first one's (another episode count or
    time limit) play their own."""
    from ppo.evaluate import evaluate_params_list
    from ppo.trainer import seed_evaluation

    if not trainers:
        return []

    def plan(t: PPOTrainer) -> tuple[Any, ...]:
        return (t.config.env.id, t.config.env.max_steps_per_episode, *t.final_evaluation())

    together = [i for i, t in enumerate(trainers) if plan(t) == plan(trainers[0])]
    params = [trainers[i]._split_seeds(states[i]) for i in together]
    env_id, max_steps, episodes, seed = plan(trainers[0])
    returns = evaluate_params_list([p for ps in params for p in ps], env_id, episodes, seed, max_steps)
    out: list[Any] = [None] * len(trainers)
    start = 0
    for i, ps in zip(together, params, strict=True):
        out[i] = seed_evaluation(returns[start : start + len(ps)], seed)
        start += len(ps)
    for i, t in enumerate(trainers):
        if out[i] is None:
            out[i] = t._evaluate_seeds(states[i], *t.final_evaluation())
    return out


def train_population(
    config: Config,
    members: list[dict[str, Any]],
    callback: Any = None,
) -> PopulationResult:
    """Train every member of the population on every seed of ``config`` (up to ``train.max_env_steps``
    env steps per row, or until a row converges) as one compiled program; ``callback(chunks_done)``
    after each chunk. Members log nothing (:func:`train_together` with MLflow-logging trainers does)."""
    from ppo.trainer import PPOTrainer

    if not members:
        raise ConfigError("a population needs at least one member")
    if config.total_updates() is None:
        raise ConfigError("a population trains to train.max_env_steps: set it")
    tracked = build_config(config.to_dict(), {"tracking.enabled": False})
    trainers = [PPOTrainer(config=member_config(tracked, m)) for m in members]
    seeds = [int(s) for s in config.train.seeds]
    curves: list[np.ndarray] = []
    updates = np.zeros(len(members) * len(seeds), np.int64)  # each row's updates after the last chunk
    t0 = time.perf_counter()

    def on_chunk(metrics: Any, state: Any) -> None:
        completed = np.asarray(metrics.episodes_completed, np.float64)  # [rows, k]
        total = np.asarray(metrics.completed_return, np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            curves.append(np.where(np.asarray(metrics.ran) & (completed > 0), total / completed, np.nan))
        updates[:] = np.asarray(state.update)
        if callback is not None:
            callback(len(curves))

    outcomes = train_together(trainers, on_chunk)
    for member, outcome in zip(members, outcomes, strict=True):
        if isinstance(outcome, FloatingPointError):
            raise ConfigError(f"population member {member} diverged: {outcome}")
    batch = config.ppo.batch_size
    return PopulationResult(
        members=[dict(m) for m in members],
        seeds=seeds,
        params=[list(t.seed_params) for t in trainers],
        returns=np.concatenate(curves, axis=1).reshape(len(members), len(seeds), -1),
        env_steps=int(updates.max()) * batch,
        total_env_steps=int(updates.sum()) * batch,
        wall_s=time.perf_counter() - t0,
        compile_s=trainers[0].timings.get("compile_s", 0.0),
        # the member that trained longest trained in every chunk (the loop ends when none trains)
        train_s=max((o["train_time_s"] for o in outcomes if isinstance(o, dict)), default=float("nan")),
        results=[o for o in outcomes if isinstance(o, dict)],
    )
