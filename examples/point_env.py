"""A user-defined environment, twice: a gymnax-style JAX env to train on (``PointEnv``) and its gymnasium
twin to evaluate on (``PointGymEnv``), the pattern README's "Your own environment" describes.

The task: a point mass on a plane must reach a goal. Observation ``(goal - position, velocity)``; action a
force in ``[-1, 1]^2`` (continuous); velocity ``v' = 0.8 v + 0.1 a``, position ``p' = clip(p + v', -2, 2)``;
reward ``-|goal - p'| - 0.01 |a|^2`` per step; the episode terminates (reward +10) once the point is within
0.1 of the goal, else it is cut at 100 steps. Start: position and goal uniform in ``[-1, 1]^2``, at rest.

Train it with ``PPO_USER_ENV_MODULES=examples ppo pipeline -c examples/point.yaml`` (``examples`` is
allowed by default). tests/test_user_env.py checks the two implementations step by step.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces

SPEED_DECAY, FORCE, LIMIT, RADIUS, BONUS = 0.8, 0.1, 2.0, 0.1, 10.0


@struct.dataclass
class PointState(environment.EnvState):
    position: jax.Array
    velocity: jax.Array
    goal: jax.Array
    time: int


@struct.dataclass
class PointParams(environment.EnvParams):
    max_steps_in_episode: int = 100


class PointEnv(environment.Environment[PointState, PointParams]):
    """The JAX env PPO trains on, fully jitted."""

    #: optional attributes ppo reads (ppo.envs.user_env_spec): the gate's default min_return, the margin's
    #: scale, and the twin evaluation plays
    reward_threshold = (
        0.0  # reaching the goal (+10) outweighs the distance paid on the way; random: about -100
    )
    return_span = 100.0
    gymnasium_twin = "examples.point_env:PointGymEnv"

    @property
    def default_params(self) -> PointParams:
        return PointParams()

    def step_env(
        self, key: jax.Array, state: PointState, action: jax.Array, params: PointParams
    ) -> tuple[jax.Array, PointState, jax.Array, jax.Array, dict[str, Any]]:
        force = jnp.clip(jnp.asarray(action, jnp.float32), -1.0, 1.0)
        velocity = SPEED_DECAY * state.velocity + FORCE * force
        position = jnp.clip(state.position + velocity, -LIMIT, LIMIT)
        distance = jnp.linalg.norm(state.goal - position)
        reached = distance < RADIUS
        reward = -distance - 0.01 * jnp.sum(force**2) + BONUS * reached
        state = state.replace(position=position, velocity=velocity, time=state.time + 1)
        return self.get_obs(state), state, reward, reached, {}

    def reset_env(self, key: jax.Array, params: PointParams) -> tuple[jax.Array, PointState]:
        k_pos, k_goal = jax.random.split(key)
        state = PointState(
            position=jax.random.uniform(k_pos, (2,), minval=-1.0, maxval=1.0),
            velocity=jnp.zeros(2),
            goal=jax.random.uniform(k_goal, (2,), minval=-1.0, maxval=1.0),
            time=0,
        )
        return self.get_obs(state), state

    def get_obs(self, state: PointState, params: Any = None, key: Any = None) -> jax.Array:
        return jnp.concatenate([state.goal - state.position, state.velocity]).astype(jnp.float32)

    def action_space(self, params: PointParams | None = None) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, (2,))

    def observation_space(self, params: PointParams) -> spaces.Box:
        return spaces.Box(-4.0, 4.0, (4,))


class PointGymEnv(gymnasium.Env):
    """The same task in NumPy behind gymnasium's API (the twin evaluation and the gate play)."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, render_mode: str | None = None) -> None:
        self.observation_space = gymnasium.spaces.Box(-4.0, 4.0, (4,), np.float32)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.position = self.velocity = self.goal = np.zeros(2, np.float32)

    def _obs(self) -> np.ndarray:
        return np.concatenate([self.goal - self.position, self.velocity]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.position = self.np_random.uniform(-1.0, 1.0, 2).astype(np.float32)
        self.goal = self.np_random.uniform(-1.0, 1.0, 2).astype(np.float32)
        self.velocity = np.zeros(2, np.float32)
        return self._obs(), {}

    def step(self, action: Any):
        force = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
        self.velocity = (SPEED_DECAY * self.velocity + FORCE * force).astype(np.float32)
        self.position = np.clip(self.position + self.velocity, -LIMIT, LIMIT).astype(np.float32)
        distance = float(np.linalg.norm(self.goal - self.position))
        reached = distance < RADIUS
        reward = -distance - 0.01 * float(np.sum(force**2)) + BONUS * reached
        return self._obs(), reward, reached, False, {}
