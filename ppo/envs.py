"""Environments: gymnax (JAX, the training fast path) and gymnasium (real envs, for evaluation).

``import gymnax`` executes every env family's module, and two of them import seaborn/matplotlib: 2.5 s
of a 4 s cold-start budget. :func:`make_jax_env` therefore loads only the classic-control modules by
placing temporary package stubs for ``gymnax`` and ``gymnax.environments`` in ``sys.modules`` while the
submodules import, then removing them, so a later ``import gymnax`` elsewhere still gets the real
package (and the very same env classes, which stay cached as submodules).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import re
import sys
import threading
import types
from dataclasses import dataclass
from typing import Any

import numpy as np

from ppo.spaces import ActionSpace

_lock = threading.Lock()


def _import_gymnax_module(module: str) -> types.ModuleType:
    if module in sys.modules:
        return sys.modules[module]
    with _lock:
        if "gymnax.environments" in sys.modules:  # real package already imported by someone
            return importlib.import_module(module)
        spec = importlib.util.find_spec("gymnax")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("gymnax is not installed: pip install gymnax")
        root = list(spec.submodule_search_locations)[0]
        stubs = {"gymnax": [root], "gymnax.environments": [f"{root}/environments"]}
        for name, path in stubs.items():
            stub = types.ModuleType(name)
            stub.__path__ = path
            sys.modules[name] = stub
        try:
            return importlib.import_module(module)
        finally:
            for name in stubs:
                if sys.modules.get(name) is not None and not hasattr(sys.modules[name], "__file__"):
                    del sys.modules[name]


@dataclass(frozen=True)
class EnvSpec:
    """What the networks, the evaluators, the gate and the registry need to know about an env: one row of
    :data:`ENV_SPECS`, the one table of per-env facts."""

    env_id: str
    slug: str  # names the experiment and the registered model: ppo-<slug>
    observation_shape: tuple[int, ...]
    action: ActionSpace
    reward_per_step: tuple[float, float]  # (lowest, highest) reward of one step (actions within bounds)
    gymnax: tuple[str, str] | None  # (module, class) of the JAX implementation trained on
    threshold: float | None = None  # the "solved" return, cited in the row; else gymnasium's threshold
    bonus: float = 0.0  # a one-time reward on top of the per-step range (MountainCarContinuous's +100)
    twin: str | None = None  # the gymnasium id evaluated on (default env_id)
    twin_kwargs: tuple[tuple[str, Any], ...] = ()  # gymnasium.make keyword arguments for the twin
    max_steps: int | None = None  # the time limit, when the twin registers none
    return_span: float | None = None  # the gate margin's scale, when the per-step range is no guide
    user_class: Any = None  # a user's JAX env class (``"<module>:<Class>"`` ids)

    @property
    def host(self) -> bool:
        """No JAX implementation: trained through host-side gymnasium vector envs (ppo.host_program)."""
        return self.gymnax is None and self.user_class is None

    @property
    def evaluates_on_jax(self) -> bool:
        """A user env without a gymnasium twin is evaluated (and gated) on its JAX implementation."""
        return self.user_class is not None and self.twin is None

    @property
    def observation_dim(self) -> int:
        return int(np.prod(self.observation_shape))

    @property
    def action_dim(self) -> int:
        """Number of discrete actions, or dims of a continuous action."""
        return self.action.n

    @property
    def twin_id(self) -> str:
        return self.twin or self.env_id

    def return_range(self, max_steps_per_episode: int) -> float:
        """Width of the span of episode returns under a time limit: what the gate's relative margin scales
        (the row's ``return_span`` where the per-step range would make it meaninglessly wide)."""
        if self.return_span is not None:
            return self.return_span
        low, high = self.reward_per_step
        return (high - low) * max_steps_per_episode + abs(self.bonus)

    def reward_threshold(self) -> float | None:
        """The return at which the env counts as solved: the row's cited figure, else gymnasium's."""
        if self.threshold is not None or self.user_class is not None:
            return self.threshold
        import gymnasium

        found = gymnasium.spec(self.twin_id).reward_threshold
        return None if found is None else float(found)

    def max_episode_steps(self) -> int:
        """The env's time limit (the default ``env.max_steps_per_episode``): the row's, else gymnasium's."""
        if self.max_steps is not None:
            return self.max_steps
        import gymnasium

        steps = gymnasium.spec(self.twin_id).max_episode_steps
        return int(steps) if steps is not None else 1000


_CC = "gymnax.environments.classic_control"
ENV_SPECS = {
    s.env_id: s
    for s in (
        EnvSpec(
            "CartPole-v1",
            "cartpole",
            (4,),
            ActionSpace("discrete", 2),
            (0.0, 1.0),
            (f"{_CC}.cartpole", "CartPole"),
        ),
        EnvSpec(
            "Acrobot-v1",
            "acrobot",
            (6,),
            ActionSpace("discrete", 3),
            (-1.0, 0.0),
            (f"{_CC}.acrobot", "Acrobot"),
        ),
        EnvSpec(
            "MountainCar-v0",
            "mountaincar",
            (2,),
            ActionSpace("discrete", 3),
            (-1.0, 0.0),
            (f"{_CC}.mountain_car", "MountainCar"),
        ),
        EnvSpec(
            "MountainCarContinuous-v0",
            "mountaincar-continuous",
            (2,),
            ActionSpace("continuous", 1, (-1.0,), (1.0,)),
            (-0.1, 0.0),  # -0.1 a^2 per step, |a| <= 1 once clipped
            (f"{_CC}.continuous_mountain_car", "ContinuousMountainCar"),
            bonus=100.0,  # reaching the flag
        ),
        EnvSpec(
            "Pendulum-v1",
            "pendulum",
            (3,),
            ActionSpace("continuous", 1, (-2.0,), (2.0,)),
            (-(np.pi**2 + 0.1 * 8.0**2 + 0.001 * 2.0**2), 0.0),  # -(theta^2 + 0.1 thetadot^2 + 0.001 u^2)
            (f"{_CC}.pendulum", "Pendulum"),
            # gymnasium's spec has no reward_threshold; -200 is the target of this project's issue 13 and
            # sits near the returns RL Zoo's tuned PPO reports for Pendulum-v1 (rl-baselines3-zoo benchmark)
            threshold=-200.0,
        ),
        EnvSpec(
            "LunarLander-v3",
            "lunarlander",
            (8,),
            ActionSpace("discrete", 4),
            (0.0, 0.0),
            None,  # box2d: no JAX twin; trained through host-side vector envs
            # returns run from about -600 (crashes) to about +320 (landed fast): the margin's scale
            return_span=400.0,
        ),
        *(
            EnvSpec(
                f"{game}-MinAtar",
                f"{game.lower()}-minatar",
                (10, 10, channels),
                ActionSpace("discrete", actions),
                (0.0, 1.0),
                (f"gymnax.environments.minatar.{module}", cls),
                # gymnax's PPO checkpoints (gymnax README, "Ckpt (Return)"; Breakout: 1e7 steps, gymnax-blines
                # agents/Breakout-MinAtar/ppo.yaml)
                threshold=threshold,
                # the real game (minatar), its minimal action set (the same indices as gymnax's), no sticky
                # actions (gymnax has none; the MinAtar paper's protocol uses 0.1), under gymnax's time limit
                twin=f"MinAtar/{game}-v1",
                twin_kwargs=(("sticky_action_prob", 0.0),),
                max_steps=limit,
                # the margin's scale: 4x the cited score (per-step 0..1 over 1000 steps would allow 20 points)
                return_span=4 * threshold,
            )
            for game, module, cls, channels, actions, threshold, limit in (
                ("Breakout", "breakout", "MinBreakout", 4, 3, 28.0, 1000),
                ("Asterix", "asterix", "MinAsterix", 4, 5, 15.0, 1000),
                ("Freeway", "freeway", "MinFreeway", 7, 3, 58.0, 2500),
                ("SpaceInvaders", "space_invaders", "MinSpaceInvaders", 6, 4, 131.0, 1000),
            )
        ),
    )
}


def make_gymnasium_env(
    env_id: str, max_steps_per_episode: int | None = None, env_checker: bool = True, **kwargs: Any
) -> Any:
    """The real env ``env_id`` is evaluated on (its twin: ``gymnasium.make`` of the row's ``twin`` id and
    keyword arguments) with the time limit ``max_steps_per_episode`` (default the env's).

    ``env_checker=False`` leaves out gymnasium's passive env checker (registered envs only): the report's
    GIF and `ppo record` take minatar's float frames as they are, and the checker's warnings about them are
    noise there."""
    import gymnasium as gym

    spec = env_spec(env_id)
    limit = max_steps_per_episode or spec.max_episode_steps()
    if spec.evaluates_on_jax:
        raise ValueError(f"{env_id} has no gymnasium twin: it is evaluated on its JAX implementation")
    if USER_ENV_PATTERN.fullmatch(spec.twin_id):  # a user's gymnasium.Env class
        from gymnasium.wrappers import TimeLimit

        return TimeLimit(_load_attribute(spec.twin_id)(**dict(spec.twin_kwargs), **kwargs), limit)
    if spec.twin_id.startswith("MinAtar/") and spec.twin_id not in gym.envs.registry:
        # minatar declares a gymnasium plugin entry point, which gymnasium 1.x no longer loads
        import minatar.gym

        minatar.gym.register_envs()
    checker = {} if env_checker else {"disable_env_checker": True}  # else the registration's default
    return gym.make(spec.twin_id, max_episode_steps=limit, **checker, **dict(spec.twin_kwargs), **kwargs)


#: a user's JAX env: ``"<module>:<Class>"`` (README, "Your own environment")
USER_ENV_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")
#: where a user env's module may come from (comma-separated module prefixes): configs travel (deployment
#: parameters, shared YAML), and importing a module runs its code, so a config names only allowed modules
USER_ENV_MODULES = "PPO_USER_ENV_MODULES"
DEFAULT_USER_ENV_MODULES = "examples"


def env_spec(env_id: str) -> EnvSpec:
    """The row for a built-in env, the spec read off a user's ``"<module>:<Class>"`` JAX env, or that of a
    registered gymnasium env without a JAX twin (trained through host envs)."""
    if env_id in ENV_SPECS:
        return ENV_SPECS[env_id]
    from ppo.brax_envs import brax_env_spec, is_brax_id

    if is_brax_id(env_id):
        return brax_env_spec(env_id)
    if ":" in env_id:
        return user_env_spec(env_id)
    if _registered(env_id):
        return gymnasium_env_spec(env_id)
    raise ValueError(
        f"unknown env id {env_id!r}; supported: {', '.join(ENV_SPECS)}, a registered gymnasium env id, "
        "a Brax env as 'brax/<name>', or your own JAX env as '<module>:<Class>'"
    )


def _load_attribute(path: str) -> Any:
    """``"<module>:<name>"`` → the object, importing the module (the current directory is searched too, as
    ``python -m`` does) only when its package is allowed by ``$PPO_USER_ENV_MODULES``."""
    if not USER_ENV_PATTERN.fullmatch(path):
        raise ValueError(f"{path[:80]!r} is not '<module>:<Class>' (e.g. 'examples.point_env:PointEnv')")
    module, _, name = path.partition(":")
    allowed = [p.strip() for p in os.environ.get(USER_ENV_MODULES, DEFAULT_USER_ENV_MODULES).split(",")]
    if not any(p and (module == p or module.startswith(p + ".")) for p in allowed):
        raise ValueError(
            f"module {module!r} is not allowed: importing it would run its code; add its package to "
            f"${USER_ENV_MODULES} (now {','.join(a for a in allowed if a)!r}), comma-separated"
        )
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        loaded = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"cannot import {module!r} for env {path!r}: {e}") from None
    try:
        return getattr(loaded, name)
    except AttributeError:
        raise ValueError(f"module {module!r} has no {name!r}") from None


