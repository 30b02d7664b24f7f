"""Greedy evaluation: on real gymnasium envs (NumPy policy) or on the gymnax twin (jitted).

Gymnasium evaluation runs ``num_episodes`` envs side by side, one batched NumPy forward pass per step.
Episode ``j`` of an evaluation with ``seed`` starts from ``gymnasium.make(env_id).reset(seed=seed + j)``,
whatever the path: CartPole-v1 steps gymnasium's own vectorised ``CartPoleVectorEnv`` (its registered
vector entry point, same dynamics) from those start states; other envs step a list of
``gymnasium.make`` envs. Each env contributes exactly its first episode, so two policies evaluated with
the same arguments face the same episodes (what the paired gate statistics need), and two evaluations
share an episode only if their seed ranges overlap.

Every use of evaluation owns a disjoint range of gymnasium seeds (:data:`STREAMS`, :func:`stream_seed`):
periodic evaluation during training, the final evaluation that picks the deployed seed, the promotion
gate, a sweep's trial selection, and the held-out score of a sweep's chosen trial. So no gate or
reported score is computed on the episodes that chose what it scores.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ppo.policy import GreedyPolicy

#: Each evaluation stream's range of gymnasium seeds is ``[index * STREAM_SPAN, (index + 1) * STREAM_SPAN)``.
STREAM_SPAN = 2**28
MAX_BLOCK = 2**20  # the most episodes one evaluation plays (config limits are far below)
STREAMS = {
    "periodic": 0,  # evaluation k during training: episodes [k * n, (k + 1) * n) of the range
    "final": 1,  # the final evaluation of every trained seed (picks the deployed seed)
    "gate": 2,  # the promotion gate: a fresh block per candidate run (ppo.evaluate.gate_seed)
    "sweep_select": 3,  # a sweep's trial scores, which choose the best trial
    "sweep_heldout": 4,  # the chosen trial's reported score, on episodes that did not choose it
}


def stream_seed(stream: str, offset: int = 0, episodes: int = 1) -> int:
    """The first gymnasium seed of ``episodes`` consecutive episodes at ``offset`` in ``stream``'s range.

    Offsets wrap inside the range (they never spill into another stream's episodes)."""
    if stream not in STREAMS:
        raise ValueError(f"unknown evaluation stream {stream!r}; known: {', '.join(STREAMS)}")
    if not 1 <= episodes <= MAX_BLOCK:
        raise ValueError(f"episodes must be in [1, {MAX_BLOCK}], got {episodes}")
    # a fixed modulus: the same offset starts at the same seed whatever the block's length (so a gate's
    # start states cannot be re-drawn by asking for one episode more)
    return STREAMS[stream] * STREAM_SPAN + int(offset) % (STREAM_SPAN - MAX_BLOCK)


def gate_seed(candidate_run_id: str, episodes: int) -> int:
    """The gate's first gymnasium seed for a candidate: a block of the gate stream drawn from its run id.

    Why per candidate: each new candidate meets start states no earlier gate, training evaluation or
    sweep used; why from the run id: re-running the gate of the same candidate meets the same states, so
    a gate cannot be re-run until a lucky draw promotes.
    """
    import hashlib

    draw = int.from_bytes(hashlib.sha256(candidate_run_id.encode()).digest()[:8], "big")
    return stream_seed("gate", draw, episodes)


def evaluate_gymnasium(
    params: Any, env_id: str, num_episodes: int, seed: int = 0, max_steps_per_episode: int | None = None
) -> np.ndarray:
    """Return the greedy policy's undiscounted return of ``num_episodes`` episodes (float64 array)."""
    return evaluate_params_list([params], env_id, num_episodes, seed, max_steps_per_episode)[0]


def evaluate_params_list(
    params_list: list[Any], env_id: str, episodes: int, seed: int, max_steps_per_episode: int | None = None
) -> np.ndarray:
    """``[len(params_list), episodes]`` greedy returns; every policy faces the same episodes.

    The policies play side by side in one set of envs (policy ``i`` acts in envs
    ``[i * episodes, (i + 1) * episodes)``). Why: a population's members, a run's seeds, a gate's candidate
    seeds are evaluated together, and CartPole's vector env then steps all their episodes in one NumPy call
    per step instead of one per policy. Each policy sees only its own envs' observations, so its returns
    are those it gets alone (tests/test_evaluate_batched.py)."""
    import gymnasium as gym

    from ppo.envs import env_spec, make_gymnasium_env

    action = env_spec(env_id).action
    policies = [GreedyPolicy(p, action) for p in params_list]
    if env_spec(env_id).evaluates_on_jax:
        return np.stack(
            [evaluate_jax_env(p, env_id, episodes, seed, max_steps_per_episode) for p in policies]
        )
    n, k = int(episodes), len(policies)
    spec = gym.envs.registry.get(env_id)
    limit = max_steps_per_episode or env_spec(env_id).max_episode_steps()
    returns = np.zeros(n * k)
    alive = np.ones(n * k, bool)

    def act(obs: np.ndarray) -> np.ndarray:
        return np.concatenate([policy(obs[i * n : (i + 1) * n]) for i, policy in enumerate(policies)])

    # CartPole's own vectorised env (its start states are set below from CartPole's state layout)
    if env_id == "CartPole-v1" and spec is not None and spec.vector_entry_point is not None:
        venv = gym.make_vec(
            env_id, num_envs=n * k, vectorization_mode="vector_entry_point", max_episode_steps=limit
        )
        venv.reset(seed=seed)
        # start env j of each policy's block where gymnasium.make(env_id).reset(seed=seed + j) starts (the
        # vector env draws all its start states from one generator: every episode would depend on (seed, n))
        single: Any = gym.make(env_id).unwrapped  # CartPoleEnv: its start state is .state
        starts = []
        for j in range(n):
            single.reset(seed=seed + j)
            starts.append(np.array(single.state, dtype=np.float64))
        single.close()
        venv.unwrapped.state = np.tile(np.stack(starts, axis=1), (1, k))
        obs = venv.unwrapped.state.T.astype(np.float32)
        try:
            while alive.any():
                obs, rewards, terminated, truncated, _ = venv.step(act(obs))
                returns += np.where(alive, rewards, 0.0)
                alive &= ~(terminated | truncated)
        finally:
            venv.close()
        return returns.reshape(k, n)
    envs = [make_gymnasium_env(env_id, limit) for _ in range(n * k)]
    obs = np.stack([e.reset(seed=seed + i % n)[0] for i, e in enumerate(envs)]).astype(np.float32)
    try:
        while alive.any():
            actions = act(obs)
            for i in np.flatnonzero(alive):
                o, r, term, trunc, _ = envs[i].step(actions[i])
                obs[i] = o
                returns[i] += r
                alive[i] = not (term or trunc)
    finally:
        for e in envs:
            e.close()
    return returns.reshape(k, n)


def evaluate_jax_env(
    policy: GreedyPolicy, env_id: str, num_episodes: int, seed: int, max_steps_per_episode: int | None = None
) -> np.ndarray:
    """Greedy returns on the JAX env itself, for a user env without a gymnasium twin: episode ``j`` starts
    from ``env.reset(PRNGKey(seed + j))`` (so seeds name episodes as on gymnasium, and the evaluation
    streams stay disjoint); the same NumPy policy acts, the env steps jitted and vectorised."""
    import jax
    import jax.numpy as jnp

    from ppo.envs import make_jax_env

    env, env_params = make_jax_env(env_id, max_steps_per_episode)
    n = int(num_episodes)
    reset = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))
    step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(seed, seed + n, dtype=jnp.uint32))
    obs, state = reset(keys, env_params)
    returns, alive = np.zeros(n), np.ones(n, bool)
    for t in range(int(env_params.max_steps_in_episode)):
        actions = policy(np.asarray(obs))
        step_keys = jax.vmap(lambda k, t=t: jax.random.fold_in(k, t))(keys)
        obs, state, reward, terminated, truncated, _ = step(
            step_keys, state, jnp.asarray(actions), env_params
        )
        returns += np.where(alive, np.asarray(reward, np.float64), 0.0)
        alive &= ~np.asarray(terminated | truncated)
        if not alive.any():
            break
    return returns


