"""Several policies evaluated together (ppo.evaluate.evaluate_params_list plays them side by side in one
set of envs) score exactly what each scores alone, on the same episodes."""

from __future__ import annotations

import numpy as np
import pytest

from ppo.agent import PPOAgent
from ppo.envs import env_spec
from ppo.evaluate import evaluate_gymnasium, evaluate_params_list


def _policies(env_id: str, n: int) -> list:
    """``n`` differently initialised agents' variables (untrained policies, but each acts differently)."""
    spec = env_spec(env_id)
    return [
        PPOAgent(spec.observation_dim, spec.action_dim, (16,), seed=s, action_space=spec.action).params
        for s in range(n)
    ]


@pytest.mark.parametrize(
    "env_id,episodes",
    [
        ("CartPole-v1", 40),  # gymnasium's vector env, start states set per episode
        ("Acrobot-v1", 3),  # a list of gymnasium envs (untrained policies all score -120 in 120 steps)
        ("Pendulum-v1", 3),  # a list of gymnasium envs, continuous actions
    ],
)
def test_policies_evaluated_together_score_what_each_scores_alone(env_id, episodes):
    params = _policies(env_id, 3)
    together = evaluate_params_list(params, env_id, episodes, seed=1234, max_steps_per_episode=120)
    alone = np.stack(
        [evaluate_gymnasium(p, env_id, episodes, seed=1234, max_steps_per_episode=120) for p in params]
    )
    assert together.shape == (3, episodes)
    np.testing.assert_array_equal(together, alone)
    if env_id != "Acrobot-v1":  # the policies score differently: a mix-up of their envs would show
        assert len({tuple(row) for row in together}) == 3


def test_the_same_policy_twice_scores_the_same_episodes_twice():
    (params,) = _policies("CartPole-v1", 1)
    twice = evaluate_params_list([params, params], "CartPole-v1", 25, seed=7)
    np.testing.assert_array_equal(twice[0], twice[1])
    # and episode j is the one gymnasium.make(...).reset(seed=7 + j) starts, whatever the block
    np.testing.assert_array_equal(twice[0][5:], evaluate_gymnasium(params, "CartPole-v1", 20, seed=12))