@functools.lru_cache(maxsize=32)
def user_env_spec(env_id: str) -> EnvSpec:
    """The spec of a user's gymnax-style JAX env class ``env_id = "<module>:<Class>"``.

    Read off the class: its observation and action spaces (gymnax ``Box`` / ``Discrete``) and time limit
    (``default_params.max_steps_in_episode``); optional class attributes ``reward_threshold`` (the gate's
    default ``min_return``), ``return_span`` (the gate margin's scale; default ``abs(reward_threshold)`` or 1)
    and ``gymnasium_twin`` (a registered gymnasium id, or ``"<module>:<Class>"`` of a ``gymnasium.Env``, to
    evaluate on; without one, evaluation and the gate play the JAX env itself).
    """
    cls = _load_attribute(env_id)
    base = _import_gymnax_module("gymnax.environments.environment").Environment
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"{env_id!r} is not a gymnax Environment subclass (see examples/point_env.py)")
    env = cls()
    params = env.default_params
    threshold = getattr(cls, "reward_threshold", None)
    span = getattr(cls, "return_span", None) or (abs(float(threshold)) if threshold else 1.0)
    twin = getattr(cls, "gymnasium_twin", None)
    return EnvSpec(
        env_id,
        re.sub(r"[^a-z0-9]+", "-", cls.__name__.lower()).strip("-") or "env",
        tuple(int(d) for d in env.observation_space(params).shape),
        _gymnax_action_space(env.action_space(params)),
        (0.0, 0.0),
        (cls.__module__, cls.__name__),
        threshold=None if threshold is None else float(threshold),
        twin=twin,
        max_steps=int(params.max_steps_in_episode),
        return_span=float(span),
        user_class=cls,
    )