def make_jax_evaluator(network: Any, env: Any, env_params: Any, num_episodes: int, dist: Any = None):
    """Jitted ``evaluate(variables, key) -> returns[num_episodes]``: greedy episodes on the gymnax env
    (``dist``, a :mod:`ppo.distributions` family, picks the greedy action; default categorical)."""
    import jax
    import jax.numpy as jnp

    from ppo.distributions import Categorical
    from ppo.normalize import observe

    dist = dist or Categorical()
    max_steps = int(env_params.max_steps_in_episode)

    def run(params, key):
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, num_episodes), env_params)

        def step(carry, k):
            obs, state, alive, ret = carry
            pi, _ = network.apply({"params": params["params"]}, observe(params, obs))
            actions = dist.env_action(dist.mode(pi))
            obs, state, reward, terminated, truncated, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
                jax.random.split(k, num_episodes), state, actions, env_params
            )
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
    return {
        "avg_reward": float(r.mean()),
        "std_reward": float(r.std()),
        "min_reward": float(r.min()),
        "max_reward": float(r.max()),
        "returns": r.tolist(),
    }


def summarize_seeds(returns: np.ndarray) -> dict[str, Any]:
    """:func:`summarize` over all episodes of ``[seeds, episodes]`` returns, plus each seed's mean."""
    r = np.asarray(returns, dtype=float)
    return {**summarize(r.ravel()), "per_seed_avg": [float(x) for x in r.mean(axis=1)]}
