"""The in-jit ring buffer of completed episode returns (the convergence window)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ppo.rollout import EpisodeStats, record_episodes, ring_slots


def _slots(episodes: int, dones: list[bool], window: int) -> np.ndarray:
    return np.asarray(ring_slots(jnp.int32(episodes), jnp.asarray(dones), window))


def test_more_episodes_than_the_window_in_one_step_write_distinct_slots():
    # configs/acrobot.yaml: 64 envs, window 50: 64 episodes may end on the same step
    dones = [True] * 64
    slots = _slots(episodes=7, dones=dones, window=50)
    written = slots[slots < 50]
    assert len(written) == 50 and len(set(written.tolist())) == 50  # no collisions: a defined scatter
    assert (slots[:14] >= 50).all()  # the 14 oldest of the 64 are the ones left out
    assert len(set(slots.tolist())) == 64  # dropped ones are distinct too (the scatter says unique_indices)


def test_ring_keeps_exactly_the_newest_returns_in_order():
    window, envs = 4, 10
    stats = EpisodeStats(jnp.zeros(envs), jnp.zeros(window), jnp.int32(3), jnp.int32(0), jnp.float32(0))
    rewards = jnp.arange(1.0, envs + 1.0)  # env i's episode return is i + 1
    out = record_episodes(stats, rewards, jnp.ones(envs, bool))
    # episodes 3..12 ended in env order; the newest four (returns 7, 8, 9, 10) are episodes 9..12
    expected = np.zeros(window)
    for number, ret in zip(range(9, 13), [7.0, 8.0, 9.0, 10.0], strict=True):
        expected[number % window] = ret
    np.testing.assert_array_equal(np.asarray(out.window), expected)
    assert int(out.episodes) == 13 and int(out.completed) == 10 and float(out.completed_return) == 55.0


def test_partial_steps_fill_slots_in_env_order():
    slots = _slots(episodes=5, dones=[False, True, False, True], window=3)
    assert slots[1] == 5 % 3 and slots[3] == 6 % 3 and slots[0] >= 3 and slots[2] >= 3
