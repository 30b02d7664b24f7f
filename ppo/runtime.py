"""The compiled-program runtime: program and chunk caches, compile-ahead, device placement.

A :class:`Runtime` binds one config to its device layout (:mod:`ppo.sharding`) and a ``timings`` dict;
with ``hparams`` (one :class:`ppo.program.HParams` per member) it runs a population: every member trains
every seed, ``members x seeds`` rows of one program (:mod:`ppo.population`). Programs
(:func:`ppo.program.make_program`) and compiled chunks live in module-global caches keyed by the config
hash and the row count, so a second trainer for the same config in the same process (a re-run flow, a
resume) neither retraces nor recompiles.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ppo.config import Config, ppo_home

#: Whether a process may end while a chunk compiles ahead (:meth:`Runtime.compile_ahead`) without waiting
#: for it. Python waits at exit for every thread that is not a daemon, and finalising the interpreter
#: under a daemon thread that is still inside XLA's compiler crashed it (SIGSEGV): so by default the
#: compile is waited for, as before. The ``ppo`` command (flows/entry.py) sets it: it leaves with
#: ``os._exit`` once its exit handlers ran, never finalising, so a Ctrl-C during ``ppo pipeline``'s
#: start-up no longer waits for the compile (Breakout-MinAtar: 6-7 s).
ABANDON_COMPILES_AT_EXIT = False

#: Built programs and compiled chunks, per config hash.
_PROGRAMS: dict[tuple[str, int | None], Any] = {}
#: a compiled chunk, or the Future of one being compiled, per (config hash, rows, updates per chunk)
_COMPILED: dict[tuple[str, int | None, int], Any] = {}
#: seconds each compiled chunk took to compile (a trainer that finds another's compile reports them)
_COMPILE_S: dict[tuple[str, int | None, int], float] = {}


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


def uses_host_envs(config: Config) -> bool:
    """Whether ``config`` trains through host-side gymnasium envs (``ppo.host_program``): its env has no
    JAX implementation, or the config asks for it (``env.backend: host``)."""
    from ppo.envs import env_spec

    return config.env.backend == "host" or env_spec(config.env.id).host


def get_program(config: Config, rows: int | None = None) -> Any:  # ppo.program.Program
    """The (cached) program of ``config`` for ``rows`` training rows (None: one per seed of the config);
    the first build turns the persistent compilation cache on."""
    key = (config.config_hash(), rows)
    if key not in _PROGRAMS:
        from ppo.program import make_program

        enable_compilation_cache()
        if uses_host_envs(config):
            from ppo.host_program import make_host_program

            _PROGRAMS[key] = make_host_program(config)
        else:
            _PROGRAMS[key] = make_program(config, rows=rows)
    return _PROGRAMS[key]


@dataclass
class Runtime:
    """One config's compiled program on its devices.

    Args:
        config: the run's config (its hash keys the caches).
        plan: the multi-device layout (:class:`ppo.sharding.Plan`), or ``None`` on one device.
        timings: where ``compile_s`` and ``init_s`` are recorded (shared with the trainer).
        hparams: a population's members (their :class:`ppo.program.HParams`), or ``None``: the config's
            own values. Rows are member-major: member ``m``'s seeds are rows ``[m * S, (m + 1) * S)``.
            A population of one is the config's own program, cache entries included.
    """

    config: Config
    plan: Any = None
    timings: dict[str, float] = field(default_factory=dict)
    hparams: tuple[Any, ...] | None = None

    @classmethod
    def population(cls, config: Config, hparams: list[Any], timings: dict[str, float]) -> Runtime:
        """The runtime of ``len(hparams)`` members training ``config``'s seeds, its rows split over the
        devices as seeds are (:func:`ppo.sharding.plan_for` of a config with one seed per row)."""
        from ppo.config import build_config
        from ppo.sharding import plan_for

        rows = len(hparams) * len(config.train.seeds)
        plan = plan_for(build_config(config.to_dict(), {"train.seeds": list(range(rows))}))
        return cls(config, plan, timings, tuple(hparams))

    @property
    def members(self) -> int:
        return 1 if self.hparams is None else len(self.hparams)

    @property
    def rows(self) -> int | None:
        """The program's row count where it is not the config's seed count (a population of 2+)."""
        return self.members * self.n_seeds if self.members > 1 else None

    @property
    def program(self) -> Any:
        return get_program(self.config, self.rows)

    @property
    def n_seeds(self) -> int:
        return len(self.config.train.seeds)

    @property
    def n_rows(self) -> int:
        return self.members * self.n_seeds

    @property
    def padding(self) -> int:
        """Idle rows the devices train after the real ones (``Plan.rows``: seeds that do not divide
        among the CPU devices); 0 for most layouts."""
        return 0 if self.plan is None or self.plan.rows is None else self.plan.rows - self.n_rows

    def place(self, state: Any) -> Any:
        """Put a (host or device) state where the chunk program expects it. With :attr:`padding`, the
        state stays on the host, ``n_rows`` rows: the chunk function pads and places it itself."""
        import jax

        plan = self.plan
        if plan is None:
            return state
        if self.padding:
            return jax.device_get(state)
        return jax.device_put(state, plan.state(state, self.config.env.num_envs))

    def on_devices(self, state: Any) -> Any:
        """``state`` as the compiled chunk runs it: padded with copies of its last row (see
        :attr:`padding`) and laid out on the plan's devices."""
        import jax
        import numpy as np

        if not self.padding:
            return self.place(state)
        k = self.padding
        host = jax.device_get(state)
        padded = jax.tree.map(lambda x: np.concatenate([x, np.repeat(x[-1:], k, axis=0)]), host)
        return jax.device_put(padded, self.plan.state(padded, self.config.env.num_envs))

    def place_active(self, active: Any) -> Any:
        """The per-seed ``active`` mask as a device array laid out like the chunk expects (with
        :attr:`padding`, a host array: the chunk function adds the idle rows, never active)."""
        import jax
        import jax.numpy as jnp
        import numpy as np

        if self.padding:
            return np.asarray(jax.device_get(active), bool)
        active_dev = jnp.asarray(active)
        if self.plan is not None:
            active_dev = jax.device_put(active_dev, self.plan.per_seed())
        return active_dev

    def _padded_active(self, active: Any) -> Any:
        import jax
        import numpy as np

        host = np.asarray(jax.device_get(active), bool)
        return jax.device_put(np.concatenate([host, np.zeros(self.padding, bool)]), self.plan.per_seed())

    def state_shapes(self) -> Any:
        """The stacked train state as ``ShapeDtypeStruct``s (``jax.eval_shape``: nothing runs)."""
        return self.program.state_shapes(self.n_rows)

    def init_state(self) -> Any:
        import jax.numpy as jnp

        init = self.program.init
        t = time.perf_counter()
        seeds = jnp.asarray(list(self.config.train.seeds) * self.members, dtype=jnp.uint32)
        if self.hparams is None:
            state = self.place(init(seeds))
        else:  # member-major rows, each with its member's hyperparameters
            state = self.place(init(seeds, [hp for hp in self.hparams for _ in range(self.n_seeds)]))
        self.timings.setdefault("init_s", time.perf_counter() - t)
        return state

    def compile(self, state: Any, active: Any, num_updates: int) -> Any:
        """Lower and compile one chunk for (abstract or concrete) ``state``/``active``."""
        import jax

        if self.program.host:  # Python around small jitted steps: they compile on first use
            return functools.partial(self.program.run_chunk, num_updates=num_updates)
        t = time.perf_counter()
        fn, plan = self.program.run_chunk, self.plan
        if self.padding:  # the chunk runs plan.rows rows (the padded state's shapes)
            state = jax.tree.map(lambda x: jax.ShapeDtypeStruct((plan.rows, *x.shape[1:]), x.dtype), state)
            active = jax.ShapeDtypeStruct((plan.rows,), bool)
        if plan is not None:  # same program, laid out on the mesh; outputs stay where inputs are
            state_sh = plan.state(state, self.config.env.num_envs)
            fn = jax.jit(
                fn.__wrapped__,
                static_argnums=2,
                in_shardings=(state_sh, plan.per_seed()),
                out_shardings=(state_sh, plan.per_seed()),
            )
        compiled = fn.lower(state, active, num_updates).compile()
        seconds = time.perf_counter() - t
        _COMPILE_S[(self.config.config_hash(), self.rows, num_updates)] = seconds
        self.timings["compile_s"] = self.timings.get("compile_s", 0.0) + seconds
        return compiled

    def release(self) -> None:
        """Give back what the program holds between runs: the host path's envs and their worker processes
        (a later chunk opens fresh ones). Why: programs are cached per config, and a sweep trains many
        host-env configs in one process. A jitted program holds nothing."""
        close = self.program.close
        if close is not None:
            close()

    def compile_ahead(self, num_updates: int) -> None:
        """Start compiling the chunk in a background thread, from the state's shapes alone.

        Why: XLA compiles with the GIL released on one core, so the init (host weights, env reset, its
        own small compile) and the checkpoint load run meanwhile on the other; a cold start saves the
        init's time. :meth:`chunk_fn` waits for it.
        """
        key = (self.config.config_hash(), self.rows, num_updates)
        if key in _COMPILED or self.program.host:
            return
        import jax

        shapes = self.state_shapes()
        active = jax.ShapeDtypeStruct((self.n_rows,), bool)
        job: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            if not job.set_running_or_notify_cancel():  # cancelled before it started
                return
            try:
                job.set_result(self.compile(shapes, active, num_updates))
            except BaseException as e:  # noqa: BLE001 - handed to chunk_fn, which compiles again
                job.set_exception(e)

        thread = threading.Thread(target=run, name="ppo-compile", daemon=ABANDON_COMPILES_AT_EXIT)
        thread.start()
        _COMPILED[key] = job

    def chunk_fn(self, state: Any, active: Any, num_updates: int) -> Any:
        """The compiled chunk for ``num_updates`` updates (compiling it, or waiting for compile-ahead)."""
        key = (self.config.config_hash(), self.rows, num_updates)
        if key not in _COMPILED:
            _COMPILED[key] = self.compile(state, active, num_updates)
        elif isinstance(_COMPILED[key], concurrent.futures.Future):
            try:
                _COMPILED[key] = _COMPILED[key].result()
            except Exception:  # compile again here: a real error is raised by this compile, in this run
                del _COMPILED[key]
                _COMPILED[key] = self.compile(state, active, num_updates)
            if "compile_s" not in self.timings:  # compiled ahead by another runtime (ppo pipeline's warm-up)
                self.timings["compile_s"] = _COMPILE_S.get(key, 0.0)
                self.timings["compiled_ahead"] = 1.0
        if self.padding:
            return functools.partial(self._run_padded, _COMPILED[key])
        return _COMPILED[key]

    def _run_padded(self, compiled: Any, state: Any, active: Any) -> tuple[Any, Any]:
        """One chunk with :attr:`padding`: the host state (``n_rows`` rows) padded and placed, run, and
        its real rows brought back to the host (the idle rows dropped) with the metrics'. Every row is
        independent of the others, so the real rows compute what they compute without padding; the
        round trip through host memory costs ~1 ms against a chunk's ~100 ms."""
        import jax

        n = self.n_rows
        state, metrics = compiled(self.on_devices(state), self._padded_active(active))
        keep = functools.partial(jax.tree.map, lambda x: x[:n])
        return keep(jax.device_get(state)), keep(jax.device_get(metrics))
