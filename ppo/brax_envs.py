"""Brax environments (optional: ``pip install -e '.[brax]'``) behind the gymnax interface the trainer uses.

An env id ``brax/<name>`` (``brax/inverted_pendulum``, ``brax/ant``, ``brax/halfcheetah``, any name of
``brax.envs``) trains through exactly the code every JAX env does: :class:`BraxEnv` is a gymnax
``Environment`` whose state carries Brax's ``State``, so gymnax's ``step`` adds the time limit (a
truncation: the learner bootstraps from the true final observation) and the auto-reset (a fresh random
start per episode, where Brax's own ``AutoResetWrapper`` would replay each env's first start state).
Brax's ``done`` is a termination (the ant fell over, the pole tipped past 0.2 rad).

Brax has no gymnasium twin: gymnasium's MuJoCo envs (``InvertedPendulum-v5``, ``Ant-v5``) load different
model files through a different simulator, so they cannot be matched step by step. A Brax env is
therefore evaluated, gated and reported on its own JAX implementation (like a user env without a
``gymnasium_twin``); README, "Environments", says so. Actions are in ``[-1, 1]`` (Brax rescales them to
the actuators' range).

Brax is imported only when a ``brax/`` id is used (``import brax`` loads MuJoCo and takes seconds).
"""

from __future__ import annotations

import contextlib
import functools
import re
import warnings
from collections.abc import Iterator
from typing import Any

from ppo.spaces import ActionSpace

PREFIX = "brax/"
_NAME = re.compile(r"[a-z][a-z0-9_]*")

#: the "solved" return per Brax env where one is citable (the gate's default ``min_return``); envs not
#: listed have none, so their config must set ``gate.min_return``. inverted_pendulum: +1 per upright step
#: over a 1000-step limit, gymnasium's InvertedPendulum-v5 threshold (950) for the same reward structure.
THRESHOLDS: dict[str, float] = {"inverted_pendulum": 950.0}
#: the gate margin's scale (a return span) where the threshold is no guide
RETURN_SPANS: dict[str, float] = {"inverted_pendulum": 1000.0, "ant": 6000.0, "halfcheetah": 6000.0}
BACKEND = "generalized"  # brax.envs' default pipeline (the one its published PPO results use for ant)
MAX_STEPS = 1000  # brax.envs.training.wrap's default episode_length


def is_brax_id(env_id: str) -> bool:
    return env_id.startswith(PREFIX)


def _brax_name(env_id: str) -> str:
    name = env_id[len(PREFIX) :]
    if not _NAME.fullmatch(name):
        raise ValueError(f"{env_id[:80]!r} is not 'brax/<name>' (e.g. 'brax/inverted_pendulum')")
    return name


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Brax warns "not actively being maintained" when it loads an env: nothing a user can act on here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def _brax_envs() -> Any:
    try:
        with _quiet():
            from brax import envs
    except ImportError:
        raise ValueError(
            "Brax envs need the optional extra: pip install -e '.[brax]' (brax 0.14, same JAX)"
        ) from None
    return envs


@functools.lru_cache(maxsize=16)
def brax_env_class(env_id: str) -> type:
    """A gymnax ``Environment`` subclass wrapping ``brax.envs.get_environment(<name>)``."""
    import jax.numpy as jnp
    from flax import struct

    from ppo.envs import _import_gymnax_module

    short = _brax_name(env_id)
    envs = _brax_envs()
    if short not in envs._envs:
        raise ValueError(f"unknown Brax env {short!r}; brax.envs has: {', '.join(sorted(envs._envs))}")
    gymnax_env = _import_gymnax_module("gymnax.environments.environment")
    spaces = _import_gymnax_module("gymnax.environments.spaces")
    env_state: Any = gymnax_env.EnvState
    env_params: Any = gymnax_env.EnvParams
    environment: Any = gymnax_env.Environment

    @struct.dataclass
    class BraxState(env_state):
        brax: Any  # brax.envs.base.State

    @struct.dataclass
    class BraxParams(env_params):
        max_steps_in_episode: int = MAX_STEPS

    class BraxEnv(environment):
        """``brax/<name>`` as a gymnax env (see the module docstring)."""

        brax_name = short

        def __init__(self) -> None:
            with _quiet():
                self.brax_env = envs.get_environment(short, backend=BACKEND)

        @property
        def default_params(self) -> Any:
            return BraxParams()

        def step_env(self, key: Any, state: Any, action: Any, params: Any) -> Any:
            nxt = self.brax_env.step(state.brax, jnp.asarray(action, jnp.float32))
            state = BraxState(time=state.time + 1, brax=nxt)
            reward = jnp.asarray(nxt.reward, jnp.float32)
            return nxt.obs, state, reward, jnp.asarray(nxt.done, jnp.float32) > 0.5, {}

        def reset_env(self, key: Any, params: Any) -> Any:
            first = self.brax_env.reset(key)
            # Brax's reset leaves reward/done as Python-float-shaped zeros; keep dtypes fixed for lax.select
            first = first.replace(reward=jnp.zeros((), jnp.float32), done=jnp.zeros((), jnp.float32))
            return first.obs, BraxState(time=0, brax=first)

        def is_terminated(self, state: Any, params: Any) -> Any:
            return jnp.asarray(state.brax.done, jnp.float32) > 0.5

        def observation_space(self, params: Any = None) -> Any:
            return spaces.Box(-jnp.inf, jnp.inf, (self.brax_env.observation_size,), jnp.float32)

        def action_space(self, params: Any = None) -> Any:
            return spaces.Box(-1.0, 1.0, (self.brax_env.action_size,), jnp.float32)

        @property
        def name(self) -> str:
            return env_id

        @property
        def num_actions(self) -> int:
            return int(self.brax_env.action_size)

    BraxEnv.__name__ = BraxEnv.__qualname__ = "".join(p.title() for p in short.split("_")) + "Brax"
    return BraxEnv


@functools.lru_cache(maxsize=16)
def brax_env_spec(env_id: str) -> Any:
    """The :class:`ppo.envs.EnvSpec` of ``brax/<name>``: read off the Brax env (observation and action sizes),
    evaluated on itself (no gymnasium twin)."""
    from ppo.envs import EnvSpec

    cls = brax_env_class(env_id)
    name = _brax_name(env_id)
    env = cls()
    obs = int(env.brax_env.observation_size)
    act = int(env.brax_env.action_size)
    threshold = THRESHOLDS.get(name)
    return EnvSpec(
        env_id,
        "brax-" + name.replace("_", "-"),
        (obs,),
        ActionSpace("continuous", act, tuple([-1.0] * act), tuple([1.0] * act)),
        (0.0, 0.0),
        (cls.__module__, cls.__name__),
        threshold=threshold,
        max_steps=MAX_STEPS,
        return_span=RETURN_SPANS.get(name, abs(threshold) if threshold else 1.0),
        user_class=cls,
    )
