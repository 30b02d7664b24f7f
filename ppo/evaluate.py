"""Greedy evaluation: on real gymnasium envs (NumPy policy) or on the gymnax twin (jitted).

Gymnasium evaluation runs ``num_episodes`` envs side by side, one batched NumPy forward pass per step.
CartPole-v1 uses gymnasium's own vectorised ``CartPoleVectorEnv`` (its registered vector entry point,
same dynamics); other envs step a list of ``gymnasium.make`` envs. Each env contributes exactly its
first episode, so the starting states depend only on ``(seed, num_episodes)``: two policies evaluated
with the same arguments face the same episodes (what the paired gate statistics need).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ppo.policy import actor_layers, numpy_logits


def evaluate_gymnasium(params: Any, env_id: str, num_episodes: int, seed: int = 0,
                       max_steps_per_episode: int | None = None) -> np.ndarray:
    """Return the greedy policy's undiscounted return of ``num_episodes`` episodes (float64 array)."""
    import gymnasium as gym

    layers = actor_layers(params)
    n = int(num_episodes)
    spec = gym.envs.registry[env_id]
    limit = max_steps_per_episode or spec.max_episode_steps
    returns = np.zeros(n)
    alive = np.ones(n, bool)
    if spec.vector_entry_point is not None:
        venv = gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point",
                            max_episode_steps=limit)
        obs, _ = venv.reset(seed=seed)
        try:
            while alive.any():
                actions = numpy_logits(layers, obs).argmax(-1)
                obs, rewards, terminated, truncated, _ = venv.step(actions)
                returns += np.where(alive, rewards, 0.0)
                alive &= ~(terminated | truncated)
        finally:
            venv.close()
        return returns
    envs = [gym.make(env_id, max_episode_steps=limit) for _ in range(n)]
    obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)]).astype(np.float32)
    while alive.any():
        actions = numpy_logits(layers, obs).argmax(-1)
        for i in np.flatnonzero(alive):
            o, r, term, trunc, _ = envs[i].step(int(actions[i]))
            obs[i] = o
            returns[i] += r
            alive[i] = not (term or trunc)
    for e in envs:
        e.close()
    return returns


def make_jax_evaluator(network: Any, env: Any, env_params: Any, num_episodes: int):
    """Jitted ``evaluate(params, key) -> returns[num_episodes]``: greedy episodes on the gymnax env."""
    import jax
    import jax.numpy as jnp

    max_steps = int(env_params.max_steps_in_episode)

    def run(params, key):
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, num_episodes), env_params)

        def step(carry, k):
            obs, state, alive, ret = carry
            logits, _ = network.apply(params, obs)
            actions = jnp.argmax(logits, axis=-1)
            obs, state, reward, terminated, truncated, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
                jax.random.split(k, num_episodes), state, actions, env_params)
            ret = ret + jnp.where(alive, reward, 0.0)
            alive = alive & ~(terminated | truncated)
            return (obs, state, alive, ret), None

        init = (obs, state, jnp.ones(num_episodes, bool), jnp.zeros(num_episodes))
        (_, _, _, ret), _ = jax.lax.scan(step, init, jax.random.split(key, max_steps))
        return ret

    return jax.jit(run)


def summarize(returns: np.ndarray) -> dict[str, Any]:
    """The reference's evaluation dict."""
    r = np.asarray(returns, dtype=float)
    return {"avg_reward": float(r.mean()), "std_reward": float(r.std()), "min_reward": float(r.min()),
            "max_reward": float(r.max()), "returns": r.tolist()}


def summarize_seeds(returns: np.ndarray) -> dict[str, Any]:
    """:func:`summarize` over all episodes of ``[seeds, episodes]`` returns, plus each seed's mean."""
    r = np.asarray(returns, dtype=float)
    return {**summarize(r.ravel()), "per_seed_avg": [float(x) for x in r.mean(axis=1)]}


def evaluate_params_list(params_list: list[Any], env_id: str, episodes: int, seed: int,
                         max_steps_per_episode: int | None = None) -> np.ndarray:
    """``[len(params_list), episodes]`` greedy returns; every policy faces the same episodes."""
    return np.stack([evaluate_gymnasium(p, env_id, episodes, seed=seed, max_steps_per_episode=max_steps_per_episode)
                     for p in params_list])