def _registered(env_id: str) -> bool:
    """Registered with gymnasium already (no import of any module the id might name)."""
    if "/" in env_id or not re.fullmatch(r"[A-Za-z0-9_-]+", env_id):
        return False
    import gymnasium

    return env_id in gymnasium.envs.registry


@functools.lru_cache(maxsize=32)
def gymnasium_env_spec(env_id: str) -> EnvSpec:
    """The spec of a registered gymnasium env with no JAX twin, read off its spaces: trained through
    host-side vector envs (ppo.host_program), evaluated on itself."""
    import gymnasium

    env = gymnasium.make(env_id)
    try:
        shape = env.observation_space.shape
        if type(env.observation_space).__name__ != "Box" or not shape:
            raise ValueError(f"{env_id}: PPO here needs Box observations, got {env.observation_space}")
        action = ActionSpace.from_gymnasium(env.action_space)
    finally:
        env.close()
    threshold = gymnasium.spec(env_id).reward_threshold
    return EnvSpec(
        env_id,
        re.sub(r"[^a-z0-9]+", "-", env_id.lower()).strip("-"),
        tuple(int(d) for d in shape),
        action,
        (0.0, 0.0),
        None,
        return_span=abs(float(threshold)) if threshold else 1.0,
    )


def _gymnax_action_space(space: Any) -> ActionSpace:
    if hasattr(space, "n"):
        return ActionSpace("discrete", int(space.n))
    shape = tuple(space.shape)
    if len(shape) != 1:
        raise ValueError(f"a continuous action space must be 1-D, got shape {shape}")
    low = np.broadcast_to(np.asarray(space.low, np.float64), shape)
    high = np.broadcast_to(np.asarray(space.high, np.float64), shape)
    return ActionSpace("continuous", shape[0], tuple(map(float, low)), tuple(map(float, high)))


