"""PPOTrainer: the reference API over the jitted hot path in :mod:`ppo.program`.

The hot path runs as compiled chunks of ``train.updates_per_chunk`` updates for all seeds at once. The
host loop between chunks does what needs Python: episode bookkeeping, evaluation every
``eval_frequency`` episodes, convergence and early stopping, callbacks, logging and checkpoints. A seed
that has converged (or used its episode budget) is frozen: its state stops changing while the others
train on, so every seed ends at the parameters with which it met the criterion.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ppo.config import Config, build_config, confined_path, flat_kwargs_to_overrides, load_config, ppo_home

Callback = Callable[[dict[str, Any]], Any]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss; the run is aborted and nothing is registered."""


#: Built programs and compiled chunks, per config hash: a second trainer for the same config in the
#: same process (a re-run flow, a resume) neither retraces nor recompiles.
_PROGRAMS: dict[str, Any] = {}
_COMPILED: dict[tuple[str, int], Any] = {}  # a compiled chunk, or the Future of one being compiled


def enable_compilation_cache() -> Path | None:
    """Use JAX's persistent compilation cache, in ``$PPO_JAX_CACHE`` if it names a folder, else in
    ``$PPO_HOME/jax-cache``; ``PPO_JAX_CACHE=0`` disables it (cold-start benchmarks)."""
    setting = os.environ.get("PPO_JAX_CACHE", "")
    if setting == "0":
        return None
    import jax

    path = Path(setting) if setting not in ("", "1") else ppo_home() / "jax-cache"
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> float | None:
    """Mean of ``values`` where ``mask`` (the updates that were applied); None when there are none."""
    picked = np.asarray(values, dtype=float)[mask]
    return float(picked.mean()) if picked.size else None


