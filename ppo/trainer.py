"""PPOTrainer: the reference API over the jitted hot path in :mod:`ppo.program`.

The hot path runs as compiled chunks of ``train.updates_per_chunk`` updates for all seeds at once
(:mod:`ppo.runtime` compiles, caches and places them). The host loop between chunks does what needs
Python: episode bookkeeping (:mod:`ppo.progress`), evaluation every ``eval_frequency`` episodes,
convergence and early stopping, callbacks, logging (through a :class:`RunLogger`) and checkpoints. A
seed that has converged (or used its episode budget) is frozen: its state stops changing while the
others train on, so every seed ends at the parameters with which it met the criterion.

The loop's steps (:meth:`PPOTrainer._active`, :meth:`PPOTrainer._after_chunk`, :meth:`PPOTrainer._finish`)
work on one run's state, so :func:`ppo.population.train_together` drives several trainers through them
on the rows of one population program: each member keeps exactly a trainer's bookkeeping.

Each chunk also yields its per-update points (:func:`update_points`: every update's losses and episode
returns, which the compiled chunk computes anyway) for the logger's curves; the history keeps one row per
chunk.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ppo import progress
from ppo.checkpoint import RESULT_NAME
from ppo.config import Config, build_config, flat_kwargs_to_overrides, load_config
from ppo.progress import Books
from ppo.runtime import Runtime, enable_compilation_cache

__all__ = ["PPOTrainer", "NonFiniteLossError", "RunLogger", "Callback", "enable_compilation_cache"]

Callback = Callable[[dict[str, Any]], Any]

#: the checkpoint's per-update points (chunk number as a string -> :func:`update_points`), kept in the
#: books' ``extra`` (``progress.Books`` keeps keys it does not know as they are): a resumed or re-logged
#: run writes them back, so its curves are those of an uninterrupted run
UPDATE_POINTS = "update_points"


@dataclass
class _Run:
    """One training run's host-side state between chunks (what :meth:`PPOTrainer._after_chunk` updates)."""

    books: Books
    logger: RunLogger | None
    callback: Callback | None
    started: float  # perf_counter at the start of train()
    train_time: float = 0.0  # seconds inside the compiled chunks
    train_steps: int = 0  # env steps of the updates that were applied


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss; the run is aborted and nothing is registered."""


class RunLogger(Protocol):
    """What the trainer asks of a run logger (:class:`ppo.tracking.MLflowLogger` is one).

    Used when a logger has them: ``log_chunk(row, updates)`` (a chunk's row with its per-update points,
    :func:`update_points`, instead of ``log_row``), ``log_history(rows, updates=...)`` (a resumed run's
    checkpointed chunks) and ``has_run(run_id)`` (whether a finished run is still in the store).
    """

    run_id: str | None

    def start(self, config: Config, resumed: bool = False, run_dir: Path | None = None) -> str | None:
        """Open the run (or reopen the one recorded in ``run_dir`` when resuming); return its id."""
        ...

    def log_row(self, row: dict[str, Any]) -> None:
        """One history row, after each chunk."""
        ...

    def log_result(self, result: dict[str, Any], agent: Any, config: Config) -> None:
        """The run's result, with the trained agent and its config."""
        ...

    def end(self, status: str = "FINISHED", error: str | None = None) -> None:
        """Close the run: FINISHED, FAILED or KILLED."""
        ...