def make_jax_env(env_id: str, max_steps_per_episode: int | None = None) -> tuple[Any, Any]:
    """Return ``(env, env_params)`` for the gymnax implementation of ``env_id``."""
    spec = env_spec(env_id)
    if spec.gymnax is None:
        raise ValueError(f"{env_id} has no JAX implementation")
    module, cls = spec.gymnax
    env_class = spec.user_class or getattr(_import_gymnax_module(module), cls)
    env = (_faithful_continuous_mountain_car(env_class) if cls == "ContinuousMountainCar" else env_class)()
    params = env.default_params
    if max_steps_per_episode is not None:
        params = params.replace(max_steps_in_episode=int(max_steps_per_episode))
    return env, params


def _faithful_continuous_mountain_car(base: type) -> type:
    """gymnax's ContinuousMountainCar with gymnasium's left wall.

    gymnasium (and OpenAI gym's original) stops the car at the left wall: ``velocity = 0`` when the
    position is clipped to ``min_position`` while moving left. gymnax 1.0.1 instead zeroes a negative
    velocity at the *goal* (``position >= goal_position``), so at the wall its car keeps a negative
    velocity and the two diverge from the first wall hit (tests/test_envs.py shows it). This subclass
    implements the gymnasium step; the rest (reset, observation, spaces) is gymnax's.
    """
    import jax.numpy as jnp

    class ContinuousMountainCar(base):
        def step_env(self, key: Any, state: Any, action: Any, params: Any) -> Any:
            force = jnp.clip(action, params.min_action, params.max_action)
            velocity = state.velocity + force * params.power - jnp.cos(3 * state.position) * params.gravity
            velocity = jnp.clip(velocity, -params.max_speed, params.max_speed)
            position = jnp.clip(state.position + velocity, params.min_position, params.max_position)
            velocity = jnp.where((position <= params.min_position) & (velocity < 0), 0.0, velocity)
            terminated = (position >= params.goal_position) & (velocity >= params.goal_velocity)
            reward = (-0.1 * action**2).squeeze() + 100.0 * terminated.squeeze()
            state = state.replace(
                position=position.squeeze(), velocity=velocity.squeeze(), time=state.time + 1
            )
            done = self.is_terminal(state, params)
            return self.get_obs(state), state, reward, done, {"discount": self.discount(state, params)}

    return ContinuousMountainCar