class PPOTrainer:
    """Train PPO agents on a gymnax env; evaluate on the real gymnasium env.

    Args:
        agent: optional :class:`~ppo.agent.PPOAgent`; its sizes must match the env. After training it
            holds the parameters of the seed with the best final evaluation.
        env: optional :class:`~ppo.envs.CartPoleWrapper`; its ``env_id`` selects the env.
        config: a :class:`~ppo.config.Config`, a YAML path, or None (defaults).
        enable_mlflow: log to MLflow via :class:`~ppo.tracking.MLflowLogger`.
        **params: any config field by its reference name (``max_episodes=...``) or dotted name.
    """

    def __init__(self, agent: Any = None, env: Any = None, config: Config | str | os.PathLike[str] | None = None,
                 enable_mlflow: bool = False, logger: Any = None, **params: Any) -> None:
        from ppo.sharding import configure_cpu_devices

        configure_cpu_devices()  # before anything starts JAX: one CPU device per core
        overrides = flat_kwargs_to_overrides(params)
        if env is not None:
            overrides.setdefault("env.id", env.env_id)
            if getattr(env, "max_steps_per_episode", None):
                overrides.setdefault("env.max_steps_per_episode", env.max_steps_per_episode)
        if agent is not None:
            overrides.setdefault("ppo.hidden_sizes", list(agent.hidden_sizes))
        if isinstance(config, Config):
            self.config = build_config(config.to_dict(), overrides)
        else:
            self.config = load_config(config, overrides)
        from ppo.envs import env_spec

        spec = env_spec(self.config.env.id)
        if agent is not None and (agent.observation_dim, agent.action_dim) != (spec.observation_dim, spec.action_dim):
            raise ValueError(f"agent dims ({agent.observation_dim}, {agent.action_dim}) do not match "
                             f"{spec.env_id} ({spec.observation_dim}, {spec.action_dim})")
        self.env = env
        self.agent = agent
        self.enable_mlflow = enable_mlflow
        self.logger = logger
        self.state: Any = None
        self.seed_params: list[Any] = []
        self.timings: dict[str, float] = {}

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] | None = None, enable_mlflow: bool | None = None,
                    **overrides: Any) -> PPOTrainer:
        """Build from a YAML file plus overrides (reference names or dotted names)."""
        config = load_config(path, flat_kwargs_to_overrides(overrides))
        return cls(config=config, enable_mlflow=config.tracking.enabled if enable_mlflow is None else enable_mlflow)

    # ------------------------------------------------------------------ paths and program
    @property
    def checkpoint_dir(self) -> Path:
        if self.config.train.checkpoint_dir:
            return confined_path(self.config.train.checkpoint_dir)
        return ppo_home() / "checkpoints" / self.config.config_hash()

    def _get_program(self) -> Any:  # ppo.program.Program
        key = self.config.config_hash()
        if key not in _PROGRAMS:
            from ppo.program import make_program

            enable_compilation_cache()
            _PROGRAMS[key] = make_program(self.config)
        return _PROGRAMS[key]

    @property
    def sharding(self) -> Any:
        """The multi-device layout (:mod:`ppo.sharding`), or ``None`` on one device."""
        if not hasattr(self, "_sharding"):
            from ppo.sharding import plan_for

            self._sharding = plan_for(self.config)
        return self._sharding

    def _place(self, state: Any) -> Any:
        """Put a (host or device) state where the chunk program expects it."""
        import jax

        plan = self.sharding
        return state if plan is None else jax.device_put(state, plan.state(state, self.config.env.num_envs))

    def _compile(self, state: Any, active: Any, num_updates: int) -> Any:
        """Lower and compile one chunk for (abstract or concrete) ``state``/``active``."""
        import jax

        t = time.perf_counter()
        fn, plan = self._get_program().run_chunk, self.sharding
        if plan is not None:  # same program, laid out on the mesh; outputs stay where inputs are
            state_sh = plan.state(state, self.config.env.num_envs)
            fn = jax.jit(fn.__wrapped__, static_argnums=2, in_shardings=(state_sh, plan.per_seed()),
                         out_shardings=(state_sh, plan.per_seed()))
        compiled = fn.lower(state, active, num_updates).compile()
        self.timings["compile_s"] = self.timings.get("compile_s", 0.0) + time.perf_counter() - t
        return compiled

    def _compile_ahead(self, num_updates: int) -> None:
        """Start compiling the chunk in a background thread, from the state's shapes alone.

        Why: XLA compiles with the GIL released on one core, so the init (host weights, env reset, its
        own small compile) and the checkpoint load run meanwhile on the other; a cold start saves the
        init's time. :meth:`_chunk_fn` waits for it.
        """
        key = (self.config.config_hash(), num_updates)
        if key in _COMPILED:
            return
        import concurrent.futures

        import jax

        shapes = self._get_program().state_shapes(len(self.config.train.seeds))
        active = jax.ShapeDtypeStruct((len(self.config.train.seeds),), bool)
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ppo-compile")
        _COMPILED[key] = pool.submit(self._compile, shapes, active, num_updates)
        pool.shutdown(wait=False)

    def _chunk_fn(self, state: Any, active: Any, num_updates: int) -> Any:
        import concurrent.futures

        key = (self.config.config_hash(), num_updates)
        if key not in _COMPILED:
            _COMPILED[key] = self._compile(state, active, num_updates)
        elif isinstance(_COMPILED[key], concurrent.futures.Future):
            try:
                _COMPILED[key] = _COMPILED[key].result()
            except BaseException:
                del _COMPILED[key]  # a later call compiles in the foreground and raises there
                raise
        return _COMPILED[key]

    def init_state(self) -> Any:
        import jax.numpy as jnp

        init = self._get_program().init
        t = time.perf_counter()
        state = self._place(init(jnp.asarray(self.config.train.seeds, dtype=jnp.uint32)))
        self.timings.setdefault("init_s", time.perf_counter() - t)
        return state

    # ------------------------------------------------------------------ training
    def train(self, callback: Callback | None = None, resume: bool = False) -> dict[str, Any]:
        """Train until every seed converged or spent its budget; see DESIGN.md for the semantics.

        ``callback(info)`` gets ``{'episode', 'env_steps', 'step_metrics', 'eval_metrics'?}`` every
        ``log_frequency`` chunks; returning ``False`` stops training (a final evaluation still runs).
        ``resume=True`` continues from the checkpoint in :attr:`checkpoint_dir` if there is one.
        """
        import jax
        import jax.numpy as jnp

        from ppo.checkpoint import load_checkpoint, save_checkpoint

        cfg, tr = self.config, self.config.train
        started = time.perf_counter()
        seeds = list(tr.seeds)
        n_seeds = len(seeds)
        self._compile_ahead(tr.updates_per_chunk)
        state = self.init_state()
        host: dict[str, Any] = {
            "chunk": 0, "converged_since": [None] * n_seeds, "converged": [False] * n_seeds,
            "best_avg": [None] * n_seeds, "next_eval_at": [tr.eval_frequency] * n_seeds, "history": [], "evals": [],
            "config_hash": cfg.config_hash(), "stopped_by_callback": False,
        }
        resumed_from = None
        if resume:
            restored = load_checkpoint(self.checkpoint_dir, state)
            if restored is not None:
                state, host = restored
                state = self._place(jax.tree.map(jnp.asarray, state))
                resumed_from = host["chunk"]
                host["stopped_by_callback"] = False
                done = self.checkpoint_dir / "result.json"
                if host.get("finished") and host.get("stop_reason") != "callback" and done.is_file():
                    # a finished run: hand back its result, log nothing twice
                    self.state = state
                    self._split_seeds(state)
                    self._set_agent(int(host.get("best_seed_index", 0)))
                    return {**json.loads(done.read_text()), "resumed_from_chunk": resumed_from}
        logger = self._open_logger(resumed=resumed_from is not None)
        try:
            result = self._loop(state, host, callback, logger, started, save_checkpoint)
            result["resumed_from_chunk"] = resumed_from
            if logger is not None:
                logger.log_result(self, result)  # inside the try: a failure here must not leave RUNNING
        except BaseException as e:
            if logger is not None:
                try:
                    logger.end(status="KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED", error=repr(e))
                except Exception as end_error:  # the tracking server may be what failed: keep the first error
                    e.add_note(f"(the MLflow run could not be marked FAILED: {end_error})")
            raise
        if logger is not None:
            logger.end(status="FINISHED")
            result["run_id"] = logger.run_id
        from ppo import atomic

        atomic.write_text(self.checkpoint_dir / "result.json", json.dumps(result, default=str))
        return result

    def _open_logger(self, resumed: bool) -> Any:
        if self.logger is None:
            if not self.enable_mlflow:
                return None
            from ppo.tracking.logger import MLflowLogger

            self.logger = MLflowLogger.from_config(self.config)
        self.logger.start(self.config, resumed=resumed, run_dir=self.checkpoint_dir)
        return self.logger

    def _loop(self, state: Any, host: dict[str, Any], callback: Callback | None, logger: Any,
              started: float, save_checkpoint: Callable[..., Any]) -> dict[str, Any]:
        """Chunks until every seed is frozen (converged, or a budget spent) or the callback says stop.

        Every seed keeps its own books: a frozen seed's state, episodes and metrics stop changing, its
        discarded updates report nothing, and the other seeds go on counting and evaluating.
        """
        import jax
        import jax.numpy as jnp

        from ppo.evaluate import stream_seed

        cfg, tr = self.config, self.config.train
        seeds = list(tr.seeds)
        n_seeds = len(seeds)
        batch = cfg.ppo.batch_size
        window = tr.convergence_window
        total_updates = cfg.total_updates()
        if not isinstance(host["next_eval_at"], list):  # a checkpoint of the one-counter-for-all layout
            host["next_eval_at"] = [host["next_eval_at"]] * n_seeds
        train_time = 0.0
        train_steps = 0
        while True:
            episodes = np.asarray(jax.device_get(state.stats.episodes))
            updates = np.asarray(jax.device_get(state.update))
            out_of_episodes = episodes >= tr.max_episodes
            out_of_steps = (updates >= total_updates) if total_updates is not None else np.zeros(n_seeds, bool)
            active = ~(np.asarray(host["converged"]) | out_of_episodes | out_of_steps)
            if not active.any() or host["stopped_by_callback"]:
                break
            active_dev = jnp.asarray(active)
            if self.sharding is not None:
                active_dev = jax.device_put(active_dev, self.sharding.per_seed())
            chunk_fn = self._chunk_fn(state, active_dev, tr.updates_per_chunk)
            t = time.perf_counter()
            state, metrics = chunk_fn(state, active_dev)
            metrics = jax.device_get(metrics)
            stats = jax.device_get(state.stats)
            dt = time.perf_counter() - t
            train_time += dt
            ran = np.asarray(metrics.ran, bool)  # [seeds, updates]: updates actually applied
            steps_this_chunk = int(ran.sum()) * batch
            train_steps += steps_this_chunk
            host["chunk"] += 1

            finite = np.isfinite(metrics.total_loss) | ~ran  # a discarded update cannot stop the run
            if not finite.all():
                bad = np.argwhere(~finite)[0]
                raise NonFiniteLossError(
                    f"non-finite loss at update {int(updates[bad[0]]) + int(bad[1]) + 1} (seed {seeds[int(bad[0])]}): "
                    f"policy={metrics.policy[tuple(bad)]}, value={metrics.value[tuple(bad)]}; "
                    "training aborted, nothing will be registered")

            episodes = np.asarray(stats.episodes)
            trained = ran.any(axis=1)  # seeds that took at least one update in this chunk
            window_means = [float(stats.window[i, :min(int(e), window)].mean()) if e > 0 else None
                            for i, e in enumerate(episodes)]
            for i, m in enumerate(window_means):
                if m is None or host["converged"][i] or not trained[i]:
                    continue
                if host["best_avg"][i] is None or m > host["best_avg"][i]:
                    host["best_avg"][i] = m
                if episodes[i] >= window and m >= tr.target_reward:
                    if host["converged_since"][i] is None:
                        host["converged_since"][i] = int(episodes[i])
                    if episodes[i] - host["converged_since"][i] >= tr.early_stopping_patience:
                        host["converged"][i] = True
                else:
                    host["converged_since"][i] = None

            completed = np.where(ran, metrics.episodes_completed, 0).sum(axis=1)
            seed_returns = [float(metrics.completed_return[i].sum() / completed[i]) if trained[i] and completed[i]
                            else None for i in range(n_seeds)]
            valid_returns = [r for r in seed_returns if r is not None]
            valid_windows = [m for i, m in enumerate(window_means) if m is not None and trained[i]]
            env_steps = int(np.asarray(jax.device_get(state.update)).max()) * batch
            # the episode count of the seeds still being trained (a frozen seed's count stops moving)
            counted = episodes[trained] if trained.any() else episodes

            row: dict[str, Any] = {
                "chunk": host["chunk"],
                "update": env_steps // batch,
                "env_steps": env_steps,
                "episodes": int(counted.min()),
                "avg_reward": float(np.mean(valid_windows)) if valid_windows else None,
                "episode_return": float(np.mean(valid_returns)) if valid_returns else None,
                "loss/policy": _masked_mean(metrics.policy, ran),
                "loss/value": _masked_mean(metrics.value, ran),
                "loss/entropy": _masked_mean(metrics.entropy, ran),
                "loss/approx_kl": _masked_mean(metrics.approx_kl, ran),
                "loss/clip_fraction": _masked_mean(metrics.clip_fraction, ran),
                "grad_norm": _masked_mean(metrics.grad_norm, ran),
                "env_steps_per_s": steps_this_chunk / dt if dt > 0 else None,
                "converged_seeds": int(sum(host["converged"])),
                "wall_s": time.perf_counter() - started,
            }
            for i, seed in enumerate(seeds):
                if trained[i]:
                    row[f"episode_return/seed_{seed}"] = seed_returns[i]
                    row[f"avg_reward/seed_{seed}"] = window_means[i]

            # periodic evaluation, per seed: each seed that trained in this chunk and passed its next
            # evaluation point is evaluated on a fresh block of the periodic stream
            due = [i for i in range(n_seeds) if trained[i] and episodes[i] >= host["next_eval_at"][i]]
            eval_metrics = None
            if due:
                k, n = len(host["evals"]), tr.eval_episodes
                eval_metrics = self._evaluate_seeds(state, n, stream_seed("periodic", k * n, n), only=due)
                eval_metrics.update(episode=int(counted.min()), env_steps=env_steps, seeds=[seeds[i] for i in due])
                host["evals"].append(eval_metrics)
                for i in due:
                    while host["next_eval_at"][i] <= int(episodes[i]):
                        host["next_eval_at"][i] += tr.eval_frequency
                row["eval/return_mean"] = eval_metrics["avg_reward"]
                row["eval/return_std"] = eval_metrics["std_reward"]
                for i, avg in zip(due, eval_metrics["per_seed_avg"], strict=True):
                    row[f"eval/return_mean/seed_{seeds[i]}"] = avg
            host["history"].append(row)

            if logger is not None:
                logger.log_row(row)
            if callback is not None and (host["chunk"] % tr.log_frequency == 0 or eval_metrics is not None):
                info = {"episode": row["episodes"], "env_steps": env_steps,
                        "step_metrics": {k: v for k, v in row.items() if "/seed_" not in k}}
                if eval_metrics is not None:
                    info["eval_metrics"] = {k: v for k, v in eval_metrics.items() if k != "returns"}
                if callback(info) is False:
                    host["stopped_by_callback"] = True
            if tr.checkpoint_every and host["chunk"] % tr.checkpoint_every == 0:
                save_checkpoint(self.checkpoint_dir, state, host)

        episodes = np.asarray(jax.device_get(state.stats.episodes))
        updates = np.asarray(jax.device_get(state.update))
        per_seed = [self._seed_stop_reason(host["converged"][i], episodes[i], updates[i]) for i in range(n_seeds)]
        if host["stopped_by_callback"] and "running" in per_seed:
            stop_reason = "callback"
        elif all(r == "converged" for r in per_seed):
            stop_reason = "converged"
        else:  # the budget that stopped the seeds that did not converge
            stop_reason = "max_env_steps" if "max_env_steps" in per_seed else "max_episodes"
        self.state = state
        n = tr.eval_episodes
        final_eval = self._evaluate_seeds(state, n, stream_seed("final", 0, n))
        best = int(np.argmax(final_eval["per_seed_avg"]))
        host.update(best_seed_index=best, final_eval=final_eval, finished=True, stop_reason=stop_reason)
        save_checkpoint(self.checkpoint_dir, state, host)
        self._set_agent(best)
        wall = time.perf_counter() - started
        history = host["history"]
        best_avg = [b for b in host["best_avg"] if b is not None]
        return {
            "converged": bool(all(host["converged"])),
            "converged_seeds": [s for s, c in zip(seeds, host["converged"], strict=True) if c],
            "stop_reason": stop_reason,
            "stop_reason_per_seed": per_seed,
            "episodes": int(episodes.min()),
            "episodes_per_seed": [int(e) for e in episodes],
            "env_steps": int(updates.max()) * cfg.ppo.batch_size,
            "env_steps_per_seed": [int(u) * cfg.ppo.batch_size for u in updates],
            "best_avg_reward": max(best_avg) if best_avg else None,
            "best_avg_reward_per_seed": host["best_avg"],
            "final_eval": final_eval,
            "best_seed": seeds[best],
            "evaluations": host["evals"],
            "wall_time_s": wall,
            "train_time_s": train_time,
            "env_steps_per_s": train_steps / train_time if train_time > 0 else None,
            "compile_s": self.timings.get("compile_s", 0.0),
            "history": history,
            "checkpoint_dir": str(self.checkpoint_dir),
            "config_hash": host["config_hash"],
        }

    def _seed_stop_reason(self, converged: bool, episodes: int, updates: int) -> str:
        """Why a seed stopped: converged, max_episodes, max_env_steps, or running (stopped by the callback)."""
        tr, total = self.config.train, self.config.total_updates()
        if converged:
            return "converged"
        if episodes >= tr.max_episodes:
            return "max_episodes"
        if total is not None and updates >= total:
            return "max_env_steps"
        return "running"

    def _set_agent(self, best: int) -> None:
        if self.agent is None:
            from ppo.agent import PPOAgent
            from ppo.envs import env_spec

            spec = env_spec(self.config.env.id)
            self.agent = PPOAgent(spec.observation_dim, spec.action_dim, self.config.ppo.hidden_sizes,
                                  params=self.seed_params[best])
        else:
            self.agent.params = self.seed_params[best]

    def restore(self) -> dict[str, Any]:
        """Load the latest checkpoint (no training); the agent gets the best (or first) seed's params.

        Returns the checkpoint's host metadata (history, evaluations, convergence, final_eval).
        """
        import jax
        import jax.numpy as jnp

        from ppo.checkpoint import load_checkpoint

        restored = load_checkpoint(self.checkpoint_dir, self.init_state())
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
        self.seed_params = [jax.tree.map(lambda x, i=i: np.asarray(x[i]), params)
                            for i in range(len(self.config.train.seeds))]
        return self.seed_params

    def _evaluate_seeds(self, state: Any, num_episodes: int, seed: int, only: list[int] | None = None
                        ) -> dict[str, Any]:
        """Greedy gymnasium returns of every trained seed (or the seed indices in ``only``)."""
        from ppo.evaluate import evaluate_params_list, summarize_seeds

        params = self._split_seeds(state)
        if only is not None:
            params = [params[i] for i in only]
        out = summarize_seeds(evaluate_params_list(params, self.config.env.id, num_episodes, seed,
                                                   self.config.env.max_steps_per_episode))
        return {**out, "gym_seeds": [seed, seed + num_episodes]}  # the [start, stop) of the episodes played

    def evaluate(self, num_episodes: int = 10, backend: str = "gymnasium", seed: int = 0,
                 all_seeds: bool = False) -> dict[str, Any]:
        """Greedy evaluation of the trained agent (or, with ``all_seeds``, of every trained seed).

        ``backend="gymnasium"`` runs the real env; ``"jax"`` runs the gymnax twin, jitted.
        """
        from ppo.evaluate import evaluate_params_list, make_jax_evaluator, summarize_seeds

        if backend not in ("gymnasium", "jax"):
            raise ValueError(f"backend must be 'gymnasium' or 'jax', got {backend!r}")
        if num_episodes < 1:
            raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
        if self.agent is None:
            raise RuntimeError("no trained agent: call train() first or pass agent=")
        params_list = self.seed_params if all_seeds and self.seed_params else [self.agent.params]
        if backend == "gymnasium":
            returns = evaluate_params_list(params_list, self.config.env.id, num_episodes, seed,
                                           self.config.env.max_steps_per_episode)
        else:
            import jax

            from ppo.envs import make_jax_env
            from ppo.program import make_network

            env, env_params = make_jax_env(self.config.env.id, self.config.env.max_steps_per_episode)
            run = make_jax_evaluator(make_network(self.config), env, env_params, num_episodes)
            returns = np.stack([np.asarray(run(p, jax.random.PRNGKey(seed))) for p in params_list])
        return summarize_seeds(returns)