class PPOTrainer:
    """Train PPO agents on a gymnax env; evaluate on the real gymnasium env.

    Args:
        agent: optional :class:`~ppo.agent.PPOAgent`; its sizes must match the env. After training it
            holds the parameters of the seed with the best final evaluation.
        env: optional :class:`~ppo.envs.CartPoleWrapper`; its ``env_id`` selects the env.
        config: a :class:`~ppo.config.Config`, a YAML path, or None (defaults).
        enable_mlflow: log to MLflow via :class:`~ppo.tracking.MLflowLogger` (unless ``logger`` is given).
        logger: a :class:`RunLogger` to log to.
        **params: any config field by its reference name (``max_episodes=...``) or dotted name.
    """

    def __init__(
        self,
        agent: Any = None,
        env: Any = None,
        config: Config | str | os.PathLike[str] | None = None,
        enable_mlflow: bool = False,
        logger: RunLogger | None = None,
        **params: Any,
    ) -> None:
        from ppo.sharding import configure_cpu_devices

        configure_cpu_devices()  # before anything starts JAX: one CPU device per core
        overrides = flat_kwargs_to_overrides(params)
        if env is not None:
            overrides.setdefault("env.id", env.env_id)
            if getattr(env, "max_steps_per_episode", None):
                overrides.setdefault("env.max_steps_per_episode", env.max_steps_per_episode)
        if agent is not None:
            overrides.setdefault("ppo.hidden_sizes", list(agent.hidden_sizes))
            overrides.setdefault("ppo.activation", agent.activation)
        if isinstance(config, Config):
            self.config = build_config(config.to_dict(), overrides)
        else:
            self.config = load_config(config, overrides)
        from ppo.envs import env_spec

        spec = env_spec(self.config.env.id)
        if agent is not None and (agent.observation_dim, agent.action_dim) != (
            spec.observation_dim,
            spec.action_dim,
        ):
            raise ValueError(
                f"agent dims ({agent.observation_dim}, {agent.action_dim}) do not match "
                f"{spec.env_id} ({spec.observation_dim}, {spec.action_dim})"
            )
        self.env = env
        self._agent = agent
        # evaluate() scores a given agent, or one that train()/restore() gave trained parameters; not the
        # fresh network `agent` builds when read before that
        self._agent_ready = agent is not None
        self.enable_mlflow = enable_mlflow
        self.logger = logger
        self.state: Any = None
        self.seed_params: list[Any] = []
        self.timings: dict[str, float] = {}

    @classmethod
    def from_config(
        cls, path: str | os.PathLike[str] | None = None, enable_mlflow: bool | None = None, **overrides: Any
    ) -> PPOTrainer:
        """Build from a YAML file plus overrides (reference names or dotted names)."""
        config = load_config(path, flat_kwargs_to_overrides(overrides))
        return cls(
            config=config, enable_mlflow=config.tracking.enabled if enable_mlflow is None else enable_mlflow
        )

    # ------------------------------------------------------------------ paths and program
    @property
    def checkpoint_dir(self) -> Path:
        """This config's folder (:func:`ppo.checkpoint.checkpoint_folder`, the one rule for every caller)."""
        from ppo.checkpoint import checkpoint_folder

        return checkpoint_folder(self.config)

    @property
    def sharding(self) -> Any:
        """The multi-device layout (:mod:`ppo.sharding`), or ``None`` on one device."""
        if not hasattr(self, "_sharding"):
            from ppo.sharding import plan_for

            self._sharding = plan_for(self.config)
        return self._sharding

    @property
    def runtime(self) -> Runtime:
        """This config's compiled program on its devices (compile times go to :attr:`timings`)."""
        return Runtime(self.config, self.sharding, self.timings)

    def init_state(self) -> Any:
        return self.runtime.init_state()

    def _chunk_fn(self, state: Any, active: Any, num_updates: int) -> Any:
        return self.runtime.chunk_fn(state, active, num_updates)

    # ------------------------------------------------------------------ training
    def train(self, callback: Callback | None = None, resume: bool = False) -> dict[str, Any]:
        """Train until every seed converged or spent its budget (see the README for the semantics).

        ``callback(info)`` gets ``{'episode', 'env_steps', 'step_metrics', 'eval_metrics'?}`` every
        ``log_frequency`` chunks; returning ``False`` stops training (a final evaluation still runs).
        ``resume=True`` continues from the checkpoint in :attr:`checkpoint_dir` if there is one.
        """
        import jax
        import jax.numpy as jnp

        from ppo.checkpoint import load_checkpoint

        cfg, tr = self.config, self.config.train
        started = time.perf_counter()
        runtime = self.runtime
        books = Books.new(len(tr.seeds), tr.eval_frequency, cfg.config_hash())
        resumed_from = None
        # resuming loads into the state's shapes (jax.eval_shape): the init (and, for a finished run,
        # the chunk's compile) would be wasted work
        restored = load_checkpoint(self.checkpoint_dir, runtime.state_shapes()) if resume else None
        if restored is None or not self._finished(restored[1]):
            runtime.compile_ahead(tr.updates_per_chunk)
        state = runtime.init_state() if restored is None else None
        if resume:
            if restored is not None:
                state, meta = restored
                state = runtime.place(jax.tree.map(jnp.asarray, state))
                books = Books.from_dict(meta, len(tr.seeds))
                resumed_from = books.chunk
                books.stopped_by_callback = False
                done = self.checkpoint_dir / RESULT_NAME
                if books.finished and books.stop_reason != "callback" and done.is_file():
                    # a finished run: hand back its result, log nothing twice (unless its run is lost)
                    self.state = state
                    self._split_seeds(state)
                    self._set_agent(int(books.best_seed_index or 0))
                    result = self._relog_if_lost(json.loads(done.read_text()), books.extra.get(UPDATE_POINTS))
                    return {**result, "resumed_from_chunk": resumed_from}
        logger = self._open_logger(resumed=resumed_from is not None)
        try:
            if resumed_from is not None and books.history:
                self._log_history(logger, books.history, books.extra.get(UPDATE_POINTS))
            try:
                result = self._loop(runtime, state, _Run(books, logger, callback, started))
            finally:
                runtime.release()
            result["resumed_from_chunk"] = resumed_from
            self._complete(result, logger)
        except BaseException as e:
            self._abort(logger, e)
            raise
        if logger is not None:
            logger.end(status="FINISHED")
        return result

    def _complete(self, result: dict[str, Any], logger: RunLogger | None) -> None:
        """Log the result to the run and write ``result.json`` (a failure here must end the run FAILED, so
        callers do this inside their ``try``)."""
        if logger is not None:
            logger.log_result(result, agent=self.agent, config=self.config)
            result["run_id"] = logger.run_id
        # before the run is closed: a full disk here ends the run FAILED, never FINISHED without it
        self._write_result(result)

    @staticmethod
    def _abort(logger: RunLogger | None, error: BaseException) -> None:
        """End the run after ``error``: FAILED, or KILLED for a stop from outside (Ctrl-C, SIGTERM as
        Prefect's TerminationSignal, SystemExit; the checkpoint is kept for --resume)."""
        if logger is None:
            return
        try:
            logger.end(status="FAILED" if isinstance(error, Exception) else "KILLED", error=repr(error))
        except Exception as end_error:  # the tracking server may be what failed: keep the first error
            error.add_note(f"(the MLflow run could not be marked FAILED: {end_error})")

    def _write_result(self, result: dict[str, Any]) -> None:
        from ppo import atomic

        atomic.write_text(self.checkpoint_dir / RESULT_NAME, json.dumps(result, default=str))

    @staticmethod
    def _log_history(
        logger: RunLogger | None,
        history: list[dict[str, Any]],
        updates: dict[str, dict[str, list[Any]]] | None = None,
    ) -> None:
        """On resume: write the checkpoint's history rows and per-update points (:data:`UPDATE_POINTS`) the
        run is missing (those of the chunks before a kill that never reached the store), so its curves
        match an uninterrupted run's. A logger without ``log_history`` gets nothing."""
        log_history = getattr(logger, "log_history", None)
        if log_history is not None:
            log_history(history, updates=updates)

    @staticmethod
    def _log_chunk(logger: RunLogger, row: dict[str, Any], updates: dict[str, list[Any]]) -> None:
        """A chunk's row and per-update points; a logger without ``log_chunk`` (the :class:`RunLogger`
        protocol asks only for ``log_row``) gets the row."""
        log_chunk = getattr(logger, "log_chunk", None)
        if log_chunk is not None:
            log_chunk(row, updates)
        else:
            logger.log_row(row)

    def _relog_if_lost(
        self, result: dict[str, Any], updates: dict[str, dict[str, list[Any]]] | None = None
    ) -> dict[str, Any]:
        """A finished run's result, logged again to a new run when the one it names is gone from the store
        (``mlflow.db`` emptied or replaced, the run deleted): without this every later re-run would hand
        back a run id that no longer exists. Everything comes from the checkpoint (the per-update points,
        ``updates``) and ``result.json``."""
        if not self.enable_mlflow and self.logger is None:
            return result
        if self.logger is None:
            from ppo.tracking import MLflowLogger

            self.logger = MLflowLogger.from_config(self.config)
        has_run = getattr(self.logger, "has_run", None)
        if has_run is None or has_run(result.get("run_id")):
            return result
        logger = self.logger
        logger.start(self.config, resumed=False, run_dir=self.checkpoint_dir)
        try:
            self._log_history(logger, result.get("history") or [], updates)
            logger.log_result(result, agent=self.agent, config=self.config)
            result = {**result, "run_id": logger.run_id}
            self._write_result(result)
        except BaseException as e:
            self._abort(logger, e)
            raise
        logger.end(status="FINISHED")
        return result

    def _finished(self, meta: dict[str, Any]) -> bool:
        """Whether a checkpoint's books say its run is over (and its result was written)."""
        return (
            bool(meta.get("finished"))
            and meta.get("stop_reason") != "callback"
            and (self.checkpoint_dir / RESULT_NAME).is_file()
        )

    def _open_logger(self, resumed: bool) -> RunLogger | None:
        if self.logger is None:
            if not self.enable_mlflow:
                return None
            from ppo.tracking import MLflowLogger  # the one place the trainer names a logger

            self.logger = MLflowLogger.from_config(self.config)
        self.logger.start(self.config, resumed=resumed, run_dir=self.checkpoint_dir)
        return self.logger

    def _loop(self, runtime: Runtime, state: Any, run: _Run) -> dict[str, Any]:
        """Chunks until every seed is frozen (converged, or a budget spent) or the callback says stop."""
        import jax

        chunk = self.config.train.updates_per_chunk
        while (active := self._active(state, run)) is not None:
            active_dev = runtime.place_active(active)
            chunk_fn = runtime.chunk_fn(state, active_dev, chunk)
            t = time.perf_counter()
            state, metrics = chunk_fn(state, active_dev)
            metrics = jax.device_get(metrics)
            self._after_chunk(state, metrics, time.perf_counter() - t, run)
        return self._finish(state, run)

    def _active(self, state: Any, run: _Run) -> np.ndarray | None:
        """The seeds that train in the next chunk, or ``None`` when the run is over (every seed frozen,
        or the callback said stop). ``state`` is this run's (device or host) state."""
        import jax

        if run.books.stopped_by_callback:
            return None
        tr = self.config.train
        episodes = np.asarray(jax.device_get(state.stats.episodes))
        updates = np.asarray(jax.device_get(state.update))
        total_updates = self.config.total_updates()
        active = progress.active_seeds(run.books, episodes, updates, tr.max_episodes, total_updates)
        return active if active.any() else None

    def _after_chunk(self, state: Any, metrics: Any, dt: float, run: _Run) -> None:
        """The host's work after a chunk (``state`` after it, ``metrics`` on the host, ``dt`` its seconds):
        the non-finite check, convergence, the history row, periodic evaluation, logging, the callback and
        the checkpoint. Raises :class:`NonFiniteLossError` when an applied update's loss is NaN/inf."""
        import jax

        from ppo.checkpoint import save_checkpoint
        from ppo.evaluate import stream_seed

        cfg, tr, books, logger = self.config, self.config.train, run.books, run.logger
        seeds = list(tr.seeds)
        batch = cfg.ppo.batch_size
        stats = jax.device_get(state.stats)
        run.train_time += dt
        ran = np.asarray(metrics.ran, bool)  # [seeds, updates]: updates actually applied
        updates_after = np.asarray(jax.device_get(state.update))
        run.train_steps += int(ran.sum()) * batch
        books.chunk += 1

        bad = progress.first_non_finite(metrics.total_loss, ran)
        if bad is not None:
            update = int(updates_after[bad[0]]) - int(ran[bad[0]].sum()) + bad[1] + 1
            raise NonFiniteLossError(
                f"non-finite loss at update {update} (seed {seeds[bad[0]]}): "
                f"policy={metrics.policy[bad]}, value={metrics.value[bad]}; "
                "training aborted, nothing will be registered"
            )

        episodes = np.asarray(stats.episodes)
        trained = np.asarray(ran.any(axis=1))  # seeds that took at least one update in this chunk
        means = progress.window_means(stats.window, episodes, tr.convergence_window)
        progress.update_convergence(
            books,
            means,
            episodes,
            trained,
            tr.convergence_window,
            tr.target_reward,
            tr.early_stopping_patience,
        )
        env_steps = int(updates_after.max()) * batch
        row = progress.build_row(
            books,
            metrics,
            episodes,
            means,
            seeds,
            env_steps,
            batch,
            dt,
            wall_s=time.perf_counter() - run.started,
        )

        # periodic evaluation, per seed: each seed that trained in this chunk and passed its next
        # evaluation point is evaluated on a fresh block of the periodic stream
        due = progress.due_for_eval(books, episodes, trained)
        eval_metrics = None
        if due:
            k, n = len(books.evals), tr.eval_episodes
            eval_metrics = self._evaluate_seeds(state, n, stream_seed("periodic", k * n, n), only=due)
            eval_metrics.update(episode=row["episodes"], env_steps=env_steps, seeds=[seeds[i] for i in due])
            progress.record_eval(books, row, eval_metrics, due, episodes, tr.eval_frequency, seeds)
        books.history.append(row)
        points = update_points(metrics, updates_after, seeds, batch)
        books.extra.setdefault(UPDATE_POINTS, {})[str(books.chunk)] = points

        if logger is not None:
            self._log_chunk(logger, row, points)
        if run.callback is not None and (books.chunk % tr.log_frequency == 0 or eval_metrics is not None):
            if run.callback(progress.callback_info(row, eval_metrics)) is False:
                books.stopped_by_callback = True
        if tr.checkpoint_every and books.chunk % tr.checkpoint_every == 0:
            save_checkpoint(self.checkpoint_dir, state, books.to_dict())

    def _finish(self, state: Any, run: _Run, final_eval: dict[str, Any] | None = None) -> dict[str, Any]:
        """After the last chunk: why each seed stopped, the final evaluation (which picks the agent's seed;
        ``final_eval``: already played, :meth:`final_evaluation`'s), the final checkpoint, and the result."""
        import jax

        from ppo.checkpoint import save_checkpoint

        cfg, tr, books = self.config, self.config.train, run.books
        seeds, batch = list(tr.seeds), cfg.ppo.batch_size
        episodes = np.asarray(jax.device_get(state.stats.episodes))
        updates = np.asarray(jax.device_get(state.update))
        stop_reason, per_seed = progress.stop_reasons(
            books, episodes, updates, tr.max_episodes, cfg.total_updates()
        )
        self.state = state
        if final_eval is None:
            final_eval = self._evaluate_seeds(state, *self.final_evaluation())
        best = int(np.argmax(final_eval["per_seed_avg"]))
        books.best_seed_index, books.final_eval, books.finished, books.stop_reason = (
            best,
            final_eval,
            True,
            stop_reason,
        )
        save_checkpoint(self.checkpoint_dir, state, books.to_dict())
        self._set_agent(best)
        wall = time.perf_counter() - run.started
        return {
            **progress.summary(
                books, seeds, episodes, updates, batch, per_seed, stop_reason, final_eval, best
            ),
            "wall_time_s": wall,
            "train_time_s": run.train_time,
            "env_steps_per_s": run.train_steps / run.train_time if run.train_time > 0 else None,
            "compile_s": self.timings.get("compile_s", 0.0),
            "history": books.history,
            "checkpoint_dir": str(self.checkpoint_dir),
            "config_hash": books.config_hash,
        }

    @property
    def agent(self) -> Any:
        """The :class:`~ppo.agent.PPOAgent`: the one passed in, else one with the config's network
        (fresh parameters until :meth:`train` or :meth:`restore` gives it the best seed's), built on
        first use so that a trainer made only to restore or evaluate does not initialise one twice."""
        if self._agent is None:
            self._agent = self._new_agent(None)
        return self._agent

    @agent.setter
    def agent(self, value: Any) -> None:
        self._agent = value
        self._agent_ready = value is not None

    def _new_agent(self, params: Any) -> Any:
        from ppo.agent import PPOAgent
        from ppo.envs import env_spec

        spec = env_spec(self.config.env.id)
        return PPOAgent(
            spec.observation_dim,
            spec.action_dim,
            self.config.ppo.hidden_sizes,
            params=params,
            action_space=spec.action,
            log_std_init=self.config.ppo.log_std_init,
            observation_shape=spec.observation_shape,
            conv_channels=self.config.ppo.conv_channels,
            activation=self.config.ppo.activation,
        )

    def _set_agent(self, best: int) -> None:
        self._agent_ready = True
        if self._agent is None:
            self._agent = self._new_agent(self.seed_params[best])
        else:
            self._agent.params = self.seed_params[best]

    def restore(self) -> dict[str, Any]:
        """Load the latest checkpoint (no training); the agent gets the best (or first) seed's params.

        The template for loading is the state's shapes (``jax.eval_shape``): nothing is run or compiled.
        Returns the checkpoint's host metadata (history, evaluations, convergence, final_eval).
        """
        import jax
        import jax.numpy as jnp

        from ppo.checkpoint import load_checkpoint

        restored = load_checkpoint(self.checkpoint_dir, self.runtime.state_shapes())
        if restored is None:
            raise FileNotFoundError(f"no checkpoint in {self.checkpoint_dir}: train this config first")
        state, host = restored
        self.state = jax.tree.map(jnp.asarray, state)
        self._split_seeds(self.state)
        self._set_agent(int(host.get("best_seed_index", 0)))
        return host

    # ------------------------------------------------------------------ evaluation
    def _split_seeds(self, state: Any) -> list[Any]:
        import jax

        params = jax.device_get(state.params)
        self.seed_params = [
            jax.tree.map(lambda x, i=i: np.asarray(x[i]), params) for i in range(len(self.config.train.seeds))
        ]
        return self.seed_params

    def final_evaluation(self) -> tuple[int, int]:
        """The final evaluation's episodes: how many, and the first gymnasium seed (the same for every
        run: each trained seed, and each member of a population, faces the same start states)."""
        from ppo.evaluate import stream_seed

        n = self.config.train.eval_episodes
        return n, stream_seed("final", 0, n)

    def _evaluate_seeds(
        self, state: Any, num_episodes: int, seed: int, only: list[int] | None = None
    ) -> dict[str, Any]:
        """Greedy gymnasium returns of every trained seed (or the seed indices in ``only``)."""
        from ppo.evaluate import evaluate_params_list

        params = self._split_seeds(state)
        if only is not None:
            params = [params[i] for i in only]
        returns = evaluate_params_list(
            params, self.config.env.id, num_episodes, seed, self.config.env.max_steps_per_episode
        )
        return seed_evaluation(returns, seed)

    def evaluate(
        self, num_episodes: int = 10, backend: str = "gymnasium", seed: int = 0, all_seeds: bool = False
    ) -> dict[str, Any]:
        """Greedy evaluation of the trained agent (or, with ``all_seeds``, of every trained seed).

        ``backend="gymnasium"`` runs the real env; ``"jax"`` runs the gymnax twin, jitted.
        """
        from ppo.evaluate import evaluate_params_list, make_jax_evaluator, summarize_seeds

        if backend not in ("gymnasium", "jax"):
            raise ValueError(f"backend must be 'gymnasium' or 'jax', got {backend!r}")
        if num_episodes < 1:
            raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
        if not self._agent_ready:
            raise RuntimeError("no trained agent: call train() or restore() first, or pass agent=")
        params_list = self.seed_params if all_seeds and self.seed_params else [self.agent.params]
        if backend == "gymnasium":
            returns = evaluate_params_list(
                params_list, self.config.env.id, num_episodes, seed, self.config.env.max_steps_per_episode
            )
        else:
            import jax

            from ppo.envs import make_jax_env
            from ppo.program import make_network

            env, env_params = make_jax_env(self.config.env.id, self.config.env.max_steps_per_episode)
            from ppo.distributions import distribution
            from ppo.envs import env_spec

            dist = distribution(env_spec(self.config.env.id).action)
            run = make_jax_evaluator(make_network(self.config), env, env_params, num_episodes, dist)
            returns = np.stack([np.asarray(run(p, jax.random.PRNGKey(seed))) for p in params_list])
        return summarize_seeds(returns)