class CartPoleWrapper:
    """A real gymnasium environment (default ``CartPole-v1``, any env of :data:`ENV_SPECS`) behind the
    reference API (whose name it keeps).

    ``PPOTrainer`` trains on the gymnax twin of ``env_id`` (same dynamics, tested step by step) and
    evaluates on this one. ``reset(seed)`` → observation; ``step(action)`` → (obs, reward,
    terminated, truncated, info), all as gymnasium defines them.
    """

    def __init__(
        self,
        env_id: str = "CartPole-v1",
        max_steps_per_episode: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        spec = env_spec(env_id)
        self.env_id = env_id
        self.observation_dim = spec.observation_dim
        self.observation_shape = spec.observation_shape
        self.action_dim = spec.action_dim
        self.action_space = spec.action
        self.max_steps_per_episode = max_steps_per_episode
        self.env = make_gymnasium_env(env_id, max_steps_per_episode, render_mode=render_mode)

    def reset(self, seed: int | None = None) -> np.ndarray:
        obs, _ = self.env.reset(seed=seed)
        return np.asarray(obs, dtype=np.float32)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """One step; a discrete action is an int, a continuous one a float vector (clipped to the bounds)."""
        if self.action_space.discrete:
            action = int(action)
        else:
            low, high = self.action_space.low, self.action_space.high
            action = np.clip(np.asarray(action, np.float32).reshape(self.action_dim), low, high)
        obs, reward, terminated, truncated, info = self.env.step(action)
        return np.asarray(obs, dtype=np.float32), float(reward), bool(terminated), bool(truncated), info

    def render(self) -> Any:
        return self.env.render()

    def close(self) -> None:
        self.env.close()