def seed_evaluation(returns: np.ndarray, seed: int) -> dict[str, Any]:
    """The evaluation record of ``[seeds, episodes]`` returns played from gymnasium seed ``seed`` on."""
    from ppo.evaluate import summarize_seeds

    # gym_seeds: the [start, stop) of the episodes played
    return {**summarize_seeds(returns), "gym_seeds": [seed, seed + returns.shape[1]]}


def update_points(
    metrics: Any, updates_after: np.ndarray, seeds: list[int], batch: int
) -> dict[str, list[Any]]:
    """A chunk's per-update points for the logger's curves: ``env_steps`` (ascending) and, per history key,
    one value per update (None where the update has none).

    ``metrics`` are the chunk's per-seed, per-update arrays (``[seeds, updates]``, what the compiled chunk
    returns: nothing is computed again, training is untouched); ``updates_after`` each seed's update count
    after the chunk. Only the updates that ran count: a seed's applied updates are numbered on from its
    count before the chunk, and the seeds at the same update count are averaged (the losses, and the mean
    return of the episodes the update completed). Per seed, ``episode_return/seed_<n>`` for the seeds that
    trained in the chunk, as the history's row has them. The points of the last update fall on the row's
    step (the most env steps of any seed).
    """
    ran = np.asarray(metrics.ran, bool)
    applied = ran.sum(axis=1, keepdims=True)
    number = np.asarray(updates_after).reshape(-1, 1) - applied + np.cumsum(ran, axis=1)  # [seeds, updates]
    at, which = np.unique(number[ran], return_inverse=True)  # the distinct update numbers, ascending
    count = np.bincount(which, minlength=len(at))
    out: dict[str, list[Any]] = {"env_steps": [int(u) * batch for u in at]}
    for key, field in progress.LOSS_FIELDS.items():
        values = np.asarray(getattr(metrics, field), dtype=float)[ran]
        out[key] = [float(v) for v in np.bincount(which, weights=values, minlength=len(at)) / count]
    completed = np.asarray(metrics.episodes_completed)
    returns = np.asarray(metrics.completed_return, dtype=float) / np.maximum(completed, 1)
    finished = ran & (completed > 0)  # an applied update that completed at least one episode
    has = finished[ran]
    seeds_at = np.bincount(which[has], minlength=len(at))  # per update number: seeds with a return
    total = np.bincount(which[has], weights=returns[finished], minlength=len(at))
    out["episode_return"] = [float(t / k) if k else None for t, k in zip(total, seeds_at, strict=True)]
    index = {int(u): j for j, u in enumerate(at)}
    for i, seed in enumerate(seeds):
        if not ran[i].any():
            continue
        column: list[float | None] = [None] * len(at)
        for u, r in zip(number[i][finished[i]], returns[i][finished[i]], strict=True):
            column[index[int(u)]] = float(r)
        out[f"episode_return/seed_{seed}"] = column
    return out
